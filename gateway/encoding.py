"""Reading a body the gateway relays compressed: gzip and deflate, on a copy, never the relay.

The gateway relays `content-encoding` untouched (no decompression on the wire), but two
readers need the plain bytes of a copy: the usage tap (`usage.py`) and the retry policy's
look at an error body (`retry.py`). Both get their decompressor here.
"""

from __future__ import annotations

import zlib

READABLE = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})
"""Encodings a copy can be read in (`br` and others cannot: such a body yields nothing)."""


def inflater(encoding: str | None) -> zlib._Decompress | None:
    """A fresh decompressor for a gzip or deflate body; None when it needs none.

    gzip or zlib-wrapped deflate is detected from the header (wbits 32 + 15). Callers first
    check `readable(encoding)`.
    """
    if normalised(encoding) in ("", "identity"):
        return None
    return zlib.decompressobj(wbits=47)


def readable(encoding: str | None) -> bool:
    """Whether a body in `encoding` can be read here."""
    return normalised(encoding) in READABLE


def normalised(encoding: str | None) -> str:
    """`content-encoding` as compared here: stripped, lower case, "" when absent."""
    return (encoding or "").strip().lower()


def decoded(body: bytes, encoding: str | None, *, limit: int) -> bytes | None:
    """A whole body's plain bytes (at most `limit` of them); None when unreadable."""
    if not readable(encoding):
        return None
    inflate = inflater(encoding)
    if inflate is None:
        return body
    try:
        return inflate.decompress(body, limit)
    except zlib.error:
        return None
