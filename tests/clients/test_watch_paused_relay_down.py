"""``lightbox watch`` paused for another command of its profile while the relay goes down
(docs/USER_GUIDE.md "Interns: sending a consult", §4 "Follow it"), against a real relay that is
stopped and started again on the same port, and real ``lightbox`` clients.

Watch makes way for the other command (clients/sdk/connection.py ``REPLACED_WAIT``) and says so
calmly. When it comes back and the relay cannot be reached, it says so at once, in the words it
uses for a connection lost while it watches, not only once the relay is back; then that it is
connected again, and it shows what came meanwhile.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.clinician.shell import command_client
from clients.sdk.profile import open_profile
from tests.clients.test_watch_beside_commands import REPLACED_LINE, watching
from tests.clinician_world import relay_back
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World

LOST_LINE = "-- relay connection lost: reconnecting (nothing is lost)"
CONNECTED = "-- connected to the relay"


async def test_watch_paused_for_another_command_says_at_once_that_the_relay_is_down_and_when_back(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with watching(world, tmp_path, monkeypatch) as (intern, ortho, watch):
        # Another command of the profile takes the device's connection (an `inbox` that takes
        # its time, as the CLI makes its client): watch pauses.
        device = await asyncio.to_thread(open_profile, ortho.vault.directory, PASSWORD)
        other = command_client(device)
        try:
            await other.start(wait_connected=seconds(10))
            await watch.until(REPLACED_LINE)
            # The relay goes down while watch is paused (stopped off this loop: the clients
            # on it answer the relay's closing handshake).
            await asyncio.to_thread(world.relay.stop)
        finally:
            await other.close()
            device.vault.lock()
        assert watch.said(CONNECTED) == 1, watch.lines  # still paused when the relay went
        # Back from making way, watch finds the relay out of reach: said while it is down.
        await watch.until(LOST_LINE, timeout=30)
        assert watch.said(CONNECTED) == 1, watch.lines
        async with relay_back(world, tmp_path):
            await watch.until(CONNECTED, count=2, timeout=60)
            await watch.shows_consult(intern, "Bed 5: after the outage")
            # (before the relay stops again, as the test ends)
            status = [line for line in watch.lines if line.startswith("-- ")]
    assert status == [CONNECTED, REPLACED_LINE, LOST_LINE, CONNECTED], watch.lines
