"""API key secrets: how they look, how they are hashed, how they are recognized.

A key is ``ehk_`` followed by 43 URL-safe characters (256 random bits). Its first 12
characters are its *prefix*: stored in clear and shown in listings and the audit log so
operators can tell keys apart. The secret itself is never stored: only an HMAC-SHA256 of
it, keyed with the server's pepper, so a stolen database alone cannot be used to guess
or check keys.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

__all__ = [
    "KEY_SCHEME",
    "MIN_SECRET_LENGTH",
    "PREFIX_LENGTH",
    "generate_secret",
    "hash_secret",
    "load_or_create_pepper",
    "secret_prefix",
    "write_private_file",
]

KEY_SCHEME = "ehk_"
PREFIX_LENGTH = 12
MIN_SECRET_LENGTH = 32
"""Operator-chosen keys (``ENGINEHOST_ADMIN_KEY``) must be at least this long."""

PEPPER_FILE = "api-key-pepper"


def generate_secret() -> str:
    return KEY_SCHEME + secrets.token_urlsafe(32)


def secret_prefix(secret: str) -> str:
    return secret[:PREFIX_LENGTH]


def hash_secret(secret: str, pepper: bytes) -> str:
    return hmac.new(pepper, secret.encode("utf-8"), hashlib.sha256).hexdigest()


def write_private_file(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` readable by the owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def load_or_create_pepper(configured: str | None, data_dir: Path) -> bytes:
    """The pepper: the setting if given, else the data dir's file (created once)."""
    if configured:
        return configured.encode("utf-8")
    path = data_dir / PEPPER_FILE
    if not path.exists():
        write_private_file(path, secrets.token_hex(32) + "\n")
    return path.read_text(encoding="utf-8").strip().encode("utf-8")
