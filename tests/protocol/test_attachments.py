"""protocol.attachments: chunked secretstream encryption and its failure modes."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.attachments import (
    CHUNK_SIZE,
    CIPHERTEXT_CHUNK_SIZE,
    AttachmentDecryptor,
    AttachmentDescriptor,
    AttachmentEncryptor,
    ciphertext_size,
    decrypt_attachment,
    encrypt_attachment,
)
from protocol.errors import LimitExceeded, VerificationError
from tests.protocol.crypto_world import DeterministicRng, flip_bit

FAST = settings(max_examples=50, deadline=None)
HEADER = 24
DATA = bytes(i % 251 for i in range(3 * CHUNK_SIZE + 123))  # 4 chunks


def _chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    body = blob[HEADER:]
    return blob[:HEADER], [
        body[i : i + CIPHERTEXT_CHUNK_SIZE] for i in range(0, len(body), CIPHERTEXT_CHUNK_SIZE)
    ]


@pytest.fixture(scope="module")
def encrypted() -> tuple[bytes, bytes]:
    enc = encrypt_attachment(DATA, rng=DeterministicRng(b"attach"))
    return enc.key, enc.ciphertext


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 3 * CHUNK_SIZE + 5]
)
def test_round_trip_has_exactly_the_declared_ciphertext_size(size: int) -> None:
    data = bytes(i % 253 for i in range(size))
    enc = encrypt_attachment(data)
    assert len(enc.ciphertext) == ciphertext_size(size)
    assert (
        decrypt_attachment(enc.ciphertext, enc.key, expected_sha256=enc.sha256, expected_size=size)
        == data
    )


def test_ciphertext_size_formula() -> None:
    assert ciphertext_size(0) == 24 + 17
    assert ciphertext_size(CHUNK_SIZE) == 24 + CHUNK_SIZE + 17
    assert ciphertext_size(CHUNK_SIZE + 1) == 24 + CHUNK_SIZE + 1 + 2 * 17


def test_encryption_is_reproducible_from_the_injected_rng() -> None:
    a = encrypt_attachment(b"photo", rng=DeterministicRng(b"r"))
    b = encrypt_attachment(b"photo", rng=DeterministicRng(b"r"))
    assert a.ciphertext == b.ciphertext and a.key == b.key


@FAST
@given(
    st.lists(st.integers(0, len(DATA)), max_size=6), st.lists(st.integers(1, 70_000), max_size=8)
)
def test_incremental_streams_in_any_split_give_the_same_bytes(
    cuts: list[int], ct_steps: list[int]
) -> None:
    key = bytes(32)
    enc = AttachmentEncryptor(key, rng=DeterministicRng(b"split"))
    out = [enc.header]
    bounds = [0, *sorted(cuts), len(DATA)]
    for lo, hi in itertools.pairwise(bounds):
        out.append(enc.feed(DATA[lo:hi]))
    out.append(enc.finish())
    blob = b"".join(out)
    assert blob == AttachmentEncryptor(key, rng=DeterministicRng(b"split")).header + b"".join(
        _chunks(blob)[1]
    )
    dec = AttachmentDecryptor(key)
    plain, pos = [], 0
    for step in ct_steps:
        plain.append(dec.feed(blob[pos : pos + step]))
        pos += step
    plain.append(dec.feed(blob[pos:]))
    plain.append(dec.finish())
    assert b"".join(plain) == DATA
    assert dec.sha256 == enc.sha256 and dec.size == len(DATA)


def test_dropping_the_final_chunk_is_detected_as_truncation(encrypted: tuple[bytes, bytes]) -> None:
    key, blob = encrypted
    header, chunks = _chunks(blob)
    with pytest.raises(VerificationError):
        decrypt_attachment(header + b"".join(chunks[:-1]), key)


@pytest.mark.parametrize("cut", [1, 17, 100, CIPHERTEXT_CHUNK_SIZE + 5])
def test_truncating_the_stream_anywhere_is_detected(
    encrypted: tuple[bytes, bytes], cut: int
) -> None:
    key, blob = encrypted
    with pytest.raises(VerificationError):
        decrypt_attachment(blob[:-cut], key)


def test_header_only_stream_is_detected_as_truncation(encrypted: tuple[bytes, bytes]) -> None:
    key, blob = encrypted
    with pytest.raises(VerificationError):
        decrypt_attachment(blob[:HEADER], key)


def test_reordered_chunks_are_detected(encrypted: tuple[bytes, bytes]) -> None:
    key, blob = encrypted
    header, c = _chunks(blob)
    with pytest.raises(VerificationError):
        decrypt_attachment(header + c[1] + c[0] + b"".join(c[2:]), key)


def test_duplicated_chunk_is_detected(encrypted: tuple[bytes, bytes]) -> None:
    key, blob = encrypted
    header, c = _chunks(blob)
    with pytest.raises(VerificationError):
        decrypt_attachment(header + c[0] + c[0] + b"".join(c[1:]), key)


def test_chunk_spliced_from_another_stream_with_the_same_key_is_detected(
    encrypted: tuple[bytes, bytes],
) -> None:
    key, blob = encrypted
    other = AttachmentEncryptor(key, rng=DeterministicRng(b"other"))
    other_blob = other.header + other.feed(DATA) + other.finish()
    header, c = _chunks(blob)
    _, oc = _chunks(other_blob)
    with pytest.raises(VerificationError):
        decrypt_attachment(header + c[0] + oc[1] + b"".join(c[2:]), key)


def test_trailing_data_after_the_final_chunk_is_rejected(encrypted: tuple[bytes, bytes]) -> None:
    key, blob = encrypted
    with pytest.raises(VerificationError):
        decrypt_attachment(blob + b"\x00", key)
    dec = AttachmentDecryptor(key)
    with pytest.raises(VerificationError):  # noqa: PT012 - either step may detect it
        dec.feed(blob)
        dec.feed(b"x")
        dec.finish()


def test_data_after_a_full_size_final_chunk_is_rejected_as_soon_as_it_arrives() -> None:
    enc = encrypt_attachment(bytes(CHUNK_SIZE), rng=DeterministicRng(b"full"))
    dec = AttachmentDecryptor(enc.key)
    assert dec.feed(enc.ciphertext) == bytes(CHUNK_SIZE)  # final chunk already authenticated
    with pytest.raises(VerificationError):
        dec.feed(b"x")


def test_wrong_key_is_rejected(encrypted: tuple[bytes, bytes]) -> None:
    _, blob = encrypted
    with pytest.raises(VerificationError):
        decrypt_attachment(blob, bytes(32))


def test_descriptor_hash_or_size_mismatch_is_rejected(encrypted: tuple[bytes, bytes]) -> None:
    key, blob = encrypted
    with pytest.raises(VerificationError):
        decrypt_attachment(blob, key, expected_sha256=bytes(32))
    with pytest.raises(VerificationError):
        decrypt_attachment(blob, key, expected_size=len(DATA) - 1)


def test_plaintext_over_the_size_limit_is_refused(encrypted: tuple[bytes, bytes]) -> None:
    key, blob = encrypted
    with pytest.raises(LimitExceeded):
        decrypt_attachment(blob, key, max_size=CHUNK_SIZE)


def test_decryptor_refuses_further_use_after_a_failure(encrypted: tuple[bytes, bytes]) -> None:
    key, blob = encrypted
    dec = AttachmentDecryptor(key)
    with pytest.raises(VerificationError):
        dec.feed(flip_bit(blob, 8 * HEADER + 3))
    with pytest.raises(VerificationError):
        dec.finish()


@FAST
@given(st.integers(min_value=0))
def test_any_single_bit_flip_of_the_stream_is_rejected(bit: int) -> None:
    enc = encrypt_attachment(b"x" * (CHUNK_SIZE + 10), rng=DeterministicRng(b"flip"))
    with pytest.raises(VerificationError):
        decrypt_attachment(flip_bit(enc.ciphertext, bit), enc.key)


def test_descriptor_round_trips_and_never_prints_its_key() -> None:
    enc = encrypt_attachment(b"jpeg bytes", rng=DeterministicRng(b"desc"))
    desc = enc.descriptor("1b4e28ba-2fa1-41d2-883f-0016d3cca427", "image/jpeg", width=4, height=3)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(desc), type=AttachmentDescriptor) == desc
    assert enc.key.hex() not in repr(desc) and repr(enc.key) not in repr(desc)
    assert repr(enc.key) not in repr(enc)
    assert desc.sha256 == enc.sha256 and desc.size == len(b"jpeg bytes")
