"""A session that ends closes its websockets (server/login.py, server/hub.py, server/ws.py).

A device's websocket is authenticated once, at ``hello``, and may then live for
LIGHTBOX_WS_SESSION_LIFETIME. When the refresh-token family behind its access token ends
(logout; a refresh token presented twice, RFC 6749 §10.4, RFC 9700 §4.14.2; a password session
its organisation's single sign-on now refuses), every socket opened with an access token of
that family closes at once, on every relay process, with 4001 ``token_invalid``: what the
handshake answers that token from then on, although it has not expired (docs/PROTOCOL.md §3.4,
docs/SECURITY.md "Identity and sessions"). Other sessions, of the same device or of another,
stay open. Through real relays (uvicorn on loopback, and a second ``lightbox-server`` process
on the same database), the real test IdP (tests/idp) and real websocket clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.socket import RelaySocket, SocketClosed
from protocol.errors import CloseCode
from protocol.frames import Ping, Pong
from protocol.session import AuthRequested
from server import audit, events
from server.hub import Hub
from server.socketauth import DeviceSocketAuthenticator, SocketPrincipal
from server.store import sessions
from tests.helpers import seconds
from tests.identity_world import World, identity_world
from tests.relay_world import connect, peer
from tests.server.test_http_edge import assert_problem
from tests.server.test_hub import RecordingMember
from tests.server.test_login import GRACE
from tests.server.test_oidc import SSO_ORG
from tests.server.test_processes import RelayProcess, processes
from tests.server.test_sso_passwords import Hospital
from tests.server.test_sso_passwords import hospital as hospital  # the fixture
from tests.server.test_ws import next_of, refused_at_handshake

ENDED = (CloseCode.AUTH_FAILED, "token_invalid")  # 4001, as the handshake refuses the token


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path) as w:
        yield w


async def ended_with(sock: RelaySocket) -> tuple[int | None, str]:
    """The close code and reason the relay ended ``sock`` with (promptly: within seconds)."""
    return await asyncio.wait_for(sock.closed, seconds(10))


async def still_served(sock: RelaySocket) -> None:
    """``sock`` is open and served: the relay answers its ping."""
    await sock.send_frame(Ping(nonce=b"still-on"))
    assert (await next_of(sock, Pong)).nonce == b"still-on"


async def logout(world: World, refresh_token: str | None) -> None:
    r = await world.http.post("/v1/auth/logout", json={"refresh_token": refresh_token})
    assert r.status_code == 204, r.text


async def audited(world: World, prefix: str) -> list[Any]:
    conn = await world.db()
    try:
        assert (await audit.verify(conn)).ok
        return await audit.rows(conn, event_prefix=prefix)
    finally:
        await conn.close()


async def test_logout_closes_the_devices_open_socket_with_4001_token_invalid(
        world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    a, b = await connect(world, alice), await connect(world, bob)
    try:
        await logout(world, alice.device.refresh_token)
        assert await ended_with(a) == ENDED
        await still_served(b)  # another device's session is not touched
    finally:
        await a.close()
        await b.close()
    # The close is the logout's, audited once as before (no row of its own, nothing of PHI).
    assert [(r.event, str(r.subject_id)) for r in await audited(world, "auth.logout")] == [
        ("auth.logout", alice.device_id)]


async def test_the_ended_sessions_unexpired_access_token_is_refused_at_hello(
        world: World) -> None:
    alice = await peer(world, "alice")
    await logout(world, alice.device.refresh_token)
    # Not expired, signature good, device and user active: the session behind it ended.
    assert await refused_at_handshake(world, alice) == ENDED
    assert_problem(await world.call(alice.device, "GET", "/v1/keys/count"), 401,
                   "token_invalid")


async def test_refresh_token_reuse_closes_the_sockets_of_that_family_only(
        world: World) -> None:
    """The socket opened with the family's newest access token closes when its first refresh
    token is presented again; another device's socket, and a socket of another session of the
    same device, stay open."""
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    first = alice.device.refresh_token
    r = await world.http.post("/v1/auth/refresh", json={"refresh_token": first})
    assert r.status_code == 200, r.text
    alice.device.access_token = r.json()["access_token"]  # the family's rotated token
    a, b = await connect(world, alice), await connect(world, bob)
    try:
        world.clock.advance(GRACE + 1)  # past the grace for one device's own racing requests
        assert_problem(await world.http.post("/v1/auth/refresh", json={"refresh_token": first}),
                       401, "refresh_reused")
        assert await ended_with(a) == ENDED
        await still_served(b)
    finally:
        await a.close()
        await b.close()
    assert [r.outcome for r in await audited(world, "auth.refresh_reused")] == ["denied"]


async def test_ending_one_session_leaves_the_devices_other_session_open(world: World) -> None:
    """The device logged in twice (two families); the socket opened with the second session's
    token stays open when the first session logs out."""
    alice = await peer(world, "alice")
    old_refresh = alice.device.refresh_token
    await world.login(alice.device)  # a new family; its access token opens the socket
    a = await connect(world, alice)
    try:
        await logout(world, old_refresh)
        await still_served(a)
        await logout(world, alice.device.refresh_token)
        assert await ended_with(a) == ENDED
    finally:
        await a.close()


async def test_a_logout_on_one_relay_process_closes_the_socket_held_by_another(
        world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    other = RelayProcess(world)
    with processes(other):
        await other.start()
        a, b = await other.socket(alice), await other.socket(bob)
        try:
            await logout(world, alice.device.refresh_token)  # through this test's relay
            assert await ended_with(a) == ENDED
            await still_served(b)
            # The second process refuses the ended session's token at hello too.
            with pytest.raises(SocketClosed) as refused:
                await other.socket(alice)
            assert (refused.value.code, refused.value.reason) == ENDED
        finally:
            await a.close()
            await b.close()


async def test_a_session_ended_between_hello_and_registration_closes_at_once(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The family ends after the handshake checked it and before the connection is indexed
    under it (here without the event, as one heard before the index existed): the registration
    reads the family's state and closes the socket."""
    alice = await peer(world, "alice")
    checked = DeviceSocketAuthenticator.authenticate

    async def then_ended(self: DeviceSocketAuthenticator,
                         request: AuthRequested) -> SocketPrincipal:
        principal = await checked(self, request)
        family = self.tokens.verify_access(request.hello.access_token).family_id
        async with self.db.pool.acquire() as conn:
            await sessions.revoke_family(conn, family, now=self.clock())
        return principal

    monkeypatch.setattr(DeviceSocketAuthenticator, "authenticate", then_ended)
    a = await connect(world, alice)  # ready was sent: the registration comes after it
    try:
        assert await ended_with(a) == ENDED
    finally:
        await a.close()


async def test_a_password_session_ended_by_single_sign_on_closes_its_socket(
        hospital: Hospital) -> None:
    """Logged in with her password before her organisation turned single sign-on on, the
    clinician's socket closes when her session ends at its next refresh (``sso_required``),
    not hours later."""
    ada = await hospital.world.onboard(hospital.world.orgs[SSO_ORG].user("ada.byron"))
    async with hospital.turn_on_sso() as sso:
        assert ada.access_token is not None
        sock = await RelaySocket.connect(sso.world.relay.ws_url + "/v1/ws",
                                         access_token=ada.access_token,
                                         device_id=ada.device_id, sign=ada.keys.sign)
        try:
            await still_served(sock)
            r = await sso.world.http.post("/v1/auth/refresh",
                                          json={"refresh_token": ada.refresh_token})
            assert_problem(r, 401, "token_expired")
            assert await ended_with(sock) == ENDED
        finally:
            await sock.close()


async def test_the_hub_closes_the_connections_of_an_ended_family_registered_or_not() -> None:
    """A connection follows its family before it registers (server/ws.py): the family's end
    closes it in either state; one that stopped following, or of another family, stays."""
    hub = Hub()
    registered, registering = RecordingMember("dev-a"), RecordingMember("dev-b")
    other, gone = RecordingMember("dev-c"), RecordingMember("dev-d")
    for member, family in ((registered, "f1"), (registering, "f1"), (other, "f2"),
                           (gone, "f1")):
        hub.follow(member, family)
    hub.register(registered)
    hub.register(other)
    hub.unfollow(gone)
    await hub.on_revoked({"kind": "revoked", "device_ids": [], "user_ids": [],
                          "family_ids": ["f1"], "reason": events.SESSION_ENDED})
    assert registered.closes == registering.closes == [ENDED]
    assert other.closes == gone.closes == []
    assert hub.member("dev-a") is None and hub.member("dev-c") is other
