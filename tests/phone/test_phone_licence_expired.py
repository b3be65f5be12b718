"""The intern's licence, as registered with her hospital, ends while the phone app is open, then
IT renews it (USER_GUIDE "Interns: the phone app"): the app says so once, in the banner, as an
account state only IT can change (as for a suspension: tests/phone/test_phone_suspended.py);
it leaves the relay alone meanwhile (a check now and then, waiting longer each time, never a
refresh and a connection a second); a consult written meanwhile is kept on the phone,
encrypted; and once IT renews the licence the phone comes back by itself (its session was not
ended: the next check's refresh is answered) and sends what waited.

The licence ends on the relay's wall clock, as the certificate IT issued says (the relay closes
the connection then, 4005 ``licence_expired``, and refuses every request 403, docs/PROTOCOL.md
§3); IT renews it as its tool does, with a newer certificate for the same user and key whose
licence ends a year later (PUT /v1/admin/users/{id}/certificate). The phone's requests to the
relay are counted in the browser (its worker's included). Real relay, real Chromium."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from clients.sdk.client import MessageEvent
from protocol.certs import issue_user_certificate
from tests.helpers import seconds
from tests.identity_world import User, World
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

EXPIRED = ("Your licence, as registered with your hospital, has expired: ask IT or medical "
           "staffing to renew it. Until it is renewed, this phone cannot send or receive "
           "consults. Nothing is lost: what waits to be sent stays on this phone and goes by "
           "itself once your licence is renewed.")
KEPT = ("Not sent yet: your licence, as registered with your hospital, has expired. It is kept "
        "on this phone and sent by itself once IT or medical staffing renews it; it shows as "
        "sent then. If it is urgent, phone or page the on-call team.")
SUBJECT = "Knee, bay 9"
TEXT = "Effusion after a fall, can straight-leg raise. Aspirate tonight or clinic?"
# The licence's end, this long after the intern is provisioned: enrolling the phone and sending
# a first consult take a few seconds of it.
LICENCE_LEFT = 40


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def renew_licence(world: World, intern: User) -> None:
    """IT renews the intern's licence for a year: her certificate issued again, later, for the
    same user, organisation and identity key (server/provisioning.py renew_certificate)."""
    assert intern.body.licence is not None
    body = msgspec.structs.replace(
        intern.body, serial=str(uuid.uuid4()), issued_at=intern.body.issued_at + 1,
        licence=msgspec.structs.replace(intern.body.licence,
                                        expires_at=int(time.time()) + 365 * 86400))
    r = await world.http.put(f"/v1/admin/users/{intern.user_id}/certificate",
                             headers=world.admin_headers(),
                             json={"user_certificate": issue_user_certificate(body,
                                                                              world.org.key)})
    assert r.status_code == 200, r.text


def until_expired(world: World, ends: int) -> float:
    """The licence ends now on the relay's wall clock (``world.clock``, moved on by what was
    left of it, at most LICENCE_LEFT seconds: within the 60 s the relay allows a request's
    signed time to differ from its own), rather than the test waiting for it. When it ended,
    in the test's time."""
    world.clock.advance(max(0.0, ends - world.clock()) + 1)
    return time.time()


async def test_an_expired_licence_is_said_once_leaves_the_relay_alone_and_renewal_brings_it_back(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    ends = int(time.time()) + LICENCE_LEFT
    async with enrolled_phone(world, tmp_path, origin, licence_expires_at=ends) as (
            intern, _s, events, page, problems):
        await sent_from_phone(page, events, "Query scaphoid fracture.")
        assert time.time() < ends - 2, "the phone was enrolled too late to see the licence end"
        requests = RelayRequests(page, world.relay.base_url)
        ended = until_expired(world, ends)
        requests.count()
        await held_and_said_once(page, requests, banner=EXPIRED, conn="licence expired",
                                 once="has expired")
        banner = page.locator("#banner")
        consult = await kept_while_held(page, world, subject=SUBJECT, text=TEXT, kept=KEPT,
                                        shot="72-licence-expired-said-once-consult-kept.png")

        # IT renews the licence: the phone, untouched, comes back at its next check (30 s
        # after the licence ended), and sends the consult that waited.
        requests.count()
        await renew_licence(world, intern)
        await page.locator("#conn", has_text="connected").wait_for(timeout=seconds(60) * 1000)
        got = await next_event(events, MessageEvent, lambda e: TEXT in e.body.text)
        assert got.body.subject == SUBJECT
        await consult.locator(".message.mine .meta", has_text="· sent").wait_for()
        assert await banner.is_hidden()
        assert "has expired" not in await page.inner_text("body")
        assert time.time() - ended < seconds(75)
        # Its session was not ended: refreshed, never a sign-in again.
        assert requests.of("POST /v1/auth/login") == 0, requests.seen
        assert [n for n in await vault_names(page) if n.startswith("outbox:")] == []
        assert await fetch_value(world, "SELECT count(*) FROM messages") == 2
        await page.screenshot(path=str(SHOTS / "73-licence-renewed-consult-sent.png"),
                              full_page=True)
        # The browser's own report of each refused request (403) is all the console has.
        assert [p for p in problems if "status of 403" not in p] == [], problems


async def test_a_renewed_licence_comes_back_at_once_when_the_intern_sends(
        phone: tuple[World, str], tmp_path: Path) -> None:
    """The intern does not wait for the app's next check: the consult she sends once IT has
    renewed her licence goes at once, and the phone connects again with it."""
    world, origin = phone
    ends = int(time.time()) + LICENCE_LEFT
    async with enrolled_phone(world, tmp_path, origin, licence_expires_at=ends) as (
            intern, _s, events, page, _problems):
        await sent_from_phone(page, events, "Query scaphoid fracture.")
        requests = RelayRequests(page, world.relay.base_url)
        until_expired(world, ends)
        requests.count()
        await page.locator("#banner", has_text=EXPIRED).wait_for()
        # The third check (14 s after the licence ended) refused: the next one is 16 s away.
        async with asyncio.timeout(seconds(30)):
            while requests.of("POST /v1/auth/refresh") < 3:
                await asyncio.sleep(0.1)
        await renew_licence(world, intern)
        renewed = time.monotonic()
        await page.fill("#text", TEXT)
        await page.tap("#send")
        await next_event(events, MessageEvent, lambda e: TEXT in e.body.text)
        assert time.monotonic() - renewed < 12, requests.seen
        await page.locator("#conn", has_text="connected").wait_for(timeout=12_000)
        assert await page.locator("#banner").is_hidden()
