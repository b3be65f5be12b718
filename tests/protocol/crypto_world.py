"""Shared fixtures for the crypto tests: the deterministic organisation, users and devices of
the test vectors, plus small helpers to re-issue variations of them."""

from __future__ import annotations

import functools

import msgspec

from protocol import certs
from protocol.vectors import ORG_ID, T0, DeterministicRng, VectorContext, build_context

__all__ = ["ORG_ID", "T0", "DeterministicRng", "flip_bit", "flip_char_bit", "reissue_user", "world"]


@functools.cache
def world() -> VectorContext:
    """Org + Alice (mobile, sender) + Bob (desktop) + record gateway, all deterministic."""
    return build_context()


def flip_bit(data: bytes, bit: int) -> bytes:
    """``data`` with bit number ``bit`` (mod its length in bits) inverted."""
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def flip_char_bit(token: str, bit: int) -> str:
    """A compact token with one bit of one character flipped (may leave ASCII)."""
    return flip_bit(token.encode("latin-1"), bit).decode("latin-1")


def reissue_user(
    **changes: object,
) -> tuple[str, certs.UserCertificate]:
    """Alice's user certificate with ``changes``, signed by the org key."""
    body = msgspec.structs.replace(world().alice.user, **changes)
    return certs.issue_user_certificate(body, world().org), body
