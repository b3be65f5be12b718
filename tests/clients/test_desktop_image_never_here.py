"""An image filed to the patient's record, and its copies expired, while the specialist's
desktop was closed: the relay sends the expiry order before the consult (docs/PROTOCOL.md
§15), so the image never reaches this computer. Opened, the consult says so in the words of
`lightbox inbox` (clients/clinician/reading.py ``image_line``), not "Image deleted from this
device", which reads as if it had been shown here. Real Chromium, relay, filing and expiry
sweep (docs/USER_GUIDE.md "Specialists").

Screenshots go to test-artefacts/desktop-image-never-here/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.clients.test_desktop import browser_page, desktop_team, unlock_page
from tests.clients.test_expiry import _share_and_expire
from tests.helpers import ROOT
from tests.identity_world import World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-image-never-here"
# as `lightbox inbox` words it; with the record's reference when the expiry order gave one
# ("Image filed to the patient's record before it reached this device, so never shown here -
# in the record: REF")
NEVER_HERE = "Image expired before it reached this device, so never shown here"


async def test_an_image_expired_before_it_reached_the_desktop_is_said_never_shown_here(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        aid, message_id = await _share_and_expire(world, team.intern, team.specialist)
        await unlock_page(page, team.desktop)
        await page.locator(".thread-item").first.click()
        line = page.locator(f'.message[data-message-id="{message_id}"] .expired')
        await line.wait_for()
        assert await line.inner_text() == NEVER_HERE
        await page.screenshot(path=SHOTS / "01-filed-before-it-reached-this-computer.png")
        assert team.desktop.client is not None
        assert team.desktop.client.vault.tombstone(aid) is not None  # shredded, never held
        assert problems == []
