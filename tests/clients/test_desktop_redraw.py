"""The desktop's inbox is listed again on every event the page hears. When that replaced every
consult's element, a click whose button went down on a consult before the new list and came up
after it opened nothing: the browser sends the click only where both happened, and the first
element was gone. Now a consult the event did not change keeps its element (static/app.js
redraw, as the phone app's): the one under the pointer is still there and opens the consult.
Real relay, real desktop client, real Chromium."""

from __future__ import annotations

from pathlib import Path

from tests.clients.test_desktop import ORTHO, browser_page, desktop_team, unlock_page
from tests.identity_world import World
from tests.orthanc import OrthancServer

KNEE = "Hot swollen knee, afebrile. Aspirate here or in clinic?"
ELBOW = "Supracondylar, radial pulse present. Reduce tonight?"


async def test_a_consult_the_event_did_not_change_keeps_the_element_under_the_pointer(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        intern = team.intern.client
        knee = await intern.create_thread(roles=[ORTHO])
        await intern.send_text(knee.thread_id, KNEE, subject="Knee, bed 7")
        elbow = await intern.create_thread(roles=[ORTHO])
        await intern.send_text(elbow.thread_id, ELBOW, subject="Elbow, bay 2")
        item = page.locator(".thread-item", has_text="Knee, bed 7")
        await item.wait_for()
        await page.locator(".thread-item", has_text="Elbow, bay 2").wait_for()
        under_pointer = await item.element_handle()

        # The event: another message in the other consult; the inbox is listed again.
        await intern.send_text(elbow.thread_id, "Also: the radial pulse is weaker now.")
        await page.locator(".thread-item", has_text="Elbow, bay 2").locator(
            ".badge", has_text="2").wait_for()

        # The knee's element is the one that was under the pointer, still in the page...
        assert await under_pointer.evaluate("(b) => b.isConnected")
        # ...and the click that ends on it opens the knee's consult.
        await under_pointer.click()
        await page.locator("#thread .message", has_text=KNEE).wait_for()
        assert await page.locator("#thread .message", has_text=ELBOW).count() == 0
        assert problems == []
