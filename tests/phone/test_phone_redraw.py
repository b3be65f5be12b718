"""Every event the app hears (a receipt, a message in another consult, a photo downloaded)
draws the list of consults again. When that made every element anew, a tap whose finger came
down on a consult's button before the redraw and up after it opened nothing: the browser sends
the click to the element the touch began on, and it was gone (found as a test that tapped
*Reply or add a photo* while the specialist's film was arriving, and waited in vain for the
consult's screen). Now a consult the event did not change keeps its elements (main.ts redraw):
the button under the finger is still there, in its place, and opens the consult. And a consult
the event did change (the specialist's answer in it, his film finished downloading) keeps its
row and the button, and draws anew only what changed in it. Real relay, real Chromium."""

from __future__ import annotations

from pathlib import Path

from tests.identity_world import World
from tests.phone.phone_world import enrolled_phone, sent_from_phone

KNEE = "Hot swollen knee, afebrile. Aspirate here or in clinic?"
ELBOW = "Elbow, bay 2: supracondylar, radial pulse present. Reduce tonight?"


async def test_a_consult_the_event_did_not_change_keeps_the_button_under_the_finger(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, specialist, events, page,
                                                           problems):
        await sent_from_phone(page, events, KNEE)
        elbow = await sent_from_phone(page, events, ELBOW)
        knee = page.locator("#threads .thread", has_text=KNEE)
        # Both settled: the specialist's device said it has them (his client does by itself).
        for text in (KNEE, ELBOW):
            await page.locator("#threads .thread", has_text=text).locator(
                ".meta", has_text="delivered by Dr Bo Ortho").wait_for()
        button = await knee.locator(".open").element_handle()

        # The event: the specialist answers the other consult; the list is drawn again.
        await specialist.client.send_text(elbow.message.thread_id, "Coming down now.")
        await page.locator("#threads .message.theirs", has_text="Coming down now.").wait_for()

        # The knee's button is the one that was under the finger, still in the page...
        assert await button.evaluate("(b) => b.isConnected")
        # ...and the tap that ends on it opens the knee's consult.
        await button.tap()
        await page.locator("#screen-thread").wait_for()
        shown = await page.inner_text("#thread-messages")
        assert KNEE in shown and ELBOW not in shown, shown
        assert problems == []


async def test_a_consult_the_event_changed_keeps_the_button_under_the_finger(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """The specialist answers the very consult whose button is under the finger (the event
    that lost a tap in a whole run: his film arriving in it)."""
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, specialist, events, page,
                                                           problems):
        knee_sent = await sent_from_phone(page, events, KNEE)
        knee = page.locator("#threads .thread", has_text=KNEE)
        await knee.locator(".meta", has_text="delivered by Dr Bo Ortho").wait_for()
        row = await knee.element_handle()
        button = await knee.locator(".open").element_handle()
        mine = await knee.locator(".message.mine").element_handle()

        await specialist.client.send_text(knee_sent.message.thread_id, "Aspirate here, now.")
        await knee.locator(".message.theirs", has_text="Aspirate here, now.").wait_for()

        # The row changed (his answer is in it), and is the same row, with the same button
        # and the intern's own message, which did not change, in it...
        for kept in (row, button, mine):
            assert await kept.evaluate("(e) => e.isConnected")
        assert await row.evaluate("(r, b) => r.contains(b)", button)
        # ...and the tap that ends on the button opens the consult, his answer in it.
        await button.tap()
        await page.locator("#screen-thread").wait_for()
        await page.locator("#thread-messages .message.theirs",
                           has_text="Aspirate here, now.").wait_for()
        assert problems == []
