"""The audit log service: best-effort, batched writes; queries; retention."""

from __future__ import annotations

from enginehost.core.db.database import Database


class AuditLog:
    def __init__(self, database: Database, *, retention_days: int) -> None:
        self.database = database
        self.retention_days = retention_days
