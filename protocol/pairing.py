"""Device linking secrets: the pairing code, the token the relay sees, and the two MACs
(docs/PROTOCOL.md §4.8).

Why: when a user links a second device (the desktop) from an enrolled one (the phone), the relay
carries the new device's public keys one way and its certificate the other way. The relay must
not be able to swap either, so both directions are authenticated with a key that only the two
devices know: a 100-bit pairing code shown on the new device's screen and typed by the user into
the enrolled one.

From the normalised code (:func:`protocol.keys.normalise_enrolment_code` form):

* ``pairing_token = SHA-256("lightbox/v1/pairing-token" || 0x00 || code)``: the new device
  presents it to collect its certificate;
* ``token_hash = SHA-256(pairing_token)``: the id of the pairing at the relay;
* ``mac_key = HKDF-SHA256(ikm=code, salt="", info="lightbox/v1/pairing-mac-key")``: never sent;
* ``offer_mac = HMAC-SHA-256(mac_key, LABEL_PAIRING_MAC || 0x00 || "offer" || 0x00 ||
  canonical(DeviceKeys))``;
* ``result_mac = HMAC-SHA-256(mac_key, LABEL_PAIRING_MAC || 0x00 || "result" || 0x00 ||
  canonical({user_certificate, device_certificate, org_public_key}))``.

Knowing the token (or its hash) does not help to compute the MAC key short of guessing the
100-bit code. Verification compares in constant time and raises
:class:`~protocol.errors.VerificationError` with code ``PAIRING_CODE_INVALID``.
"""

from __future__ import annotations

from typing import Final

from protocol import _sodium
from protocol.api import LABEL_PAIRING_MAC, DeviceKeys
from protocol.canonical import b64url_encode, canonical_json, encode_struct
from protocol.errors import DecodeError, ErrorCode, VerificationError
from protocol.keys import SecretBytes, generate_enrolment_code, normalise_enrolment_code

__all__ = [
    "LABEL_PAIRING_MAC_KEY",
    "LABEL_PAIRING_TOKEN",
    "PairingSecret",
    "generate_pairing_code",
    "normalise_pairing_code",
    "offer_mac",
    "pairing_mac_key",
    "pairing_token",
    "pairing_token_hash",
    "result_mac",
    "verify_offer_mac",
    "verify_result_mac",
]

LABEL_PAIRING_TOKEN: Final = b"lightbox/v1/pairing-token"
LABEL_PAIRING_MAC_KEY: Final = b"lightbox/v1/pairing-mac-key"
_OFFER: Final = b"offer"
_RESULT: Final = b"result"

generate_pairing_code = generate_enrolment_code
"""A fresh 100-bit pairing code (same alphabet and grouping as an enrolment code)."""


def normalise_pairing_code(code: str) -> str:
    """Canonical form of a typed pairing code; DecodeError (PAIRING_CODE_INVALID) if malformed."""
    try:
        return normalise_enrolment_code(code)
    except DecodeError as exc:
        raise DecodeError("malformed pairing code", code=ErrorCode.PAIRING_CODE_INVALID) from exc


def pairing_token(code: str) -> bytes:
    """What the new device presents to collect its certificate (32 bytes)."""
    return _sodium.sha256(LABEL_PAIRING_TOKEN + b"\x00" + normalise_pairing_code(code).encode())


def pairing_token_hash(token: bytes) -> bytes:
    """The relay's id of a pairing: SHA-256 of the pairing token."""
    return _sodium.sha256(token)


def pairing_mac_key(code: str) -> SecretBytes:
    """The MAC key both devices derive from the code; it never leaves them."""
    ikm = normalise_pairing_code(code).encode()
    return SecretBytes(_sodium.hkdf_sha256(ikm, salt=b"", info=LABEL_PAIRING_MAC_KEY))


def _mac(code: str, direction: bytes, body: bytes) -> bytes:
    data = LABEL_PAIRING_MAC + b"\x00" + direction + b"\x00" + body
    return _sodium.hmac_sha256(pairing_mac_key(code).reveal(), data)


def _result_body(user_certificate: str, device_certificate: str, org_public_key: bytes) -> bytes:
    return canonical_json({
        "user_certificate": user_certificate,
        "device_certificate": device_certificate,
        "org_public_key": b64url_encode(org_public_key),
    })


def _check(expected: bytes, mac: bytes, what: str) -> None:
    if not isinstance(mac, bytes) or not _sodium.constant_time_equal(expected, mac):
        raise VerificationError(f"{what} MAC does not verify", code=ErrorCode.PAIRING_CODE_INVALID)


def offer_mac(code: str, keys: DeviceKeys) -> bytes:
    """MAC over the new device's public keys (posted with the offer)."""
    return _mac(code, _OFFER, encode_struct(keys))


def verify_offer_mac(code: str, keys: DeviceKeys, mac: bytes) -> None:
    """On the enrolled device: the keys are the ones the new device showed the code for."""
    _check(offer_mac(code, keys), mac, "pairing offer")


def result_mac(
    code: str, user_certificate: str, device_certificate: str, org_public_key: bytes
) -> bytes:
    """MAC over what the enrolled device sends back: the chain and the organisation key to pin."""
    return _mac(code, _RESULT, _result_body(user_certificate, device_certificate, org_public_key))


def verify_result_mac(
    code: str,
    user_certificate: str,
    device_certificate: str,
    org_public_key: bytes,
    mac: bytes,
) -> None:
    """On the new device: the certificate and organisation key come from the user's device."""
    expected = result_mac(code, user_certificate, device_certificate, org_public_key)
    _check(expected, mac, "pairing result")


class PairingSecret:
    """Everything derived from one pairing code, computed once (the code itself stays local)."""

    __slots__ = ("code", "token", "token_hash")

    def __init__(self, code: str) -> None:
        self.code = normalise_pairing_code(code)
        self.token = pairing_token(self.code)
        self.token_hash = pairing_token_hash(self.token)

    def __repr__(self) -> str:
        return f"PairingSecret(token_hash={b64url_encode(self.token_hash)!r})"

    @property
    def token_hash_b64(self) -> str:
        return b64url_encode(self.token_hash)
