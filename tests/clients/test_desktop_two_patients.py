"""A consult whose images carry the record data of two different patients (sent before the
phone and `lightbox send` refused to add such a photo; docs/HAZARD_LOG.md HAZ-01) is shown on
the desktop under a prominent warning naming both, in a real Chromium against a real relay
(docs/USER_GUIDE.md "Specialists"); a consult of one patient has none.

Screenshots go to test-artefacts/desktop-two-patients/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from protocol.body import CaptureKind, RecordData
from tests.clients.test_desktop import browser_page, desktop_team, send_photo, unlock_page
from tests.helpers import ROOT
from tests.identity_world import World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-two-patients"
WARNING = ("WARNING: this consult holds images of two patients: Doe, Jane (MRN123) and Roe, "
           "Richard (MRN456): check before acting")


def wrist(name: str, mrn: str) -> RecordData:
    return RecordData(patient_name=name, patient_id=mrn, birth_date="1970-01-01",
                      anatomic_region="wrist", capture=CaptureKind.FILM)


async def test_a_consult_with_images_of_two_patients_is_shown_under_a_warning(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        await unlock_page(page, team.desktop)
        thread, _ = await send_photo(team.intern, wrist("Doe^Jane", "MRN123"),
                                     text="Scaphoid?", subject="Wrist, bed 9")
        await page.locator(".thread-item", has_text="Wrist, bed 9").click()
        await page.locator(".thumb").wait_for()
        assert await page.locator(".patients-warning").count() == 0  # one patient so far
        _, second = await send_photo(team.intern, wrist("Roe^Richard", "MRN456"),
                                     text="And this one?", subject="Wrist, bed 9",
                                     thread=thread)
        await page.locator(f'.message[data-message-id="{second.message_id}"]').wait_for()
        warning = page.locator("#messages > .patients-warning")
        assert await warning.inner_text() == WARNING
        assert await warning.get_attribute("role") == "alert"
        await page.screenshot(path=SHOTS / "01-two-patients-in-one-consult.png")
        assert problems == []
