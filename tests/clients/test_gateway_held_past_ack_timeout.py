"""The record gateway's filings when the relay is slow to answer.

A filing held longer than the relay waits for an acknowledgement (``LIGHTBOX_WS_ACK_TIMEOUT``):
the PACS is down, the gateway holds the image (nothing expires meanwhile), and the relay closes
its connection as too slow (4009) and delivers the message again on the next. The filing goes
on; once the PACS is back and the image is filed, the delivery that came again is acknowledged
with it, on the connection it came on, rather than held until the relay's next too_slow close
(docs/USER_GUIDE.md, "The record gateway", its log table). Real relay, real Orthanc."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from clients.gateway.app import GatewayConfig
from clients.sdk import imaging
from tests.clients.test_filing_journey import journey, record, send_for_filing
from tests.consent_world import count, xray_png
from tests.helpers import seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer

# The relay closes a connection whose delivery stays unacknowledged this long (120 s by
# default), checked every half heartbeat timeout (server/ws.py: here every second, not every
# 10 s); attachments in 64 KiB chunks, as the image journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024, ws_ack_timeout=seconds(8),
                               ws_heartbeat_timeout=seconds(2))


async def test_a_filing_held_past_the_ack_timeout_acknowledges_the_delivery_that_came_again(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    ack_timeout = world.relay.relay.settings.ws_ack_timeout
    prepared = imaging.prepare_image(xray_png(320, 240, seed=15))
    async with journey(world, tmp_path, orthanc) as (intern, ortho, gw):
        assert gw.connection is not None
        device = gw.store.state.device_id
        queued = "SELECT count(*) FROM deliveries WHERE device_id = $1"
        thread = await intern.client.create_thread(users=[ortho.user_id])
        orthanc.stop()
        try:
            aid, _ = await send_for_filing(intern, thread.thread_id, prepared.image, record())
            async with asyncio.timeout(4 * ack_timeout):
                # Closed as too slow and connected again: the message comes again now, while
                # the first delivery's filing still waits for the PACS.
                while not (gw.connection.reconnects and gw.connection.connected.is_set()):
                    await asyncio.sleep(0.02)
            reconnects = gw.connection.reconnects
            assert not gw.filed
        finally:
            await asyncio.to_thread(orthanc.start)
        async with asyncio.timeout(ack_timeout):
            while not (gw.filed and await count(world, "SELECT count(*) FROM filings")):
                await asyncio.sleep(0.1)
            assert gw.filed[0].attachment_id == aid and not gw.failed
            # Acknowledged with the filing, on the connection the message came again on:
            # nothing left queued for the gateway, before the relay would close it again.
            while await count(world, queued, device):
                await asyncio.sleep(0.05)
        assert gw.connection.reconnects == reconnects


async def test_a_filing_the_relay_does_not_confirm_in_time_is_said_in_words_and_sent_again(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """The gateway waits ``statement_timeout`` for the relay's answer to its filing statement;
    here none at all, so the first wait runs out: its log line says why in words, and the
    statement is sent again (once the wait is long enough again) and recorded once."""
    caplog.set_level(logging.INFO, logger="lightbox.gateway")
    prepared = imaging.prepare_image(xray_png(320, 240, seed=16))
    async with journey(world, tmp_path, orthanc,
                       config=GatewayConfig(statement_timeout=0.0)) as (intern, ortho, gw):
        thread = await intern.client.create_thread(users=[ortho.user_id])
        aid, _ = await send_for_filing(intern, thread.thread_id, prepared.image, record())
        line = (f"no answer from the relay to the filing of attachment {aid} (it did not answer "
                "in time); sending it again")
        async with asyncio.timeout(30):
            while line not in [r.getMessage() for r in caplog.records]:
                await asyncio.sleep(0.02)
            gw.config = dataclasses.replace(gw.config, statement_timeout=30.0)
            while not gw.filed:
                await asyncio.sleep(0.05)
        assert gw.filed[0].attachment_id == aid and not gw.failed
        assert await count(world, "SELECT count(*) FROM filings") == 1
