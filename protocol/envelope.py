"""Sealed messages: encryption once, key wrapping per recipient device, sender signature.

Why (docs/ARCHITECTURE.md §2 "forward secrecy per message", §5; docs/PROTOCOL.md §5):

* The body is encrypted once with a fresh 32-byte content key, XChaCha20-Poly1305-IETF
  (draft-irtf-cfrg-xchacha), associated data ``"lightbox/v1/message-body" 0x00 || H`` where
  ``H`` is the RFC 8785 canonical JSON of the :class:`~protocol.model.MessageHeader`.
* The content key is wrapped for each recipient device with a fresh ephemeral X25519 key
  (RFC 7748): ``DH(e, signed prekey) || DH(e, device X25519 key) [|| DH(e, one-time prekey)]``
  through HKDF-SHA256 (RFC 5869) with a transcript naming both parties, then AEAD. Once the
  recipient deletes the one-time prekey, the message cannot be opened again, even with every
  long-term secret of the device.
* The sender device signs (Ed25519, RFC 8032) the header, the body ciphertext and every wrapped
  key, so the relay can reject forged senders (:func:`verify_sealed`) and cannot swap keys.

:func:`open_message` checks the sender's chain and signature BEFORE decrypting anything, checks
replay through a caller-supplied :class:`SeenSet`, and raises ReplayError for a replay and one
opaque VerificationError for every other failure.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec

from protocol import _sodium, canonical
from protocol._sodium import Rng, random_bytes
from protocol.certs import (
    OneTimePrekey,
    SignedPrekey,
    VerifiedDevice,
    verify_one_time_prekey,
    verify_signed_prekey,
)
from protocol.errors import (
    DecodeError,
    ErrorCode,
    LimitExceeded,
    ReplayError,
    VerificationError,
)
from protocol.keys import DeviceKeys, PrekeyStore
from protocol.model import SUPPORTED_VERSIONS, MessageHeader, SealedMessage, WrappedKey

__all__ = [
    "CONTENT_KEY_BYTES",
    "LABEL_BODY_AD",
    "LABEL_WRAP_AD",
    "LABEL_WRAP_KDF",
    "MAX_BODY_SIZE",
    "MAX_RECIPIENT_DEVICES",
    "MAX_SEALED_SIZE",
    "MemorySeenSet",
    "RecipientBundle",
    "SeenSet",
    "body_associated_data",
    "decode_sealed",
    "derive_wrap_key",
    "encode_sealed",
    "header_bytes",
    "open_message",
    "seal_message",
    "signature_input",
    "verify_sealed",
    "wrap_associated_data",
    "wrap_kdf_info",
    "wrapped_key_for",
]

CONTENT_KEY_BYTES: Final = 32
MAX_BODY_SIZE: Final = 256 * 1024  # plaintext body (text + attachment descriptors), bytes
MAX_RECIPIENT_DEVICES: Final = 64  # wrapped keys per message
MAX_SEALED_SIZE: Final = MAX_BODY_SIZE + 64 * 1024  # encoded SealedMessage, bytes

LABEL_BODY_AD: Final = b"lightbox/v1/message-body"
LABEL_WRAP_KDF: Final = b"lightbox/v1/wrap-key"
LABEL_WRAP_AD: Final = b"lightbox/v1/wrapped-key"

_WRAPPED_BYTES = CONTENT_KEY_BYTES + _sodium.AEAD_TAG_BYTES
_MAX_ID_BYTES = 128


class SeenSet(Protocol):
    """The caller's replay memory (persistent on clients)."""

    def check_and_add(self, message_id: str) -> bool:
        """Record ``message_id``; True if it was new, False if already seen."""
        ...


class MemorySeenSet:
    """An in-memory :class:`SeenSet` (tests; clients persist theirs)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def check_and_add(self, message_id: str) -> bool:
        if message_id in self._seen:
            return False
        self._seen.add(message_id)
        return True


@dataclass(frozen=True, slots=True)
class RecipientBundle:
    """What a sender needs to encrypt to one device: its verified chain, its verified signed
    prekey and, when the relay had one left, a verified one-time prekey."""

    device: VerifiedDevice
    signed_prekey: SignedPrekey
    one_time_prekey: OneTimePrekey | None = None

    @classmethod
    def from_tokens(
        cls, device: VerifiedDevice, signed_prekey: str, one_time_prekey: str | None = None
    ) -> RecipientBundle:
        """Verify the prekey artefacts (as served by the relay) under the device's key."""
        otk = None if one_time_prekey is None else verify_one_time_prekey(one_time_prekey, device)
        return cls(
            device=device,
            signed_prekey=verify_signed_prekey(signed_prekey, device),
            one_time_prekey=otk,
        )


# --- exact byte strings ------------------------------------------------------------------------


def header_bytes(header: MessageHeader) -> bytes:
    """RFC 8785 canonical JSON of the header (every field present, nulls included)."""
    return canonical.encode_struct(header)


def body_associated_data(header: MessageHeader) -> bytes:
    """AEAD associated data of the body: ``"lightbox/v1/message-body" 0x00 || header_bytes``."""
    return LABEL_BODY_AD + b"\x00" + header_bytes(header)


def signature_input(sealed: SealedMessage) -> bytes:
    """Bytes the sender device signs::

    "lightbox/v1/sealed-message" 0x00 || SHA-256(header_bytes) || SHA-256(nonce || ciphertext)
        || SHA-256(canonical JSON of the list of wrapped keys, in order)
    """
    digest = (
        _sodium.sha256(header_bytes(sealed.header))
        + _sodium.sha256(sealed.nonce + sealed.ciphertext)
        + _sodium.sha256(canonical.encode_struct(sealed.keys))
    )
    return canonical.signing_input(canonical.LABEL_SEALED_MESSAGE, digest)


def _lp(value: str) -> bytes:
    data = value.encode("utf-8")
    if len(data) > _MAX_ID_BYTES:
        raise VerificationError("identifier too long")
    return struct.pack(">H", len(data)) + data


def wrap_kdf_info(
    *,
    message_id: str,
    sender_device_id: str,
    sender_signing_key: bytes,
    recipient_device_id: str,
    recipient_dh_key: bytes,
    signed_prekey_id: int,
    signed_prekey: bytes,
    one_time_prekey_id: int | None,
    one_time_prekey: bytes | None,
    ephemeral_public: bytes,
) -> bytes:
    """HKDF ``info`` for the key-wrapping key (docs/PROTOCOL.md §5.3). Strings are
    ``u16be(len) || utf8``; keys are raw 32 bytes; ids are u32be."""
    if one_time_prekey_id is None or one_time_prekey is None:
        otk = b"\x00" + bytes(4 + 32)
    else:
        otk = b"\x01" + struct.pack(">I", one_time_prekey_id) + one_time_prekey
    return b"".join(
        [
            LABEL_WRAP_KDF,
            b"\x00",
            _lp(message_id),
            _lp(sender_device_id),
            sender_signing_key,
            _lp(recipient_device_id),
            recipient_dh_key,
            struct.pack(">I", signed_prekey_id),
            signed_prekey,
            otk,
            ephemeral_public,
        ]
    )


def derive_wrap_key(dh_outputs: Sequence[bytes], info: bytes) -> bytes:
    """HKDF-SHA256(salt = 32 zero bytes, ikm = concatenated DH outputs, info) -> 32 bytes."""
    return _sodium.hkdf_sha256(b"".join(dh_outputs), salt=b"", info=info, length=32)


def wrap_associated_data(header: MessageHeader, device_id: str) -> bytes:
    """AD of a wrapped key: ``"lightbox/v1/wrapped-key" 0x00 || SHA-256(header_bytes) ||
    u16be(len) || recipient device id``."""
    return LABEL_WRAP_AD + b"\x00" + _sodium.sha256(header_bytes(header)) + _lp(device_id)


# --- shape checks ------------------------------------------------------------------------------


def _check_shape(sealed: SealedMessage) -> None:
    """Structural checks shared by decode and verify; DecodeError/LimitExceeded."""
    header = sealed.header
    if header.v not in SUPPORTED_VERSIONS:
        raise DecodeError(
            f"unsupported message version {header.v}", code=ErrorCode.UNSUPPORTED_VERSION
        )
    if len(sealed.nonce) != _sodium.AEAD_NONCE_BYTES:
        raise DecodeError("body nonce must be 24 bytes")
    if len(sealed.signature) != _sodium.ED25519_SIGNATURE_BYTES:
        raise DecodeError("signature must be 64 bytes")
    if header.body_size < 0 or header.body_size > MAX_BODY_SIZE:
        raise LimitExceeded("body too large", code=ErrorCode.MESSAGE_TOO_LARGE)
    if len(sealed.ciphertext) != header.body_size + _sodium.AEAD_TAG_BYTES:
        raise DecodeError("ciphertext length does not match body_size")
    if not sealed.keys or len(sealed.keys) > MAX_RECIPIENT_DEVICES:
        raise LimitExceeded("wrong number of recipient devices")
    ids = [k.device_id for k in sealed.keys]
    if ids != header.recipient_devices or len(set(ids)) != len(ids):
        raise DecodeError("wrapped keys do not match the header's recipient devices")
    for key in sealed.keys:
        if (
            len(key.ephemeral_public) != _sodium.X25519_BYTES
            or len(key.nonce) != _sodium.AEAD_NONCE_BYTES
            or len(key.wrapped) != _WRAPPED_BYTES
            or not 0 <= key.signed_prekey_id <= 0xFFFFFFFF
            or not (key.one_time_prekey_id is None or 0 <= key.one_time_prekey_id <= 0xFFFFFFFF)
        ):
            raise DecodeError("malformed wrapped key")


# --- sealing -----------------------------------------------------------------------------------


def seal_message(
    header: MessageHeader,
    body: bytes,
    *,
    sender: DeviceKeys,
    recipients: Sequence[RecipientBundle],
    rng: Rng = random_bytes,
) -> SealedMessage:
    """Encrypt ``body`` for ``recipients`` and sign as ``sender``.

    ``header.recipient_devices`` must list the recipients' device ids in order and
    ``header.sender_device_id`` must be the sender's; ``header.body_size`` is set to
    ``len(body)``. Randomness is drawn in this order: content key (32), body nonce (24), then
    per recipient ephemeral secret (32) and wrap nonce (24).
    """
    if header.sender_device_id != sender.device_id:
        raise ValueError("header.sender_device_id is not the sender device")
    if [r.device.device_id for r in recipients] != header.recipient_devices:
        raise ValueError("header.recipient_devices must list the recipients, in order")
    if len(body) > MAX_BODY_SIZE:
        raise LimitExceeded("body too large", code=ErrorCode.MESSAGE_TOO_LARGE)
    header = msgspec.structs.replace(header, body_size=len(body))
    content_key = rng(CONTENT_KEY_BYTES)
    nonce = rng(_sodium.AEAD_NONCE_BYTES)
    ciphertext = _sodium.aead_encrypt(content_key, nonce, body, body_associated_data(header))
    keys = [_wrap(header, content_key, sender=sender, recipient=r, rng=rng)[0] for r in recipients]
    unsigned = SealedMessage(
        header=header, nonce=nonce, ciphertext=ciphertext, keys=keys, signature=bytes(64)
    )
    _check_shape(unsigned)
    signature = sender.sign(signature_input(unsigned))
    return msgspec.structs.replace(unsigned, signature=signature)


def _wrap(
    header: MessageHeader,
    content_key: bytes,
    *,
    sender: DeviceKeys,
    recipient: RecipientBundle,
    rng: Rng,
) -> tuple[WrappedKey, dict[str, bytes]]:
    """Wrap the content key for one device; also returns the intermediates (test vectors)."""
    device = recipient.device
    spk, otk = recipient.signed_prekey, recipient.one_time_prekey
    if spk.device_id != device.device_id or (otk is not None and otk.device_id != device.device_id):
        raise ValueError("prekey bundle mixes devices")
    e_secret = rng(_sodium.X25519_BYTES)
    e_public = _sodium.x25519_public_key(e_secret)
    dhs = [
        _sodium.x25519_shared(e_secret, spk.public),
        _sodium.x25519_shared(e_secret, device.dh_key),
    ]
    if otk is not None:
        dhs.append(_sodium.x25519_shared(e_secret, otk.public))
    info = wrap_kdf_info(
        message_id=header.message_id,
        sender_device_id=sender.device_id,
        sender_signing_key=sender.signing.public,
        recipient_device_id=device.device_id,
        recipient_dh_key=device.dh_key,
        signed_prekey_id=spk.prekey_id,
        signed_prekey=spk.public,
        one_time_prekey_id=None if otk is None else otk.prekey_id,
        one_time_prekey=None if otk is None else otk.public,
        ephemeral_public=e_public,
    )
    kek = derive_wrap_key(dhs, info)
    wrap_nonce = rng(_sodium.AEAD_NONCE_BYTES)
    ad = wrap_associated_data(header, device.device_id)
    wrapped = _sodium.aead_encrypt(kek, wrap_nonce, content_key, ad)
    trace = {
        "ephemeral_secret": e_secret,
        "ephemeral_public": e_public,
        "dh_signed_prekey": dhs[0],
        "dh_device": dhs[1],
        "dh_one_time_prekey": dhs[2] if otk is not None else b"",
        "kdf_info": info,
        "wrap_key": kek,
        "wrap_nonce": wrap_nonce,
        "wrap_ad": ad,
    }
    key = WrappedKey(
        device_id=device.device_id,
        signed_prekey_id=spk.prekey_id,
        one_time_prekey_id=None if otk is None else otk.prekey_id,
        ephemeral_public=e_public,
        nonce=wrap_nonce,
        wrapped=wrapped,
    )
    return key, trace


# --- verifying and opening ---------------------------------------------------------------------


def verify_sealed(sealed: SealedMessage, sender_signing_key: bytes) -> None:
    """Check shape and the sender device's signature (the relay calls this on every send).

    Raises VerificationError; never decrypts anything.
    """
    try:
        _check_shape(sealed)
        message = signature_input(sealed)
    except DecodeError as exc:
        raise VerificationError(f"malformed sealed message: {exc}") from exc
    if not _sodium.ed25519_verify(sender_signing_key, message, sealed.signature):
        raise VerificationError("bad sender signature on sealed message")


def wrapped_key_for(sealed: SealedMessage, device_id: str) -> WrappedKey | None:
    """The key wrapped for ``device_id`` (after opening, delete its ``one_time_prekey_id``)."""
    for key in sealed.keys:
        if key.device_id == device_id:
            return key
    return None


def open_message(
    sealed: SealedMessage,
    *,
    me: DeviceKeys,
    prekeys: PrekeyStore,
    sender: VerifiedDevice,
    seen: SeenSet,
) -> bytes:
    """Verify and decrypt a sealed message addressed to ``me``.

    Order: header's sender == the verified chain (``sender`` from verify_chain), signature,
    ``me`` is a recipient, replay check (``seen``), then decryption. ReplayError on a replay;
    VerificationError on anything else. After success the caller must delete the one-time
    prekey named by ``wrapped_key_for(sealed, me.device_id)`` (forward secrecy).
    """
    header = sealed.header
    if header.sender_device_id != sender.device_id or header.sender_user_id != sender.user_id:
        raise VerificationError(
            "header names another sender than the verified chain", code=ErrorCode.SENDER_MISMATCH
        )
    verify_sealed(sealed, sender.signing_key)
    key = wrapped_key_for(sealed, me.device_id)
    if key is None:
        raise VerificationError("this device is not a recipient")
    if not seen.check_and_add(header.message_id):
        raise ReplayError(f"message {header.message_id} already seen")
    spk = prekeys.signed_prekey(key.signed_prekey_id)
    if spk is None:
        raise VerificationError("unknown signed prekey")
    dhs = [spk.dh(key.ephemeral_public), me.dh.dh(key.ephemeral_public)]
    otk_public: bytes | None = None
    if key.one_time_prekey_id is not None:
        otk = prekeys.one_time_prekey(key.one_time_prekey_id)
        if otk is None:
            raise VerificationError("one-time prekey unknown or already used")
        dhs.append(otk.dh(key.ephemeral_public))
        otk_public = otk.public
    info = wrap_kdf_info(
        message_id=header.message_id,
        sender_device_id=sender.device_id,
        sender_signing_key=sender.signing_key,
        recipient_device_id=me.device_id,
        recipient_dh_key=me.dh.public,
        signed_prekey_id=key.signed_prekey_id,
        signed_prekey=spk.public,
        one_time_prekey_id=key.one_time_prekey_id,
        one_time_prekey=otk_public,
        ephemeral_public=key.ephemeral_public,
    )
    kek = derive_wrap_key(dhs, info)
    content_key = _sodium.aead_decrypt(
        kek, key.nonce, key.wrapped, wrap_associated_data(header, me.device_id)
    )
    return _sodium.aead_decrypt(
        content_key, sealed.nonce, sealed.ciphertext, body_associated_data(header)
    )


# --- MessagePack codec -------------------------------------------------------------------------

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SealedMessage)


def encode_sealed(sealed: SealedMessage) -> bytes:
    """MessagePack encoding (maps keyed by field name, binary as ``bin``)."""
    return _encoder.encode(sealed)


def decode_sealed(data: bytes, *, max_size: int = MAX_SEALED_SIZE) -> SealedMessage:
    """Strict MessagePack decoding with size and shape limits (DecodeError/LimitExceeded).

    The signature is NOT checked here: call :func:`verify_sealed` or :func:`open_message`.
    """
    if len(data) > max_size:
        raise LimitExceeded("sealed message too large", code=ErrorCode.MESSAGE_TOO_LARGE)
    try:
        sealed = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError) as exc:
        # ValueError: msgspec raises UnicodeDecodeError for invalid UTF-8 in a str
        raise DecodeError(f"malformed sealed message: {exc}") from exc
    _check_shape(sealed)
    return sealed
