"""Reading a compressed copy: gzip and deflate inflated, identity as is, others unreadable."""

from __future__ import annotations

import gzip
import zlib

import pytest

from gateway.encoding import decoded, inflater, readable

BODY = b'{"usage": {"output_tokens": 6}}'


@pytest.mark.parametrize(
    ("encoding", "wire"),
    [
        (None, BODY),
        ("identity", BODY),
        (" GZIP ", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),
    ],
)
def test_readable_encodings_give_the_plain_bytes(encoding: str | None, wire: bytes) -> None:
    """Identity passes through; gzip and zlib-wrapped deflate are inflated, any case."""
    assert (True, BODY) == (readable(encoding), decoded(wire, encoding, limit=1 << 20))


def test_other_encodings_and_corrupt_bodies_give_nothing() -> None:
    """Brotli cannot be read; a body that is not what its encoding says yields None."""
    assert (False, None, None) == (
        readable("br"),
        decoded(b"...", "br", limit=1 << 20),
        decoded(b"not gzip at all", "gzip", limit=1 << 20),
    )


def test_an_inflater_reads_a_body_in_pieces_and_identity_needs_none() -> None:
    """A stream is inflated chunk by chunk by one decompressor; identity gets none."""
    wire = gzip.compress(BODY)
    inflate = inflater("gzip")
    assert inflate is not None
    pieces = b"".join(inflate.decompress(wire[i : i + 5]) for i in range(0, len(wire), 5))
    assert (BODY, None) == (pieces, inflater("identity"))
