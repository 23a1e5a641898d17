"""API key routes (admin): ``/api/auth/api-keys``."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["api keys"])
