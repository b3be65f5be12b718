"""After its copy expires, a consult still says which patient its image was about, in a real
Chromium (Playwright) against a real relay, a real record gateway and a real Orthanc
(docs/PROTOCOL.md §15; docs/CLINICAL_SAFETY.md "Delete the device copy once it is in the
record"): the image is filed, every copy is ordered destroyed, and the desktop shows the
patient the message carried, as before, beside "Image deleted from this device - in the
record: <study>", also after a restart; the image itself is gone from the vault (its bytes and
the key it came with), and the page never gets it again.

Screenshots go to test-artefacts/desktop-expired-patient/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from clients.desktop.app import DesktopServer
from clients.sdk.vault import ImageShredded
from tests.clients import test_desktop
from tests.clients.test_desktop import (
    browser_page,
    desktop_http,
    desktop_team,
    send_wrist_xray,
    unlock_page,
)
from tests.helpers import ROOT
from tests.identity_world import World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-expired-patient"
# send_wrist_xray's patient, as the page's record block writes it
PATIENT = "Patient: Doe, Jane - MRN123, born 1970-01-01 - wrist"

pytestmark = test_desktop.DESKTOP_WORLD  # a short grace after filing: it expires in the test


@pytest.fixture(autouse=True, scope="module")
def _shots() -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)


async def test_an_expired_image_still_names_its_patient_beside_its_record_reference(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        desktop, gw = team.desktop, team.gateway
        await unlock_page(page, desktop)
        sent = await send_wrist_xray(team.intern)
        (aid,) = sent.attachment_ids
        await page.locator(".thread-item", has_text="Wrist x-ray, bed 9").click()
        message = page.locator(f'.message[data-message-id="{sent.message_id}"]')
        await message.locator(f'.thumb[data-attachment-id="{aid}"] img').wait_for()
        record = message.locator(".record")
        before = await record.inner_text()
        assert before == PATIENT, before
        await page.screenshot(path=SHOTS / "01-before-expiry.png")

        await gw.start()  # filed; the grace period passes; the order reaches the desktop
        study = await page.locator(".expired", has_text="in the record: ").inner_text()
        await page.locator(f'.expired[data-attachment-id="{aid}"]',
                           has_text="Image deleted from this device - in the record: "
                                    f"{gw.filed[0].study_instance_uid}").wait_for()
        assert study.startswith("Image deleted from this device - in the record: ")
        assert await record.inner_text() == before  # the patient, as shown before
        assert await page.locator(f'img[src*="{aid}"]').count() == 0
        await page.screenshot(path=SHOTS / "02-after-expiry-patient-and-record.png")

        # What the vault keeps: the text and the patient, not the image nor its key.
        client = desktop.client
        assert client is not None
        with pytest.raises(ImageShredded):
            client.vault.get_image(aid)
        view = client.view(client.vault.message(sent.message_id))
        assert view.body.attachments == []
        assert view.body.record is not None and view.body.record.patient_id == "MRN123"
        assert not problems, problems

        # Quit and started again: still the patient beside the record reference.
        await desktop.stop()
        again = DesktopServer(tmp_path / "specialist-profile")
        await again.start()
        try:
            problems.clear()  # the open tab's requests while nothing served it
            await unlock_page(page, again)
            await page.locator(".thread-item", has_text="Wrist x-ray, bed 9").click()
            await page.locator(f'.expired[data-attachment-id="{aid}"]').wait_for()
            assert await page.locator(
                f'.message[data-message-id="{sent.message_id}"] .record').inner_text() \
                == PATIENT
            await page.screenshot(path=SHOTS / "03-after-a-restart.png")
            async with desktop_http(again) as http:
                r = await http.get(f"/api/images/{aid}")
                assert (r.status_code, r.json()["error"]) == (410, "expired")
        finally:
            await again.stop()
