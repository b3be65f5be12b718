"""The header tells the truth when only part of the relay can be reached: the websocket is up,
but the relay's HTTP requests (colleagues' keys, photos, sign-in) fail, as behind a proxy that
blocks them. It says *connection trouble*, not *connected*, while they fail, and *connected*
again by itself once they pass (the app looks the relay up again every 15 s meanwhile). Real
relay, real Chromium; the requests are cut in the browser, the websocket is not."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import SHOTS, axe_violations, enrolled_phone, sent_from_phone


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def test_the_header_says_connection_trouble_while_only_the_relays_requests_fail(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_intern, specialist, events, page,
                                                           problems):
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        header = page.locator("#conn")
        assert await header.inner_text() == "connected"
        # Every HTTP request to the relay fails from now on; the websocket stays up.
        await page.context.route("**/v1/**", lambda route: route.abort("internetdisconnected"))
        # The specialist's reply comes over the websocket; checking its sender needs his
        # devices, an HTTP request.
        await specialist.client.send_text(consult.message.thread_id, "Splint, clinic tomorrow.")
        await page.locator("#send-status", has_text="The relay cannot be reached").wait_for()
        await page.locator("#conn", has_text="connection trouble").wait_for()
        assert await header.inner_text() == "connection trouble"
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "30-connection-trouble.png"), full_page=True)
        assert await axe_violations(page) == []
        # The requests pass again: the header says so by itself, without a new connection.
        await page.context.unroute_all(behavior="ignoreErrors")
        async with asyncio.timeout(seconds(40)):
            while await header.inner_text() != "connected":
                await asyncio.sleep(0.2)
        # The browser's own report of each refused request is all the console has.
        assert [p for p in problems if "net::ERR_INTERNET_DISCONNECTED" not in p] == []
