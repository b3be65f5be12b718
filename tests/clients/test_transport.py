"""clients/sdk/transport.py: how a request reaches the relay. An unreachable relay is
RelayUnavailable; device and admin requests without credentials are refused before anything
is sent; a device request is signed over what is sent and accepted by a real relay."""

from __future__ import annotations

import pytest

from clients.sdk.errors import RelayRequestError, RelayUnavailable
from clients.sdk.http import RelayHTTP
from tests.helpers import RunningRelay


async def test_an_unreachable_relay_is_relay_unavailable() -> None:
    async with RelayHTTP("http://127.0.0.1:9", timeout=2) as client:
        with pytest.raises(RelayUnavailable, match=r"^POST /v1/auth/challenge: ConnectError"):
            await client.challenge()


async def test_requests_without_credentials_are_refused_before_sending() -> None:
    # Port 9 (discard) is closed here: anything actually sent would be RelayUnavailable.
    async with RelayHTTP("http://127.0.0.1:9", timeout=2) as client:
        with pytest.raises(RelayRequestError) as device:
            await client.prekey_count()
        with pytest.raises(RelayRequestError) as admin:
            await client.list_users()
    assert (device.value.code, device.value.detail) == ("unauthenticated", "not logged in")
    assert (admin.value.code, admin.value.detail) == ("unauthenticated",
                                                      "no admin session: log in first")


async def test_relay_errors_carry_the_relay_code(relay: RunningRelay) -> None:
    async with RelayHTTP(relay.base_url) as client:
        with pytest.raises(RelayRequestError) as exc:
            await client.enrol_fetch(b"\x00" * 32)
        assert exc.value.code == "enrolment_code_invalid"
        client.admin_token = "not-a-token"
        with pytest.raises(RelayRequestError) as exc:
            await client.list_users()
        assert exc.value.status == 401


async def test_the_client_drops_an_idle_connection_before_the_relay_closes_it(
        relay: RunningRelay) -> None:
    # A request sent on a connection at the moment the relay's server closes it for idleness
    # gets no answer (RFC 9112 §9.6): the SDK must stop reusing a connection first. Seen as
    # "cannot reach the relay" after a clinician spent about that long at the IdP's page
    # between the relay's challenge and the login. httpx keeps the setting on its pool.
    async with RelayHTTP(relay.base_url) as client:
        pool = client._client._transport._pool  # type: ignore[attr-defined]
        assert pool._keepalive_expiry < relay.server.config.timeout_keep_alive
