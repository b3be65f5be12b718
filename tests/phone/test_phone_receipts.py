"""The phone signs receipts for what it receives, as the Python SDK does
(clients/sdk/receiving.py): ``delivered`` once a message is stored in its vault, ``read`` once
the intern has it on the screen; the specialist's real SDK client gets both as verified receipt
notices naming the phone's device. Real relay, real Chromium."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from clients.sdk.client import ReceiptEvent
from tests.identity_world import World
from tests.phone.phone_world import (
    PASSPHRASE,
    enrolled_phone,
    next_event,
    phone_device_id,
    sent_from_phone,
)


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    return {"autolock_seconds": 600}


async def receipts_of(queue: asyncio.Queue[Any], message_id: str) -> set[tuple[str, str, str]]:
    """Delivered and read receipts of ``message_id``: (kind, user, device) each."""
    got: set[tuple[str, str, str]] = set()
    while {k for k, _, _ in got} != {"delivered", "read"}:
        r = await next_event(queue, ReceiptEvent, lambda e: e.message_id == message_id)
        got.add((r.kind, r.user_id, r.device_id))
    return got


async def test_the_phone_sends_delivered_and_read_receipts_for_the_specialists_reply(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, specialist, events, page,
                                                           problems):
        device = str(await phone_device_id(world, intern.user_id))
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        thread = consult.message.thread_id
        reply = await specialist.client.send_text(thread, "Splint, clinic tomorrow.")
        await page.locator(".message.theirs", has_text="Splint, clinic tomorrow").wait_for()
        assert await receipts_of(events, reply.message_id) == {
            ("delivered", intern.user_id, device), ("read", intern.user_id, device)}

        # Locked, the phone holds no key: the next reply waits at the relay, and both receipts
        # come once the intern unlocks.
        await page.tap("#lock")
        await page.locator("#screen-unlock").wait_for()
        second = await specialist.client.send_text(thread, "Also: elevate the arm.")
        await page.fill("#passphrase", PASSPHRASE)
        await page.tap("#unlock")
        await page.locator(".message.theirs", has_text="elevate the arm").wait_for()
        assert await receipts_of(events, second.message_id) == {
            ("delivered", intern.user_id, device), ("read", intern.user_id, device)}
        assert problems == []
