"""Text safe for a terminal (imported by the entry point: no other import here)."""

from __future__ import annotations

__all__ = ["escape"]

_ESCAPES = {
    **{c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]},
    # A file name that is not UTF-8 reaches Python as lone surrogates (PEP 383): print its bytes.
    **{0xDC00 + b: f"\\x{b:02x}" for b in range(0x80, 0x100)},
}


def escape(text: str) -> str:
    """``text`` safe for a terminal: control characters and undecodable bytes as ``\\xNN``.

    A directory named with an escape sequence must not drive the terminal of whoever lists it.
    """
    return text.translate(_ESCAPES)
