"""When the desktop says a message was read, in a real Chromium (Playwright) against a real
relay: a message that arrives in the consult on screen is read at once, and the intern's
device is told, while the page is in front; while its window is behind others (or minimised)
it stays unread, and nobody is told "read", until the window comes back to the front
(docs/HAZARD_LOG.md HAZ-02).

Screenshots go to test-artefacts/desktop-reading/.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import ReceiptEvent
from tests.clients.test_desktop import (
    DesktopTeam,
    browser_page,
    desktop_team,
    unlock_page,
    urgent_consult_read,
    wait_for_event,
)
from tests.helpers import ROOT
from tests.identity_world import World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-reading"

# Hiding the window, as the browser tells a page: no longer visible, no longer focused.
BEHIND = """() => {
  Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "hidden"});
  document.hasFocus = () => false;
  window.dispatchEvent(new Event("blur"));
  document.dispatchEvent(new Event("visibilitychange"));
}"""
IN_FRONT = """() => {
  delete document.visibilityState;
  delete document.hasFocus;
  document.dispatchEvent(new Event("visibilitychange"));
  window.dispatchEvent(new Event("focus"));
}"""


@pytest.fixture(autouse=True, scope="module")
def _shots() -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)


def _reads(events: asyncio.Queue[Any], message_id: str) -> list[ReceiptEvent]:
    """The "read" receipts for ``message_id`` among the events received so far (drained)."""
    found = []
    while not events.empty():
        event = events.get_nowait()
        if isinstance(event, ReceiptEvent) and event.message_id == message_id \
                and event.kind == "read":
            found.append(event)
    return found


@dataclasses.dataclass
class OnScreen:
    """An urgent consult the specialist has open, and read, on the desktop's page."""

    team: DesktopTeam
    page: Any
    problems: list[str]
    events: asyncio.Queue[Any]  # the intern's
    thread_id: str


@contextlib.asynccontextmanager
async def consult_on_screen(world: World, tmp_path: Path, orthanc: OrthancServer,
                            text: str, subject: str) -> AsyncIterator[OnScreen]:
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        events = team.intern.client.subscribe()
        await unlock_page(page, team.desktop)
        thread, _, _ = await urgent_consult_read(page, team, text, subject)
        yield OnScreen(team, page, problems, events, thread.thread_id)


async def test_a_message_arriving_in_the_consult_on_screen_is_read_and_its_sender_told(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with consult_on_screen(world, tmp_path, orthanc, "Bay 2: wrist, snuffbox tenderness",
                                 "Bay 2 wrist") as on:
        page, events = on.page, on.events
        assert await page.evaluate("document.hasFocus()")  # the page is in front

        later = await on.team.intern.client.send_text(on.thread_id, "Scaphoid views attached")
        await page.locator(f'.message[data-message-id="{later.message_id}"]').wait_for()
        read = await wait_for_event(events, ReceiptEvent, lambda e: (
            e.message_id == later.message_id and e.kind == "read"))
        assert read.user_id == on.team.specialist.user_id
        await page.locator(".thread-item.selected .badge").wait_for(state="detached")
        await page.screenshot(path=SHOTS / "01-read-on-screen.png")
        assert on.problems == []


async def test_a_message_arriving_while_the_window_is_behind_stays_unread_until_it_is_back(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with consult_on_screen(world, tmp_path, orthanc, "Bay 4: elbow, fat pad sign?",
                                 "Bay 4 elbow") as on:
        page, events = on.page, on.events
        await page.evaluate(BEHIND)  # the specialist went to another window

        later = await on.team.intern.client.send_text(on.thread_id,
                                                      "Now pulseless: please call")
        await page.locator(f'.message[data-message-id="{later.message_id}"]').wait_for()
        await wait_for_event(events, ReceiptEvent, lambda e: (
            e.message_id == later.message_id and e.kind == "delivered"))
        badge = page.locator(".thread-item.selected .badge")
        await badge.wait_for()
        assert await badge.inner_text() == "1"
        await asyncio.sleep(1.5)  # what a wrong "read" would take to arrive, and more
        assert _reads(events, later.message_id) == []
        assert await badge.inner_text() == "1"
        await page.screenshot(path=SHOTS / "02-unread-while-behind.png")

        await page.evaluate(IN_FRONT)  # back at the desktop
        read = await wait_for_event(events, ReceiptEvent, lambda e: (
            e.message_id == later.message_id and e.kind == "read"))
        assert read.user_id == on.team.specialist.user_id
        await badge.wait_for(state="detached")
        assert on.problems == []
