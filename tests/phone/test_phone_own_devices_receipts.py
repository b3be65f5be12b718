"""Under a message of the intern's own, the phone lists the other participants' receipts by
name, never the "delivered" and "read" her own other device (her desktop, a device of the same
user) signs of it: they are no recipient's (USER_GUIDE "Interns: the phone app"; the desktop and
`lightbox watch` leave them out too). Her desktop is a real SDK client enrolled for her, started
beside the phone; real relay, real Chromium."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import MessageEvent
from protocol.api import enrolment_token
from protocol.keys import generate_enrolment_code, normalise_enrolment_code
from protocol.model import DeviceKind
from server.store.users import insert_enrolment
from tests.clinician_world import enrol_clinician
from tests.helpers import eventually, seconds
from tests.identity_world import World
from tests.phone.phone_world import (
    SHOTS,
    enrolled_phone,
    fetch_value,
    next_event,
    sent_from_phone,
)

ASKED = "Hot swollen knee, afebrile. Aspirate here or in clinic?"


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def test_her_consult_lists_the_specialist_s_receipts_and_not_her_desktop_s(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, _specialist, events, page,
                                                           problems):
        # A second enrolment code for her, for her desktop (her phone used the first), written
        # by the relay's own store function (a device linked from the phone would do as well;
        # the phone app does not approve links).
        again = dataclasses.replace(
            intern, code=normalise_enrolment_code(generate_enrolment_code()))
        conn = await world.db()
        try:
            await insert_enrolment(conn, hashlib.sha256(enrolment_token(again.code)).digest(),
                                   intern.user_id, b"", expires_at=time.time() + 3600,
                                   now=time.time())
        finally:
            await conn.close()
        desktop = await enrol_clinician(world, tmp_path, "intern", user=again, provision=False,
                                        kind=DeviceKind.DESKTOP)
        mine = desktop.client.subscribe()
        await desktop.client.start(wait_connected=seconds(10))
        try:
            consult = await sent_from_phone(page, events, ASKED)
            message_id = consult.message.message_id
            # Her desktop has it too (the phone seals it for every device of the thread's
            # people but itself), and signs "delivered" of it, as the specialist's device does.
            await next_event(mine, MessageEvent, lambda e: ASKED in e.body.text)
            await desktop.client.mark_read(consult.message.thread_id)

            async def both_signed() -> bool:
                count: int = await fetch_value(
                    world, "SELECT count(DISTINCT device_id) FROM receipts WHERE message_id = $1",
                    uuid.UUID(message_id))
                return count >= 2
            assert await eventually(both_signed, timeout=30)
            meta = page.locator(".message.mine .meta").first
            await meta.filter(has_text="delivered by").wait_for()
            await asyncio.sleep(2)  # her desktop's receipt, had it been listed, is in
            said = await meta.inner_text()
            assert said.endswith(" · sent · delivered by Dr Bo Ortho"), said
            assert "Dr Ada Intern" not in said
            SHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SHOTS / "79-receipts-not-her-own-desktop.png"),
                                  full_page=True)
        finally:
            desktop.client.unsubscribe(mine)
            await desktop.client.close()
        assert problems == []
