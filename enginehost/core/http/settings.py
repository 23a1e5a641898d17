"""Settings routes (admin): ``GET /api/settings``; changes answer 501."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["settings"])
