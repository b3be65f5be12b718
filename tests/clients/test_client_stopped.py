"""The SDK says when the relay has ended a device's access for good (``StatusEvent("stopped")``),
also when that comes between two attempts to connect: a device revoked while the relay was
down is closed for good at its first connection after, and a program on the SDK (the desktop
says "revoked" from it) must hear so, never wait for a connection that will not come. Real
relay, stopped and started again on its port; the revocation staged in the database meanwhile
(the relay that would take IT's signed list is the one that is down)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from clients.sdk.client import ClientEvent, StatusEvent
from protocol.errors import CloseCode
from tests.clients.test_outbox import relay_back
from tests.clinician_world import enrol_clinician
from tests.helpers import seconds
from tests.identity_world import World


async def next_status(events: asyncio.Queue[ClientEvent], state: str) -> StatusEvent:
    async with asyncio.timeout(seconds(20)):
        while True:
            event = await events.get()
            if isinstance(event, StatusEvent) and event.state == state:
                return event


async def test_a_device_revoked_while_the_relay_was_down_hears_stopped_when_it_is_back(
        world: World, tmp_path: Path) -> None:
    ortho = await enrol_clinician(world, tmp_path, "ortho")
    client = ortho.client
    events = client.subscribe()
    await client.start(wait_connected=seconds(10))
    try:
        await next_status(events, "connected")
        await asyncio.to_thread(world.relay.stop)  # off this loop: its client answers the close
        await next_status(events, "disconnected")
        await world.execute("UPDATE devices SET status = 'revoked', revoked_at = now() "
                            "WHERE device_id = $1", uuid.UUID(client.device_id))
        async with relay_back(world, tmp_path):
            stopped = await next_status(events, "stopped")
            assert "device_revoked" in stopped.detail
            connection = client.connection
            assert connection is not None and connection.stopped.done()
            assert connection.stopped.result().code == CloseCode.DEVICE_REVOKED
    finally:
        await client.close(drain=0)
