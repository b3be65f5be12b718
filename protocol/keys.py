"""Key types of Lightbox (docs/ARCHITECTURE.md §4) and passphrase sealing of secrets.

Why: every long-term and medium-term key of the system is defined here, with injectable
randomness (``rng``) so test vectors are reproducible, and with secrets wrapped in
:class:`SecretBytes` so they never appear in a repr, a log line or a traceback.

* organisation signing key, user identity key, device signing key: Ed25519 (RFC 8032), held as
  their 32-byte seeds;
* device DH key, signed prekey, one-time prekeys: X25519 (RFC 7748);
* key ids: ``b64url(SHA-256(public)[0:16])`` (22 characters);
* passphrase sealing (organisation keyfile; identity key sent to a first device under a
  >= 100-bit enrolment code): Argon2id (RFC 9106) + XSalsa20-Poly1305 secretbox, with the
  parameters and salt stored in the output (docs/PROTOCOL.md §4.7).
"""

from __future__ import annotations

import struct
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, Self

from protocol import _sodium
from protocol._sodium import Rng, random_bytes
from protocol.canonical import b64url_encode
from protocol.errors import DecodeError, ErrorCode

__all__ = [
    "CHEAP_PROFILE",
    "DEFAULT_PROFILE",
    "ENROLMENT_CODE_BITS",
    "SENSITIVE_PROFILE",
    "DeviceKeys",
    "Ed25519KeyPair",
    "IdentityKey",
    "JwsSigningKey",
    "JwsVerifyKey",
    "MemoryPrekeyStore",
    "OrganisationKey",
    "PassphraseProfile",
    "Prekey",
    "PrekeyStore",
    "SecretBytes",
    "X25519KeyPair",
    "generate_enrolment_code",
    "generate_one_time_prekeys",
    "jws_signing_key",
    "jws_verify_key",
    "key_id",
    "normalise_enrolment_code",
    "open_with_passphrase",
    "random_bytes",
    "seal_with_passphrase",
    "verify_signature",
]


class SecretBytes:
    """Secret key material that never prints (like Starlette's ``Secret``).

    Compare with ``==`` (constant time); read with :meth:`reveal` only where the primitive
    needs the bytes.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("SecretBytes wraps bytes")
        self._value = value

    def reveal(self) -> bytes:
        """The secret bytes. Do not log them."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "SecretBytes('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return _sodium.constant_time_equal(self._value, other._value)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("SecretBytes cannot be pickled")


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 (RFC 8032) detached-signature check for callers outside protocol/ (the relay's
    request proofs, login signatures): True or False, never an exception."""
    return _sodium.ed25519_verify(public_key, message, signature)


JwsSigningKey = _sodium.JwsSigningKey
"""What :func:`jws_signing_key` returns: PyJWT's EdDSA signing key (pyca/cryptography)."""
JwsVerifyKey = _sodium.JwsVerifyKey
"""What :func:`jws_verify_key` returns: PyJWT's EdDSA verifying key (pyca/cryptography)."""


def jws_signing_key(seed: SecretBytes | bytes) -> JwsSigningKey:
    """An Ed25519 seed as the key PyJWT signs an EdDSA JWT or JWS with (RFC 8037 §3.1), for
    callers outside protocol/ (the relay's access and admin tokens)."""
    return _sodium.jws_private_key(seed.reveal() if isinstance(seed, SecretBytes) else seed)


def jws_verify_key(public: bytes) -> JwsVerifyKey:
    """An Ed25519 public key as the key PyJWT verifies an EdDSA JWT or JWS with;
    VerificationError if the bytes are not one."""
    return _sodium.jws_public_key(public)


def key_id(public: bytes) -> str:
    """Short, stable id of a public key: base64url of the first 16 bytes of its SHA-256."""
    return b64url_encode(_sodium.sha256(public)[:16])


@dataclass(frozen=True, slots=True)
class Ed25519KeyPair:
    """An Ed25519 signing key (RFC 8032) held as its 32-byte seed."""

    seed: SecretBytes = field(repr=False)
    public: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> Self:
        return cls(seed=SecretBytes(seed), public=_sodium.ed25519_public_key(seed))

    @classmethod
    def generate(cls, rng: Rng = random_bytes) -> Self:
        return cls.from_seed(rng(_sodium.ED25519_SEED_BYTES))

    @property
    def key_id(self) -> str:
        return key_id(self.public)

    def sign(self, message: bytes) -> bytes:
        """Detached deterministic Ed25519 signature (64 bytes)."""
        return _sodium.ed25519_sign(self.seed.reveal(), message)


class OrganisationKey(Ed25519KeyPair):
    """The organisation's signing key: signs user certificates and revocation lists."""

    __slots__ = ()


class IdentityKey(Ed25519KeyPair):
    """A user's identity key: signs that user's device certificates (and consent tokens)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class X25519KeyPair:
    """An X25519 key pair (RFC 7748)."""

    secret: SecretBytes = field(repr=False)
    public: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> X25519KeyPair:
        return cls(secret=SecretBytes(secret), public=_sodium.x25519_public_key(secret))

    @classmethod
    def generate(cls, rng: Rng = random_bytes) -> X25519KeyPair:
        return cls.from_secret(rng(_sodium.X25519_BYTES))

    def dh(self, peer_public: bytes) -> bytes:
        """X25519(secret, peer_public); VerificationError for low-order peer keys."""
        return _sodium.x25519_shared(self.secret.reveal(), peer_public)


@dataclass(frozen=True, slots=True)
class DeviceKeys:
    """A device's long-term keys: Ed25519 for signing, X25519 for key agreement."""

    device_id: str
    signing: Ed25519KeyPair
    dh: X25519KeyPair

    @classmethod
    def generate(cls, device_id: str, rng: Rng = random_bytes) -> DeviceKeys:
        return cls(
            device_id=device_id,
            signing=Ed25519KeyPair.generate(rng),
            dh=X25519KeyPair.generate(rng),
        )

    def sign(self, message: bytes) -> bytes:
        return self.signing.sign(message)


@dataclass(frozen=True, slots=True)
class Prekey:
    """A signed prekey or one-time prekey: an X25519 key pair with its integer id."""

    prekey_id: int
    keypair: X25519KeyPair

    @classmethod
    def generate(cls, prekey_id: int, rng: Rng = random_bytes) -> Prekey:
        if not 0 <= prekey_id <= 0xFFFFFFFF:
            raise ValueError("prekey ids are unsigned 32-bit integers")
        return cls(prekey_id=prekey_id, keypair=X25519KeyPair.generate(rng))

    @property
    def public(self) -> bytes:
        return self.keypair.public


def generate_one_time_prekeys(first_id: int, count: int, rng: Rng = random_bytes) -> list[Prekey]:
    """``count`` one-time prekeys with consecutive ids starting at ``first_id``."""
    return [Prekey.generate(first_id + i, rng) for i in range(count)]


class PrekeyStore(Protocol):
    """Where a device looks up its prekey secrets when opening a message."""

    def signed_prekey(self, prekey_id: int) -> X25519KeyPair | None: ...

    def one_time_prekey(self, prekey_id: int) -> X25519KeyPair | None: ...


class MemoryPrekeyStore:
    """In-memory :class:`PrekeyStore` (tests, and the base of persistent client stores)."""

    def __init__(self, signed: list[Prekey] | None = None, one_time: list[Prekey] | None = None):
        self._signed = {p.prekey_id: p.keypair for p in signed or []}
        self._one_time = {p.prekey_id: p.keypair for p in one_time or []}

    def signed_prekey(self, prekey_id: int) -> X25519KeyPair | None:
        return self._signed.get(prekey_id)

    def one_time_prekey(self, prekey_id: int) -> X25519KeyPair | None:
        return self._one_time.get(prekey_id)

    def add_signed(self, prekey: Prekey) -> None:
        self._signed[prekey.prekey_id] = prekey.keypair

    def add_one_time(self, prekey: Prekey) -> None:
        self._one_time[prekey.prekey_id] = prekey.keypair

    def delete_one_time(self, prekey_id: int) -> None:
        """Forget a used one-time prekey: this is what gives forward secrecy."""
        self._one_time.pop(prekey_id, None)

    def delete_signed(self, prekey_id: int) -> None:
        self._signed.pop(prekey_id, None)


# --- passphrase sealing ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PassphraseProfile:
    """Argon2id cost: ``opslimit`` passes over ``memlimit`` bytes (RFC 9106 §4)."""

    opslimit: int
    memlimit: int


# DEFAULT = libsodium's argon2id INTERACTIVE (2 passes, 64 MiB; RFC 9106 §4's second
# recommended option uses 3 passes over 64 MiB): enrolment codes, which already carry 100 bits.
# SENSITIVE = libsodium's MODERATE (3 passes, 256 MiB): the organisation keyfile, whose
# passphrase is human-chosen. CHEAP = the library minimum, for tests only.
DEFAULT_PROFILE: Final = PassphraseProfile(opslimit=2, memlimit=64 * 1024 * 1024)
SENSITIVE_PROFILE: Final = PassphraseProfile(opslimit=3, memlimit=256 * 1024 * 1024)
CHEAP_PROFILE: Final = PassphraseProfile(
    opslimit=_sodium.ARGON2ID_OPSLIMIT_MIN, memlimit=_sodium.ARGON2ID_MEMLIMIT_MIN
)

_SEAL_MAGIC = b"LBPW"
_SEAL_VERSION = 1
_SEAL_ALG_ARGON2ID13_SECRETBOX = 1
_SEAL_HEADER = struct.Struct(">4sBBIQ")  # magic, version, alg, opslimit, memlimit
_SALT_BYTES = 16
_SEAL_OVERHEAD = _SEAL_HEADER.size + _SALT_BYTES + _sodium.SECRETBOX_NONCE_BYTES
MAX_SEALED_SECRET = 4096


def _passphrase_bytes(passphrase: str) -> bytes:
    # NFKC so the same passphrase typed on different keyboards/OSes gives the same bytes.
    return unicodedata.normalize("NFKC", passphrase).encode("utf-8")


def seal_with_passphrase(
    secret: bytes,
    passphrase: str,
    *,
    opslimit: int = DEFAULT_PROFILE.opslimit,
    memlimit: int = DEFAULT_PROFILE.memlimit,
    rng: Rng = random_bytes,
) -> bytes:
    """Encrypt ``secret`` under a key derived from ``passphrase`` with Argon2id.

    Output: ``"LBPW" || 0x01 || 0x01 || opslimit u32be || memlimit u64be || salt[16] ||
    nonce[24] || secretbox(key, nonce, secret)``. The header is not separately authenticated:
    every header value is an input of the key derivation, so changing it fails the MAC.
    """
    if not passphrase:
        raise ValueError("empty passphrase")
    if len(secret) > MAX_SEALED_SECRET:
        raise ValueError("secret too large")
    if memlimit % 1024:
        raise ValueError("memlimit must be a multiple of 1024 bytes")
    salt = rng(_SALT_BYTES)
    nonce = rng(_sodium.SECRETBOX_NONCE_BYTES)
    key = _sodium.argon2id(
        _passphrase_bytes(passphrase), salt, opslimit=opslimit, memlimit=memlimit
    )
    header = _SEAL_HEADER.pack(
        _SEAL_MAGIC, _SEAL_VERSION, _SEAL_ALG_ARGON2ID13_SECRETBOX, opslimit, memlimit
    )
    return header + salt + nonce + _sodium.secretbox_seal(key, nonce, secret)


def open_with_passphrase(sealed: bytes, passphrase: str) -> bytes:
    """Inverse of :func:`seal_with_passphrase`. Malformed input raises DecodeError; a wrong
    passphrase or tampering raises VerificationError. Parameters above our caps are refused
    before any work (a forged file cannot make us allocate gigabytes)."""
    if not isinstance(sealed, bytes) or not (
        _SEAL_OVERHEAD + _sodium.SECRETBOX_TAG_BYTES
        <= len(sealed)
        <= _SEAL_OVERHEAD + _sodium.SECRETBOX_TAG_BYTES + MAX_SEALED_SECRET
    ):
        raise DecodeError("sealed secret has the wrong size")
    magic, version, alg, opslimit, memlimit = _SEAL_HEADER.unpack_from(sealed)
    if magic != _SEAL_MAGIC or version != _SEAL_VERSION or alg != _SEAL_ALG_ARGON2ID13_SECRETBOX:
        raise DecodeError(
            "not a Lightbox passphrase-sealed secret", code=ErrorCode.UNSUPPORTED_VERSION
        )
    if memlimit % 1024:
        # libsodium uses memlimit in KiB: low bits would be ignored, so the header would be
        # malleable without failing the MAC. One value, one encoding.
        raise DecodeError("Argon2id memlimit must be a multiple of 1024")
    offset = _SEAL_HEADER.size
    salt = sealed[offset : offset + _SALT_BYTES]
    nonce = sealed[offset + _SALT_BYTES : _SEAL_OVERHEAD]
    try:
        key = _sodium.argon2id(
            _passphrase_bytes(passphrase), salt, opslimit=opslimit, memlimit=memlimit
        )
    except ValueError as exc:
        raise DecodeError("Argon2id parameters out of range") from exc
    return _sodium.secretbox_open(key, nonce, sealed[_SEAL_OVERHEAD:])


# --- enrolment codes ---------------------------------------------------------------------------

ENROLMENT_CODE_BITS: Final = 100
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
_CROCKFORD_ALIASES = str.maketrans({"O": "0", "I": "1", "L": "1"})


def generate_enrolment_code(rng: Rng = random_bytes) -> str:
    """A 100-bit enrolment code: 20 Crockford base32 symbols in groups of 4 (``XXXX-XXXX-...``).

    It protects the user's identity key in transit to the first device (sealed with
    :func:`seal_with_passphrase`), so it must resist offline guessing: 100 bits plus Argon2id.
    """
    value = int.from_bytes(rng(13), "big") >> 4  # 104 bits -> keep 100
    symbols = "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(20)))
    return "-".join(symbols[i : i + 4] for i in range(0, 20, 4))


def normalise_enrolment_code(code: str) -> str:
    """Canonical form of a typed enrolment code (case, dashes, spaces and O/I/L ignored).

    Raises DecodeError (ENROLMENT_CODE_INVALID) if it is not 20 Crockford symbols.
    """
    cleaned = "".join(code.split()).replace("-", "").upper().translate(_CROCKFORD_ALIASES)
    if len(cleaned) != 20 or any(c not in _CROCKFORD for c in cleaned):
        raise DecodeError("malformed enrolment code", code=ErrorCode.ENROLMENT_CODE_INVALID)
    return "-".join(cleaned[i : i + 4] for i in range(0, 20, 4))
