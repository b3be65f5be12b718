"""clients/sdk/addresses.py: passwords, tokens and proofs go over TLS, or to this computer."""

from __future__ import annotations

import pytest

from clients.sdk.addresses import is_loopback, require_tls
from clients.sdk.errors import FlowError
from clients.sdk.http import RelayHTTP


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


def test_the_refusal_names_what_the_address_was_for() -> None:
    with pytest.raises(FlowError, match=r"^the FHIR server must start with https://"):
        require_tls("http://fhir.example.org", "the FHIR server")


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
    ("[::1]", True), ("10.0.0.1", False), ("localhost.example.org", False),
    ("relay.example.org", False), ("", False)])
def test_only_this_computer_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
