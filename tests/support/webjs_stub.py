"""The stub WhatsApp Web pages (tests/webjs) as whatsapp-web.js's local version cache.

With ``webVersionCache: {type: "local", path, strict: true}`` and a pinned
``webVersion``, the library serves ``<path>/<webVersion>.html`` for the WhatsApp Web
URL. :func:`stub_cache` lays the stubs out that way under pinned names that fit the
webjs plugin's ``web_version`` format.
"""

from __future__ import annotations

import shutil
from pathlib import Path

STUB_DIR = Path(__file__).parents[1] / "webjs"

STUB_VERSION = "2.3000.0-stub"
"""A page that reaches the library's ``qr`` event (and rotates the QR every 2 s)."""

NO_QR_VERSION = "2.3000.0-stub-no-qr"
"""A page that never gets that far, for the init deadline."""


def stub_cache(directory: Path) -> Path:
    """``directory`` holding both stubs under their pinned names; returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(STUB_DIR / "stub-qr.html", directory / f"{STUB_VERSION}.html")
    shutil.copyfile(STUB_DIR / "stub-no-qr.html", directory / f"{NO_QR_VERSION}.html")
    return directory
