"""The audit trail of the API: recording middleware and ``GET /api/audit`` (admin)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

router = APIRouter(tags=["audit"])


def install_audit(app: FastAPI) -> None:
    """Record every mutating call and every failed authentication."""
