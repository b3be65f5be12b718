"""protocol/local.py: sealing records at rest (the key store, the vault, the relay's sealed
refresh successors). Round trips, tamper detection, and the bytes the stores already hold on
disk: a record sealed before this module existed still opens."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import _sodium
from protocol.errors import VerificationError
from protocol.keys import SecretBytes
from protocol.local import (
    LOCAL_KEY_BYTES,
    LOCAL_OVERHEAD,
    derive_local_key,
    local_tag,
    new_local_key,
    open_local,
    record_label,
    seal_local,
)
from tests.protocol.crypto_world import flip_bit

FAST = settings(max_examples=80, deadline=None)
keys = st.binary(min_size=LOCAL_KEY_BYTES, max_size=LOCAL_KEY_BYTES)
plaintexts = st.binary(max_size=2048)
labels = st.binary(max_size=200)


@FAST
@given(key=keys, plaintext=plaintexts, label=labels)
def test_a_sealed_record_opens_to_its_plaintext(key: bytes, plaintext: bytes,
                                                label: bytes) -> None:
    sealed = seal_local(SecretBytes(key), plaintext, label=label)
    assert len(sealed) == len(plaintext) + LOCAL_OVERHEAD
    assert open_local(key, sealed, label=label) == plaintext


@FAST
@given(key=keys, plaintext=plaintexts, label=labels, data=st.data())
def test_any_flipped_bit_of_a_sealed_record_is_detected(key: bytes, plaintext: bytes,
                                                        label: bytes, data: st.DataObject) -> None:
    sealed = seal_local(key, plaintext, label=label)
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    with pytest.raises(VerificationError):
        open_local(key, flip_bit(sealed, bit), label=label)


@FAST
@given(key=keys, plaintext=plaintexts, label=labels, other=labels)
def test_a_record_does_not_open_under_another_label(key: bytes, plaintext: bytes, label: bytes,
                                                    other: bytes) -> None:
    """The label binds a record to its place: moved to another row or file, it fails."""
    if other == label:
        other += b"\x00"
    with pytest.raises(VerificationError):
        open_local(key, seal_local(key, plaintext, label=label), label=other)


@FAST
@given(key=keys, other=keys, plaintext=plaintexts, label=labels)
def test_a_record_does_not_open_under_another_key(key: bytes, other: bytes, plaintext: bytes,
                                                  label: bytes) -> None:
    if other == key:
        other = bytes([key[0] ^ 1]) + key[1:]
    with pytest.raises(VerificationError):
        open_local(other, seal_local(key, plaintext, label=label), label=label)


@FAST
@given(key=keys, plaintext=plaintexts, label=labels, data=st.data())
def test_a_truncated_record_is_refused_with_the_one_error(key: bytes, plaintext: bytes,
                                                          label: bytes, data: st.DataObject
                                                          ) -> None:
    sealed = seal_local(key, plaintext, label=label)
    cut = data.draw(st.integers(0, len(sealed) - 1))
    with pytest.raises(VerificationError):
        open_local(key, sealed[:cut], label=label)


@FAST
@given(key=keys, plaintext=plaintexts, label=labels,
       nonce=st.binary(min_size=24, max_size=24))
def test_the_format_is_the_one_on_disk_nonce_then_xchacha20_poly1305(
        key: bytes, plaintext: bytes, label: bytes, nonce: bytes) -> None:
    """The vault's rows and the relay's sealed successors were written as ``nonce ||
    XChaCha20-Poly1305(key, nonce, plaintext, ad=label)`` before this module: same bytes."""
    before = nonce + _sodium.aead_encrypt(key, nonce, plaintext, label)
    assert seal_local(key, plaintext, label=label, rng=lambda n: nonce) == before
    assert open_local(key, before, label=label) == plaintext


def test_two_seals_of_one_record_differ() -> None:
    key = new_local_key()
    assert seal_local(key, b"same", label=b"l") != seal_local(key, b"same", label=b"l")


def test_record_labels_are_the_vaults_and_refuse_a_nul_in_a_part() -> None:
    assert record_label(b"lightbox-vault/1", "messages", "m-1") == (
        b"lightbox-vault/1\x00messages\x00m-1")
    with pytest.raises(ValueError, match="NUL"):
        record_label(b"lightbox-vault/1", "messages", "m\x001")


@FAST
@given(key=keys, parts=st.lists(st.text(max_size=20), max_size=4))
def test_local_tags_are_hmac_sha256_of_length_prefixed_parts(key: bytes,
                                                             parts: list[str]) -> None:
    encoded = b"".join(len(p.encode()).to_bytes(4, "big") + p.encode() for p in parts)
    assert local_tag(key, *parts) == hmac.new(key, encoded, hashlib.sha256).digest()


def test_local_tags_tell_apart_the_same_text_split_differently() -> None:
    key = new_local_key()
    assert local_tag(key, "ab", "c") != local_tag(key, "a", "bc")


def test_derived_keys_are_hkdf_sha256_and_differ_by_label() -> None:
    master, salt = bytes(range(32)), b"vault-id-16bytes"
    derived = derive_local_key(master, salt=salt, label=b"lightbox/vault/v1/messages")
    assert derived.reveal() == _sodium.hkdf_sha256(master, salt=salt,
                                                   info=b"lightbox/vault/v1/messages")
    assert derived != derive_local_key(master, salt=salt, label=b"lightbox/vault/v1/outbox")
    assert len(new_local_key()) == LOCAL_KEY_BYTES
