"""The relay ends the phone's websocket with a fatal error (here its session lifetime, so short
that it is reached in seconds; PROTOCOL §3): the phone says so in words, that it reconnects by
itself, never the relay's raw detail ("session lifetime reached; log in again", "no pong"), and
reconnects; the sentence goes once it is connected again. Real relay, real Chromium."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.phone_world import enrolled_phone

LOST = ("The connection to the relay reached its time limit and was closed; the app "
        "reconnects by itself. Nothing is lost.")


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600, "ws_session_lifetime": 3.0}


async def test_a_fatal_websocket_error_is_told_in_words_and_the_phone_reconnects(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (_i, _s, _e, page, problems):
        # Every text the send-status line shows, recorded as it changes (through the DevTools
        # protocol: the page's CSP forbids evaluating strings in it).
        await page.evaluate("""() => {
          const el = document.getElementById("send-status");
          window.__said = [];
          new MutationObserver(() => window.__said.push(el.textContent)).observe(
            el, { childList: true, characterData: true, subtree: true });
        }""")
        said: list[str] = []
        async with asyncio.timeout(seconds(30)):
            while LOST not in said:
                said = await page.evaluate("() => window.__said")
                await asyncio.sleep(0.1)
        assert all(s in (LOST, "") for s in said), said
        # Connected again by itself: the sentence is gone with the lost connection.
        async with asyncio.timeout(seconds(30)):
            while (await page.locator("#send-status").inner_text()
                   or await page.locator("#conn").inner_text() != "connected"):
                await asyncio.sleep(0.1)
        assert problems == []
