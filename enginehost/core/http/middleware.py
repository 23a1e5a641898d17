"""Request-level guards: body size cap (413), content type (415), correlation ids."""

from __future__ import annotations

from fastapi import FastAPI


def install_middleware(app: FastAPI) -> None:
    """Install the request guards on ``app``."""
