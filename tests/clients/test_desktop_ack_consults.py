"""The desktop's *I'm on it (a)* only under a consult that asks this user for help, in a real
Chromium against a real relay (docs/USER_GUIDE.md "Specialists"; the rule is the SDK's,
clients/sdk/acking.py, as ``lightbox ack`` and its hint use it): none under a colleague's reply
to the user's own consult (written on her phone), and asked anyway through the HTTP API (as a
script would) it is refused and nothing reaches the relay; none under a break-glass follow-up
note, while the emergency consult above it keeps its button; once for a consult of two opening
messages (under the second), and none once it was acknowledged, whichever of them it was said to.

Screenshots go to test-artefacts/desktop-ack-consults/.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from clients.sdk.breakglass import Emergency
from protocol.model import EmergencyCategory, Priority
from tests.clients.test_desktop import (
    ORTHO,
    browser_page,
    desktop_http,
    desktop_team,
    unlock_page,
)
from tests.clients.test_desktop_ack_own_devices import phone_linked_from_the_desktops_profile
from tests.consent_world import count
from tests.helpers import ROOT, eventually, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-ack-consults"


def shots(name: str) -> Path:
    """This test's screenshot folder, emptied."""
    folder = SHOTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


async def test_no_im_on_it_under_a_reply_to_her_own_consult(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    folder = shots("reply")
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        # Bo, the desktop's user, asks Ada something from his phone; Ada answers.
        phone = await phone_linked_from_the_desktops_profile(world, tmp_path, "bo-phone")
        await phone.start(wait_connected=seconds(10))
        try:
            await unlock_page(page, team.desktop)
            ada = await phone.resolve_user("intern")
            thread = await phone.create_thread(users=[ada.user_id])
            asked = await phone.send_text(thread.thread_id, "Can you get a lateral view?",
                                          subject="Knee, bed 7")
        finally:
            await phone.close()
        reply = await team.intern.client.send_text(thread.thread_id, "Lateral done, uploading.")

        await page.locator(".thread-item", has_text="Knee, bed 7").click()
        answer = page.locator(f'.message[data-message-id="{reply.message_id}"]')
        await answer.wait_for()
        await page.locator(f'.message[data-message-id="{asked.message_id}"]').wait_for()
        assert await answer.locator(".text").inner_text() == "Lateral done, uploading."
        assert await page.locator(".ack-button").count() == 0  # neither under hers nor Ada's
        await page.screenshot(path=folder / "01-her-consult-and-the-reply.png")

        async with desktop_http(team.desktop) as http:  # as a script would
            r = await http.post(f"/api/messages/{reply.message_id}/ack", json={})
        assert (r.status_code, r.json()["error"]) == (
            400, f"message {reply.message_id} is Dr Ada Intern's reply in a consult you sent: "
                 "not a consult for you to acknowledge, so nothing is sent; reply instead")
        assert await count(world, "SELECT count(*) FROM receipts WHERE message_id = $1 AND "
                           "kind = 'acknowledged'", uuid.UUID(reply.message_id)) == 0
        assert problems == []


async def test_no_im_on_it_under_a_break_glass_follow_up_note(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    folder = shots("break-glass")
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        intern = team.intern.client
        thread = await intern.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        sent = await intern.send_text(
            thread.thread_id, "Collapsed, GCS 6, please come", subject="Collapse, bay 1",
            emergency=Emergency(EmergencyCategory("unconscious"),
                                "Unconscious after a fall, nobody to ask tonight"))
        (case,) = await intern.break_glass_pending()
        await intern.follow_up_break_glass(
            case.case_id, no_consent="patient_died",
            words="The patient died before regaining consciousness")

        await page.locator(".thread-item", has_text="Collapse, bay 1").click()
        note = page.locator(".message", has_text="Break-glass follow-up")
        await note.wait_for()
        consult = page.locator(f'.message[data-message-id="{sent.message_id}"]')
        assert await consult.locator(".ack-button").count() == 1
        assert await note.locator(".ack-button").count() == 0
        assert await page.locator(".ack-button").count() == 1
        await page.screenshot(path=folder / "01-consult-and-follow-up.png")
        assert problems == []


async def test_one_im_on_it_for_a_consult_of_two_opening_messages_and_acknowledged_once(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """Ada's consult to the on-call role, then a second message in it before anyone answered:
    both open it. One *I'm on it (a)*, under the second (the last of them, nearest the newest
    information); pressed, the consult is acknowledged once, said once under the second, with
    no button left under the first. Before, a button came under each, and the first kept its
    button once the second was acknowledged."""
    folder = shots("two-opening-messages")
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        intern = team.intern.client
        thread = await intern.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        first = await intern.send_text(thread.thread_id, "Displaced distal radius?",
                                       subject="Wrist, bed 4")
        second = await intern.send_text(thread.thread_id, "Fingers numb now too.")

        await page.locator(".thread-item", has_text="Wrist, bed 4").click()
        opening = page.locator(f'.message[data-message-id="{first.message_id}"]')
        latest = page.locator(f'.message[data-message-id="{second.message_id}"]')
        await opening.wait_for()
        await latest.locator(".ack-button").wait_for()
        assert await page.locator(".ack-button").count() == 1
        assert await opening.locator(".ack-button, .ack-state").count() == 0
        await page.screenshot(path=folder / "01-one-button-under-the-second-message.png")

        await latest.locator(".ack-button").click()
        await latest.locator(".ack-state").wait_for()
        assert await latest.locator(".ack-state").inner_text() == "You acknowledged this consult"
        assert await page.locator(".ack-button").count() == 0
        assert await page.locator(".ack-state").count() == 1
        await page.locator(".thread-item.selected .meta", has_text="- acknowledged").wait_for()
        await page.screenshot(path=folder / "02-the-consult-acknowledged-once.png")
        assert await count(world, "SELECT count(*) FROM receipts WHERE kind = 'acknowledged' "
                           "AND message_id = ANY($1::uuid[])",
                           [uuid.UUID(first.message_id), uuid.UUID(second.message_id)]) == 1
        assert problems == []


async def test_no_im_on_it_once_her_phone_acknowledged_the_first_opening_message(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The consult of two opening messages; Bo says "I'm on it" to the first on his phone.
    The desktop offers it under neither and says once, where its button would be, that the
    consult is acknowledged on another of his devices. Before, the second kept its button."""
    folder = shots("acknowledged-on-the-phone")
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        phone = await phone_linked_from_the_desktops_profile(world, tmp_path, "bo-phone")
        await phone.start(wait_connected=seconds(10))
        try:
            await unlock_page(page, team.desktop)
            intern = team.intern.client
            thread = await intern.create_thread(roles=[ORTHO], priority=Priority.URGENT)
            first = await intern.send_text(thread.thread_id, "Displaced distal radius?",
                                           subject="Wrist, bed 4")
            second = await intern.send_text(thread.thread_id, "Fingers numb now too.")
            await page.locator(".thread-item", has_text="Wrist, bed 4").wait_for()
            await phone.wait_synced(seconds(15))
            assert await phone.acknowledge(first.message_id, wait=seconds(10))

            async def kept() -> bool:
                return await count(world, "SELECT count(*) FROM receipts WHERE message_id = $1 "
                                   "AND kind = 'acknowledged'", uuid.UUID(first.message_id)) == 1
            await eventually(kept, timeout=15)
        finally:
            await phone.close()

        await page.locator(".thread-item", has_text="Wrist, bed 4").click()
        opening = page.locator(f'.message[data-message-id="{first.message_id}"]')
        latest = page.locator(f'.message[data-message-id="{second.message_id}"]')
        await latest.locator(".ack-state").wait_for()
        assert await latest.locator(".ack-state").inner_text() == (
            "You acknowledged this consult (on another of your devices)")
        assert await opening.locator(".ack-button, .ack-state").count() == 0
        assert await page.locator(".ack-button").count() == 0
        await page.locator(".thread-item.selected .meta",
                           has_text="- acknowledged on another of your devices").wait_for()
        await page.screenshot(path=folder / "01-acknowledged-on-the-phone-said-once.png")
        # Asked anyway through the HTTP API (as a script would), of the second message: the
        # consult is acknowledged already, so nothing goes to the relay again.
        async with desktop_http(team.desktop) as http:
            r = await http.post(f"/api/messages/{second.message_id}/ack", json={})
        assert r.status_code == 200, r.text
        assert (r.json()["acknowledged"], r.json()["already"]) == (True, True)
        assert await count(world, "SELECT count(*) FROM receipts WHERE kind = 'acknowledged' "
                           "AND message_id = $1", uuid.UUID(second.message_id)) == 0
        assert problems == []
