"""A withdrawn consent on the specialist's desktop client, in a real Chromium against a real
relay: the consult's consent panel says "agreed"; the intern's consent is withdrawn while the
page is open and the panel turns to "withdrawn" with the time (ISO-like date, 24-hour time, the
local zone) without a reload, the image is gone; after the desktop client restarts it still
says so (the vault remembers). The patient's copy it renders says so too. Screenshots go to
test-artefacts/desktop-consent/."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from clients.desktop.app import DesktopServer
from protocol.body import CaptureKind, RecordData
from protocol.consent import peek_consent_token_unverified
from tests.clients import test_desktop
from tests.clients.test_desktop import (
    browser_page,
    desktop_http,
    desktop_team,
    send_photo,
    unlock_page,
)
from tests.clinician_world import Clinician
from tests.helpers import ROOT
from tests.identity_world import World
from tests.orthanc import OrthancServer

pytestmark = test_desktop.DESKTOP_WORLD  # the same relay as the desktop's own tests

SHOTS = ROOT / "test-artefacts" / "desktop-consent"
STAMP = re.compile(r"Consent: withdrawn (\d{4}-\d{2}-\d{2} \d{2}:\d{2})( \S+)?")


async def test_the_desktop_shows_a_withdrawn_consent_live_and_after_a_restart(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        intern = team.intern
        await unlock_page(page, team.desktop)
        _thread, sent = await send_photo(
            intern, RecordData(patient_name="Doe^Jane", patient_id="MRN123",
                               anatomic_region="wrist", capture=CaptureKind.FILM),
            text="Scaphoid?", subject="Wrist, bed 7")
        item = page.locator(".thread-item", has_text="Wrist, bed 7")
        await item.wait_for()
        await item.click()
        consent = page.locator(".consent")
        await consent.filter(has_text="Consent: agreed").wait_for()
        await page.locator(".thumb").wait_for()
        assert await page.locator(".consent.withdrawn").count() == 0
        await page.screenshot(path=SHOTS / "01-consent-agreed.png")

        # The intern withdraws it (the patient asked): the open page turns to "withdrawn".
        consent_id = _consent_id(intern, sent.message_id)
        result = await intern.client.relay.revoke_consent(consent_id)
        withdrawn = page.locator(".consent.withdrawn .withdrawn-at")
        await withdrawn.wait_for()
        text = await withdrawn.inner_text()
        found = STAMP.fullmatch(text)
        assert found, text
        assert await withdrawn.get_attribute("data-withdrawn-at") == str(result.revoked_at)
        assert "Consent: agreed" not in await consent.inner_text()
        assert "(was agreed)" in await consent.inner_text()
        await page.locator(".thumb").wait_for(state="detached")  # its copy is gone too
        await page.screenshot(path=SHOTS / "02-consent-withdrawn-live.png")

        # The desktop client restarts (a new launch of the same profile): still withdrawn,
        # at the same time, from what the vault kept.
        before_restart = len(problems)
        await team.desktop.stop()
        again = DesktopServer(tmp_path / "specialist-profile",
                              client_options={"backoff_base": 0.05, "backoff_max": 0.5})
        await again.start()
        try:
            await unlock_page(page, again)
            await page.locator(".thread-item", has_text="Wrist, bed 7").click()
            await withdrawn.wait_for()
            shown = STAMP.fullmatch(await withdrawn.inner_text())
            assert shown and shown.group(1) == found.group(1)
            await page.screenshot(path=SHOTS / "03-consent-withdrawn-after-restart.png")
            assert again.client is not None
            assert again.client.consent_withdrawn_at(consent_id) == result.revoked_at
            # The patient's copy it renders says so as well.
            async with desktop_http(again) as http:
                r = await http.get(f"/api/messages/{sent.message_id}/consent.pdf")
                assert r.status_code == 200
            (tmp_path / "copy.pdf").write_bytes(r.content)
            text = " ".join(subprocess.run(["pdftotext", str(tmp_path / "copy.pdf"), "-"],
                                           check=True, capture_output=True,
                                           text=True).stdout.split())
            assert "You WITHDREW this consent on" in text
        finally:
            await again.stop()
        # While the launch stops, the open tab may ask it for something after its vault locked
        # (423 Locked) or once nothing answers; Chromium logs each such failed load as a
        # console error itself (as in test_desktop_restart.py). An uncaught error is a problem.
        expected = ("the server responded with a status of 423", "net::ERR_CONNECTION_REFUSED")
        assert not problems[:before_restart], problems
        assert [p for p in problems[before_restart:]
                if not any(e in p for e in expected)] == [], problems


def _consent_id(intern: Clinician, message_id: str) -> str:
    """The consent the intern's message was sent under (from the intern's own vault)."""
    view = intern.client.view(intern.vault.message(message_id))
    assert view.body.consent_token is not None
    return peek_consent_token_unverified(view.body.consent_token).jti
