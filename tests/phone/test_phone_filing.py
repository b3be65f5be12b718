"""The phone's photo filed in the record, then gone from the phone: the real record gateway
(SDK) verifies the consent the phone signed, files the photo into a real Orthanc and answers
with its sealed filing receipt, which the phone shows; after the grace period the relay orders
every copy destroyed and the phone erases its copy from IndexedDB and confirms, signed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.filing_world import enrol_gateway, orthanc_gateway
from tests.helpers import eventually
from tests.identity_world import World
from tests.orthanc import OrthancServer
from tests.phone.phone_world import (
    ORTHO,
    SHOTS,
    enrol_by_code,
    film,
    idb_records,
    phone_page,
    photo_with_consent,
    provisioned_intern,
    still_video,
)


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    # Filed copies expire 3 s after filing, swept often.
    return {"autolock_seconds": 600, "expiry_grace": 3, "expiry_sweep_interval": 0.5}


async def test_the_photo_is_filed_by_the_gateway_then_erased_from_the_phone(
        phone: tuple[World, str], tmp_path: Path, orthanc: OrthancServer) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    await world.onboard(world.org.user("ortho", roles=(ORTHO,)))
    gateway = await enrol_gateway(world, tmp_path)
    gw, pacs = orthanc_gateway(gateway, orthanc)
    await gw.start()
    try:
        async with phone_page(video=still_video(tmp_path / "film.y4m", film(960, 720),
                                                size=(960, 720))) as (page, problems):
            await enrol_by_code(page, origin, intern.code)
            await photo_with_consent(page)
            await page.fill("#patient-name", "Doe^Jane")
            await page.fill("#patient-id", "MRN123")
            await page.fill("#img-text", "Query scaphoid fracture, film attached.")
            await page.tap("#consent-send")
            await page.locator("#photo-status", has_text="Photo sent").wait_for()
            filed = page.locator(".filed", has_text="Filed in the patient's record (study ")
            await filed.wait_for()
            assert gw.filed and gw.filed[0].study_instance_uid in (await filed.inner_text())
            await page.screenshot(path=str(SHOTS / "12-filed.png"), full_page=True)
            assert "Gateway" not in (await page.text_content("#notice") or "")
            width = await page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 390, "the page scrolls sideways on a phone"
            await page.locator(".photo-gone").wait_for()
            await page.screenshot(path=str(SHOTS / "13-erased-after-filing.png"),
                                  full_page=True)
            images = [r for r in await idb_records(page) if len(r) > 20_000]
            assert images == [], "a record the size of a photo is still in IndexedDB"
            assert problems == []
    finally:
        await gw.stop()
        await pacs.aclose()

    async def confirmed_order() -> asyncpg.Record | None:
        conn = await world.db()
        try:
            row: asyncpg.Record | None = await conn.fetchrow(
                "SELECT o.reason, o.confirmed_at FROM expiry_orders o JOIN devices d "
                "ON d.device_id = o.device_id WHERE d.user_id = $1", uuid.UUID(intern.user_id))
        finally:
            await conn.close()
        return row if row is not None and row["confirmed_at"] is not None else None
    row = await eventually(confirmed_order, timeout=20)
    assert row["reason"] == "filed"
