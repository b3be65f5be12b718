"""Escalation timers of on-call consults (server/store/escalations.py) on a real database: one
escalation per message; a due timer or an ended shift is claimed by one sweeper while another
skips it; acknowledging closes the thread's open escalations whose ladder holds the user; held
deliveries are released for the users named only; reseal requests stay pending until done
(docs/PROTOCOL.md §16)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import asyncpg

from server.store import escalations, threads
from server.store.escalations import Escalation, Event
from tests.server.test_store_threads import NOW, add_device, add_user, new_message, store

MINUTE = dt.timedelta(minutes=1)


async def message(conn: asyncpg.Connection, thread_id: str, sender: str, device: str,
                  recipients: list[str]) -> tuple[int, str]:
    msg = new_message(thread_id, sender, device, recipients)
    await store(conn, msg)
    pk = await conn.fetchval("SELECT message_pk FROM messages WHERE message_id = $1",
                             uuid.UUID(msg.message_id))
    return int(pk), msg.message_id


async def escalation(conn: asyncpg.Connection, ladder: list[str], *, thread_id: str | None = None,
                     due_in: dt.timedelta = 5 * MINUTE, shift_in: dt.timedelta = 60 * MINUTE,
                     ) -> Escalation:
    """An open escalation of a new message in ``thread_id`` (default: a new thread)."""
    sender = await add_user(conn)
    device = await add_device(conn, sender)
    tid = thread_id or str(uuid.uuid4())
    if thread_id is None:
        await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=sender,
                                    priority="urgent", users=[], roles=[], now=NOW)
    pk, mid = await message(conn, tid, sender, device, [])
    created = await escalations.create(
        conn, message_pk=pk, message_id=mid, thread_id=tid, sender_user_id=sender,
        org_id="org-a", role="orthopaedics_oncall", shift_id=str(uuid.uuid4()), ladder=ladder,
        deadline=300, due_at=NOW + due_in, shift_ends_at=NOW + shift_in, now=NOW)
    assert created is not None
    return created


def users(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


def test_held_users_are_those_no_open_escalation_has_reached_yet() -> None:
    a, b, c, d = users(4)
    first = Escalation(escalation_id="e1", message_pk=1, message_id="m1", thread_id="t",
                       sender_user_id="s", org_id="o", role="r", shift_id=None,
                       ladder=(a, b, c), deadline=300, level=0, phase="renotify", step=0,
                       state="open", due_at=None, shift_ends_at=None, acknowledged_by=None,
                       acknowledged_at=None, created_at=NOW)
    assert escalations.held_users([first]) == {b, c}
    assert escalations.held_users([dataclasses.replace(first, level=1)]) == {c}
    assert escalations.held_users([dataclasses.replace(first, level=2)]) == set()
    # One escalation reached c already: another's holding it back does not hold c.
    second = dataclasses.replace(first, ladder=(c, d, b), level=0)
    assert escalations.held_users([first, second]) == {b, d}
    assert escalations.held_users([]) == set()


async def test_a_message_gets_one_escalation(conn: asyncpg.Connection) -> None:
    e = await escalation(conn, users(2))
    again = await escalations.create(
        conn, message_pk=e.message_pk, message_id=e.message_id, thread_id=e.thread_id,
        sender_user_id=e.sender_user_id, org_id="org-a", role="x", shift_id=str(uuid.uuid4()),
        ladder=users(1), deadline=60, due_at=NOW, shift_ends_at=NOW, now=NOW)
    assert again is None
    assert await escalations.for_message(conn, e.thread_id, e.message_id) == e
    assert (e.level, e.phase, e.step, e.state) == (0, "renotify", 0, "open")


async def test_only_unacknowledged_escalations_whose_timer_fell_due_are_claimed_soonest_first(
        conn: asyncpg.Connection) -> None:
    """Open ones, and exhausted ones with a timer: the reminder of a deferred handover
    (docs/PROTOCOL.md §16.4); an exhausted one on its shift has none."""
    late = await escalation(conn, users(1), due_in=3 * MINUTE)
    soon = await escalation(conn, users(1), due_in=1 * MINUTE)
    await escalation(conn, users(1), due_in=10 * MINUTE)
    closed = await escalation(conn, users(1), due_in=1 * MINUTE)
    await escalations.save(conn, dataclasses.replace(closed, state="acknowledged"))
    used_up = await escalation(conn, users(1), due_in=1 * MINUTE)
    await escalations.save(conn, dataclasses.replace(used_up, state="exhausted", due_at=None))
    reminded = await escalation(conn, users(1), due_in=2 * MINUTE)
    await escalations.save(conn, dataclasses.replace(reminded, state="exhausted",
                                                     shift_id=None))
    async with conn.transaction():
        got = await escalations.claim_due(conn, NOW + 5 * MINUTE, limit=10)
    assert [e.escalation_id for e in got] == [soon.escalation_id, reminded.escalation_id,
                                              late.escalation_id]
    async with conn.transaction():
        assert len(await escalations.claim_due(conn, NOW + 5 * MINUTE, limit=1)) == 1


async def test_a_claimed_timer_is_skipped_by_another_sweeper(conn: asyncpg.Connection,
                                                             db_dsn: str) -> None:
    first = await escalation(conn, users(1), due_in=1 * MINUTE)
    second = await escalation(conn, users(1), due_in=2 * MINUTE)
    other = await asyncpg.connect(db_dsn)
    try:
        async with conn.transaction():
            mine = await escalations.claim_due(conn, NOW + 5 * MINUTE, limit=1)
            async with other.transaction():
                theirs = await escalations.claim_due(other, NOW + 5 * MINUTE, limit=10)
    finally:
        await other.close()
    assert [e.escalation_id for e in mine] == [first.escalation_id]
    assert [e.escalation_id for e in theirs] == [second.escalation_id]


async def test_handovers_are_claimed_by_the_shifts_end(conn: asyncpg.Connection) -> None:
    ended = await escalation(conn, users(1), shift_in=10 * MINUTE)
    await escalation(conn, users(1), shift_in=90 * MINUTE)
    async with conn.transaction():
        got = await escalations.claim_handovers(conn, NOW + 30 * MINUTE, limit=10)
    assert [e.escalation_id for e in got] == [ended.escalation_id]


async def test_a_shift_added_brings_forward_the_roles_deferred_handovers_only(
        conn: asyncpg.Connection) -> None:
    """Deferred (no shift) and due later than the new shift's start, or never: brought forward
    to it. Due sooner, on a shift, acknowledged, or of another role: left alone."""
    starts = NOW + 60 * MINUTE
    rows: dict[str, Escalation] = {}
    for name, state, due, shift, role in [
            ("never", "open", None, None, "orthopaedics_oncall"),
            ("later", "open", NOW + 120 * MINUTE, None, "orthopaedics_oncall"),
            ("exhausted", "exhausted", None, None, "orthopaedics_oncall"),
            ("sooner", "open", NOW + 30 * MINUTE, None, "orthopaedics_oncall"),
            ("on_shift", "open", NOW + 120 * MINUTE, str(uuid.uuid4()), "orthopaedics_oncall"),
            ("acknowledged", "acknowledged", None, None, "orthopaedics_oncall"),
            ("other_role", "open", None, None, "cardiology_oncall")]:
        e = await escalation(conn, users(1))
        await conn.execute("UPDATE escalations SET role = $2 WHERE escalation_id = $1",
                           e.escalation_id, role)
        rows[name] = dataclasses.replace(e, state=state, shift_ends_at=due, shift_id=shift)
        await escalations.save(conn, rows[name])
    assert await escalations.wake_deferred(conn, "org-a", "orthopaedics_oncall", starts) == 3
    for name, e in rows.items():
        now = await escalations.for_message(conn, e.thread_id, e.message_id)
        assert now is not None
        woken = name in ("never", "later", "exhausted")
        assert now.shift_ends_at == (starts if woken else e.shift_ends_at), name


async def test_a_saved_step_is_read_back(conn: asyncpg.Connection) -> None:
    e = await escalation(conn, users(2))
    moved = dataclasses.replace(e, level=1, phase="release", step=3, due_at=NOW + 9 * MINUTE,
                                ladder=tuple(users(3)), shift_id=str(uuid.uuid4()),
                                shift_ends_at=NOW + 120 * MINUTE)
    await escalations.save(conn, moved)
    assert await escalations.for_message(conn, e.thread_id, e.message_id) == moved


async def test_acknowledging_closes_the_threads_open_escalations_that_name_the_user(
        conn: asyncpg.Connection) -> None:
    a, b, c = users(3)
    mine = await escalation(conn, [a, b])
    same_thread = await escalation(conn, [b, c], thread_id=mine.thread_id)
    not_mine = await escalation(conn, [c], thread_id=mine.thread_id)
    elsewhere = await escalation(conn, [a, b])
    closed = await escalations.acknowledge(conn, mine.thread_id, b, NOW + MINUTE)
    assert {e.escalation_id for e in closed} == {mine.escalation_id, same_thread.escalation_id}
    assert all((e.state, e.acknowledged_by, e.acknowledged_at, e.due_at) == (
        "acknowledged", b, NOW + MINUTE, None) for e in closed)
    for left in (not_mine, elsewhere):
        got = await escalations.for_message(conn, left.thread_id, left.message_id)
        assert got is not None and got.state == "open"
    assert await escalations.acknowledge(conn, mine.thread_id, b, NOW + MINUTE) == []


async def test_events_are_listed_with_their_escalation_in_step_order_once_each(
        conn: asyncpg.Connection) -> None:
    a, b = users(2)
    e = await escalation(conn, [a, b])
    quiet = await escalation(conn, [a], thread_id=e.thread_id)
    second = Event(step=2, kind="renotify", level=1, user_id=b, at=NOW + 2 * MINUTE)
    first = Event(step=1, kind="notify", level=0, user_id=a, at=NOW)
    for event in (second, first, first):
        await escalations.add_event(conn, e.escalation_id, event)
    listed = await escalations.list_for_thread(conn, e.thread_id)
    assert [(x.escalation_id, events) for x, events in listed] == [
        (e.escalation_id, [first, second]), (quiet.escalation_id, [])]


async def test_releasing_unholds_only_the_named_users_deliveries_in_the_thread(
        conn: asyncpg.Connection) -> None:
    sender, b, c = await add_user(conn), await add_user(conn), await add_user(conn)
    s1, b1, b2, c1 = (await add_device(conn, sender), await add_device(conn, b),
                      await add_device(conn, b), await add_device(conn, c))
    e = await escalation(conn, [b, c])
    await message(conn, e.thread_id, sender, s1, [b1, b2, c1])
    other = await escalation(conn, [b])
    await message(conn, other.thread_id, sender, s1, [b1])
    await conn.execute("UPDATE deliveries SET held = true")
    assert await escalations.release_held(conn, e.thread_id, [b]) == sorted([b1, b2])
    held = {r["device_id"] for r in await conn.fetch(
        "SELECT device_id::text AS device_id FROM deliveries WHERE held")}
    assert held == {c1, b1}  # c's, and b's in the other thread
    assert await escalations.release_held(conn, e.thread_id, [b]) == []


async def test_a_reseal_request_is_pending_until_done_and_renewed_by_a_new_request(
        conn: asyncpg.Connection) -> None:
    e = await escalation(conn, users(1))
    d1, d2, h1 = users(3)
    await escalations.request_reseal(conn, escalation_id=e.escalation_id, thread_id=e.thread_id,
                                     devices=[d1], holders=[h1], now=NOW, deadline=NOW + MINUTE)
    assert await escalations.pending_reseals(conn, [e.thread_id]) == [
        (e.escalation_id, e.thread_id, frozenset({d1}), frozenset({h1}))]
    await conn.execute(
        "INSERT INTO device_notices (device_id, kind, frame, dedupe_key, created_at) "
        "VALUES ($1, 'reseal_request', '\\x00', $2, $3)", uuid.UUID(h1),
        f"reseal:{e.escalation_id}", NOW)
    await escalations.reseal_done(conn, e.escalation_id, NOW + MINUTE)
    assert await escalations.pending_reseals(conn, [e.thread_id]) == []
    assert await conn.fetchval("SELECT count(*) FROM device_notices") == 0
    await escalations.request_reseal(conn, escalation_id=e.escalation_id, thread_id=e.thread_id,
                                     devices=[d1, d2], holders=[h1], now=NOW + 2 * MINUTE,
                                     deadline=NOW + 3 * MINUTE)
    assert await escalations.pending_reseals(conn, [e.thread_id]) == [
        (e.escalation_id, e.thread_id, frozenset({d1, d2}), frozenset({h1}))]
    assert await escalations.pending_reseals(conn, [str(uuid.uuid4())]) == []
