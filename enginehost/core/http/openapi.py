"""The OpenAPI document: security schemes, error responses, each route's access rule."""

from __future__ import annotations

from fastapi import FastAPI


def install_openapi(app: FastAPI) -> None:
    """Describe every route's auth requirement and error responses in ``app``'s schema."""
