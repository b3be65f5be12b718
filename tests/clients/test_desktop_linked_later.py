"""A desktop linked after a consult was sent (docs/USER_GUIDE.md "Link your desktop"): the
consult's messages were sealed for the specialist's devices of that time (docs/PROTOCOL.md §6),
so none ever reaches the new computer. The inbox and the opened consult say so, instead of
"(no subject yet)" and "has not reached this computer yet" for messages that never come; a
message sent in it after the link does reach the desktop. Real relay, real Chromium.

Screenshots go to test-artefacts/desktop-linked-later/.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from clients.desktop.app import BEFORE_LINK, DesktopServer
from protocol.model import Priority
from tests.clients.test_desktop import ORTHO, browser_page, unlock_page
from tests.clients.test_unread_own_devices import link_desktop
from tests.clinician_world import enrol_clinician
from tests.helpers import ROOT, seconds
from tests.identity_world import World

SHOTS = ROOT / "test-artefacts" / "desktop-linked-later"
SAID = ("This consult's messages were sent before this computer was linked to your account: "
        "they were sealed for your devices of that time, so they cannot be read here. Read "
        "them on another of your devices. A new message in this consult reaches this computer.")


async def test_a_consult_sent_before_the_desktop_was_linked_says_why_it_is_empty(
        world: World, tmp_path: Path) -> None:
    ada = await enrol_clinician(world, tmp_path, "ada", display_name="Dr Ada Intern")
    bea = await enrol_clinician(world, tmp_path, "bea", roles=(ORTHO,),
                                display_name="Dr Bea Ortho", vault_dir=tmp_path / "bea-phone")
    await ada.client.start(wait_connected=seconds(10))
    desktop: DesktopServer | None = None
    try:
        before = await ada.client.create_thread(roles=[ORTHO], priority=Priority.URGENT)
        await ada.client.send_text(before.thread_id, "Bed 4: ankle, can you look?",
                                   subject="Bed 4 ankle")
        await asyncio.sleep(1.1)  # certificates say the second they were issued
        linked = await link_desktop(world, bea, tmp_path / "bea-desktop")
        await linked.close()
        bea.vault.lock()
        desktop = DesktopServer(tmp_path / "bea-desktop",
                                client_options={"backoff_base": 0.05, "backoff_max": 0.5})
        await desktop.start()
        async with browser_page() as (page, problems):
            await unlock_page(page, desktop)
            item = page.locator(".thread-item", has_text="(sent before this computer was "
                                                         "linked)")
            await item.wait_for()
            assert BEFORE_LINK == "(sent before this computer was linked)"
            assert await page.locator(".thread-item", has_text="no subject yet").count() == 0
            await item.click()
            empty = page.locator("#thread-empty")
            await empty.wait_for()
            assert await empty.inner_text() == SAID
            SHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=SHOTS / "01-consult-sent-before-the-link.png")
            # A message of the consult sent since reaches the desktop, and says itself.
            await ada.client.send_text(before.thread_id, "Now swollen: please come.")
            await page.locator(".message", has_text="Now swollen: please come.").wait_for(
                timeout=seconds(30) * 1000)
            assert await page.locator("#thread-empty").count() == 0
            assert problems == []
    finally:
        if desktop is not None:
            await desktop.stop()
        await ada.client.close()
