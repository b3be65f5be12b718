"""Dropped messages survive a restart of the desktop, in a real Chromium (Playwright) against a
real relay (docs/HAZARD_LOG.md HAZ-10; clients/desktop/dropped.py): the intern's phone sends
three messages into two consults while the specialist's desktop is locked, and IT revokes the
phone before the desktop opens them, so the client drops each and acknowledges it (the relay
keeps nothing of them). The desktop is quit and started again on the same profile:

* each problem line and each consult's mark is said again, from the vault, sealed there like
  the rest (no sender's name or sentence in the clear on disk);
* a problem line dismissed stays dismissed after the next restart, while its consult stays
  marked;
* a consult's dropped messages dismissed in the consult stay dismissed after the next restart,
  and the other consult is still marked; the dismissed consult, with nothing else of it on this
  computer, leaves the inbox (the page says so), and stays out of it after the restart.

Screenshots go to test-artefacts/desktop-dropped-restart/.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.desktop.app import DesktopServer
from tests.clients.test_desktop import unlock_page
from tests.clients.test_desktop_revoked import Open, consult_open, sent_while_locked
from tests.helpers import ROOT
from tests.identity_world import World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-dropped-restart"
# While a launch stops, the open tab may ask it for something after its vault locked (423) or
# once nothing answers; Chromium logs each such failed load itself (test_desktop_restart.py).
RESTARTING = ("the server responded with a status of 423", "net::ERR_CONNECTION_REFUSED")
LEFT_INBOX = ("Its dropped messages are dismissed and nothing else of this consult is on this "
              "computer, so it has left the inbox. It comes back if anything more of it "
              "arrives.")


@pytest.fixture(autouse=True, scope="module")
def _shots() -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)


class Launches:
    """The specialist's desktop quit and started again on the same profile, in the same tab."""

    def __init__(self, on: Open, profile: Path) -> None:
        self.on, self.profile, self.current = on, profile, on.team.desktop

    async def restart(self) -> None:
        await self.current.stop()
        self.current = DesktopServer(self.profile, client_options={"backoff_base": 0.05,
                                                                   "backoff_max": 0.5})
        await self.current.start()
        await unlock_page(self.on.page, self.current)
        await self.on.page.locator("#inbox .thread-item").first.wait_for()

    async def said(self) -> tuple[list[str], dict[str, str]]:
        """(the problem lines, each consult's mark) on the page."""
        page = self.on.page
        lines = await page.locator("#notice-text .notice-sentence").all_inner_texts() \
            if await page.locator("#notice").is_visible() else []
        marks = {}
        for item in await page.locator(".thread-item").all():
            flag = item.locator(".dropped-flag")
            if await flag.count():
                marks[await item.get_attribute("data-thread-id") or ""] = \
                    await flag.inner_text()
        return lines, marks


@contextlib.asynccontextmanager
async def launches(on: Open, profile: Path) -> AsyncIterator[Launches]:
    it = Launches(on, profile)
    try:
        yield it
    finally:
        if it.current is not on.team.desktop:
            await it.current.stop()


def _sealed(profile: Path, *texts: str) -> list[str]:
    """Which of ``texts`` some file of the profile holds in the clear."""
    blobs = [p.read_bytes() for p in profile.rglob("*") if p.is_file()]
    return [t for t in texts if any(t.encode() in b for b in blobs)]


async def test_dropped_messages_are_said_again_after_a_restart_until_dismissed(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    profile = tmp_path / "specialist-profile"
    async with consult_open(world, tmp_path, orthanc, "Bay 8: wrist", "Bay 8 wrist") as on, \
            launches(on, profile) as desk:
        page, problems = on.page, on.problems
        hand, foot = await sent_while_locked(
            on, [("Bay 1 hand", ["Bay 1: hand, first", "Bay 1: and a second"]),
                 ("Bay 2 foot", ["Bay 2: foot"])],
            devices=(await world.device_of(on.team.intern.user_id),))
        await page.locator("#notice-text .notice-line:nth-child(3)").wait_for()
        await page.locator(".dropped-flag").nth(1).wait_for()
        before = await desk.said()
        assert len(before[0]) == 3 and all("Dr Ada Intern" in line for line in before[0])
        assert before[1] == {hand: "2 messages dropped: ask their sender",
                             foot: "1 message dropped: ask its sender"}
        await page.click(f".thread-item[data-thread-id='{hand}']")
        await page.locator("#thread .dropped:nth-child(2)").wait_for()
        in_hand = await page.locator("#thread .dropped").all_inner_texts()
        # as the client wrote them: without the page's capital and full stop
        sentences = [(s := line.split(": ", 1)[1])[0].lower() + s[1:-1] for line in before[0]]
        assert _sealed(profile, "Dr Ada Intern", *sentences, *in_hand) == []

        # Quit and started again: every line and mark is said again, the same.
        await desk.restart()
        await page.locator("#notice-text .notice-line:nth-child(3)").wait_for()
        assert await desk.said() == before
        await page.click(f".thread-item[data-thread-id='{hand}']")
        await page.locator("#thread .dropped:nth-child(2)").wait_for()
        assert await page.locator("#thread .dropped").all_inner_texts() == in_hand
        await page.screenshot(path=SHOTS / "01-dropped-said-again-after-a-restart.png")

        # The problem lines dismissed: gone after the next restart; the consults still marked.
        async with page.expect_response("**/api/notice/dismiss"):
            await page.click("#notice-dismiss")
        await desk.restart()
        await page.locator(".dropped-flag").nth(1).wait_for()
        assert await desk.said() == ([], before[1])

        # Dismissed in the consult: the hand consult's mark goes, and stays gone after the
        # next restart; the foot consult is still marked.
        await page.click(f".thread-item[data-thread-id='{hand}']")
        await page.locator("#thread .dropped:nth-child(2)").wait_for()
        assert await page.inner_text("#dropped-dismiss") == "Dismiss all 2"
        async with page.expect_response("**/dropped/dismiss"):
            await page.click("#dropped-dismiss")
        # Nothing else of it is on this computer: it leaves the inbox, and the page says so.
        assert await page.inner_text("#thread-left") == LEFT_INBOX
        hand_row = page.locator(f".thread-item[data-thread-id='{hand}']")
        await hand_row.wait_for(state="detached")
        await page.screenshot(path=SHOTS / "02-consult-left-the-inbox-once-dismissed.png")
        await desk.restart()
        await page.locator(".dropped-flag").first.wait_for()
        assert await desk.said() == ([], {foot: "1 message dropped: ask its sender"})
        assert await hand_row.count() == 0
        await page.click(f".thread-item[data-thread-id='{foot}']")
        await page.locator("#thread .dropped").wait_for()
        await page.screenshot(path=SHOTS / "03-after-dismissing-one-consult-and-a-restart.png")
        assert [p for p in problems if not any(e in p for e in RESTARTING)] == [], problems
