"""A consult handed over at a shift change in several copies is listed once on the phone
(docs/PROTOCOL.md §16.4; HAZ-02 C16 of docs/HAZARD_LOG.md): two holders can both seal it again
when their waits end together. Every copy is kept and gets its receipts (each sealer's device
is told it was read), but the thread shows the consult once, saying whose device also handed
it over. Real relay, real Chromium, the specialist's real SDK client sealing the copies."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from clients.sdk.client import ReceiptEvent
from protocol.body import Body, HandoverOf
from protocol.model import Priority, Purpose
from tests.identity_world import World
from tests.phone.phone_world import enrolled_phone, next_event, sent_from_phone
from tests.phone.test_phone_handover import phone_settings as phone_settings  # a 10-min lock


async def test_the_phone_lists_a_consult_handed_over_twice_once_and_reads_both_copies(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, specialist, events, page,
                                                           problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        thread_id = consult.message.thread_id
        # A consult the phone never held (the intern's, from another device), sealed again
        # twice: as two holders answering one reseal request at once.
        claim = HandoverOf(message_id=str(uuid.uuid4()), sender_user_id=intern.user_id,
                           sender_device_id=str(uuid.uuid4()), sent_at=int(time.time()) - 600)
        copies = [(await specialist.client.sender.send_body(
            thread_id, Body(text="Ankle, bed 2: Weber B?", handover_of=claim),
            purpose=Purpose.DIRECT_CARE, priority=Priority.URGENT))[0] for _ in range(2)]
        shown = page.locator(".message.theirs", has_text="Weber B?")
        await page.locator(".message.theirs", has_text="Also handed over by").wait_for()
        assert await shown.count() == 1
        said = await shown.inner_text()
        assert "Also handed over by Dr Bo Ortho's device: the same consult, shown once" in said
        assert await shown.get_attribute("data-message") == copies[0].message_id
        # Both copies are read (the phone marks a thread read as it shows it): each is told.
        wanted = {c.message_id for c in copies}
        while wanted:
            r = await next_event(events, ReceiptEvent,
                                 lambda e: e.kind == "read" and e.message_id in wanted)
            wanted.discard(r.message_id)
        assert problems == []
