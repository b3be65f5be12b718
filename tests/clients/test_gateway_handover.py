"""A consult handed over at a shift change is not filed again by the record gateway, and the
gateway says nothing of it in the thread (docs/PROTOCOL.md §16.4, §14 ``handover_of``): the
intern's x-ray is filed once from the original; at the shift change the intern's device seals
the consult again (the SDK's own answer to the relay's reseal request, clients/sdk/notices.py),
and the copy, naming the same image, also reaches the gateway, which passes it over with one
log line of ids. Real relay, real SDK clients, the gateway filing into a real Orthanc."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from clients.sdk import imaging
from clients.sdk.client import FiledEvent, MessageEvent
from protocol.body import HandoverOf
from protocol.frames import ResealRequest
from protocol.model import Priority
from tests.clients.test_filing_journey import ORTHO, journey, next_event, record
from tests.consent_world import count, xray_png
from tests.filing_world import direct_care_consent
from tests.helpers import eventually
from tests.identity_world import World
from tests.orthanc import OrthancServer

# Attachments in 64 KiB chunks, as the image and filing journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)


async def test_a_handed_over_copy_of_a_filed_image_is_not_filed_again_and_the_gateway_says_nothing(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lightbox.gateway")
    prepared = imaging.prepare_image(xray_png(320, 240, seed=21))
    async with journey(world, tmp_path, orthanc) as (intern, ortho, gw):
        events, ortho_events = intern.client.subscribe(), ortho.client.subscribe()
        thread = await intern.client.create_thread(users=[ortho.user_id],
                                                   priority=Priority.URGENT)
        tid = thread.thread_id
        token = await direct_care_consent(intern, prepared.image.data, roles=[ORTHO])
        sent = await intern.client.send_image(tid, prepared.image, consent_token=token,
                                              record=record(), text="Wrist AP")
        (aid,) = sent.attachment_ids
        await next_event(events, FiledEvent, lambda e: e.attachment_id == aid, timeout=60)

        async def filed_once() -> bool:
            return [r.attachment_id for r in gw.filed] == [aid]
        await eventually(filed_once)

        # The shift changes: the intern's device seals the consult again for the thread.
        await intern.client.notices.on_frame(ResealRequest(
            thread_id=tid, message_id=sent.message_id, devices=[ortho.client.device_id],
            deadline=int(time.time()) + 600))
        got = await next_event(ortho_events, MessageEvent, lambda e: isinstance(
            e.body.handover_of, HandoverOf) and e.body.handover_of.message_id
            == sent.message_id)
        copy = got.message
        assert [a.attachment_id for a in got.body.attachments] == [aid]
        gateway_device = gw.store.state.device_id
        assert await count(world, "SELECT count(*) FROM messages WHERE message_id = $1 AND "
                           "$2 = ANY (recipients)", copy.message_id, gateway_device) == 1

        # The gateway took the copy (its delivery acknowledged: handled to the end) ...
        async def copy_handled() -> bool:
            return await count(world, "SELECT count(*) FROM deliveries d JOIN messages m "
                               "USING (message_pk) WHERE m.message_id = $1 "
                               "AND d.device_id = $2", copy.message_id, gateway_device) == 0
        await eventually(copy_handled, timeout=30)

        # ... and said nothing in the thread but its receipt, filed nothing and tried nothing.
        assert await count(world, "SELECT count(*) FROM messages WHERE thread_id = $1 AND "
                           "sender_device_id = $2", tid, gateway_device) == 1
        assert [r.attachment_id for r in gw.filed] == [aid] and gw.failed == []
        assert await count(world, "SELECT count(*) FROM filings") == 1
        lines = [r.getMessage() for r in caplog.records if r.name == "lightbox.gateway"]
        assert (f"message {copy.message_id} is a copy of message {sent.message_id} handed "
                "over at a shift change: its 1 image(s) are filed from the original, not from "
                "the copy; nothing filed, nothing said in the thread") in lines, lines
        assert not [line for line in lines if "already" in line or "could not" in line], lines

