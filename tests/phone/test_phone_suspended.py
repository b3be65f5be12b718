"""IT suspends the intern while the phone app is open, then resumes her (USER_GUIDE "Interns:
the phone app"): the app says so once, in the banner, in the words the CLI and the desktop use
for ``user_suspended``; it leaves the relay alone meanwhile (a check now and then, waiting
longer each time, never a refresh and a connection a second); a consult written meanwhile is
kept on the phone, encrypted; and once IT resumes the account the phone comes back by itself
(the suspension ended its session at the relay: it signs in again with its passphrase, as after
an expired session) and sends what waited.

Suspended and resumed as IT's tool does it, by the organisation's signed revocation list
naming the user, then a newer one that no longer names her (POST /v1/admin/revocations). The
phone's requests to the relay are counted in the browser (its worker's included). Real relay,
real Chromium."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import MessageEvent
from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    SHOTS,
    RelayRequests,
    enrolled_phone,
    fetch_value,
    held_and_said_once,
    kept_while_held,
    next_event,
    sent_from_phone,
    vault_names,
)

SUSPENDED = ("Your account is suspended by your organisation: ask IT. Until IT resumes it, this "
             "phone cannot send or receive consults. Nothing is lost: what waits to be sent "
             "stays on this phone and goes by itself once your account is resumed.")
KEPT = ("Not sent yet: your account is suspended by your organisation. It is kept on this phone "
        "and sent by itself once IT resumes your account; it shows as sent then. If it is "
        "urgent, phone or page the on-call team.")
SUBJECT = "Ankle, bay 3"
TEXT = "Inversion injury, lateral malleolus tender, films attached later. Weight bearing?"


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def test_a_suspension_is_said_once_leaves_the_relay_alone_and_what_waits_goes_on_resume(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, _s, events, page, problems):
        await sent_from_phone(page, events, "Query scaphoid fracture.")
        requests = RelayRequests(page, world.relay.base_url)
        requests.count()
        r = await world.revoke(world.org, 1, users=(intern.user_id,))
        assert r.status_code == 200, r.text
        suspended_at = time.monotonic()
        await held_and_said_once(page, requests, banner=SUSPENDED, conn="suspended",
                                 once="suspended by your organisation")
        banner = page.locator("#banner")
        consult = await kept_while_held(page, world, subject=SUBJECT, text=TEXT, kept=KEPT,
                                        shot="70-suspended-said-once-consult-kept.png")

        # IT resumes the account: the phone, untouched, comes back at its next check (30 s
        # after the suspension), signs in again and sends the consult that waited.
        requests.count()
        r = await world.revoke(world.org, 2)
        assert r.status_code == 200, r.text
        await page.locator("#conn", has_text="connected").wait_for(timeout=seconds(60) * 1000)
        got = await next_event(events, MessageEvent, lambda e: TEXT in e.body.text)
        assert got.body.subject == SUBJECT
        await consult.locator(".message.mine .meta", has_text="· sent").wait_for()
        assert await banner.is_hidden()
        assert "suspended by your organisation" not in await page.inner_text("body")
        assert time.monotonic() - suspended_at < seconds(75)
        seen = list(requests.seen)
        assert 1 <= requests.of("POST /v1/auth/login") <= 2, seen
        assert [n for n in await vault_names(page) if n.startswith("outbox:")] == []
        assert await fetch_value(world, "SELECT count(*) FROM messages") == 2
        await page.screenshot(path=str(SHOTS / "71-resumed-consult-sent.png"), full_page=True)
        # The browser's own report of each refused request (403, then the 401 of the session
        # the suspension ended) is all the console has.
        assert [p for p in problems if "status of 403" not in p and "status of 401" not in p
                ] == [], problems


async def test_a_resumed_account_comes_back_at_once_when_the_intern_sends(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """The intern does not wait for the app's next check: the consult she sends once IT has
    resumed her signs the phone in again, and it goes at once."""
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, _s, events, page, _problems):
        await sent_from_phone(page, events, "Query scaphoid fracture.")
        requests = RelayRequests(page, world.relay.base_url)
        requests.count()
        r = await world.revoke(world.org, 1, users=(intern.user_id,))
        assert r.status_code == 200, r.text
        await page.locator("#banner", has_text=SUSPENDED).wait_for()
        # The third check (14 s after the suspension) refused: the next one is 16 s away.
        async with asyncio.timeout(seconds(30)):
            while requests.of("POST /v1/auth/refresh") < 3:
                await asyncio.sleep(0.1)
        r = await world.revoke(world.org, 2)
        assert r.status_code == 200, r.text
        resumed = time.monotonic()
        await page.fill("#text", TEXT)
        await page.tap("#send")
        await next_event(events, MessageEvent, lambda e: TEXT in e.body.text)
        assert time.monotonic() - resumed < 12, requests.seen
        await page.locator("#conn", has_text="connected").wait_for()
        assert await page.locator("#banner").is_hidden()
