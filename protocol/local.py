"""Sealing records kept at rest: the device's key store and vault, and the relay's own sealed
rows. One function pair, :func:`seal_local` and :func:`open_local`, so every record Lightbox
keeps encrypted is sealed the same way (docs/SECURITY.md "Records sealed at rest").

Format of a sealed record (XChaCha20-Poly1305-IETF, draft-irtf-cfrg-xchacha §2, through
protocol/_sodium.py)::

    nonce[24] || ciphertext || tag[16]        associated data = label

The nonce is random (192 bits: no counter to keep, no risk of reuse across devices or
restarts). The **label** is the record's place, bound as associated data so that a record
cannot be moved to another place (another table, row, file or token) and still open. Labels
follow one scheme, :func:`record_label`: ``format || 0x00 || part || 0x00 || part ...``, the
format a versioned name (``lightbox-vault/1``) and the parts the record's kind and id. A file
whose header precedes the sealed record passes that header (every byte before the record) as
the label instead, so the header cannot be altered either.

Keys are 32 random bytes (:func:`new_local_key`) or derived with :func:`derive_local_key`,
HKDF-SHA256 (RFC 5869) with a domain label as ``info``. :func:`local_tag` is a keyed
HMAC-SHA-256 (RFC 2104) of length-prefixed parts: a lookup key that shows equality and nothing
else (the vault's thread and dedupe columns).

Every failure to open, whatever the cause (wrong key, wrong label, a flipped bit, a truncated
record), raises the one :class:`protocol.errors.VerificationError`.
"""

from __future__ import annotations

from protocol import _sodium
from protocol._sodium import Rng, random_bytes
from protocol.errors import VerificationError
from protocol.keys import SecretBytes

__all__ = [
    "LOCAL_KEY_BYTES",
    "LOCAL_NONCE_BYTES",
    "LOCAL_OVERHEAD",
    "derive_local_key",
    "local_tag",
    "new_local_key",
    "open_local",
    "record_label",
    "seal_local",
]

LOCAL_KEY_BYTES = _sodium.AEAD_KEY_BYTES  # 32
LOCAL_NONCE_BYTES = _sodium.AEAD_NONCE_BYTES  # 24, at the start of a sealed record
LOCAL_OVERHEAD = LOCAL_NONCE_BYTES + _sodium.AEAD_TAG_BYTES  # 40: a record's growth
_NONCE = LOCAL_NONCE_BYTES


def _raw(key: SecretBytes | bytes) -> bytes:
    return key.reveal() if isinstance(key, SecretBytes) else key


def new_local_key(rng: Rng = random_bytes) -> SecretBytes:
    """A fresh random 32-byte sealing key."""
    return SecretBytes(rng(LOCAL_KEY_BYTES))


def derive_local_key(ikm: SecretBytes | bytes, *, salt: bytes, label: bytes) -> SecretBytes:
    """A 32-byte subkey: HKDF-SHA256(ikm, salt, info=label) (RFC 5869 §2; an empty salt is
    32 zero bytes). Distinct labels give independent keys from one master."""
    return SecretBytes(_sodium.hkdf_sha256(_raw(ikm), salt=salt, info=label))


def record_label(fmt: bytes, *parts: str) -> bytes:
    """The label of a record: ``fmt || 0x00 || part || 0x00 || ...`` (module docstring). A part
    must not hold a NUL, so no two distinct part lists give the same label."""
    if any("\x00" in p for p in parts):
        raise ValueError("a label part must not contain NUL")
    return b"\x00".join([fmt, *(p.encode() for p in parts)])


def seal_local(key: SecretBytes | bytes, plaintext: bytes, *, label: bytes,
               rng: Rng = random_bytes) -> bytes:
    """``nonce || XChaCha20-Poly1305(key, nonce, plaintext, ad=label)`` with a random nonce."""
    nonce = rng(_NONCE)
    return nonce + _sodium.aead_encrypt(_raw(key), nonce, plaintext, label)


def open_local(key: SecretBytes | bytes, sealed: bytes, *, label: bytes) -> bytes:
    """The plaintext of a :func:`seal_local` record under the same key and label;
    VerificationError otherwise (a record too short to hold a nonce and a tag included)."""
    if not isinstance(sealed, bytes) or len(sealed) < LOCAL_OVERHEAD:
        raise VerificationError("a sealed record is too short")
    return _sodium.aead_decrypt(_raw(key), sealed[:_NONCE], sealed[_NONCE:], label)


def local_tag(key: SecretBytes | bytes, *parts: str) -> bytes:
    """HMAC-SHA-256 under ``key`` of the parts, each prefixed with its UTF-8 length (4 bytes,
    big-endian), so ``("ab", "c")`` and ``("a", "bc")`` differ."""
    encoded = b"".join(len(p.encode()).to_bytes(4, "big") + p.encode() for p in parts)
    return _sodium.hmac_sha256(_raw(key), encoded)
