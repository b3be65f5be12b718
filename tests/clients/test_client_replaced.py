"""Why the SDK client lost its connection, in its status events (clients/sdk/client.py,
clients/sdk/events.py ``StatusEvent.close_code``): replaced by another connection of the same
device (4003, docs/PROTOCOL.md §3.5) is told apart from a loss, so an application can say
"another program of this device has the connection" instead of "connection lost". Against a
real relay: another program on the same vault (as ``lightbox send`` beside ``lightbox watch``)
takes the connection, stores what arrives for the device meanwhile, and the replaced client
connects again once it is gone and tells that message once; the relay going away is a loss."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clients.sdk.client import ClientEvent, LightboxClient, MessageEvent
from clients.sdk.vault import Vault
from protocol.errors import CloseCode
from protocol.keys import CHEAP_PROFILE
from tests.clients.test_client_stopped import next_status
from tests.clients.test_outbox import relay_back
from tests.clinician_world import enrol_clinician
from tests.helpers import seconds
from tests.identity_world import PASSWORD, World


def _beside(vault_dir: Path, *, replaced_wait: float) -> LightboxClient:
    """A client on its own handle of the same vault: another program of the device."""
    vault = Vault(vault_dir, kdf=CHEAP_PROFILE)
    vault.unlock(PASSWORD)
    return LightboxClient(vault, vault, password=PASSWORD, backoff_base=0.05, backoff_max=0.5,
                          replaced_wait=replaced_wait)


async def _messages_until(events: asyncio.Queue[ClientEvent], message_id: str) -> list[str]:
    """The ids of the messages told, up to and with ``message_id``."""
    told: list[str] = []
    async with asyncio.timeout(seconds(20)):
        while message_id not in told:
            event = await events.get()
            if isinstance(event, MessageEvent):
                told.append(event.message.message_id)
    return told


async def test_a_client_replaced_by_another_program_of_its_device_is_told_so_not_lost(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho")
    watching = _beside(ortho.vault.directory, replaced_wait=seconds(3))
    command = _beside(ortho.vault.directory, replaced_wait=0.0)
    events = watching.subscribe()
    try:
        await intern.client.start(wait_connected=seconds(10))
        thread = await intern.client.create_thread(users=[ortho.user_id])
        await watching.start(wait_connected=seconds(10))
        await next_status(events, "connected")

        heard = command.subscribe()
        await command.start(wait_connected=seconds(10))
        await command.wait_synced(seconds(10))
        lost = await next_status(events, "disconnected")
        assert lost.close_code == CloseCode.SESSION_REPLACED and lost.replaced, lost
        assert "another connection of this device" in lost.detail, lost
        # What arrives meanwhile goes to the program that has the connection, which stores it
        # in the vault the two share and acknowledges it: the relay has nothing more of it.
        during = await intern.client.send_text(thread.thread_id, "During: bed 3")
        assert during.message_id in await _messages_until(heard, during.message_id)
        connection = command.connection
        assert connection is not None and connection.reconnects == 0  # not taken back
        await command.close()

        await next_status(events, "connected")  # back by itself once the other is gone
        after = await intern.client.send_text(thread.thread_id, "After: bed 4")
        told = await _messages_until(events, after.message_id)
        assert told == [during.message_id, after.message_id], told  # each once, in order
    finally:
        await command.close()
        await watching.close()
        await intern.client.close()
        for client in (command, watching):
            client.vault.lock()


async def test_the_relay_going_away_is_a_loss_not_a_replacement(
        world: World, tmp_path: Path) -> None:
    ortho = await enrol_clinician(world, tmp_path, "ortho")
    client = ortho.client
    events = client.subscribe()
    await client.start(wait_connected=seconds(10))
    try:
        await next_status(events, "connected")
        await asyncio.to_thread(world.relay.stop)  # off this loop: its client answers the close
        lost = await next_status(events, "disconnected")
        assert lost.close_code == CloseCode.GOING_AWAY, lost  # the relay shutting down
        assert not lost.replaced, lost
        assert lost.detail == "reconnecting to the relay"
        async with relay_back(world, tmp_path):
            await next_status(events, "connected")
    finally:
        await client.close(drain=0)
        ortho.vault.lock()
