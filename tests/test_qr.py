"""QR helpers: PNG bytes, PNG data URLs and terminal text of a regular QR code."""

from __future__ import annotations

import base64
import struct

import pytest
import segno

from enginehost.core import qr

# A payload shaped like WhatsApp's (ref, then three base64 device keys).
PAYLOAD = "2@" + "A" * 48 + "," + ",".join(["B" * 44, "C" * 44, "D" * 44])
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_png_bytes_are_a_square_png_growing_with_the_scale() -> None:
    small = qr.png_bytes(PAYLOAD, scale=1)
    large = qr.png_bytes(PAYLOAD, scale=8)
    assert small.startswith(PNG_SIGNATURE) and large.startswith(PNG_SIGNATURE)
    width, height = _png_size(small)
    assert width == height
    # Version n has 17 + 4n modules, plus a quiet zone of 4 on each side.
    assert (width - 8 - 17) % 4 == 0
    assert _png_size(large) == (width * 8, height * 8)


def test_short_payloads_are_regular_qr_codes_not_micro_qr() -> None:
    width, _ = _png_size(qr.png_bytes("hi", scale=1))
    assert width == 21 + 8  # version 1, the smallest regular QR code


def test_data_url_holds_the_png() -> None:
    url = qr.png_data_url(PAYLOAD)
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    assert base64.b64decode(url[len(prefix) :], validate=True) == qr.png_bytes(PAYLOAD)


def test_terminal_text_is_compact_half_blocks() -> None:
    text = qr.terminal(PAYLOAD)
    lines = text.splitlines()
    assert text.endswith("\n") and lines
    assert set(text) <= {" ", "\u2580", "\u2584", "\u2588", "\n"}
    assert "\u2588" in text
    width = len(lines[0])
    assert all(len(line) == width for line in lines)
    modules = width - 4  # a border of 2 on each side
    assert (modules - 17) % 4 == 0
    assert len(lines) == (width + 1) // 2  # two module rows a line
    # The default draws light modules, so the border is solid.
    assert lines[0] == "\u2588" * width


def test_terminal_text_differs_between_payloads_and_inverts() -> None:
    one, other = qr.terminal(PAYLOAD), qr.terminal(PAYLOAD[:-1] + "E")
    assert one != other
    inverted = qr.terminal(PAYLOAD, invert=True)
    swap = str.maketrans({" ": "\u2588", "\u2588": " ", "\u2580": "\u2584", "\u2584": "\u2580"})
    assert inverted == one.translate(swap)


def test_odd_row_counts_are_padded_with_border() -> None:
    # Version 1 (21 modules) plus a border of 2: 25 rows; the 26th is one more border row.
    lines = qr.terminal("hi").splitlines()
    assert len(lines) == 13
    assert set(lines[-1]) == {"\u2588"}
    assert set(qr.terminal("hi", invert=True).splitlines()[-1]) == {" "}


def test_terminal_text_is_exactly_the_symbol() -> None:
    """Reading the half blocks back gives segno's module matrix of the payload."""
    upper = {"\u2580", "\u2588"}
    lower = {"\u2584", "\u2588"}
    dark_rows: list[list[bool]] = []
    for line in qr.terminal(PAYLOAD, invert=True, border=0).splitlines():
        dark_rows.append([cell in upper for cell in line])
        dark_rows.append([cell in lower for cell in line])
    expected = [[bool(m) for m in row] for row in segno.make(PAYLOAD, micro=False).matrix]
    assert dark_rows[: len(expected)] == expected
    assert not any(any(row) for row in dark_rows[len(expected) :])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: qr.png_bytes(""), "must not be empty"),
        (lambda: qr.png_bytes("x", scale=0), "scale"),
        (lambda: qr.terminal("x", border=-1), "border"),
    ],
)
def test_bad_arguments_are_value_errors(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_a_payload_polled_again_is_not_rendered_again(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = PAYLOAD + ",polled"
    first = qr.png_bytes(payload)
    monkeypatch.setattr(qr, "_make", lambda _: pytest.fail("rendered again"))
    assert qr.png_bytes(payload) is first
    assert qr.png_data_url(payload).endswith(base64.b64encode(first).decode("ascii"))
