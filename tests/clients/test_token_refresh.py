"""Token refresh through the SDK against a real relay (clients/sdk/http.py, clients/sdk/client.py,
server/login.py): after the access token expires, every concurrent caller of one client (HTTP
calls and the websocket's token getter alike) shares one refresh; two clients of the same
device holding the same stored tokens (two processes on one profile) both end with working
tokens; a replay of the old refresh token after the grace still ends the session."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from clients.sdk.client import LightboxClient
from clients.sdk.errors import RelayRequestError
from clients.sdk.http import RelayHTTP
from clients.sdk.vault import Vault
from protocol.keys import CHEAP_PROFILE
from server import audit
from tests.clinician_world import Clinician, enrol_clinician
from tests.identity_world import PASSWORD, World

GRACE = 10  # LIGHTBOX_REFRESH_REUSE_GRACE's default


async def _auth_events(world: World) -> list[str]:
    conn = await world.db()
    try:
        return [r.event for r in await audit.rows(conn, event_prefix="auth.")]
    finally:
        await conn.close()


async def _logged_in_with_expired_access(world: World, tmp_path: Path) -> Clinician:
    """A clinician logged in, whose stored access token has expired (as after ten idle
    minutes); the refresh token is still valid."""
    c = await enrol_clinician(world, tmp_path, "intern")
    await c.client.ensure_login()
    tokens = c.client.relay.tokens
    assert tokens is not None
    c.vault.save(msgspec.structs.replace(
        c.vault.state, session=msgspec.structs.replace(tokens, expires_at=0)))
    c.client.relay.tokens = c.vault.state.session
    return c


async def test_eight_concurrent_calls_after_expiry_share_one_refresh_and_all_succeed(
        world: World, tmp_path: Path) -> None:
    c = await _logged_in_with_expired_access(world, tmp_path)
    client = c.client
    try:
        before = await _auth_events(world)
        # Six HTTP calls and two websocket (re)connections asking for a token, all at once.
        results = await asyncio.gather(
            *(client.relay.prekey_count() for _ in range(3)),
            *(client.threads() for _ in range(3)),
            *(client.session.access_token() for _ in range(2)))
        after = (await _auth_events(world))[len(before):]
        assert after == ["auth.refresh"]  # one refresh; no repeat, no reuse, no new login
        tokens = client.relay.tokens
        assert tokens is not None and tokens.expires_at > 0
        assert results[-2:] == [tokens.access_token, tokens.access_token]
        assert c.vault.state.session == tokens  # the rotated pair is what the vault keeps
        assert (await client.relay.prekey_count()).remaining > 0
    finally:
        await client.close()


async def test_two_clients_of_one_device_racing_a_refresh_both_keep_working(
        world: World, tmp_path: Path) -> None:
    """Two processes on one profile (here: the same vault opened twice) with the same stored
    tokens refresh at the same moment: both succeed and go on working, the second with the
    pair the first saved (clients/sdk/sharedtokens.py)."""
    c = await _logged_in_with_expired_access(world, tmp_path)
    await c.client.close()
    second_vault = Vault(c.vault.directory, kdf=CHEAP_PROFILE)
    second_vault.unlock(PASSWORD)
    first = LightboxClient(c.vault, c.vault, password=PASSWORD)
    second = LightboxClient(second_vault, second_vault, password=PASSWORD)
    try:
        before = await _auth_events(world)
        a, b = await asyncio.gather(first.relay.prekey_count(), second.relay.prekey_count())
        assert a.remaining == b.remaining
        assert first.relay.tokens == second.relay.tokens  # the same new pair, not a third
        after = (await _auth_events(world))[len(before):]
        assert after == ["auth.refresh"]
        await first.threads()
        await second.threads()
    finally:
        await first.close()
        await second.close()


async def test_a_replay_of_the_old_refresh_token_after_the_grace_ends_the_session(
        world: World, tmp_path: Path) -> None:
    c = await _logged_in_with_expired_access(world, tmp_path)
    stale = c.vault.state.session
    assert stale is not None
    try:
        await c.client.relay.prekey_count()  # refreshes
        world.clock.advance(GRACE + 1)
        # A copy of the old pair outside the profile (no profile to take the new pair from).
        st = c.vault.state
        async with RelayHTTP(st.server_url, device=st.device_keys().signing,
                             tokens=stale) as copy:
            with pytest.raises(RelayRequestError) as exc:
                await copy.prekey_count()
        assert exc.value.code == "refresh_reused"
        # The legitimate device's session ended too (RFC 9700 §4.14.2): its access token,
        # though not expired, is refused.
        held = c.client.relay.tokens
        assert held is not None
        async with RelayHTTP(st.server_url, device=st.device_keys().signing,
                             tokens=held) as same:
            with pytest.raises(RelayRequestError) as ended:
                await same.prekey_count()
        assert (ended.value.code, ended.value.status) == ("token_invalid", 401)
        # Its own client holds the password and the device key, what a thief of the refresh
        # token lacks: it signs in again with them, as after any session the relay ended.
        before = await _auth_events(world)
        assert (await c.client.relay.prekey_count()).remaining >= 0
        assert "auth.refresh_reused" in before
        assert (await _auth_events(world))[len(before):].count("auth.login") == 1
    finally:
        await c.client.close()
