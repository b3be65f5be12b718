"""The desktop's inbox is listed again on every event the page hears. When that replaced every
consult's element, a click whose button went down on a consult before the new list and came up
after it opened nothing: the browser sends the click only where both happened, and the first
element was gone. Now a consult the event did not change keeps its element (static/app.js
redraw, as the phone app's): the one under the pointer is still there and opens the consult. A
consult the event did change (a message in it: its unread count and last line) keeps its row and
its button too, and draws anew only the parts that changed. Real relay, real desktop client,
real Chromium."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.clients.test_desktop import ORTHO, browser_page, desktop_team, unlock_page
from tests.identity_world import World
from tests.orthanc import OrthancServer

KNEE = "Hot swollen knee, afebrile. Aspirate here or in clinic?"
ELBOW = "Supracondylar, radial pulse present. Reduce tonight?"


@contextlib.asynccontextmanager
async def knee_listed(world: World, tmp_path: Path, orthanc: OrthancServer
                      ) -> AsyncIterator[tuple[Any, list[str], Any, Any]]:
    """The specialist's inbox unlocked in the browser, with the intern's knee consult sent to
    it; yields the page, its problems, the intern's client and the knee's thread."""
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        intern = team.intern.client
        knee = await intern.create_thread(roles=[ORTHO])
        await intern.send_text(knee.thread_id, KNEE, subject="Knee, bed 7")
        yield page, problems, intern, knee


async def test_a_consult_the_event_did_not_change_keeps_the_element_under_the_pointer(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with knee_listed(world, tmp_path, orthanc) as (page, problems, intern, _knee):
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


async def test_a_consult_the_event_changed_keeps_the_element_under_the_pointer(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with knee_listed(world, tmp_path, orthanc) as (page, problems, intern, knee):
        item = page.locator(".thread-item", has_text="Knee, bed 7")
        await item.locator(".badge", has_text="1").wait_for()
        under_pointer = await item.element_handle()
        title = await item.locator("strong").element_handle()

        # The event: another message in this very consult; its count and last line change.
        await intern.send_text(knee.thread_id, "On warfarin, INR 2.4.")
        await item.locator(".badge", has_text="2").wait_for()

        # The same button, with its title, which did not change, still in it...
        assert await under_pointer.evaluate("(b) => b.isConnected")
        assert await title.evaluate("(t) => t.isConnected")
        assert await under_pointer.evaluate("(b, t) => b.contains(t)", title)
        assert await under_pointer.inner_text() == await item.inner_text()
        # ...and the click that ends on it opens the consult, with both messages.
        await under_pointer.click()
        await page.locator("#thread .message", has_text="On warfarin, INR 2.4.").wait_for()
        await page.locator("#thread .message", has_text=KNEE).wait_for()
        assert problems == []
