"""QR codes for linking a session: as PNG bytes, as a PNG data URL, and as terminal text.

Engines hand the host a QR *payload* (the string a phone's camera reads); the API and
the CLI turn it into something to scan. Everything here is pure Python (segno): no
native library, no image stack.

Always a regular QR code (never a Micro QR, which WhatsApp cannot read), with the
standard quiet zone of four modules around it for images.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Iterable

import segno

__all__ = ["png_bytes", "png_data_url", "terminal"]

DEFAULT_SCALE = 8
"""Pixels per module of a PNG: a typical WhatsApp QR (version 10 or so) comes out
around 500 pixels square, comfortable to scan from a screen."""

_QUIET_ZONE = 4
"""Modules of light border the QR specification asks for around the symbol."""

_TERMINAL_BORDER = 2
"""A terminal rendering uses a narrower border: phone scanners cope, and it fits better."""


def _make(payload: str) -> segno.QRCode:
    if not payload:
        raise ValueError("a QR payload must not be empty")
    # micro=False: short payloads would otherwise become Micro QR codes.
    return segno.make(payload, micro=False)


def png_bytes(payload: str, *, scale: int = DEFAULT_SCALE) -> bytes:
    """``payload`` as a black-on-white PNG image, ``scale`` pixels per module."""
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    return _png(payload, scale)


@functools.lru_cache(maxsize=64)
def _png(payload: str, scale: int) -> bytes:
    # Remembered for the last 64 payloads: clients poll ``GET .../qr`` (the CLI once a
    # second) while a payload stays the same until the engine rotates it, and rendering
    # is pure Python.
    buffer = io.BytesIO()
    _make(payload).save(buffer, kind="png", scale=scale, border=_QUIET_ZONE)
    return buffer.getvalue()


def png_data_url(payload: str, *, scale: int = DEFAULT_SCALE) -> str:
    """``payload`` as a PNG in a ``data:image/png;base64,...`` URL (the contract's
    ``qrCode``, ready for an ``<img src>``)."""
    encoded = base64.b64encode(png_bytes(payload, scale=scale)).decode("ascii")
    return f"data:image/png;base64,{encoded}"


# Two module rows per text line: (upper is drawn, lower is drawn) -> character.
_HALF_BLOCKS = {
    (False, False): " ",
    (True, False): "\u2580",  # ▀ upper half block
    (False, True): "\u2584",  # ▄ lower half block
    (True, True): "\u2588",  # █ full block
}


def terminal(payload: str, *, invert: bool = False, border: int = _TERMINAL_BORDER) -> str:
    """``payload`` as text for a terminal: one character per module across, two module
    rows per line (half blocks), so the code stays roughly square and compact.

    By default the *light* modules (and the border) are drawn as blocks and the dark
    ones left blank, which reads correctly on the usual light-text-on-dark terminal;
    ``invert=True`` draws the dark modules instead, for dark-text-on-light terminals.
    Lines end with ``\\n``; there are no colour escape codes.
    """
    if border < 0:
        raise ValueError(f"border must not be negative, got {border}")
    rows: list[list[bool]] = [
        [bool(module) == invert for module in row]
        for row in _make(payload).matrix_iter(scale=1, border=border)
    ]
    if len(rows) % 2:
        # An odd number of rows: the last line's lower half is one more row of border.
        rows.append([not invert] * len(rows[0]))
    lines = [_pair(rows[index], rows[index + 1]) for index in range(0, len(rows), 2)]
    return "".join(line + "\n" for line in lines)


def _pair(upper: Iterable[bool], lower: Iterable[bool]) -> str:
    return "".join(_HALF_BLOCKS[cell] for cell in zip(upper, lower, strict=True))
