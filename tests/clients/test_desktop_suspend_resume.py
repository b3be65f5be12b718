"""IT suspends the specialist (``lightbox-admin user suspend``) while her desktop is open, then
resumes her (``lightbox-admin user resume``), in a real Chromium against a real relay
(docs/USER_GUIDE.md "Specialists"): while suspended the page says so, and offers to try again;
tried while still suspended, the unlock says suspended; tried after the resume, the desktop
signs in again with the password given at the unlock (the relay ended the session when it
suspended her) and connects, and a new consult is shown. It used to stay "suspended", then
say "The connection to the relay has stopped ... restart Lightbox" after every unlock and
restart, until `lightbox login` was run on its profile in a terminal.

Screenshots go to test-artefacts/desktop-suspend-resume/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from clients.desktop.app import _ENDINGS, DesktopServer
from tests.clients.test_desktop import ORTHO, unlock_page
from tests.clients.test_desktop_revoked import consult_open
from tests.helpers import ROOT
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-suspend-resume"
TRY_AGAIN = ("Enter your password to try again: Lightbox signs in to the relay afresh. If your "
             "account is still suspended, it says so.")


async def test_a_desktop_open_through_a_suspension_and_resume_signs_in_again_at_unlock(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    async with consult_open(world, tmp_path, orthanc, "Bay 3: shoulder", "Bay 3 shoulder") as on:
        page, problems, team = on.page, on.problems, on.team
        r = await world.revoke(world.org, 1, users=(team.specialist.user_id,))
        assert r.status_code == 200, r.text
        await page.locator("#ended-banner", has_text=_ENDINGS["suspended"]).wait_for()
        assert await page.inner_text("#conn") == "suspended"
        await page.locator("#try-again").wait_for()
        await page.screenshot(path=SHOTS / "01-suspended-while-open.png")

        # Tried while still suspended: the vault locks, the unlock says suspended.
        await page.click("#try-again")
        await page.locator("#unlock").wait_for()
        assert await page.inner_text("#unlock-reason") == TRY_AGAIN
        await page.fill("#password", PASSWORD)
        await page.press("#password", "Enter")
        await page.locator("#unlock-error", has_text=_ENDINGS["suspended"]).wait_for()
        assert await page.inner_text("#conn") == "suspended"
        await page.screenshot(path=SHOTS / "02-unlocked-while-still-suspended.png")

        # IT resumes her: the next list no longer names her.
        r = await world.revoke(world.org, 2)
        assert r.status_code == 200, r.text
        await page.fill("#password", PASSWORD)
        await page.press("#password", "Enter")
        await page.locator("#conn", has_text="connected").wait_for()
        assert await page.locator("#ended-banner").is_hidden()
        thread = await team.intern.client.create_thread(roles=[ORTHO])
        await team.intern.client.send_text(thread.thread_id, "Bay 4: elbow after resume",
                                           subject="Bay 4 elbow")
        await page.locator(".thread-item", has_text="Bay 4 elbow").wait_for()
        await page.screenshot(path=SHOTS / "03-resumed-and-unlocked-again.png")

        # And a restart of the desktop signs in by itself too (no `lightbox login`).
        await team.desktop.stop()
        again = DesktopServer(tmp_path / "specialist-profile")
        await again.start()
        try:
            await unlock_page(page, again)  # connected
            await page.locator(".thread-item", has_text="Bay 4 elbow").wait_for()
        finally:
            await again.stop()
        # the refused unlock while suspended (403), and the stopped launch's open stream
        expected = ("403", "net::ERR_CONNECTION_REFUSED")
        assert [p for p in problems if not any(e in p for e in expected)] == [], problems

