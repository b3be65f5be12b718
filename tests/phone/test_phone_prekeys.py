"""The phone's prekeys, as the Python SDK keeps them (clients/sdk/prekeys.py, identity.py):
one-time prekeys topped up when the relay says ``keys_low`` (a real relay, a real Chromium,
messages from a real SDK client), and the signed prekey's schedule (the app's own code under
Node with the time given: a worker's clock cannot be moved from a test) on the SDK's defaults,
7 days' rotation and 30 days' keep."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from clients.sdk.prekeys import PrekeyPolicy
from tests.helpers import seconds
from tests.identity_world import World
from tests.phone.node import run_driver
from tests.phone.phone_world import (
    enrolled_phone,
    sent_from_phone,
)

DAY = 86_400
SDK = PrekeyPolicy()  # the SDK's defaults, which the app follows
T0 = 1_790_000_000


@pytest.fixture
def phone_settings() -> dict[str, Any]:
    # The phone enrols with 20 one-time prekeys: one claimed and it is under the low water.
    return {"autolock_seconds": 600, "prekeys_low_water": 20, "prekeys_target": 30}


async def unclaimed(world: World, user_id: str) -> int:
    conn = await asyncpg.connect(world.dsn)
    try:
        return int(await conn.fetchval(
            "SELECT count(*) FROM one_time_prekeys k JOIN devices d ON d.device_id = k.device_id"
            " WHERE d.user_id = $1 AND k.claimed_at IS NULL", uuid.UUID(user_id)))
    finally:
        await conn.close()


async def test_the_phone_tops_up_its_one_time_prekeys_when_the_relay_says_keys_low(
        phone: tuple[World, str], tmp_path: Path) -> None:
    world, origin = phone
    async with enrolled_phone(world, tmp_path, origin) as (intern, specialist, events, page,
                                                           problems):
        assert await unclaimed(world, intern.user_id) == 20
        consult = await sent_from_phone(page, events, "Query scaphoid fracture.")
        # The reply claims one of the phone's keys: 19 left, under 20, the relay says keys_low
        # and the phone uploads 11 new ones (their secrets kept in its vault).
        await specialist.client.send_text(consult.message.thread_id, "Splint, clinic tomorrow.")
        await page.locator(".message.theirs", has_text="Splint, clinic tomorrow").wait_for()
        async with asyncio.timeout(seconds(20)):
            while await unclaimed(world, intern.user_id) != 30:
                await asyncio.sleep(0.1)
        # Keys it made open what is sealed to them: the next replies claim them too.
        for n in range(3):
            await specialist.client.send_text(consult.message.thread_id, f"Update {n}: stable.")
            await page.locator(".message.theirs", has_text=f"Update {n}: stable.").wait_for()
        assert problems == []


def schedule(signed: list[dict[str, Any]], now: int) -> dict[str, Any]:
    return run_driver({"op": "prekey_schedule", "signed": signed, "now": now})


def test_the_signed_prekey_is_due_after_seven_days_as_in_the_sdk() -> None:
    assert (SDK.rotation, SDK.keep) == (7 * DAY, 30 * DAY)
    one = [{"id": 1, "created_at": T0}]
    assert schedule(one, T0 + SDK.rotation - 1) == {"due": False, "kept": [1]}
    assert schedule(one, T0 + SDK.rotation)["due"] is True
    assert schedule([], T0)["due"] is True


def test_a_replaced_signed_prekey_is_kept_thirty_days_after_its_successor_then_deleted() -> None:
    two = [{"id": 1, "created_at": T0}, {"id": 22, "created_at": T0 + SDK.rotation}]
    assert schedule(two, T0 + SDK.rotation + SDK.keep - 1) == {"due": True, "kept": [1, 22]}
    assert schedule(two, T0 + SDK.rotation + SDK.keep)["kept"] == [22]
    assert schedule(two, T0 + SDK.rotation + 1) == {"due": False, "kept": [1, 22]}


def test_a_signed_prekey_from_a_vault_without_dates_is_rotated_at_once() -> None:
    """A vault written before the schedule existed: its one signed prekey has no date, so it is
    due, and once replaced it is kept the full keep period like any other."""
    old = [{"id": 1}]
    assert schedule(old, T0) == {"due": True, "kept": [1]}
    replaced = [{"id": 1}, {"id": 22, "created_at": T0}]
    assert schedule(replaced, T0 + SDK.keep - 1)["kept"] == [1, 22]
    assert schedule(replaced, T0 + SDK.keep)["kept"] == [22]
