"""A consult the relay refuses, by the SDK's rule (clients/sdk/connection.py, sending.py;
PROTOCOL §3.5 "Outbox"): refused for good (a sealed message over the relay's size limit), it
leaves the outbox and is shown as not sent, in words, with what to do, never left "sending";
refused for now (the phone's send rate), it stays in the outbox and the intern is told it goes
by itself; refused because the on-call team's devices changed while it was sealed
(``device_set_mismatch``), it is sealed again once for the current devices and stored. Real
relay, real Chromium, the specialist's real SDK client."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import MessageEvent
from tests.identity_world import World
from tests.phone.phone_world import (
    ORTHO,
    SHOTS,
    axe_violations,
    enrolled_phone,
    fetch_value,
    next_event,
    sent_from_phone,
    vault_names,
)


async def stored_from(world: World, user_id: str) -> int:
    """How many messages the relay stored from the user."""
    count: int = await fetch_value(world, "SELECT count(*) FROM messages WHERE "
                                   "sender_user_id = $1", uuid.UUID(user_id))
    return count


async def outbox(page: Any) -> list[str]:
    return [n for n in await vault_names(page) if n.startswith("outbox:")]


@pytest.mark.parametrize("phone_settings", [{"autolock_seconds": 600,
                                             "max_message_bytes": 4096}])
async def test_a_consult_refused_for_good_is_shown_not_sent_in_words_and_leaves_the_outbox(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, _s, _e, page, problems):
        await page.fill("#text", "Open fracture of the tibia, wound photographed. " * 100)
        await page.tap("#send")
        said = ("Not sent: the consult is too long for the relay, which refuses it as it is. "
                "Shorten it, or split it in two, and send it again.")
        await page.locator("#send-status", has_text="Not sent").wait_for()
        assert await page.locator("#send-status").inner_text() == said
        mine = page.locator(".message.mine")
        await mine.locator(".meta", has_text="not sent").first.wait_for()
        assert await mine.locator(".not-sent").inner_text() == said
        assert "sending" not in await mine.locator(".meta").first.inner_text()
        # Refused for good: out of the outbox (never resent), and still shown not sent after
        # the app reloads its threads from the vault.
        assert await outbox(page) == []
        await page.reload()
        await page.locator("#passphrase").fill("amber kettle nightshift wrist")
        await page.tap("#unlock")
        await page.locator(".message.mine .not-sent", has_text="too long").wait_for()
        assert await stored_from(world, intern.user_id) == 0
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "23-consult-not-sent.png"), full_page=True)
        assert await axe_violations(page) == []
        assert problems == []


@pytest.mark.parametrize("phone_settings", [{"autolock_seconds": 600,
                                             "rate_messages_per_minute": 1}])
async def test_a_consult_refused_for_now_stays_in_the_outbox_and_says_it_goes_by_itself(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, _s, events, page, problems):
        await sent_from_phone(page, events, "Query scaphoid fracture, please review.")
        await page.locator("#send-status", has_text="Sent: the relay stored it.").wait_for()
        await page.fill("#text", "Second patient: distal radius fracture, please call.")
        await page.tap("#send")
        await page.locator("#send-status", has_text="Not sent yet").wait_for()
        assert await page.locator("#send-status").inner_text() == (
            "Not sent yet: this phone sent too many messages in a short time. It is kept on "
            "this phone and sent by itself as soon as the relay takes it; it shows as sent "
            "then.")
        waiting = page.locator(".message.mine", has_text="distal radius")
        assert (await waiting.locator(".meta").first.inner_text()).endswith("· sending")
        assert await waiting.locator(".not-sent").count() == 0
        assert len(await outbox(page)) == 1
        assert await stored_from(world, intern.user_id) == 1
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "24-consult-kept-rate-limited.png"),
                              full_page=True)
        assert problems == []


async def test_a_consult_sealed_before_the_team_changed_is_sealed_again_and_stored(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, _s, events, page, problems):
        claimed = asyncio.Event()
        joined = asyncio.Event()

        async def claim_after_a_new_colleague(route: Any) -> None:
            if not claimed.is_set():  # the first claim only: the second seal goes through
                claimed.set()
                await joined.wait()
            await route.continue_()

        # The recipients are listed, then a second orthopaedic colleague's phone is enrolled
        # before the keys are claimed: the message is sealed for one device too few.
        await page.route("**/v1/keys/claim", claim_after_a_new_colleague)
        await page.fill("#text", "Pulseless foot after a fall, please call.")
        await page.tap("#send")
        await claimed.wait()
        cy = await world.onboard(world.org.user("cy", roles=(ORTHO,),
                                                display_name="Dr Cy Ortho"))
        joined.set()
        await next_event(events, MessageEvent, lambda e: "Pulseless foot" in e.body.text)
        await page.locator("#send-status", has_text="Sent: the relay stored it.").wait_for()
        await page.locator(".message.mine .meta", has_text="sent").wait_for()
        # Sealed again for both colleagues' devices: the new one's copy waits for it.
        assert await fetch_value(world, "SELECT count(*) FROM deliveries WHERE device_id = $1",
                                 uuid.UUID(cy.device_id)) == 1
        assert await outbox(page) == []
        assert await stored_from(world, intern.user_id) == 1
        assert problems == []
