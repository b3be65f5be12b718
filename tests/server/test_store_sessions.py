"""server/store/sessions.py: the refresh successor sealed under a key only the used token
yields (protocol.local), including rows sealed before protocol.local existed."""

from __future__ import annotations

import hashlib
import os

import pytest

from protocol import _sodium
from server.store import sessions

TOKEN = "a-refresh-token-of-43-characters-abcdefghij"
PAIR = b'{"access_token":"a.b.c","refresh_token":"next"}'


def test_a_successor_opens_with_the_token_it_was_sealed_for() -> None:
    sealed = sessions.seal_successor(TOKEN, PAIR)
    assert PAIR not in sealed
    assert sessions.open_successor(TOKEN, sealed) == PAIR


@pytest.mark.parametrize("cut", [0, 10, 39])
def test_a_successor_does_not_open_with_another_token_or_when_damaged(cut: int) -> None:
    sealed = sessions.seal_successor(TOKEN, PAIR)
    assert sessions.open_successor(TOKEN + "x", sealed) is None
    assert sessions.open_successor(TOKEN, sealed[:cut]) is None
    assert sessions.open_successor(TOKEN, sealed[:-1] + bytes([sealed[-1] ^ 1])) is None


def test_a_successor_sealed_by_the_earlier_code_still_opens() -> None:
    """Rows written before protocol.local: nonce || XChaCha20-Poly1305 under
    HKDF-SHA256(token, info="lightbox refresh successor v1"), the token's hash as associated
    data. A relay upgraded within the reuse grace must still hand the pair out."""
    key = _sodium.hkdf_sha256(TOKEN.encode(), salt=b"", info=b"lightbox refresh successor v1")
    nonce = os.urandom(24)
    ad = hashlib.sha256(TOKEN.encode()).digest()
    earlier = nonce + _sodium.aead_encrypt(key, nonce, PAIR, ad)
    assert sessions.open_successor(TOKEN, earlier) == PAIR
