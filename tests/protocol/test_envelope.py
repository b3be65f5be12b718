"""protocol.envelope: sealing to several devices, sender signatures, replay, forward secrecy."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import _sodium, certs, envelope, keys
from protocol.envelope import (
    MemorySeenSet,
    RecipientBundle,
    decode_sealed,
    encode_sealed,
    open_message,
    seal_message,
    verify_sealed,
)
from protocol.errors import (
    DecodeError,
    ErrorCode,
    LimitExceeded,
    ProtocolError,
    ReplayError,
    VerificationError,
)
from protocol.model import MessageHeader, Priority, Purpose, SealedMessage
from protocol.vectors import Party
from tests.protocol.crypto_world import T0, DeterministicRng, flip_bit, world

FAST = settings(max_examples=80, deadline=None)
BODY = b"Is this a melanoma? Photo attached. Patient consented."


def _header(recipients: list[Party], **changes: object) -> MessageHeader:
    a = world().alice
    header = MessageHeader(
        v=1,
        message_id="6f1c1a52-6c0e-4a53-9d84-54c6a0c0b5e1",
        thread_id="0b0e3a5a-4f0e-4a3c-8f43-2f3a1d7d9c11",
        sender_user_id=a.user.user_id,
        sender_device_id=a.device_keys.device_id,
        sent_at=T0,
        purpose=Purpose.DIRECT_CARE,
        priority=Priority.URGENT,
        consent_id=None,
        attachment_ids=[],
        recipient_devices=[p.device_keys.device_id for p in recipients],
    )
    return msgspec.structs.replace(header, **changes)


def _bundle(p: Party, *, one_time: bool) -> RecipientBundle:
    return RecipientBundle.from_tokens(
        p.verified(), p.signed_prekey_token, p.one_time_prekey_tokens[0] if one_time else None
    )


def _store(p: Party) -> keys.MemoryPrekeyStore:
    return keys.MemoryPrekeyStore([p.signed_prekey], list(p.one_time_prekeys))


def _sealed(seed: bytes = b"seal") -> SealedMessage:
    """Alice -> Bob (with a one-time prekey) and the gateway (without one)."""
    w = world()
    return seal_message(
        _header([w.bob, w.gateway]),
        BODY,
        sender=w.alice.device_keys,
        recipients=[_bundle(w.bob, one_time=True), _bundle(w.gateway, one_time=False)],
        rng=DeterministicRng(seed),
    )


def _open(sealed: SealedMessage, me: Party, store: keys.MemoryPrekeyStore | None = None) -> bytes:
    return open_message(
        sealed,
        me=me.device_keys,
        prekeys=store or _store(me),
        sender=world().alice.verified(),
        seen=MemorySeenSet(),
    )


def test_message_sealed_to_two_devices_opens_on_each() -> None:
    sealed = _sealed()
    assert _open(sealed, world().bob) == BODY
    assert _open(sealed, world().gateway) == BODY
    assert sealed.keys[0].one_time_prekey_id == world().bob.one_time_prekeys[0].prekey_id
    assert sealed.keys[1].one_time_prekey_id is None
    assert sealed.header.body_size == len(BODY)


def test_ciphertext_does_not_contain_the_plaintext() -> None:
    sealed = _sealed()
    assert BODY not in encode_sealed(sealed)
    assert b"melanoma" not in encode_sealed(sealed)


def test_each_recipient_gets_a_fresh_ephemeral_key() -> None:
    sealed = _sealed()
    assert sealed.keys[0].ephemeral_public != sealed.keys[1].ephemeral_public


def test_relay_accepts_the_real_sender_and_rejects_any_other_signing_key() -> None:
    sealed = _sealed()
    verify_sealed(sealed, world().alice.device_keys.signing.public)
    with pytest.raises(VerificationError):
        verify_sealed(sealed, world().bob.device_keys.signing.public)


def test_device_that_is_not_a_recipient_cannot_open() -> None:
    w = world()
    sealed = seal_message(
        _header([w.gateway]),
        BODY,
        sender=w.alice.device_keys,
        recipients=[_bundle(w.gateway, one_time=False)],
        rng=DeterministicRng(b"x"),
    )
    with pytest.raises(VerificationError):
        _open(sealed, w.bob)


def test_recipient_cannot_open_the_key_wrapped_for_another_device() -> None:
    # Bob relabels the gateway's wrapped key as his own: the AD and KDF bind the device id.
    w = world()
    sealed = _sealed()
    forged = msgspec.structs.replace(sealed.keys[1], device_id=w.bob.device_keys.device_id)
    tampered = msgspec.structs.replace(sealed, keys=[forged, sealed.keys[0]])
    with pytest.raises(VerificationError):
        _open(tampered, w.bob)


def test_second_open_of_the_same_message_raises_replay_error() -> None:
    sealed = _sealed()
    seen = MemorySeenSet()
    args = {
        "me": world().bob.device_keys,
        "prekeys": _store(world().bob),
        "sender": world().alice.verified(),
        "seen": seen,
    }
    assert open_message(sealed, **args) == BODY  # type: ignore[arg-type]
    with pytest.raises(ReplayError):
        open_message(sealed, **args)  # type: ignore[arg-type]


def test_forged_message_is_rejected_before_touching_the_seen_set() -> None:
    sealed = _sealed()
    forged = msgspec.structs.replace(sealed, signature=bytes(64))
    seen = MemorySeenSet()
    with pytest.raises(VerificationError):
        open_message(
            forged,
            me=world().bob.device_keys,
            prekeys=_store(world().bob),
            sender=world().alice.verified(),
            seen=seen,
        )
    assert seen.check_and_add(sealed.header.message_id)  # still unseen


def test_header_naming_another_sender_than_the_chain_is_rejected_as_sender_mismatch() -> None:
    sealed = _sealed()
    with pytest.raises(VerificationError) as info:
        open_message(
            sealed,
            me=world().bob.device_keys,
            prekeys=_store(world().bob),
            sender=world().gateway.verified(),
            seen=MemorySeenSet(),
        )
    assert info.value.code is ErrorCode.SENDER_MISMATCH


def test_message_signed_by_an_impostor_claiming_the_sender_is_rejected() -> None:
    w = world()
    impostor = keys.DeviceKeys(
        device_id=w.alice.device_keys.device_id,
        signing=keys.Ed25519KeyPair.generate(DeterministicRng(b"impostor")),
        dh=w.alice.device_keys.dh,
    )
    sealed = seal_message(
        _header([w.bob]),
        BODY,
        sender=impostor,
        recipients=[_bundle(w.bob, one_time=False)],
        rng=DeterministicRng(b"i"),
    )
    with pytest.raises(VerificationError):
        _open(sealed, w.bob)


def test_tampered_header_is_rejected() -> None:
    sealed = _sealed()
    for change in (
        {"purpose": Purpose.RESEARCH},
        {"priority": Priority.ROUTINE},
        {"consent_id": "x"},
        {"sent_at": T0 + 1},
        {"external": True},
    ):
        tampered = msgspec.structs.replace(
            sealed, header=msgspec.structs.replace(sealed.header, **change)
        )
        with pytest.raises(VerificationError):
            _open(tampered, world().bob)


def test_forward_secrecy_deleted_one_time_prekey_leaves_message_unopenable() -> None:
    w = world()
    sealed = _sealed()
    store = _store(w.bob)
    assert _open(sealed, w.bob, store) == BODY
    used = envelope.wrapped_key_for(sealed, w.bob.device_keys.device_id)
    assert used is not None and used.one_time_prekey_id is not None
    store.delete_one_time(used.one_time_prekey_id)
    # The attacker now holds every remaining secret of the device (identity DH key, signed
    # prekey, other one-time prekeys) and the captured message: it cannot be opened.
    with pytest.raises(VerificationError):
        _open(sealed, w.bob, store)
    # Not even by deriving the wrap key from the two DH outputs it can still compute.
    e = used.ephemeral_public
    info = envelope.wrap_kdf_info(
        message_id=sealed.header.message_id,
        sender_device_id=w.alice.device_keys.device_id,
        sender_signing_key=w.alice.device_keys.signing.public,
        recipient_device_id=w.bob.device_keys.device_id,
        recipient_dh_key=w.bob.device_keys.dh.public,
        signed_prekey_id=used.signed_prekey_id,
        signed_prekey=w.bob.signed_prekey.public,
        one_time_prekey_id=used.one_time_prekey_id,
        one_time_prekey=w.bob.one_time_prekeys[0].public,
        ephemeral_public=e,
    )
    guess = envelope.derive_wrap_key(
        [w.bob.signed_prekey.keypair.dh(e), w.bob.device_keys.dh.dh(e)], info
    )
    ad = envelope.wrap_associated_data(sealed.header, w.bob.device_keys.device_id)
    with pytest.raises(VerificationError):
        _sodium.aead_decrypt(guess, used.nonce, used.wrapped, ad)


def test_unknown_signed_prekey_makes_the_message_unopenable() -> None:
    store = keys.MemoryPrekeyStore([], list(world().gateway.one_time_prekeys))
    with pytest.raises(VerificationError):
        _open(_sealed(), world().gateway, store)


def test_seal_refuses_a_header_whose_recipients_differ_from_the_bundles() -> None:
    w = world()
    with pytest.raises(ValueError):
        seal_message(
            _header([w.gateway]),
            BODY,
            sender=w.alice.device_keys,
            recipients=[_bundle(w.bob, one_time=False)],
        )


def test_seal_refuses_a_header_naming_another_sender_device() -> None:
    w = world()
    with pytest.raises(ValueError):
        seal_message(
            _header([w.bob]),
            BODY,
            sender=w.bob.device_keys,
            recipients=[_bundle(w.bob, one_time=False)],
        )


def test_recipient_bundle_refuses_a_one_time_prekey_of_another_device() -> None:
    w = world()
    with pytest.raises(VerificationError):
        RecipientBundle.from_tokens(
            w.bob.verified(), w.bob.signed_prekey_token, w.alice.one_time_prekey_tokens[0]
        )


def test_msgpack_round_trip_preserves_the_sealed_message() -> None:
    sealed = _sealed()
    assert decode_sealed(encode_sealed(sealed)) == sealed


def test_decode_rejects_oversize_input_with_message_too_large() -> None:
    with pytest.raises(LimitExceeded) as info:
        decode_sealed(bytes(envelope.MAX_SEALED_SIZE + 1))
    assert info.value.code is ErrorCode.MESSAGE_TOO_LARGE


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xc1", b"\x81\xa1x\x01"])
def test_decode_rejects_malformed_msgpack_with_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_sealed(data)


def test_decode_rejects_keys_that_do_not_match_the_header_recipients() -> None:
    sealed = _sealed()
    reordered = msgspec.structs.replace(sealed, keys=list(reversed(sealed.keys)))
    with pytest.raises(DecodeError):
        decode_sealed(encode_sealed(reordered))


def test_decode_rejects_too_many_recipient_devices() -> None:
    sealed = _sealed()
    many = [
        msgspec.structs.replace(sealed.keys[0], device_id=str(i))
        for i in range(envelope.MAX_RECIPIENT_DEVICES + 1)
    ]
    huge = msgspec.structs.replace(
        sealed,
        keys=many,
        header=msgspec.structs.replace(
            sealed.header, recipient_devices=[k.device_id for k in many]
        ),
    )
    with pytest.raises(LimitExceeded):
        decode_sealed(encode_sealed(huge))


@FAST
@given(st.integers(min_value=0))
def test_any_single_bit_flip_of_the_encoded_message_is_rejected_by_the_recipient(bit: int) -> None:
    original = _sealed()
    data = flip_bit(encode_sealed(original), bit)
    try:
        tampered = decode_sealed(data)
    except ProtocolError:
        return  # rejected at the edge
    assert tampered != original  # MessagePack has one encoding per value here
    with pytest.raises(VerificationError):
        verify_sealed(tampered, world().alice.device_keys.signing.public)
    with pytest.raises(VerificationError):
        _open(tampered, world().bob)


@FAST
@given(st.sampled_from(["nonce", "ciphertext", "signature"]), st.integers(min_value=0))
def test_any_single_bit_flip_of_a_sealed_field_is_rejected(field: str, bit: int) -> None:
    sealed = _sealed()
    tampered = msgspec.structs.replace(sealed, **{field: flip_bit(getattr(sealed, field), bit)})
    with pytest.raises(VerificationError):
        _open(tampered, world().bob)


@FAST
@given(st.sampled_from(["ephemeral_public", "nonce", "wrapped"]), st.integers(min_value=0))
def test_any_single_bit_flip_of_a_wrapped_key_is_rejected(field: str, bit: int) -> None:
    sealed = _sealed()
    key = sealed.keys[0]
    bad = msgspec.structs.replace(key, **{field: flip_bit(getattr(key, field), bit)})
    tampered = msgspec.structs.replace(sealed, keys=[bad, sealed.keys[1]])
    with pytest.raises(VerificationError):
        _open(tampered, world().bob)


def test_sender_chain_is_required_to_be_verified_first() -> None:
    # open_message takes a VerifiedDevice, which only verify_chain produces from tokens.
    a = world().alice
    verified = certs.verify_chain(
        a.user_token, a.device_token, trusted_orgs=world().trusted_orgs, at=T0, revocations=None
    )
    assert (
        open_message(
            _sealed(),
            me=world().bob.device_keys,
            prekeys=_store(world().bob),
            sender=verified,
            seen=MemorySeenSet(),
        )
        == BODY
    )
