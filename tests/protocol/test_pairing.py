"""protocol.pairing: the device-linking code, token, token hash and MACs (PROTOCOL §4.8)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import api, pairing
from protocol._sodium import hkdf_sha256, hmac_sha256
from protocol.canonical import b64url_encode, canonical_json, encode_struct
from protocol.errors import DecodeError, ErrorCode, VerificationError
from protocol.model import DeviceKind
from tests.protocol.crypto_world import DeterministicRng, flip_bit

CODE = pairing.generate_pairing_code(DeterministicRng(b"pairing"))
KEYS = api.DeviceKeys(
    device_id="0b6f7c1e-58a4-4b8e-9f00-2d5a1c9e7b31",
    kind=DeviceKind.DESKTOP,
    signing_key=b64url_encode(b"\x01" * 32),
    dh_key=b64url_encode(b"\x02" * 32),
)
ORG_PK = b"\x03" * 32


def test_hmac_sha256_matches_rfc4231_test_case_2() -> None:
    mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?")
    assert mac.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_token_and_hash_follow_the_documented_construction() -> None:
    norm = pairing.normalise_pairing_code(CODE)
    token = hashlib.sha256(b"lightbox/v1/pairing-token\x00" + norm.encode()).digest()
    assert pairing.pairing_token(CODE) == token
    assert pairing.pairing_token_hash(token) == hashlib.sha256(token).digest()
    secret = pairing.PairingSecret(CODE.lower().replace("-", " "))
    assert secret.token == token and secret.token_hash == hashlib.sha256(token).digest()
    assert norm not in repr(secret)


def test_offer_mac_follows_the_documented_construction() -> None:
    norm = pairing.normalise_pairing_code(CODE)
    key = hkdf_sha256(norm.encode(), salt=b"", info=b"lightbox/v1/pairing-mac-key")
    expected = hmac.new(
        key, b"lightbox/v1/pairing-mac\x00offer\x00" + encode_struct(KEYS), hashlib.sha256
    ).digest()
    assert pairing.offer_mac(CODE, KEYS) == expected
    body = canonical_json({"user_certificate": "u.c", "device_certificate": "d.c",
                           "org_public_key": b64url_encode(ORG_PK)})
    expected_result = hmac.new(
        key, b"lightbox/v1/pairing-mac\x00result\x00" + body, hashlib.sha256
    ).digest()
    assert pairing.result_mac(CODE, "u.c", "d.c", ORG_PK) == expected_result


def test_codes_typed_differently_give_the_same_secrets() -> None:
    typed = CODE.lower().replace("0", "o").replace("-", "  ")
    assert pairing.offer_mac(typed, KEYS) == pairing.offer_mac(CODE, KEYS)
    assert pairing.pairing_token(typed) == pairing.pairing_token(CODE)


def test_offer_and_result_macs_are_domain_separated() -> None:
    assert pairing.offer_mac(CODE, KEYS) != pairing.result_mac(CODE, "a.b", "c.d", ORG_PK)
    assert pairing.pairing_mac_key(CODE).reveal() != pairing.pairing_token(CODE)


def test_offer_mac_verifies_and_refuses_substituted_keys() -> None:
    mac = pairing.offer_mac(CODE, KEYS)
    pairing.verify_offer_mac(CODE, KEYS, mac)
    swapped = api.DeviceKeys(device_id=KEYS.device_id, kind=KEYS.kind,
                             signing_key=b64url_encode(b"\x09" * 32), dh_key=KEYS.dh_key)
    with pytest.raises(VerificationError) as exc:
        pairing.verify_offer_mac(CODE, swapped, mac)
    assert exc.value.code is ErrorCode.PAIRING_CODE_INVALID


def test_offer_mac_with_another_code_fails() -> None:
    other = pairing.generate_pairing_code()
    with pytest.raises(VerificationError) as exc:
        pairing.verify_offer_mac(other, KEYS, pairing.offer_mac(CODE, KEYS))
    assert exc.value.code is ErrorCode.PAIRING_CODE_INVALID


@pytest.mark.parametrize("field", ["user", "device", "org"])
def test_result_mac_refuses_any_substituted_field(field: str) -> None:
    mac = pairing.result_mac(CODE, "u.c", "d.c", ORG_PK)
    pairing.verify_result_mac(CODE, "u.c", "d.c", ORG_PK, mac)
    args = {"user": ("x.c", "d.c", ORG_PK), "device": ("u.c", "x.c", ORG_PK),
            "org": ("u.c", "d.c", b"\x04" * 32)}[field]
    with pytest.raises(VerificationError) as exc:
        pairing.verify_result_mac(CODE, *args, mac)
    assert exc.value.code is ErrorCode.PAIRING_CODE_INVALID


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=0, max_value=255))
def test_any_flipped_mac_bit_is_refused(bit: int) -> None:
    mac = pairing.offer_mac(CODE, KEYS)
    with pytest.raises(VerificationError):
        pairing.verify_offer_mac(CODE, KEYS, flip_bit(mac, bit))


def test_a_truncated_mac_is_refused() -> None:
    with pytest.raises(VerificationError):
        pairing.verify_offer_mac(CODE, KEYS, pairing.offer_mac(CODE, KEYS)[:16])


@pytest.mark.parametrize("bad", ["", "ABCD-EFGH", "UUUU-UUUU-UUUU-UUUU-UUUU", "x" * 200])
def test_malformed_codes_are_pairing_code_invalid(bad: str) -> None:
    with pytest.raises(DecodeError) as exc:
        pairing.pairing_token(bad)
    assert exc.value.code is ErrorCode.PAIRING_CODE_INVALID


def test_hmac_refuses_an_empty_key() -> None:
    with pytest.raises(ValueError):
        hmac_sha256(b"", b"data")
