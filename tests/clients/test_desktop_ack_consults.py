"""The desktop's *I'm on it (a)* only under a consult that asks this user for help, in a real
Chromium against a real relay (docs/USER_GUIDE.md "Specialists"; the rule is the SDK's,
clients/sdk/acking.py, as ``lightbox ack`` and its hint use it): none under a colleague's reply
to the user's own consult (written on her phone), and asked anyway through the HTTP API (as a
script would) it is refused and nothing reaches the relay; none under a break-glass follow-up
note, while the emergency consult above it keeps its button.

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
from tests.helpers import ROOT, seconds
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
