"""The specialist logs out in a terminal (``lightbox logout``) while the desktop is open on the
same profile, as on a shared workstation at the end of a shift (docs/USER_GUIDE.md "Everyday
commands", docs/SECURITY.md "Refresh"): the desktop locks its vault at once, the page drops
every consult it showed and says why on the unlock screen, and unlocking again signs in
afresh. It used to go on showing the consults, and then say "The connection to the relay has
stopped ... tell IT" once the relay closed the logged-out session.

Screenshots go to test-artefacts/desktop-logout/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clients.desktop.app import LOGGED_OUT
from tests.clients.test_desktop_revoked import consult_open
from tests.clinician_world import run_cli
from tests.helpers import ROOT
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-logout"


async def test_a_logout_in_a_terminal_locks_the_open_desktop_and_says_why(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    async with consult_open(world, tmp_path, orthanc, "Bay 9: hip, ?NOF",
                            "Bay 9 hip") as on:
        page, problems = on.page, on.problems
        monkeypatch.setenv("LIGHTBOX_HOME", str(tmp_path))  # the desktop's profile, by name
        monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORD)
        rc, out, err = await run_cli("--profile", "specialist-profile", "logout")
        assert rc == 0, err
        assert out.startswith("logged out")

        await page.locator("#unlock").wait_for()
        assert await page.inner_text("#unlock-reason") == LOGGED_OUT
        # every consult dropped from the page, not merely hidden
        assert await page.locator("#app").is_hidden()
        assert await page.locator(".thread-item").count() == 0
        assert await page.locator(".message").count() == 0
        await page.screenshot(path=SHOTS / "01-logged-out-in-a-terminal.png")
        assert on.team.desktop.device is None  # the vault locked, not only the page

        # Unlocking again opens the profile afresh and signs in again.
        await page.fill("#password", PASSWORD)
        await page.press("#password", "Enter")
        await page.locator(".thread-item", has_text="Bay 9 hip").wait_for()
        await page.locator("#conn", has_text="connected").wait_for()
        assert await page.locator("#unlock-reason").is_hidden()
        assert problems == []
