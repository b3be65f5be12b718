"""clients/sdk/http.py: problem documents become RelayRequestError with the relay's code; the
proof-of-possession header signs exactly protocol.api.request_proof_input."""

from __future__ import annotations

import httpx
import pytest

from clients.sdk.errors import FlowError, RelayRequestError, RelayUnavailable
from clients.sdk.http import RelayHTTP, parse_problem
from protocol import api
from protocol._sodium import ed25519_verify
from protocol.canonical import b64url_decode
from protocol.keys import Ed25519KeyPair
from tests.helpers import RunningRelay


def test_parse_problem_reads_code_detail_and_retry_after() -> None:
    response = httpx.Response(429, headers={"content-type": "application/problem+json"},
                              json={"type": "x", "title": "t", "status": 429,
                                    "code": "account_locked", "detail": "wait",
                                    "retry_after": 30})
    err = parse_problem(response)
    assert (err.code, err.status, err.detail, err.retry_after) == ("account_locked", 429,
                                                                   "wait", 30.0)
    assert "retry after 30" in str(err)


def test_parse_problem_survives_a_non_json_answer() -> None:
    err = parse_problem(httpx.Response(502, text="<html>bad gateway</html>",
                                       headers={"retry-after": "5"}))
    assert (err.code, err.retry_after) == ("http_502", 5.0)


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://relay.example.org", True), ("http://127.0.0.1:8000", True),
    ("http://localhost:8000/", True), ("http://[::1]:8000", True),
    ("http://relay.example.org", False), ("http://10.1.2.3:8000", False),
    ("ftp://relay.example.org", False), ("relay.example.org", False)])
def test_a_relay_address_over_plain_http_is_refused_unless_on_this_computer(
        url: str, allowed: bool) -> None:
    """Passwords, tokens and proofs go over TLS (docs/SECURITY.md, HIPAA §164.312(e))."""
    if allowed:
        assert RelayHTTP(url).base_url == url.rstrip("/")
        return
    with pytest.raises(FlowError, match="https://") as err:
        RelayHTTP(url)
    assert err.value.code == "bad_request"


def test_proof_header_signs_the_documented_input() -> None:
    key = Ed25519KeyPair.generate()
    relay = RelayHTTP("https://relay.invalid", device=key, now=lambda: 1767225600.7)
    header = relay.proof_header("get", "/v1/keys/count?x=1", b"body", "tok")
    seconds, nonce, sig = header.split(".")
    assert seconds == "1767225600"
    message = api.request_proof_input("GET", "/v1/keys/count?x=1", 1767225600,
                                      b64url_decode(nonce), b"body", "tok")
    assert ed25519_verify(key.public, message, b64url_decode(sig))
    # Every proof has a fresh nonce.
    assert relay.proof_header("get", "/v1/keys/count?x=1", b"body", "tok").split(".")[1] != nonce


async def test_relay_errors_carry_the_relay_code(relay: RunningRelay) -> None:
    async with RelayHTTP(relay.base_url) as client:
        with pytest.raises(RelayRequestError) as exc:
            await client.enrol_fetch(b"\x00" * 32)
        assert exc.value.code == "enrolment_code_invalid"
        with pytest.raises(RelayRequestError) as exc:
            await client.list_users()  # no admin token: refused before sending
        assert exc.value.code == "unauthenticated"
        client.admin_token = "not-a-token"
        with pytest.raises(RelayRequestError) as exc:
            await client.list_users()
        assert exc.value.status == 401
        challenge = await client.challenge()
        assert len(b64url_decode(challenge.nonce)) == 32


async def test_an_unreachable_relay_is_relay_unavailable() -> None:
    async with RelayHTTP("http://127.0.0.1:9", timeout=2) as client:
        with pytest.raises(RelayUnavailable):
            await client.challenge()
