"""Cross-process events (server/events.py) over the real database's LISTEN/NOTIFY: delivered to
the handlers of their kind only when the publishing transaction commits, never on rollback,
large revocations split under the NOTIFY limit, and a failing handler or an undecodable payload
not stopping the others."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from server.events import CHANNEL, Announcer, EventBus, publish, publish_revocation
from tests.helpers import seconds


@pytest.fixture
async def heard(db_dsn: str) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
    """Every ``revoked`` and ``deliver`` event an EventBus hears, in order."""
    bus, queue = EventBus(db_dsn), asyncio.Queue[dict[str, Any]]()

    async def keep(event: dict[str, Any]) -> None:
        await queue.put(event)

    async def fail(event: dict[str, Any]) -> None:
        raise RuntimeError("a handler that fails")

    bus.subscribe("revoked", fail)
    bus.subscribe("revoked", keep)
    bus.subscribe("deliver", keep)
    await bus.start()
    try:
        yield queue
    finally:
        await bus.stop()


async def next_event(queue: asyncio.Queue[dict[str, Any]]) -> dict[str, Any]:
    return await asyncio.wait_for(queue.get(), seconds(10))


async def test_an_event_is_heard_when_its_transaction_commits_and_never_on_rollback(
        conn: asyncpg.Connection, heard: asyncio.Queue[dict[str, Any]]) -> None:
    tx = conn.transaction()
    await tx.start()
    await publish(conn, "deliver", device_ids=["rolled-back"])
    await tx.rollback()
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, "{not json")
    await publish(conn, "session", device_id="no-handler")
    async with conn.transaction():
        await publish(conn, "deliver", device_ids=["committed"])
    assert await next_event(heard) == {"kind": "deliver", "device_ids": ["committed"]}
    assert heard.empty()


async def test_a_large_revocation_is_split_under_the_notify_limit(
        conn: asyncpg.Connection, heard: asyncio.Queue[dict[str, Any]]) -> None:
    devices = [str(uuid.uuid4()) for _ in range(250)]
    await publish_revocation(conn, device_ids=devices, reason="device_revoked")
    got = [await next_event(heard) for _ in range(3)]
    assert [len(e["device_ids"]) for e in got] == [100, 100, 50]
    assert [d for e in got for d in e["device_ids"]] == devices
    assert {e["reason"] for e in got} == {"device_revoked"} and not any(e["user_ids"]
                                                                        for e in got)
    await publish_revocation(conn, user_ids=["u"], reason="user_suspended")
    assert await next_event(heard) == {"kind": "revoked", "device_ids": [], "user_ids": ["u"],
                                       "reason": "user_suspended"}


async def test_a_payload_over_the_limit_is_refused_before_postgres(
        conn: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="too large for NOTIFY"):
        await publish(conn, "deliver", device_ids=["x" * 36] * 250)


async def test_devices_announced_in_one_turn_go_in_one_event_sent_again_after_a_failure(
        db_dsn: str, heard: asyncio.Queue[dict[str, Any]]) -> None:
    """The takeover rule's events (server/hub.py ``Hub.silenced``): the devices announced in
    one event-loop turn share one ``deliver`` event (180 a payload), and an event that could
    not be sent (the database unreachable for a moment) is sent again."""
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=1)
    calls = 0

    def flaky() -> asyncpg.Pool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionRefusedError("the database is restarting")
        return pool

    announcer = Announcer(flaky)
    try:
        ids = sorted(str(uuid.uuid4()) for _ in range(200))
        announcer.announce(ids[:150])
        announcer.announce(ids[150:])
        announcer.announce([])
        assert await next_event(heard) == {"kind": "deliver", "device_ids": ids[:180],
                                           "notices": False}
        assert await next_event(heard) == {"kind": "deliver", "device_ids": ids[180:],
                                           "notices": False}
        await announcer.stop()
        assert (calls, announcer.sent) == (2, 2)
        assert heard.empty()
    finally:
        await pool.close()
