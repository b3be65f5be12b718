"""An expired image never reaches a desktop that was offline when its expiry order went out
(docs/PROTOCOL.md §15), in a real Chromium (Playwright) against a real relay, a real record
gateway and a real Orthanc.

The specialist's desktop is not running from before the intern sends an x-ray until after the
relay has ordered every copy of it destroyed (it was filed; the grace period passed). When the
desktop comes back, the order reaches it before the delivery: it writes a tombstone, never
downloads or stores the image, and only then confirms. The page never receives the image
bytes, it shows the image as deleted and in the record, beside the patient the message carried;
``lightbox-admin copies`` tells the truth about that copy; after a restart the desktop still
shows the deleted state and its image route answers 410. Screenshots go to
test-artefacts/desktop-expiry/.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from clients.desktop.app import DesktopServer
from clients.sdk.vault import ImageShredded
from protocol.body import CaptureKind, RecordData
from tests.clients.test_desktop import (
    ORTHO,
    browser_page,
    desktop_http,
    desktop_team,
    send_photo,
    send_wrist_xray,
    unlock_page,
)
from tests.clinician_world import enrol_clinician
from tests.consent_world import count
from tests.filing_world import admin_copies, copies_json
from tests.helpers import ROOT, eventually, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer

SHOTS = ROOT / "test-artefacts" / "desktop-expiry"


# A short grace after filing, swept often: the copies expire within the test.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024, expiry_grace=2,
                               expiry_sweep_interval=0.5)


def _image_answers(page: Any) -> list[tuple[str, int]]:
    """Every answer the page received from the desktop's image route (url, status)."""
    seen: list[tuple[str, int]] = []
    page.on("response", lambda r: seen.append((r.url, r.status))
            if "/api/images/" in r.url else None)
    return seen


async def test_a_desktop_offline_until_after_the_expiry_order_never_holds_the_image(
        world: World, tmp_path: Path, orthanc: OrthancServer,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    profile = tmp_path / "specialist-profile"
    async with desktop_team(world, tmp_path, orthanc) as team:
        intern, specialist, desktop, gw = team.intern, team.specialist, team.desktop, team.gateway
        desktop_device = await world.device_of(specialist.user_id)
        # A colleague on the same on-call role is offline too and confirms last: until then
        # the relay keeps the ciphertext, so only the order stands between the desktop and
        # the image.
        phone = await enrol_clinician(world, tmp_path, "ortho-colleague", roles=(ORTHO,))
        # The desktop is locked: not connected to the relay, from before the image is sent.
        sent = await send_wrist_xray(intern)
        (aid,) = sent.attachment_ids

        async def ordered() -> bool:
            return await count(world, "SELECT count(*) FROM expiry_orders WHERE device_id = $1 "
                               "AND attachment_id = $2", uuid.UUID(desktop_device),
                               uuid.UUID(aid)) == 1
        await gw.start()  # files it; the grace period passes; the relay orders every copy
        await eventually(ordered, timeout=30)

        async def all_confirmed() -> bool:
            return await count(world, "SELECT count(*) FROM expiry_orders WHERE "
                               "attachment_id = $1 AND confirmed_at IS NULL",
                               uuid.UUID(aid)) == 0

        async def confirmed() -> bool:
            return await count(world, "SELECT count(*) FROM expiry_orders WHERE device_id = $1 "
                               "AND attachment_id = $2 AND confirmed_at IS NOT NULL",
                               uuid.UUID(desktop_device), uuid.UUID(aid)) == 1

        async with browser_page() as (page, problems):
            answers = _image_answers(page)
            await unlock_page(page, desktop)  # the desktop comes back
            await eventually(confirmed, timeout=30)
            client = desktop.client
            assert client is not None
            await client.wait_synced(seconds(15))
            item = page.locator(".thread-item", has_text="Wrist x-ray, bed 9")
            await item.wait_for()
            await item.click()
            expired = page.locator(f'.expired[data-attachment-id="{aid}"]')
            await expired.wait_for()
            # The gateway's filing receipt (delivered after the order) names the study.
            study = gw.filed[0].study_instance_uid
            await page.locator(f'.expired[data-attachment-id="{aid}"]',
                               has_text=f"in the record: {study}").wait_for()
            # never shown here, as `lightbox inbox` says it: not "deleted from this device"
            assert await expired.inner_text() == (
                "Image filed to the patient's record before it reached this device, so never "
                f"shown here - in the record: {study}")
            await page.locator(".message", has_text="Scaphoid?").wait_for()
            # the patient the message carried, beside the record reference (never the image)
            assert await page.locator(".message .record").inner_text() == (
                "Patient: Doe, Jane - MRN123, born 1970-01-01 - wrist")
            await page.screenshot(path=SHOTS / "01-offline-desktop-after-expiry.png")
            assert await page.locator(f'img[src*="{aid}"]').count() == 0
            assert await page.locator(".thumb").count() == 0
            assert not [a for a in answers if a[1] == 200], answers
            assert not problems, problems

        # The vault never held it: no image row, no key, a tombstone that refuses it later.
        vault = client.vault
        assert aid not in [i.attachment_id for i in vault.images()]
        assert vault.tombstone(aid) is not None
        with pytest.raises(ImageShredded):
            vault.get_image(aid)
        assert client.image_status(aid).state == "shredded"
        # The relay never handed it over: no download of it by the desktop was completed.
        assert await count(world, "SELECT count(*) FROM attachment_access WHERE device_id = $1 "
                           "AND attachment_id = $2 AND fetched_at IS NOT NULL",
                           uuid.UUID(desktop_device), uuid.UUID(aid)) == 0
        assert await count(world, "SELECT count(*) FROM blobs WHERE blob_id = $1",
                           uuid.UUID(aid)) == 1  # kept for the colleague
        # The colleague's phone comes back and confirms too (the intern's copy expired
        # meanwhile): every order is confirmed and the relay's ciphertext is gone.
        await phone.client.start(wait_connected=seconds(10))
        try:
            await phone.client.wait_synced(seconds(15))
            await eventually(all_confirmed, timeout=30)
        finally:
            await phone.client.close()
        assert await count(world, "SELECT count(*) FROM blobs WHERE blob_id = $1",
                           uuid.UUID(aid)) == 0
        assert aid not in [i.attachment_id for i in phone.vault.images()]

    # The audit is true: the desktop's and the colleague's copies were never received.
    home = tmp_path / "admin-home"
    (report,) = copies_json(*await admin_copies(world, home, monkeypatch, capsys,
                                                "--attachment", aid, "--json"))
    copies = {c["device_id"]: c for c in report["copies"]}
    for device in (desktop_device, phone.client.device_id):
        mine = copies[device]
        assert mine["received_at"] is None and mine["confirmed_at"] is not None
        assert mine["status"] == "never_received"
    assert report["all_destroyed"] is True
    rc, text = await admin_copies(world, home, monkeypatch, capsys, "--attachment", aid)
    assert rc == 0 and "every copy confirmed destroyed" in text
    assert "never received" in text

    # A restart of the desktop: still the deleted state, never the image, never "expires".
    again = DesktopServer(profile, client_options={"backoff_base": 0.05, "backoff_max": 0.5})
    await again.start()
    try:
        async with browser_page() as (page, problems):
            answers = _image_answers(page)
            await unlock_page(page, again)
            item = page.locator(".thread-item", has_text="Wrist x-ray, bed 9")
            await item.wait_for()
            await item.click()
            await page.locator(f'.expired[data-attachment-id="{aid}"]',
                               has_text=f"in the record: {study}").wait_for()
            await page.screenshot(path=SHOTS / "02-after-restart.png")
            assert await page.locator(f'img[src*="{aid}"]').count() == 0
            assert "expires" not in await page.locator("#thread").inner_text()
            assert not [a for a in answers if a[1] == 200], answers
            assert not problems, problems
        async with desktop_http(again) as http:
            r = await http.get(f"/api/images/{aid}")
            assert r.status_code == 410 and r.json()["error"] == "expired"
            assert r.headers["cache-control"] == "no-store"
    finally:
        await again.stop()
    assert {p.name for p in SHOTS.iterdir()} >= {
        "01-offline-desktop-after-expiry.png", "02-after-restart.png"}


async def test_the_page_drops_the_open_image_when_its_copy_expires(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The specialist is looking at the image in the viewer when the expiry order arrives: the
    page closes the viewer and clears its pixels, the thumbnail goes, and the image route
    answers 410 (no-store) from then on."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with desktop_team(world, tmp_path, orthanc) as team, \
            browser_page() as (page, problems):
        intern, desktop, gw = team.intern, team.desktop, team.gateway
        await unlock_page(page, desktop)
        _, sent = await send_photo(
            intern, RecordData(patient_name="Doe^Jane", patient_id="MRN123",
                               anatomic_region="wrist", capture=CaptureKind.FILM),
            text="Open this one", subject="Wrist x-ray, bed 3")
        (aid,) = sent.attachment_ids
        item = page.locator(".thread-item", has_text="Wrist x-ray, bed 3")
        await item.wait_for()
        await item.click()
        await page.locator(f'.thumb[data-attachment-id="{aid}"]').click()
        await page.locator("#viewer").wait_for(state="visible")
        pixels = ("() => { const c = document.getElementById('canvas'); let s = 0;"
                  " for (const v of c.getContext('2d').getImageData(0, 0, c.width, c.height)"
                  ".data) s += v; return s; }")
        assert await page.evaluate(pixels) > 0
        await page.screenshot(path=SHOTS / "03-viewer-open-before-expiry.png")

        await gw.start()  # filed; the grace period passes; the order reaches the desktop
        await page.locator("#viewer").wait_for(state="hidden")
        await page.locator(f'.expired[data-attachment-id="{aid}"]').wait_for()
        assert await page.evaluate(pixels) == 0
        assert await page.locator(f'img[src*="{aid}"]').count() == 0
        await page.screenshot(path=SHOTS / "04-viewer-closed-on-expiry.png")
        async with desktop_http(desktop) as http:
            r = await http.get(f"/api/images/{aid}")
            assert r.status_code == 410 and r.headers["cache-control"] == "no-store"
        assert not problems, problems
