"""``lightbox watch`` while the relay is down (docs/USER_GUIDE.md "Interns: sending a consult",
§4 "Follow it"), against a real relay that is stopped and started again on the same port.

The vault locks itself during the outage and watch unlocks it again with ``LIGHTBOX_PASSWORD``
(the on-call backup doctor's unattended watch). Starting again needs the relay (the revocation
list, perhaps a login); a relay out of reach then must not end watch: it says once that it
cannot reach the relay and keeps trying, connects by itself once the relay is back, and shows
the consult sent then.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.clients.test_watch_beside_commands import ORTHO, Watch
from tests.clinician_world import intern_and_specialist, lightbox_process, relay_back
from tests.helpers import seconds
from tests.identity_world import World

IDLE = 2  # seconds: the vault locks itself this long after its last use
LOCKED = "the vault locked itself after 2 s without use"
UNLOCKED = "-- vault unlocked again: listening for consults"
UNREACHABLE = "-- cannot reach the relay"
CONNECTED = "-- connected to the relay"


async def test_watch_unlocked_again_while_the_relay_is_down_waits_for_it_and_shows_what_comes(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # LIGHTBOX_PASSWORD set (use_cli_profiles): watch unlocks again unattended
    intern, _ = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    await intern.client.start(wait_connected=seconds(10))
    monkeypatch.setenv("LIGHTBOX_VAULT_IDLE_TIMEOUT", str(IDLE))
    watch = Watch(await lightbox_process("--profile", "ortho", "watch",
                                         "--timeout", str(seconds(180))))
    try:
        await watch.until(CONNECTED)
        # Stopped off this loop: the clients on it answer the relay's closing handshake.
        await asyncio.to_thread(world.relay.stop)
        # The vault locks itself during the outage; unlocked again, watch cannot start its
        # connection (no relay to ask), and says so instead of ending.
        await watch.until(UNREACHABLE)
        unlocked = watch.said(UNLOCKED)
        assert unlocked >= 1, watch.lines
        # Locked and unlocked again while still waiting: nothing more said about the relay.
        await watch.until(UNLOCKED, count=unlocked + 1)
        assert watch.said(UNREACHABLE) == 1, watch.lines
        assert watch.process.returncode is None, watch.lines

        async with relay_back(world, tmp_path):
            back = watch.said(CONNECTED)
            await watch.until(CONNECTED, count=back + 1, timeout=60)
            await watch.shows_consult(intern, "Bed 2: hip, after the outage")
            err = await watch.stop()
    finally:
        if watch.process.returncode is None:
            await watch.stop()
        await intern.client.close()
        intern.vault.lock()
    lines = watch.lines
    assert "Traceback" not in err and "never retrieved" not in err, err
    assert "error:" not in err, err
    unreachable = next(line for line in lines if line.startswith(UNREACHABLE))
    assert "keeps trying" in unreachable and "nothing is lost" in unreachable, unreachable
    # Said in order: locked, unlocked, cannot reach; connected again only after that.
    first = lines.index(unreachable)
    assert any(LOCKED in line for line in lines[:first]), lines
    assert CONNECTED in lines[first + 1:], lines

