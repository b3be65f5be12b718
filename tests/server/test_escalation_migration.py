"""Alembic migration 0023 on a database an older relay used: the consults whose handover it
deferred for good (an unacknowledged escalation with no handover time, the hazard of
docs/HAZARD_LOG.md HAZ-02) are marked deferred and given the role's next shift and, their
ladder used up, a reminder; the other escalations are left as they were."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from server import migrations
from server.store import threads
from tests.helpers import Cluster
from tests.server.test_store_threads import NOW, add_device, add_user, new_message, store


@pytest.fixture
async def at_0022(cluster: Cluster) -> AsyncIterator[str]:
    """A database at revision 0022, dropped after the test."""
    dsn = await cluster.create_database(empty=True)
    try:
        await migrations.upgrade_async(dsn, "0022")
        yield dsn
    finally:
        await cluster.drop_database(dsn)


async def test_escalations_an_older_relay_deferred_wait_for_the_next_shift(at_0022: str
                                                                         ) -> None:
    conn = await asyncpg.connect(at_0022)
    try:
        rows, shifts, wall = await _older_relays_escalations(conn)
        await migrations.upgrade_async(at_0022)
        after = {r["id"]: (r["shift_id"] is None, r["due_at"], r["shift_ends_at"])
                 for r in await conn.fetch("SELECT escalation_id::text AS id, shift_id, "
                                           "due_at, shift_ends_at FROM escalations")}
    finally:
        await conn.close()
    running, _ = shifts
    for name in ("stuck_exhausted", "deferred_to_a_start"):
        # The running shift takes it at the next sweep; the used-up ladder is reminded at once.
        deferred, due, handover = after[rows[name]]
        assert deferred and handover == running[1], name
        assert due is not None and abs((due - wall).total_seconds()) < 60, name
    assert after[rows["stuck_open"]] == (True, NOW, running[1])  # it keeps escalating
    assert after[rows["on_shift"]] == (False, NOW, running[2])
    assert after[rows["acknowledged"]] == (False, None, None)


async def _older_relays_escalations(conn: asyncpg.Connection) -> tuple[
        dict[str, str], list[tuple[uuid.UUID, dt.datetime, dt.datetime]], dt.datetime]:
    """A role with a shift running now and one after a gap, and escalations as a relay before
    0023 left them: ``(escalation ids by name, the shifts, now)``."""
    sender, doctor = await add_user(conn), await add_user(conn)
    device = await add_device(conn, sender)
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=sender,
                                priority="urgent", users=[doctor], roles=[], now=NOW)
    await conn.execute("INSERT INTO oncall_roles (org_id, role, created_at) "
                       "VALUES ('org-a', 'ortho', $1)", NOW)
    wall = dt.datetime.now(dt.UTC).replace(microsecond=0)
    shifts = [(uuid.uuid4(), wall - dt.timedelta(hours=1), wall + dt.timedelta(hours=7)),
              (uuid.uuid4(), wall + dt.timedelta(hours=8), wall + dt.timedelta(hours=16))]
    for sid, starts, ends in shifts:
        await conn.execute(
            "INSERT INTO oncall_shifts (shift_id, org_id, role, starts_at, ends_at, ladder, "
            "created_at) VALUES ($1, 'org-a', 'ortho', $2, $3, $4::uuid[], $2)",
            sid, starts, ends, [doctor])
    gone = uuid.uuid4()  # the shift an older relay deferred from, ended (or deleted)
    rows = {}
    # (name, state, shift, due_at, shift_ends_at)
    older: list[tuple[str, str, uuid.UUID, dt.datetime | None, dt.datetime | None]] = [
        ("stuck_exhausted", "exhausted", gone, None, None),  # deferred with no later shift
        ("stuck_open", "open", gone, NOW, None),
        ("deferred_to_a_start", "exhausted", gone, None, shifts[1][1]),
        ("on_shift", "open", shifts[0][0], NOW, shifts[0][2]),
        ("acknowledged", "acknowledged", gone, None, None)]
    for name, state, shift, due, handover in older:
        msg = new_message(tid, sender, device, [])
        await store(conn, msg)
        pk = await conn.fetchval("SELECT message_pk FROM messages WHERE message_id = $1",
                                 msg.message_id)
        rows[name] = await conn.fetchval(
            "INSERT INTO escalations (escalation_id, message_pk, message_id, thread_id, "
            "sender_user_id, org_id, role, shift_id, ladder, deadline, state, due_at, "
            "shift_ends_at, created_at) VALUES ($1, $2, $3, $4, $5, 'org-a', 'ortho', $6, "
            "$7::uuid[], 300, $8, $9, $10, $11) RETURNING escalation_id::text",
            uuid.uuid4(), pk, msg.message_id, tid, sender, shift, [doctor], state, due,
            handover, NOW)
    return rows, shifts, wall
