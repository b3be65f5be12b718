"""Two programs of one profile refresh its rotating refresh token in any order, against a real
relay and real ``lightbox`` runs (docs/SECURITY.md "Identity and sessions").

The relay rotates the refresh token on each use and ends the whole family when a rotated-out
one is presented again (RFC 9700 §4.14.2, server/login.py). ``lightbox watch`` and
``lightbox link --approve`` on the same profile each hold the profile's tokens: the command
refreshes, and watch, refreshing later with the token it held, would end the session of both
(``error: your session has ended (token_invalid)``). Every refresh reads the profile's newest
tokens under the profile's lock and writes the new pair back (clients/sdk/sharedtokens.py), so
watch takes the command's pair instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.sdk import identity
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import KeyStore
from protocol.keys import CHEAP_PROFILE
from protocol.model import DeviceKind
from server import audit
from tests.clients.test_watch_beside_commands import ORTHO, Watch
from tests.clinician_world import enrol_clinician, lightbox_process, use_cli_profiles
from tests.clinician_world import run_cli as lightbox
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World, identity_world

TOKEN_TTL = 4  # seconds an access token lives: every request of a program refreshes
GRACE = 1  # seconds a rotated-out refresh token still answers (server/settings.py)


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[World]:
    use_cli_profiles(monkeypatch, tmp_path)
    async with identity_world(db_dsn, tmp_path, access_token_ttl=TOKEN_TTL,
                              refresh_reuse_grace=GRACE) as w:
        yield w


async def link_a_desktop(world: World, directory: Path) -> None:
    """A new desktop offers a link; ``lightbox --profile ortho link --approve CODE`` approves
    it, refreshing the profile's session on the way (its access token is always stale); the
    desktop finishes the link (so a consult to the specialist can be sealed to it too)."""
    async with RelayHTTP(world.relay.base_url) as anonymous:
        pending = await identity.offer_link(anonymous, DeviceKind.DESKTOP)
        rc, out, err = await lightbox("--profile", "ortho", "link", "--approve", pending.code)
        assert (rc, err) == (0, ""), out + err
        assert out.startswith("approved: desktop device "), out
        result = await identity.wait_for_link(anonymous, pending, interval=0.05)
        await identity.finish_link(anonymous, KeyStore(directory), pending, result, PASSWORD,
                                   one_time=5, kdf=CHEAP_PROFILE)


async def test_watch_stays_up_while_link_approve_on_its_profile_refreshes_the_session(
        world: World, tmp_path: Path) -> None:
    home = tmp_path / "home"
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern",
                                   vault_dir=home / "intern")
    # The specialist's phone profile as `lightbox enroll` leaves it: the device state in the
    # key store, the vault (made by the first command that needs it) for messages only.
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                  display_name="Dr Bea Ortho", vault_dir=tmp_path / "enrolled")
    KeyStore.for_profile("ortho", home).create(ortho.vault.state, PASSWORD,
                                               profile=CHEAP_PROFILE)
    ortho.vault.lock()
    await intern.client.start(wait_connected=seconds(10))
    watch = Watch(await lightbox_process("--profile", "ortho", "watch",
                                         "--timeout", str(seconds(120))))
    stopped: AssertionError | None = None
    try:
        await watch.until("-- connected to the relay")
        for n in (1, 2):
            await link_a_desktop(world, tmp_path / f"desktop-{n}")
            # Past the access token's lifetime and the relay's grace: watch's next request
            # refreshes again, after the command rotated the refresh token.
            await asyncio.sleep(TOKEN_TTL + GRACE)
            await watch.shows_consult(intern, f"Bed {n}: after the link approval")
    except AssertionError as exc:  # watch ended: what it said on standard error is why
        stopped = exc
    finally:
        err = await watch.stop()
        await intern.client.close()
        intern.vault.lock()
    assert stopped is None and "session has ended" not in err, f"{stopped}\n{err}"
    assert "Traceback" not in err, err
    assert watch.said("Bed 2: after the link approval") == 1, watch.lines
    conn = await world.db()
    try:
        events = [row.event for row in await audit.rows(conn)]
    finally:
        await conn.close()
    assert "auth.refresh_reused" not in events
    assert events.count("auth.refresh") >= 4  # both programs refreshed, twice over
