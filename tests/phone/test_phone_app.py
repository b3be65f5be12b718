"""The intern's phone app in a real browser (Debian's Chromium in mobile emulation: a phone's
viewport, touch, a fake camera) against a real relay, served by ``lightbox-phone``'s app on its
own origin: scan the handout's QR code, check the organisation key, choose a passphrase, send
a consult to the on-call role, see it read (a signed receipt) and the specialist's reply (a
real SDK client); lock, a
wrong passphrase, unlock. Screenshots of every screen go to test-artefacts/phone/; axe-core
finds no serious or critical violation on any of them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from clients.admin.handout import enrol_uri
from clients.admin.orgkey import fingerprint
from clients.sdk.client import MessageEvent
from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    SHOTS,
    axe_violations,
    listening_specialist,
    phone_page,
    provisioned_intern,
    qr_image,
    space_taken,
    still_video,
)

ORTHO = "orthopaedics_oncall"
PASSPHRASE = "amber kettle nightshift wrist"


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 60}


async def shot(page: Any, name: str, violations: dict[str, Any]) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    found = await axe_violations(page)
    if found:
        violations[name] = found


async def test_intern_scans_the_handout_enrols_sends_to_the_role_and_sees_the_reply(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    # This test's own screens (01-06) from the last run, not the folder: other phone modules
    # may be saving theirs into it at the same moment (`make test` runs two xdist workers).
    for old in SHOTS.glob("0[1-6]-*.png"):
        old.unlink(missing_ok=True)
    intern = await provisioned_intern(world)
    specialist, events = await listening_specialist(world, tmp_path)
    video = still_video(tmp_path / "handout.y4m",
                        qr_image(enrol_uri(world.relay.base_url, intern.code)))
    violations: dict[str, Any] = {}
    try:
        async with phone_page(video=video) as (page, problems):
            await page.goto(origin)
            await page.locator("#screen-enrol").wait_for()
            await shot(page, "01-enrol", violations)
            await page.tap("#scan")
            # The camera sees the handout: the code is read and the package opened.
            await page.locator("#screen-confirm").wait_for()
            assert await page.text_content("#fingerprint") == fingerprint(intern.org.key.public)
            assert await page.text_content("#who") == "Dr Ada Intern"
            await shot(page, "02-check-organisation-key", violations)
            await page.tap("#fp-match")
            await page.locator("#screen-passphrase").wait_for()
            await page.fill("#new-pass", PASSPHRASE)
            await page.fill("#new-pass2", PASSPHRASE + "x")
            await page.tap("#enrol-finish")
            await page.locator("#pass-error", has_text="The two passphrases differ").wait_for()
            await page.fill("#new-pass2", PASSPHRASE)
            await shot(page, "03-passphrase", violations)
            await page.tap("#enrol-finish")
            await page.locator("#screen-home").wait_for()
            await page.locator("#conn", has_text="connected").wait_for()
            assert await page.inner_text("#me") == "This phone is Dr Ada Intern's (intern)."
            assert await space_taken(page, "#notice") == 0  # no blank band above the threads
            assert await space_taken(page, "#sso-status") == 0
            await shot(page, "04-home", violations)

            await page.fill("#subject", "Wrist after a fall")
            await page.fill("#text", "Query scaphoid fracture, tender snuffbox. Please review.")
            await page.tap("#send")
            await page.locator("#send-status", has_text="Sent").wait_for()
            received = await wait_for_message(events, "Query scaphoid fracture")
            assert received.message.sender_user_id == intern.user_id
            assert received.body.subject == "Wrist after a fall"
            # The specialist reads it: the phone shows the signed read receipt.
            await specialist.client.mark_read(received.message.thread_id)
            await page.locator(".message.mine .meta", has_text="read by Dr Bo Ortho").wait_for()
            await specialist.client.send_text(received.message.thread_id,
                                              "Seen: splint and fracture clinic tomorrow.",
                                              reply_to=received.message.message_id)
            reply = page.locator(".message.theirs", has_text="splint and fracture clinic")
            await reply.wait_for()
            await page.locator("#notice", has_text="New message from Dr Bo Ortho").wait_for()
            assert "Dr Bo Ortho" in (await reply.text_content() or "")
            assert await page.inner_text(".thread h3") == \
                "Wrist after a fall · orthopaedics_oncall · Urgent"
            await shot(page, "05-reply", violations)

            # Lock; a wrong passphrase is a sentence, the right one shows the thread again.
            await page.tap("#lock")
            await page.locator("#screen-unlock").wait_for()
            await page.fill("#passphrase", "not the passphrase at all")
            await page.tap("#unlock")
            await page.locator("#unlock-error", has_text="That passphrase is not right").wait_for()
            await shot(page, "06-unlock-wrong-passphrase", violations)
            await page.fill("#passphrase", PASSPHRASE)
            await headers_seen_on_screens(page)
            await page.tap("#unlock")
            await page.locator(".message.theirs", has_text="splint and fracture clinic").wait_for()
            await page.locator("#conn", has_text="connected").wait_for()
            # From the tap to the connection the header says "connecting…", never "locked"
            # over the unlocked home screen.
            seen = await page.evaluate("() => window.__headers")
            assert ["home", "locked"] not in seen
            assert ["home", "connecting…"] in seen
            assert problems == []
    finally:
        specialist.client.unsubscribe(events)
        await specialist.client.close()
    assert violations == {}


async def headers_seen_on_screens(page: Any) -> None:
    """From now on, record in ``window.__headers`` every [screen, header state] the page
    shows (a MutationObserver over the header and the screen marker)."""
    await page.evaluate("""() => {
      window.__headers = [];
      const note = () => window.__headers.push(
        [document.body.dataset.screen, document.getElementById("conn").textContent]);
      const seen = new MutationObserver(note);
      seen.observe(document.getElementById("conn"), {childList: true, characterData: true,
                                                     subtree: true});
      seen.observe(document.body, {attributes: true, attributeFilter: ["data-screen"]});
    }""")


async def wait_for_message(queue: asyncio.Queue[Any], text: str) -> MessageEvent:
    async with asyncio.timeout(seconds(20)):
        while True:
            event = await queue.get()
            if isinstance(event, MessageEvent) and text in event.body.text:
                return event
