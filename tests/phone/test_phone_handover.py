"""A consult handed over at a shift change reaches the phone as its author wrote it
(docs/PROTOCOL.md §14 ``handover_of``, §16.4; HAZ-02 of docs/HAZARD_LOG.md): the phone's
decoder, which refuses unknown body fields, takes the field; the copy is shown under its
author and time, told as handed over and by whose device; a claim the phone cannot check is
shown as the resealer's word, and one that contradicts the original the phone holds is said to.
Real relay, real Chromium, the specialist's real SDK client answering the relay's request."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from protocol.body import Body, HandoverOf
from protocol.frames import ResealRequest
from protocol.model import Priority, Purpose
from tests.identity_world import World
from tests.phone.phone_world import enrolled_phone, sent_from_phone


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def test_the_phone_shows_a_handed_over_consult_under_its_author(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, specialist, events, page,
                                                           problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        m = consult.message
        phone_device = m.sender_device_id
        # the specialist's device seals the intern's consult again (a shift change)
        await specialist.client.notices.on_frame(ResealRequest(
            thread_id=m.thread_id, message_id=m.message_id, devices=[phone_device],
            deadline=int(time.time()) + 600))
        # the phone holds the original: the copy is kept, and the consult listed once (§16.4)
        mine = page.locator(".message.mine", has_text="Also handed over by Dr Bo Ortho's device")
        await mine.wait_for()
        assert await page.locator(".message", has_text="Query scaphoid fracture.").count() == 1

        # a claim of a consult the phone never held: the resealer's word
        await specialist.client.sender.send_body(m.thread_id, Body(
            text="Ankle, bed 2: Weber B?", handover_of=HandoverOf(
                message_id=str(uuid.uuid4()), sender_user_id=intern.user_id,
                sender_device_id=phone_device, sent_at=int(m.sent_at) - 3600)),
            purpose=Purpose.DIRECT_CARE, priority=Priority.URGENT)
        claim = page.locator(".message.theirs", has_text="Ankle, bed 2")
        await claim.wait_for()
        said = await claim.inner_text()
        assert "Dr Ada Intern (as handed over by Dr Bo Ortho) · " in said, said
        assert "As handed over by Dr Bo Ortho at the shift change" in said, said

        # a claim about the phone's own consult naming someone else: contradicted
        await specialist.client.sender.send_body(m.thread_id, Body(
            text="Query scaphoid fracture (again).", handover_of=HandoverOf(
                message_id=m.message_id, sender_user_id=specialist.user_id,
                sender_device_id=specialist.client.device_id, sent_at=int(m.sent_at))),
            purpose=Purpose.DIRECT_CARE, priority=Priority.URGENT)
        wrong = page.locator(".message.theirs", has_text="(again)")
        await wrong.wait_for()
        assert "do NOT match the original on this phone" in await wrong.inner_text()
        assert problems == []
