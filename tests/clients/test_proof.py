"""clients/sdk/proof.py: the proof-of-possession header signs exactly
protocol.api.request_proof_input, at the injected time, with a fresh nonce each time."""

from __future__ import annotations

import pytest

from clients.sdk.errors import RelayRequestError
from clients.sdk.http import RelayHTTP
from clients.sdk.proof import proof_header
from protocol import api
from protocol._sodium import ed25519_verify
from protocol.canonical import b64url_decode
from protocol.keys import Ed25519KeyPair


def test_proof_header_signs_the_documented_input() -> None:
    key = Ed25519KeyPair.generate()
    nonce = bytes(range(api.PROOF_NONCE_BYTES))
    header = proof_header(key, "get", "/v1/keys/count?x=1", b"body", "tok",
                          seconds=1767225600, rng=lambda n: nonce[:n])
    seconds, sent_nonce, sig = header.split(".")
    assert (seconds, b64url_decode(sent_nonce)) == ("1767225600", nonce)
    message = api.request_proof_input("GET", "/v1/keys/count?x=1", 1767225600, nonce,
                                      b"body", "tok")
    assert ed25519_verify(key.public, message, b64url_decode(sig))
    other = api.request_proof_input("GET", "/v1/keys/count?x=2", 1767225600, nonce,
                                    b"body", "tok")
    assert not ed25519_verify(key.public, other, b64url_decode(sig))


def test_a_relay_client_proves_at_its_clock_with_a_fresh_nonce_each_time() -> None:
    key = Ed25519KeyPair.generate()
    relay = RelayHTTP("https://relay.invalid", device=key, now=lambda: 1767225600.7)
    first = relay.proof_header("get", "/v1/keys/count", b"", "tok").split(".")
    second = relay.proof_header("get", "/v1/keys/count", b"", "tok").split(".")
    assert first[0] == second[0] == "1767225600"
    assert first[1] != second[1]


def test_a_relay_client_without_a_device_key_cannot_prove() -> None:
    with pytest.raises(RelayRequestError) as err:
        RelayHTTP("https://relay.invalid").proof_header("GET", "/v1/keys/count", b"", "tok")
    assert (err.value.code, err.value.detail) == ("unauthenticated", "no device key loaded")
