"""clients/sdk/session.py, a device's session with a real relay (``world``), on an injected
clock: one login for concurrent callers, no login without a password, an access token
refreshed from a minute before it expires, and a device cut off by its organisation that
presents its last token once (to hear a wipe order) and then stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.sdk.client import LightboxClient
from clients.sdk.connection import ConnectionStopped
from clients.sdk.errors import SessionEnded
from clients.sdk.failures import describe
from protocol.errors import CloseCode
from tests.clients.test_token_refresh import _auth_events
from tests.clinician_world import Clinician, enrol_clinician
from tests.identity_world import PASSWORD, World


class Clock:
    """The time the session reads; a test moves it (the relay keeps the real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def intern(world: World, tmp_path: Path) -> AsyncIterator[Clinician]:
    c = await enrol_clinician(world, tmp_path, "intern")
    yield c
    await c.client.relay.aclose()


@pytest.fixture
async def clocked(intern: Clinician) -> AsyncIterator[tuple[LightboxClient, Clock]]:
    clock = Clock()
    client = LightboxClient(intern.vault, intern.vault, password=PASSWORD, clock=clock)
    yield client, clock
    await client.relay.aclose()


async def test_concurrent_callers_share_one_login(world: World,
                                                  clocked: tuple[LightboxClient, Clock]) -> None:
    client, _ = clocked
    before = await _auth_events(world)
    await asyncio.gather(*(client.session.ensure_login() for _ in range(4)))
    assert (await _auth_events(world))[len(before):] == ["auth.login"]
    assert client.session.usable()


async def test_without_a_password_an_ended_session_asks_for_one(intern: Clinician) -> None:
    client = LightboxClient(intern.vault, intern.vault, password=None)
    try:
        with pytest.raises(SessionEnded) as err:
            await client.session.ensure_login()
        assert (err.value.code, err.value.sso) == ("unauthenticated", False)
        assert describe(err.value, login_hint="run `lightbox login`") == (
            "error: your session has ended (unauthenticated): run `lightbox login`")
        with pytest.raises(ConnectionStopped) as stopped:  # the websocket stops, not retries
            await client.session.socket_token()
        assert (stopped.value.code, stopped.value.reason) == (None, "unauthenticated")
        assert isinstance(stopped.value.__cause__, SessionEnded)
    finally:
        await client.relay.aclose()


async def test_an_access_token_is_refreshed_from_a_minute_before_it_expires(
        world: World, clocked: tuple[LightboxClient, Clock]) -> None:
    client, clock = clocked
    first = await client.session.access_token()
    tokens = client.relay.tokens
    assert tokens is not None and tokens.access_token == first
    clock.now = tokens.expires_at - 61
    assert await client.session.access_token() == first
    before = await _auth_events(world)
    clock.now = tokens.expires_at - 60
    assert await client.session.access_token() != first
    assert (await _auth_events(world))[len(before):] == ["auth.refresh"]


async def test_a_session_refresh_expiring_within_a_minute_is_not_usable(
        clocked: tuple[LightboxClient, Clock]) -> None:
    client, clock = clocked
    await client.session.ensure_login()
    tokens = client.relay.tokens
    assert tokens is not None
    clock.now = tokens.refresh_expires_at - 61
    assert client.session.usable()
    clock.now = tokens.refresh_expires_at - 60
    assert not client.session.usable()


async def test_a_revoked_device_presents_its_last_token_to_hear_a_wipe_order(
        world: World, intern: Clinician, clocked: tuple[LightboxClient, Clock]) -> None:
    client, clock = clocked
    last = await client.session.access_token()
    r = await world.revoke(world.org, 2, devices=(intern.client.device_id,))
    assert r.status_code == 200, r.text
    tokens = client.relay.tokens
    assert tokens is not None
    clock.now = tokens.expires_at  # stale: the refresh is refused with device_revoked
    assert await client.session.socket_token() == last


async def test_a_suspended_user_presents_the_last_token_once_then_stops(
        world: World, intern: Clinician, clocked: tuple[LightboxClient, Clock]) -> None:
    client, clock = clocked
    last = await client.session.access_token()
    r = await world.revoke(world.org, 2, users=(intern.user_id,))
    assert r.status_code == 200, r.text
    tokens = client.relay.tokens
    assert tokens is not None
    clock.now = tokens.expires_at
    assert await client.session.socket_token() == last
    with pytest.raises(ConnectionStopped) as stopped:
        await client.session.socket_token()
    assert stopped.value.code == CloseCode.DEVICE_REVOKED
