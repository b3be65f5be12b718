"""The phone takes bundles (docs/PROTOCOL.md §3.6): its websocket asks for the
``lightbox.bundle`` subprotocol, the relay selects it, and a phone coming back to a backlog gets
several deliveries in one websocket message, each handled as if it had come alone. What the
browser asked, what the relay answered and every message it received are read through
Chromium's DevTools protocol, from the app's Web Worker (tests/phone/devtools.py). Real relay,
real Chromium."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.identity_world import World
from tests.phone.devtools import carried, devtools_phone_page
from tests.phone.phone_world import (
    PASSPHRASE,
    enrol_by_code,
    intern_and_specialist,
    sent_from_phone,
)

BUNDLE = "lightbox.bundle"
REPLIES = 10


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def test_the_phone_asks_for_bundles_and_the_relay_selects_them(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with intern_and_specialist(world, tmp_path) as (intern, _s, _e), \
            devtools_phone_page(tmp_path) as (page, problems, sockets):
        await enrol_by_code(page, origin, intern.code)
        # The app's own upgrade request, as Chromium sent it, and the relay's answer.
        assert [r.get("sec-websocket-protocol") for r in sockets.requests] == [BUNDLE]
        assert [a.get("sec-websocket-protocol") for a in sockets.answers] == [BUNDLE]
        assert problems == []


async def test_a_phone_back_online_gets_its_backlog_in_bundles_and_shows_every_message(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with intern_and_specialist(world, tmp_path) as (intern, specialist, events), \
            devtools_phone_page(tmp_path) as (page, problems, sockets):
        await enrol_by_code(page, origin, intern.code)
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        # Locked, the phone is off the relay: the specialist's replies wait in its queue.
        await page.tap("#lock")
        await page.locator("#screen-unlock").wait_for()
        before = len(sockets.received)
        for i in range(1, REPLIES + 1):
            await specialist.client.send_text(consult.message.thread_id, f"Reply {i} of {REPLIES}.")
        await page.fill("#passphrase", PASSPHRASE)
        await page.tap("#unlock")
        for i in range(1, REPLIES + 1):
            await page.locator(".message.theirs", has_text=f"Reply {i} of {REPLIES}.").wait_for()
        assert await page.locator(".message.theirs").count() == REPLIES

        # What Chromium received on the new connection: every delivery, most in bundles.
        assert sockets.requests[-1].get("sec-websocket-protocol") == BUNDLE
        assert sockets.answers[-1].get("sec-websocket-protocol") == BUNDLE
        messages = [carried(m) for m in sockets.received[before:]]
        with_deliveries = [(bundle, types) for bundle, types in messages if "deliver" in types]
        deliveries = sum(types.count("deliver") for _, types in with_deliveries)
        assert deliveries >= REPLIES
        assert any(bundle and types.count("deliver") > 1 for bundle, types in with_deliveries)
        assert len(with_deliveries) < deliveries, messages
        assert problems == []
