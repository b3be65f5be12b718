"""The phone's photo filed in the record, then gone from the phone: the real record gateway
(SDK) verifies the consent the phone signed, files the photo into a real Orthanc and answers
with its sealed filing receipt, which the phone shows; after the grace period the relay orders
every copy destroyed and the phone erases its copy from IndexedDB and confirms, signed."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from clients.gateway.app import RecordGateway
from tests.filing_world import enrol_gateway, orthanc_gateway
from tests.helpers import eventually, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer
from tests.phone.phone_world import (
    ORTHO,
    SHOTS,
    axe_violations,
    enrol_by_code,
    film,
    idb_records,
    phone_page,
    photo_from_phone,
    provisioned_intern,
    still_video,
    xray_sent_for_filing,
)


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    # Filed copies expire 3 s after filing, swept often.
    return {"autolock_seconds": 600, "expiry_grace": 3, "expiry_sweep_interval": 0.5}


@contextlib.asynccontextmanager
async def record_gateway(world: World, tmp_path: Path, orthanc: OrthancServer
                         ) -> AsyncIterator[RecordGateway]:
    """The organisation's record gateway (the real one, SDK) filing into a real Orthanc."""
    gw, pacs = orthanc_gateway(await enrol_gateway(world, tmp_path), orthanc)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()
        await pacs.aclose()


async def test_the_photo_is_filed_by_the_gateway_then_erased_from_the_phone(
        phone: tuple[World, str], tmp_path: Path, orthanc: OrthancServer) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    await world.onboard(world.org.user("ortho", roles=(ORTHO,)))
    async with record_gateway(world, tmp_path, orthanc) as gw:
        async with phone_page(video=still_video(tmp_path / "film.y4m", film(960, 720),
                                                size=(960, 720))) as (page, problems):
            await xray_sent_for_filing(page, origin, intern.code)
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
    assert row is not None and row["reason"] == "filed"


async def test_a_refusal_on_the_phone_is_filed_in_the_record_as_the_cli_files_it(
        phone: tuple[World, str], tmp_path: Path, orthanc: OrthancServer) -> None:
    world, origin = phone
    intern = await provisioned_intern(world)
    await world.onboard(world.org.user("ortho", roles=(ORTHO,)))
    async with record_gateway(world, tmp_path, orthanc), \
            phone_page(video=still_video(tmp_path / "film.y4m", film(960, 720),
                                         size=(960, 720))) as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        await photo_from_phone(page, text="Query scaphoid fracture.", refused=True)
        await page.locator("#photo-status", has_text="sent to be filed in the patient's "
                           "record").wait_for()
        # The gateway files the signed refusal with the patient's record data and answers.
        refusal = page.locator(".message.mine", has_text="The patient refused consent")
        await refusal.locator(".filed", has_text="Filed in the patient's record (study "
                              ).wait_for(timeout=seconds(30) * 1000)
        await page.screenshot(path=str(SHOTS / "18-refusal-filed.png"), full_page=True)
        assert await axe_violations(page) == []
        assert problems == []
    conn = await world.db()
    try:
        decisions = [r["decision"] for r in await conn.fetch("SELECT decision FROM consents")]
        uploads = await conn.fetchval("SELECT count(*) FROM attachments")
    finally:
        await conn.close()
    assert decisions == ["refused"] and uploads == 0  # the photo itself never left the phone
