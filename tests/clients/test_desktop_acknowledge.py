"""What becomes of the specialist's "I'm on it (a)" on the desktop, in a real Chromium
(Playwright) against a real relay: the page never leaves them believing they acknowledged a
consult that the sender was not told about.

* refused by this computer (the local client answers 4xx/5xx): said under the message, in
  words, with what to do; the button stays, to try again;
* refused by the relay (``not_on_ladder``: someone reached as a named member of a consult
  whose on-call ladder they are not on): said under the message with what to do, the button
  comes back, and it stays so after the vault is locked and unlocked (kept in the vault);
* made while the relay is out of reach: shown as acknowledged on this computer, not sent yet;
  the running desktop sends it once the relay is back, and the page then shows it sent.

Screenshots go to test-artefacts/desktop-acknowledge/.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import ReceiptEvent
from protocol.model import Priority
from tests.clients.test_desktop import (
    ORTHO,
    browser_page,
    desktop_team,
    unlock_page,
    urgent_consult_open,
    wait_for_event,
)
from tests.clients.test_desktop_display import LOCKED_ANSWER
from tests.clinician_world import enrol_clinician
from tests.helpers import ROOT, make_settings, running_relay, seconds
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-acknowledge"
# The rota's name for the role the consults go to (the relay normalises it to ORTHO).
ROTA_ROLE = "role:orthopaedics-oncall"

# The relay of these tests: restarted on the same port by one of them; nothing expires.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024, expiry_grace=3600)


@pytest.fixture(autouse=True, scope="module")
def _shots() -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)


async def on_call_tonight(world: World, login: str, *, starts_in: int = -3600) -> None:
    """IT's rota: ``login`` alone is on the orthopaedic on-call ladder for the next hours,
    from ``starts_in`` seconds from now (positive: nobody is on call until then, a gap)."""
    org = world.org.org_id
    r = await world.http.put(f"/v1/admin/oncall/{org}/{ROTA_ROLE}",
                             headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    now = int(world.clock())
    r = await world.http.post(f"/v1/admin/oncall/{org}/{ROTA_ROLE}/shifts",
                              headers=world.admin_headers(),
                              json={"shifts": [{"starts_at": now + starts_in,
                                                "ends_at": now + 8 * 3600, "ladder": [login]}]})
    assert r.status_code == 200 and all(x["ok"] for x in r.json()["results"]), r.text


def _under(page: Any, message_id: str) -> Any:
    return page.locator(f'.message[data-message-id="{message_id}"]')


async def test_an_acknowledgement_refused_here_or_by_the_relay_is_said_under_the_consult(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The specialist is reached by name on a consult whose on-call ladder is someone else's.
    Their "I'm on it" is first refused by this computer, then by the relay: each time the page
    says so under the message, with what to do, and the button stays; the relay's refusal is
    still shown after locking and unlocking."""
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await enrol_clinician(world, tmp_path, "ortho-primary", roles=(ORTHO,),
                              display_name="Dr Cy Primary")
        await on_call_tonight(world, "ortho-primary")
        await unlock_page(page, team.desktop)
        thread = await team.intern.client.create_thread(
            roles=[ORTHO], users=[team.specialist.user_id], priority=Priority.URGENT)
        sent = await team.intern.client.send_text(
            thread.thread_id, "Bed 7: open tibial fracture, cold foot.", subject="Bed 7 tibia")
        await page.locator(".thread-item", has_text="Bed 7 tibia").click()
        consult = _under(page, sent.message_id)
        button = consult.locator(".ack-button")
        await button.wait_for()

        # 1. Refused by this computer: the local client is asked about a message it does not
        # hold (the request's id replaced on its way), and answers 404.
        async def elsewhere(route: Any) -> None:
            await route.continue_(url=route.request.url.replace(sent.message_id,
                                                                str(uuid.uuid4())))

        await page.route(f"**/api/messages/{sent.message_id}/ack", elsewhere)
        await button.click()
        refused_here = consult.locator(".ack-problem[role=alert]")
        await refused_here.wait_for()
        assert await refused_here.inner_text() == (
            "Not acknowledged: no such message on this computer. The sender has not been "
            "told you are on it: try again.")
        assert await consult.locator(".ack-state").count() == 0
        assert await button.is_visible()
        await page.screenshot(path=SHOTS / "01-refused-by-this-computer.png")
        await page.unroute(f"**/api/messages/{sent.message_id}/ack", elsewhere)
        assert [p for p in problems if "404" not in p] == [], problems  # Chromium logs the 404
        problems.clear()

        # 2. Tried again: this computer sends it; the relay refuses it (not on the ladder).
        await button.click()
        refused = consult.locator(".ack-problem", has_text="the relay refused it")
        await refused.wait_for()
        text = await refused.inner_text()
        assert text.startswith("Not acknowledged: the relay refused it (not_on_ladder: ")
        assert text.endswith("The sender has not been told you are on it: reply to tell "
                             "them, or phone them.")
        assert await consult.locator(".ack-state").count() == 0
        assert await button.is_visible()
        assert "acknowledged" not in await page.locator(".thread-item.selected").inner_text()
        await page.screenshot(path=SHOTS / "02-refused-by-the-relay.png")

        # 3. Kept in the vault: locked and unlocked, the page still says so.
        await page.click("#lock")
        await page.fill("#password", PASSWORD)
        await page.press("#password", "Enter")
        await page.locator(".thread-item", has_text="Bed 7 tibia").click()
        await refused.wait_for()
        assert await consult.locator(".ack-button").is_visible()
        await page.screenshot(path=SHOTS / "03-refused-after-unlocking.png")
        # The relay's refusal made the page list its consults again; a request of that refresh
        # still on its way when the vault locked is answered 423, which the browser logs (the
        # page then shows the unlock screen, as here). Nothing else may be logged.
        assert [p for p in problems if p != LOCKED_ANSWER] == [], problems


async def test_an_acknowledgement_made_while_the_relay_is_down_says_not_sent_yet_then_goes(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The relay goes down while the specialist reads a consult. "I'm on it" is taken by this
    computer and the page says it has not reached the sender yet (no button to press twice);
    it is kept in the vault, so locking the desktop before the relay is back does not lose it:
    at the next unlock the desktop sends it by itself, the intern is told, and the page shows
    it acknowledged."""
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        told = team.intern.client.subscribe()
        await unlock_page(page, team.desktop)
        _, sent, consult = await urgent_consult_open(
            page, team, "Bay 3: hip, shortened and rotated.", "Bay 3 hip")
        await consult.locator(".ack-button").wait_for()
        # Stopped off this loop: the desktop's client on it answers the relay's closing handshake.
        await asyncio.to_thread(world.relay.stop)
        await page.locator("#conn", has_text="reconnecting").wait_for()
        await consult.locator(".ack-button").click()
        waiting = consult.locator(".ack-waiting[role=status]")
        await waiting.wait_for()
        assert await waiting.inner_text() == (
            "Acknowledged on this computer, not sent yet: Lightbox cannot reach the relay, so "
            "the sender does not know yet. It is kept on this computer and goes by itself as "
            "soon as the relay can be reached while Lightbox is unlocked. If the consult "
            "cannot wait, phone the sender.")
        assert await consult.locator(".ack-button, .ack-state").count() == 0
        await page.locator(".thread-item.selected .meta",
                           has_text=" - acknowledged, not sent yet").wait_for()
        await page.screenshot(path=SHOTS / "04-acknowledged-while-the-relay-is-down.png")
        # Kept in the vault, not in this run's memory: the specialist locks the desktop (its
        # client stops) before the relay is back, and it still goes at the next unlock.
        await page.click("#lock")

        settings = make_settings(trusted_orgs_file=tmp_path / "trusted-orgs.json",
                                 port=int(world.relay.base_url.rsplit(":", 1)[1]),
                                 attachment_chunk_bytes=64 * 1024, expiry_grace=3600)
        async with running_relay(world.dsn, settings):
            await page.fill("#password", PASSWORD)
            await page.press("#password", "Enter")
            await page.locator(".thread-item", has_text="Bay 3 hip").click()
            ack = await wait_for_event(told, ReceiptEvent, lambda e: e.kind == "acknowledged")
            assert ack.message_id == sent.message_id and ack.display_name == "Dr Bo Ortho"
            await waiting.wait_for(state="detached", timeout=seconds(30) * 1000)
            await consult.locator(".ack-state", has_text="You acknowledged this").wait_for()
            assert await consult.locator(".ack-button, .ack-problem").count() == 0
            await page.locator(".thread-item.selected .meta",
                               has_text="- acknowledged").wait_for()
            assert "not sent yet" not in await page.locator(".thread-item.selected").inner_text()
            await page.screenshot(path=SHOTS / "05-acknowledgement-sent-once-the-relay-is-back.png")
            assert not problems, problems
