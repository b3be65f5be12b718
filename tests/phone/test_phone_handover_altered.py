"""A copy handed over at a shift change whose content is not the original's is not shown as
its author's words on the phone (docs/PROTOCOL.md §16.4; HAZ-02 C20 of docs/HAZARD_LOG.md):
it names the phone's own consult rightly (author, device, time) but its text was changed as
it was sealed again; the phone, holding the original, says its content does not match and
lists it on its own. Real relay, real Chromium, the specialist's real SDK client sealing it."""

from __future__ import annotations

from pathlib import Path

from protocol.body import Body, HandoverOf
from protocol.model import Priority, Purpose
from tests.identity_world import World
from tests.phone.phone_world import enrolled_phone, sent_from_phone
from tests.phone.test_phone_handover import phone_settings as phone_settings  # a 10-min lock


async def test_the_phone_says_a_copy_whose_text_was_changed_does_not_match_its_original(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, specialist, events, page,
                                                           problems):
        m = (await sent_from_phone(page, events, "Query scaphoid fracture.")).message
        await specialist.client.sender.send_body(m.thread_id, Body(
            text="Scaphoid fine, discharge.", handover_of=HandoverOf(
                message_id=m.message_id, sender_user_id=intern.user_id,
                sender_device_id=m.sender_device_id, sent_at=int(m.sent_at))),
            purpose=Purpose(m.purpose or "direct_care"), priority=Priority(m.priority))
        copy = page.locator(".message.theirs", has_text="discharge")
        await copy.wait_for()
        said = await copy.inner_text()
        assert "Dr Ada Intern (as handed over by Dr Bo Ortho) · " in said, said
        assert "Dr Bo Ortho's device on " in said, said
        assert ": its content does NOT match the original on this phone" in said, said
        assert await page.locator(".message.mine", has_text="scaphoid fracture").count() == 1
        assert problems == []
