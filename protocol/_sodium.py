"""The one module of protocol/ that calls raw cryptographic primitives.

Everything else in protocol/ goes through this small, typed API (STYLE.md "Misuse-resistant
crypto"), so the list of primitives Lightbox uses is this file and nothing else:

* Ed25519 signatures, RFC 8032, libsodium ``crypto_sign`` (keys held as 32-byte seeds).
* X25519 Diffie-Hellman, RFC 7748, libsodium ``crypto_scalarmult`` (all-zero outputs from
  small-order points are refused by libsodium and surface here as VerificationError).
* XChaCha20-Poly1305-IETF AEAD, draft-irtf-cfrg-xchacha, 24-byte nonces, 16-byte tags.
* XSalsa20-Poly1305 ``crypto_secretbox`` for passphrase-sealed files.
* Argon2id v1.3, RFC 9106, libsodium ``crypto_pwhash``.
* secretstream XChaCha20-Poly1305 (libsodium) for attachments.
* HKDF-SHA256, RFC 5869, from pyca/cryptography. Chosen over BLAKE2b because HKDF is the
  standard, widely implemented extract-then-expand KDF with an explicit ``info`` input that
  carries our domain labels and transcript; every mainstream language has it.
* Ed25519 key objects of pyca/cryptography for PyJWT's EdDSA JWS (RFC 8037 §3.1): consent
  tokens and the relay's access and admin tokens are signed with the same keys as the rest.
* SHA-256 (FIPS 180-4) from hashlib; HMAC-SHA-256 (RFC 2104) from the stdlib ``hmac`` module
  (device-linking MACs, docs/PROTOCOL.md §4.8).

Failures of verify/decrypt raise :class:`protocol.errors.VerificationError`; nothing here
raises a PyNaCl or cryptography exception to the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable

import nacl.bindings as _b
import nacl.exceptions as _nacl_exc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.errors import VerificationError

__all__ = [
    "AEAD_KEY_BYTES",
    "AEAD_NONCE_BYTES",
    "AEAD_TAG_BYTES",
    "ARGON2ID_MEMLIMIT_MAX",
    "ARGON2ID_MEMLIMIT_MIN",
    "ARGON2ID_OPSLIMIT_MAX",
    "ARGON2ID_OPSLIMIT_MIN",
    "ED25519_PUBLIC_BYTES",
    "ED25519_SEED_BYTES",
    "ED25519_SIGNATURE_BYTES",
    "SECRETBOX_KEY_BYTES",
    "SECRETBOX_NONCE_BYTES",
    "SECRETBOX_TAG_BYTES",
    "SECRETSTREAM_ABYTES",
    "SECRETSTREAM_HEADER_BYTES",
    "SECRETSTREAM_KEY_BYTES",
    "SECRETSTREAM_TAG_FINAL",
    "SECRETSTREAM_TAG_MESSAGE",
    "X25519_BYTES",
    "JwsSigningKey",
    "JwsVerifyKey",
    "Rng",
    "SecretStreamPull",
    "SecretStreamPush",
    "aead_decrypt",
    "aead_encrypt",
    "argon2id",
    "constant_time_equal",
    "ed25519_public_key",
    "ed25519_sign",
    "ed25519_verify",
    "hkdf_sha256",
    "hmac_sha256",
    "jws_private_key",
    "jws_public_key",
    "random_bytes",
    "secretbox_open",
    "secretbox_seal",
    "sha256",
    "x25519_public_key",
    "x25519_shared",
]

Rng = Callable[[int], bytes]
"""Source of randomness: ``rng(n)`` returns ``n`` bytes. Injected so vectors are reproducible."""

ED25519_SEED_BYTES = 32
ED25519_PUBLIC_BYTES = 32
ED25519_SIGNATURE_BYTES = 64
X25519_BYTES = 32
AEAD_KEY_BYTES = _b.crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32
AEAD_NONCE_BYTES = _b.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
AEAD_TAG_BYTES = _b.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
SECRETBOX_KEY_BYTES = _b.crypto_secretbox_KEYBYTES  # 32
SECRETBOX_NONCE_BYTES = _b.crypto_secretbox_NONCEBYTES  # 24
SECRETBOX_TAG_BYTES = _b.crypto_secretbox_MACBYTES  # 16
SECRETSTREAM_KEY_BYTES = _b.crypto_secretstream_xchacha20poly1305_KEYBYTES  # 32
SECRETSTREAM_HEADER_BYTES = _b.crypto_secretstream_xchacha20poly1305_HEADERBYTES  # 24
SECRETSTREAM_ABYTES = _b.crypto_secretstream_xchacha20poly1305_ABYTES  # 17
SECRETSTREAM_TAG_MESSAGE = _b.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE  # 0
SECRETSTREAM_TAG_FINAL = _b.crypto_secretstream_xchacha20poly1305_TAG_FINAL  # 3
ARGON2ID_OPSLIMIT_MIN = _b.crypto_pwhash_argon2id_OPSLIMIT_MIN
ARGON2ID_OPSLIMIT_MAX = 16  # our own cap: a forged keyfile must not make us spin for hours
ARGON2ID_MEMLIMIT_MIN = _b.crypto_pwhash_argon2id_MEMLIMIT_MIN
ARGON2ID_MEMLIMIT_MAX = 1 << 30  # 1 GiB, libsodium's SENSITIVE profile; caps forged inputs


def random_bytes(n: int) -> bytes:
    """The default :data:`Rng`: the operating system's CSPRNG."""
    return os.urandom(n)


def _check_len(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")


# --- hashes and KDF ----------------------------------------------------------------------------


def sha256(data: bytes) -> bytes:
    """SHA-256 digest (32 bytes)."""
    return hashlib.sha256(data).digest()


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 extract-and-expand (RFC 5869 §2). An empty ``salt`` means 32 zero bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA-256 (RFC 2104) of ``data`` under ``key`` (32 bytes)."""
    if not isinstance(key, bytes) or not key:
        raise ValueError("HMAC key must be non-empty bytes")
    return hmac.new(key, data, hashlib.sha256).digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare secrets without leaking where they differ."""
    return hmac.compare_digest(a, b)


# --- Ed25519 -----------------------------------------------------------------------------------


def ed25519_public_key(seed: bytes) -> bytes:
    """The Ed25519 public key of a 32-byte seed (RFC 8032 §5.1.5)."""
    _check_len(seed, ED25519_SEED_BYTES, "Ed25519 seed")
    public, _secret = _b.crypto_sign_seed_keypair(seed)
    return bytes(public)


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    """Detached, deterministic Ed25519 signature (64 bytes) of ``message``."""
    _check_len(seed, ED25519_SEED_BYTES, "Ed25519 seed")
    _public, secret = _b.crypto_sign_seed_keypair(seed)
    signed = _b.crypto_sign(message, secret)
    return bytes(signed[:ED25519_SIGNATURE_BYTES])


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``message`` under ``public``.

    libsodium rejects non-canonical signatures and small-order public keys. Never raises.
    """
    if not isinstance(public, bytes) or len(public) != ED25519_PUBLIC_BYTES:
        return False
    if not isinstance(signature, bytes) or len(signature) != ED25519_SIGNATURE_BYTES:
        return False
    try:
        _b.crypto_sign_open(signature + message, public)
    except (_nacl_exc.BadSignatureError, _nacl_exc.ValueError, _nacl_exc.TypeError):
        return False
    return True


JwsSigningKey = Ed25519PrivateKey
JwsVerifyKey = Ed25519PublicKey


def jws_private_key(seed: bytes) -> JwsSigningKey:
    """The seed as the key object PyJWT signs an EdDSA JWS with (RFC 8037 §3.1)."""
    _check_len(seed, ED25519_SEED_BYTES, "Ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(seed)


def jws_public_key(public: bytes) -> JwsVerifyKey:
    """The public key as the object PyJWT verifies an EdDSA JWS with; VerificationError if the
    bytes are not an Ed25519 public key."""
    if not isinstance(public, bytes) or len(public) != ED25519_PUBLIC_BYTES:
        raise VerificationError("Ed25519 public key has the wrong length")
    try:
        return Ed25519PublicKey.from_public_bytes(public)
    except (ValueError, TypeError) as exc:
        raise VerificationError("not an Ed25519 public key") from exc


# --- X25519 ------------------------------------------------------------------------------------


def x25519_public_key(secret: bytes) -> bytes:
    """X25519 public key of a 32-byte secret scalar (RFC 7748 §6.1; clamping is internal)."""
    _check_len(secret, X25519_BYTES, "X25519 secret")
    return bytes(_b.crypto_scalarmult_base(secret))


def x25519_shared(secret: bytes, public: bytes) -> bytes:
    """X25519(secret, public). Raises VerificationError for a malformed or low-order public key
    (libsodium refuses an all-zero shared secret, RFC 7748 §6.1)."""
    _check_len(secret, X25519_BYTES, "X25519 secret")
    if not isinstance(public, bytes) or len(public) != X25519_BYTES:
        raise VerificationError("X25519 public key has the wrong length")
    try:
        return bytes(_b.crypto_scalarmult(secret, public))
    except _nacl_exc.RuntimeError as exc:
        raise VerificationError("X25519 produced an all-zero shared secret") from exc


# --- AEAD --------------------------------------------------------------------------------------


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305-IETF encrypt; returns ciphertext || 16-byte tag."""
    _check_len(key, AEAD_KEY_BYTES, "AEAD key")
    _check_len(nonce, AEAD_NONCE_BYTES, "AEAD nonce")
    return bytes(_b.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key))


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """XChaCha20-Poly1305-IETF decrypt; VerificationError if anything does not authenticate."""
    _check_len(key, AEAD_KEY_BYTES, "AEAD key")
    if len(nonce) != AEAD_NONCE_BYTES or len(ciphertext) < AEAD_TAG_BYTES:
        raise VerificationError("AEAD nonce or ciphertext has the wrong length")
    try:
        return bytes(_b.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key))
    except _nacl_exc.CryptoError as exc:
        raise VerificationError("AEAD decryption failed") from exc


def secretbox_seal(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    """XSalsa20-Poly1305 ``crypto_secretbox_easy``: 16-byte tag || ciphertext."""
    _check_len(key, SECRETBOX_KEY_BYTES, "secretbox key")
    _check_len(nonce, SECRETBOX_NONCE_BYTES, "secretbox nonce")
    return bytes(_b.crypto_secretbox_easy(plaintext, nonce, key))


def secretbox_open(key: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    """Open a ``crypto_secretbox_easy`` box; VerificationError on any failure."""
    _check_len(key, SECRETBOX_KEY_BYTES, "secretbox key")
    if len(nonce) != SECRETBOX_NONCE_BYTES or len(ciphertext) < SECRETBOX_TAG_BYTES:
        raise VerificationError("secretbox nonce or ciphertext has the wrong length")
    try:
        return bytes(_b.crypto_secretbox_open_easy(ciphertext, nonce, key))
    except _nacl_exc.CryptoError as exc:
        raise VerificationError("secretbox authentication failed") from exc


# --- Argon2id ----------------------------------------------------------------------------------


def argon2id(
    password: bytes, salt: bytes, *, opslimit: int, memlimit: int, length: int = 32
) -> bytes:
    """Argon2id v1.3 (RFC 9106) via libsodium ``crypto_pwhash``; ``memlimit`` in bytes.

    Parameters outside [MIN, our MAX] raise ValueError (callers map it to their error).
    """
    if not ARGON2ID_OPSLIMIT_MIN <= opslimit <= ARGON2ID_OPSLIMIT_MAX:
        raise ValueError("Argon2id opslimit out of range")
    if not ARGON2ID_MEMLIMIT_MIN <= memlimit <= ARGON2ID_MEMLIMIT_MAX:
        raise ValueError("Argon2id memlimit out of range")
    _check_len(salt, _b.crypto_pwhash_SALTBYTES, "Argon2id salt")
    return bytes(
        _b.crypto_pwhash_alg(
            length, password, salt, opslimit, memlimit, _b.crypto_pwhash_ALG_ARGON2ID13
        )
    )


# --- secretstream ------------------------------------------------------------------------------


class SecretStreamPush:
    """Encrypting side of libsodium secretstream XChaCha20-Poly1305.

    libsodium's ``init_push`` draws the 24-byte header from its own RNG. To keep randomness
    injectable (reproducible vectors) the header is supplied by the caller and the state is set
    up with ``init_pull``: in libsodium both functions compute exactly the same state from
    (key, header) (``k = HChaCha20(key, header[0:16])``, counter 1, ``inonce = header[16:24]``),
    so the stream is bit-for-bit a standard secretstream. Each attachment uses a fresh random
    key, so the header need not be secret nor, strictly, unique.
    """

    __slots__ = ("_state",)

    def __init__(self, key: bytes, header: bytes) -> None:
        _check_len(key, SECRETSTREAM_KEY_BYTES, "secretstream key")
        _check_len(header, SECRETSTREAM_HEADER_BYTES, "secretstream header")
        self._state = _b.crypto_secretstream_xchacha20poly1305_state()
        _b.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key)

    def push(self, message: bytes, *, final: bool) -> bytes:
        """Encrypt one chunk; ``final`` tags it TAG_FINAL, otherwise TAG_MESSAGE."""
        tag = SECRETSTREAM_TAG_FINAL if final else SECRETSTREAM_TAG_MESSAGE
        return bytes(_b.crypto_secretstream_xchacha20poly1305_push(self._state, message, None, tag))


class SecretStreamPull:
    """Decrypting side of libsodium secretstream XChaCha20-Poly1305."""

    __slots__ = ("_state",)

    def __init__(self, key: bytes, header: bytes) -> None:
        _check_len(key, SECRETSTREAM_KEY_BYTES, "secretstream key")
        if len(header) != SECRETSTREAM_HEADER_BYTES:
            raise VerificationError("secretstream header has the wrong length")
        self._state = _b.crypto_secretstream_xchacha20poly1305_state()
        _b.crypto_secretstream_xchacha20poly1305_init_pull(self._state, header, key)

    def pull(self, chunk: bytes) -> tuple[bytes, int]:
        """Decrypt one chunk; returns (plaintext, tag). VerificationError if it does not
        authenticate (tampered, reordered, duplicated or from another stream)."""
        if len(chunk) < SECRETSTREAM_ABYTES:
            raise VerificationError("secretstream chunk too short")
        try:
            message, tag = _b.crypto_secretstream_xchacha20poly1305_pull(self._state, chunk, None)
        except _nacl_exc.CryptoError as exc:
            raise VerificationError("secretstream chunk failed to authenticate") from exc
        return bytes(message), int(tag)
