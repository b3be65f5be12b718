"""Several messages dropped at once, in a real Chromium (Playwright) against a real relay
(docs/HAZARD_LOG.md HAZ-10: nothing lost in silence):

* the intern's phone sends four messages into three consults while the specialist's desktop
  is locked, and IT revokes the phone before the desktop opens them: the client drops each
  (clients/sdk/receiving.py) and the desktop names every one, a problem line each with who
  and when, not only the last; each consult is marked in the list (how many) and, opened,
  says each of its dropped messages, with who and when; the lines stay through a lock and
  unlock, until the specialist dismisses them;
* a consult's name comes only from a message's subject: one sent without a subject reads
  "(no subject yet)", never "New consult" nor another message's text; one of which this
  computer has only dropped messages says why it is empty, who and what IT did (so, in the
  list, before it is opened).

Screenshots go to test-artefacts/desktop-dropped/.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from clients.sdk.timefmt import format_time
from tests.clients.test_desktop import unlock_page
from tests.clients.test_desktop_revoked import consult_open, sent_while_locked
from tests.helpers import ROOT
from tests.identity_world import World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-dropped"
NO_SUBJECT = "(no subject yet)"
ONE_DROPPED = "Message dropped: Dr Ada Intern's device was revoked"


@pytest.fixture(autouse=True, scope="module")
def _shots() -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)


def _problem_line(sent: str) -> str:
    """A problem line's words after its "when": a message from the intern's revoked phone."""
    return (f"A message from Dr Ada Intern, sent {sent} from a device your organisation "
            f"revoked, was dropped: ask them what it said (certificate_revoked).")


def _consult_line(sent: str) -> str:
    return (f"A message of this consult from Dr Ada Intern, sent {sent}, was dropped because "
            f"their device was revoked: ask them what it said.")


async def test_every_message_dropped_from_a_revoked_phone_is_named_and_its_consult_marked(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with consult_open(world, tmp_path, orthanc, "Bay 8: wrist", "Bay 8 wrist") as on:
        page, problems = on.page, on.problems
        before = world.clock()
        hand, foot, knee = await sent_while_locked(
            on, [("Bay 1 hand", ["Bay 1: hand, first", "Bay 1: and a second"]),
                 ("Bay 2 foot", ["Bay 2: foot"]), ("Bay 3 knee", ["Bay 3: knee"])],
            devices=(await world.device_of(on.team.intern.user_id),))
        after = world.clock()
        sent_times = {format_time(before), format_time(after)}  # the relay's, as it stamped

        lines = page.locator("#notice-text .notice-line")
        await page.locator("#notice-text .notice-line:nth-child(4)").wait_for()
        said = await page.locator("#notice-text .notice-sentence").all_inner_texts()
        assert len(said) == 4, said  # every one, not only the last
        for line in said:
            stamp = re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d: ", line)
            assert stamp, line
            assert line[stamp.end():] in {_problem_line(t) for t in sent_times}, line
        assert await lines.locator(".notice-open").count() == 4
        assert await page.inner_text("#notice-dismiss") == "Dismiss all 4"

        # Each consult is marked in the list, with how many of its messages were dropped.
        await page.locator(".dropped-flag").nth(2).wait_for()
        flags = {thread_id: await page.inner_text(
                     f".thread-item[data-thread-id='{thread_id}'] .dropped-flag")
                 for thread_id in (hand, foot, knee)}
        assert flags == {hand: "2 messages dropped: ask their sender",
                         foot: "1 message dropped: ask its sender",
                         knee: "1 message dropped: ask its sender"}
        assert await page.locator(".dropped-flag").count() == 3  # not the consult it read
        # Its subject was in what was dropped: its name says why it is empty.
        names = {thread_id: await page.inner_text(
                     f".thread-item[data-thread-id='{thread_id}'] strong")
                 for thread_id in (hand, foot, knee)}
        assert names == {hand: "2 messages dropped: Dr Ada Intern's device was revoked",
                         foot: ONE_DROPPED, knee: ONE_DROPPED}
        await page.screenshot(path=SHOTS / "01-four-dropped-messages-named.png")

        # Opened (from its problem line here), a consult says each of its dropped messages.
        await lines.nth(0).locator(".notice-open").click()
        await page.locator("#thread .dropped").first.wait_for()
        opened = await page.locator(".thread-item.selected").get_attribute("data-thread-id")
        assert opened in {hand, foot, knee}
        await page.click(f".thread-item[data-thread-id='{hand}']")
        await page.locator("#thread .dropped:nth-child(2)").wait_for()
        in_hand = await page.locator("#thread .dropped").all_inner_texts()
        assert len(in_hand) == 2
        assert all(t in {_consult_line(s) for s in sent_times} for t in in_hand), in_hand
        assert await page.inner_text("#thread h2") == names[hand]
        assert await page.inner_text("#thread-empty") == (
            "No other message of this consult is on this computer.")
        await page.screenshot(path=SHOTS / "02-consult-with-two-dropped-messages.png")
        await page.click(f".thread-item[data-thread-id='{knee}']")
        await page.locator("#thread .dropped:nth-child(2)").wait_for(state="detached")
        assert await page.locator("#thread .dropped").count() == 1

        # The vault locked (by hand, or idle) is no dismissal: unlocked, all is said again.
        async with page.expect_response("**/api/lock"):
            await page.click("#lock")
        await page.locator("#password").wait_for()
        await unlock_page(page, on.team.desktop)
        await page.locator("#notice-text .notice-line:nth-child(4)").wait_for()
        assert await lines.count() == 4
        await page.locator(".dropped-flag").nth(2).wait_for()

        # Dismissed, the problem lines go (and stay gone); the consults stay marked.
        async with page.expect_response("**/api/notice/dismiss"):
            await page.click("#notice-dismiss")
        assert await page.locator("#notice").is_hidden()
        await page.reload()
        await page.locator(".dropped-flag").nth(2).wait_for()
        assert await page.locator("#notice").is_hidden()
        assert problems == []


async def test_a_consult_without_a_subject_on_this_computer_reads_no_subject_yet(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """One subject label: a consult whose every message here came without a subject is named
    "(no subject yet)", in the list and when opened, not by its message's text; one whose only
    message was dropped says so instead, not "(no subject yet)" nor "New consult"."""
    async with consult_open(world, tmp_path, orthanc, "Bay 8: wrist", "Bay 8 wrist") as on:
        page, problems, intern = on.page, on.problems, on.team.intern
        thread = await intern.client.create_thread(roles=["orthopaedics_oncall"])
        sent = await intern.client.send_text(
            thread.thread_id, "The record gateway could not file the image: no such MRN")
        item = page.locator(f".thread-item[data-thread-id='{thread.thread_id}']")
        await item.wait_for()
        assert await item.locator("strong").inner_text() == NO_SUBJECT
        await item.click()
        await page.locator(f".message[data-message-id='{sent.message_id}']").wait_for()
        assert await page.inner_text("#thread h2") == NO_SUBJECT
        await page.screenshot(path=SHOTS / "03-consult-without-subject.png")

        [dropped] = await sent_while_locked(
            on, [("Bay 4 shoulder", ["Bay 4: shoulder"])],
            devices=(await world.device_of(intern.user_id),))
        gone = page.locator(f".thread-item[data-thread-id='{dropped}']")
        await gone.locator(".dropped-flag").wait_for()
        assert await gone.locator("strong").inner_text() == ONE_DROPPED
        assert await page.locator(".thread-item", has_text="New consult").count() == 0
        await page.screenshot(path=SHOTS / "04-dropped-consult-without-subject.png")
        assert problems == []
