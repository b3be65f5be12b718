"""The desktop while the relay is out of reach, in a real Chromium (Playwright) against a real
relay: the specialist unlocks it with the password alone and rereads the consults this
computer holds; the page says it is reconnecting, and it connects by itself, and receives what
waited, once the relay is back.

Screenshots go to test-artefacts/desktop-offline/.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.clients.test_desktop import (
    browser_page,
    desktop_team,
    unlock_page,
    urgent_consult_read,
)
from tests.helpers import ROOT, make_settings, running_relay, seconds
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-offline"

# The relay of these tests is restarted on the same port; nothing expires meanwhile.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024, expiry_grace=3600)


@pytest.fixture(autouse=True, scope="module")
def _shots() -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)


def _message(page: Any, message_id: str) -> Any:
    return page.locator(f'.message[data-message-id="{message_id}"]')


async def test_the_desktop_unlocks_while_the_relay_is_down_and_shows_the_consults_it_holds(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The desktop locked itself (or was restarted) during a relay outage. Unlocking it needs
    no relay: the consult and its message are there to reread, and the status says
    "reconnecting...". When the relay is back the desktop connects by itself, and a message
    sent to it then arrives."""
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        thread, sent, _ = await urgent_consult_read(
            page, team, "Bay 5: ankle, medial tenderness; Weber C?", "Bay 5 ankle")
        await page.click("#lock")
        await page.locator("#password").wait_for()
        await asyncio.to_thread(world.relay.stop)  # off this loop: its clients answer the close

        await page.fill("#password", PASSWORD)
        await page.press("#password", "Enter")
        await page.locator("#inbox").wait_for()
        await page.locator("#conn", has_text="reconnecting").wait_for()
        assert await page.locator("#unlock-error").inner_text() == ""
        await page.locator(".thread-item", has_text="Bay 5 ankle").click()
        held = _message(page, sent.message_id)
        await held.wait_for()
        assert "Weber C?" in await held.inner_text()
        await page.screenshot(path=SHOTS / "01-unlocked-while-the-relay-is-down.png")

        settings = make_settings(trusted_orgs_file=tmp_path / "trusted-orgs.json",
                                 port=int(world.relay.base_url.rsplit(":", 1)[1]),
                                 attachment_chunk_bytes=64 * 1024, expiry_grace=3600)
        async with running_relay(world.dsn, settings):
            await page.locator("#conn", has_text="connected").wait_for(
                timeout=seconds(60) * 1000)
            later = await team.intern.client.send_text(thread.thread_id, "X-ray done, on PACS")
            await _message(page, later.message_id).wait_for(timeout=seconds(30) * 1000)
            await page.screenshot(path=SHOTS / "02-connected-once-the-relay-is-back.png")
            assert not problems, problems
