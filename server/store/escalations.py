"""Escalation timers of consults addressed to an on-call role, their steps, and the reseal
requests of shift handovers (PROTOCOL.md §16; the state machine is protocol.oncall.advance).

Timers are rows: ``due_at`` (the next renotify/release) of open escalations, and the next
reminder of an exhausted one whose handover is deferred, and ``shift_ends_at`` (the handover)
of unacknowledged ones, open or exhausted. Every relay process sweeps them with ``FOR UPDATE
SKIP LOCKED`` (:func:`claim_due`), so each step is taken exactly once even with several
processes, and a restarted relay continues from the rows.

A handover *deferred* for want of an incoming shift (docs/PROTOCOL.md §16.4) leaves the
escalation with no shift (``shift_id`` NULL) and ``shift_ends_at`` at the start of the role's
next shift known, or NULL; a shift added to the rota later brings it forward
(:func:`wake_deferred`).

A consult sent to the role *during* such a gap (nobody on call) opens an escalation of that
kind from the start, in phase ``waiting`` (alembic 0025): its ladder is the role's certificate
holders it reached (possibly none), all reached at once, and it is reminded every deadline
until the next shift starts and takes it over like a deferred handover.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Literal

import asyncpg

__all__ = [
    "Escalation",
    "Event",
    "acknowledge",
    "add_event",
    "claim_due",
    "claim_handovers",
    "create",
    "for_message",
    "handover_now",
    "held_users",
    "list_for_thread",
    "open_in_threads",
    "pending_reseals",
    "release_held",
    "request_reseal",
    "reseal_done",
    "save",
    "unacknowledged_roles",
    "wake_deferred",
]

_COLS = ("escalation_id::text AS escalation_id, message_pk, message_id::text AS message_id, "
         "thread_id::text AS thread_id, sender_user_id::text AS sender_user_id, org_id, role, "
         "shift_id::text AS shift_id, ladder::text[] AS ladder, deadline, level, phase, step, "
         "state, due_at, shift_ends_at, acknowledged_by::text AS acknowledged_by, "
         "acknowledged_at, created_at")


@dataclasses.dataclass(frozen=True)
class Escalation:
    escalation_id: str
    message_pk: int
    message_id: str
    thread_id: str
    sender_user_id: str
    org_id: str
    role: str
    shift_id: str | None
    ladder: tuple[str, ...]
    deadline: int
    level: int
    phase: str
    step: int
    state: str
    due_at: dt.datetime | None
    shift_ends_at: dt.datetime | None
    acknowledged_by: str | None
    acknowledged_at: dt.datetime | None
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class Event:
    step: int
    kind: str
    level: int
    user_id: str
    at: dt.datetime
    next_shift_at: dt.datetime | None = None  # a ``no_shift`` step: the role's next shift


def _esc(r: asyncpg.Record) -> Escalation:
    d = dict(r)
    d["ladder"] = tuple(d["ladder"])
    return Escalation(**d)


async def create(conn: asyncpg.Connection, *, message_pk: int, message_id: str, thread_id: str,
                 sender_user_id: str, org_id: str, role: str, shift_id: str | None,
                 ladder: Sequence[str], deadline: int, due_at: dt.datetime,
                 shift_ends_at: dt.datetime | None, now: dt.datetime, level: int = 0,
                 phase: str = "renotify", state: str = "open") -> Escalation | None:
    """A new escalation: on a shift's ladder (open, level 0), or waiting in a gap of the rota
    (``shift_id`` None, ``phase`` waiting, state exhausted: module docstring)."""
    row = await conn.fetchrow(
        "INSERT INTO escalations (escalation_id, message_pk, message_id, thread_id, "
        "sender_user_id, org_id, role, shift_id, ladder, deadline, due_at, shift_ends_at, "
        "created_at, level, phase, state) "
        "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9::uuid[],$10,$11,$12,$13,$14,$15,$16) "
        f"ON CONFLICT (message_pk) DO NOTHING RETURNING {_COLS}",
        uuid.uuid4(), message_pk, message_id, thread_id, sender_user_id, org_id, role,
        shift_id, list(ladder), deadline, due_at, shift_ends_at, now, level, phase, state)
    return None if row is None else _esc(row)


async def unacknowledged_roles(conn: asyncpg.Connection, thread_ids: Sequence[str]
                               ) -> set[tuple[str, str]]:
    """(thread id, role) of the threads' escalations nobody has acknowledged yet, open or
    exhausted (a consult waiting for a shift is one: a follow-up in a gap opens no other)."""
    rows = await conn.fetch(
        "SELECT DISTINCT thread_id::text AS t, role FROM escalations "
        "WHERE thread_id = ANY($1::uuid[]) AND state IN ('open', 'exhausted')",
        list(thread_ids))
    return {(r["t"], r["role"]) for r in rows}


async def open_in_threads(conn: asyncpg.Connection, thread_ids: Sequence[str]
                          ) -> dict[str, list[Escalation]]:
    rows = await conn.fetch(
        f"SELECT {_COLS} FROM escalations WHERE thread_id = ANY($1::uuid[]) AND state = 'open' "
        "ORDER BY created_at", list(thread_ids))
    out: dict[str, list[Escalation]] = {}
    for r in rows:
        out.setdefault(r["thread_id"], []).append(_esc(r))
    return out


def held_users(escalations: Sequence[Escalation]) -> set[str]:
    """Ladder members not yet reached by any of these open escalations."""
    held: set[str] = set()
    reached: set[str] = set()
    for e in escalations:
        held.update(e.ladder[e.level + 1:])
        reached.update(e.ladder[:e.level + 1])
    return held - reached


async def claim_due(conn: asyncpg.Connection, now: dt.datetime, *, limit: int
                    ) -> list[Escalation]:
    """Escalations whose timer fell due, locked for this transaction (others skip them): the
    open ones, and the exhausted ones with a reminder due (those whose handover is deferred;
    an exhausted escalation of a running shift has no timer)."""
    return await _claim(conn, "due_at", now, limit)


async def claim_handovers(conn: asyncpg.Connection, now: dt.datetime, *, limit: int
                          ) -> list[Escalation]:
    """Unacknowledged escalations whose shift has ended, locked for this transaction: the open
    ones and the exhausted ones (a ladder used up is still nobody's acknowledgement, and the
    incoming shift must get the consult: PROTOCOL.md §16 "Handover")."""
    return await _claim(conn, "shift_ends_at", now, limit)


# Each predicate is written as its partial index's (escalations_due, alembic 0023;
# escalations_handover, alembic 0022), so the sweep reads the index, not the table.
_CLAIMABLE = {"due_at": "state IN ('open', 'exhausted')",
              "shift_ends_at": "state IN ('open', 'exhausted')"}

# Escalations of a role whose handover waits for a shift of it, due later than $3 or never: by
# escalations_deferred (alembic 0023), whose predicate this repeats.
_WAKE_DEFERRED = (
    "UPDATE escalations SET shift_ends_at = $3 WHERE org_id = $1 AND role = $2 "
    "AND shift_id IS NULL AND state IN ('open', 'exhausted') "
    "AND (shift_ends_at IS NULL OR shift_ends_at > $3)")


async def _claim(conn: asyncpg.Connection, column: Literal["due_at", "shift_ends_at"],
                 now: dt.datetime, limit: int) -> list[Escalation]:
    rows = await conn.fetch(_claim_sql(column), now, limit)
    return [_esc(r) for r in rows]


def _claim_sql(column: Literal["due_at", "shift_ends_at"]) -> str:
    return (f"SELECT {_COLS} FROM escalations WHERE {_CLAIMABLE[column]} AND {column} <= $1 "
            f"ORDER BY {column} LIMIT $2 FOR UPDATE SKIP LOCKED")


async def wake_deferred(conn: asyncpg.Connection, org_id: str, role: str,
                        starts_at: dt.datetime) -> int:
    """A shift of the role starting at ``starts_at`` was added to the rota: the role's deferred
    handovers due later than that (or never) fall due when it starts (at once if it has
    started); returns how many. Call in the rota write's transaction."""
    done = await conn.execute(_WAKE_DEFERRED, org_id, role, starts_at)
    return int(done.split()[-1])


async def handover_now(conn: asyncpg.Connection, shift_id: str, now: dt.datetime) -> int:
    """The shift ``shift_id`` was removed from the rota: its unacknowledged escalations fall
    due for handover ``now`` instead of at its old end; returns how many. Call in the rota
    write's transaction."""
    done = await conn.execute(
        "UPDATE escalations SET shift_ends_at = $2 WHERE shift_id = $1 "
        "AND state IN ('open', 'exhausted') AND shift_ends_at > $2", uuid.UUID(shift_id), now)
    return int(done.split()[-1])


async def save(conn: asyncpg.Connection, e: Escalation) -> None:
    await conn.execute(
        "UPDATE escalations SET level = $2, phase = $3, step = $4, state = $5, due_at = $6, "
        "ladder = $7::uuid[], shift_id = $8, shift_ends_at = $9 WHERE escalation_id = $1",
        e.escalation_id, e.level, e.phase, e.step, e.state, e.due_at, list(e.ladder),
        e.shift_id, e.shift_ends_at)


async def add_event(conn: asyncpg.Connection, escalation_id: str, event: Event) -> None:
    await conn.execute(
        "INSERT INTO escalation_events (escalation_id, step, kind, level, user_id, at, "
        "next_shift_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        escalation_id, event.step, event.kind, event.level, event.user_id, event.at,
        event.next_shift_at)


async def release_held(conn: asyncpg.Connection, thread_id: str, user_ids: Sequence[str]
                       ) -> list[str]:
    """Release the held deliveries of the thread for these users' devices; returns the
    devices that now have something to receive."""
    rows = await conn.fetch(
        "UPDATE deliveries d SET held = false FROM messages m, devices v "
        "WHERE d.message_pk = m.message_pk AND m.thread_id = $1 AND d.held "
        "AND v.device_id = d.device_id AND v.user_id = ANY($2::uuid[]) "
        "RETURNING d.device_id::text AS device_id", thread_id, list(user_ids))
    return sorted({r["device_id"] for r in rows})


async def for_message(conn: asyncpg.Connection, thread_id: str, message_id: str
                      ) -> Escalation | None:
    row = await conn.fetchrow(
        f"SELECT {_COLS} FROM escalations WHERE thread_id = $1 AND message_id = $2",
        thread_id, message_id)
    return None if row is None else _esc(row)


async def acknowledge(conn: asyncpg.Connection, thread_id: str, user_id: str,
                      now: dt.datetime) -> list[Escalation]:
    """Close every unacknowledged escalation of the thread (open, or exhausted and waiting for
    its handover) whose ladder holds ``user_id``."""
    rows = await conn.fetch(
        "UPDATE escalations SET state = 'acknowledged', due_at = NULL, acknowledged_by = $2, "
        "acknowledged_at = $3 WHERE thread_id = $1 AND state IN ('open', 'exhausted') "
        f"AND $2 = ANY (ladder) RETURNING {_COLS}", thread_id, user_id, now)
    return [_esc(r) for r in rows]


async def list_for_thread(conn: asyncpg.Connection, thread_id: str
                          ) -> list[tuple[Escalation, list[Event]]]:
    rows = await conn.fetch(
        f"SELECT {_COLS} FROM escalations WHERE thread_id = $1 ORDER BY created_at", thread_id)
    events = await conn.fetch(
        "SELECT e.escalation_id::text AS id, e.step, e.kind, e.level, e.user_id::text AS u, e.at, "
        "e.next_shift_at FROM escalation_events e JOIN escalations x USING (escalation_id) "
        "WHERE x.thread_id = $1 ORDER BY e.step", thread_id)
    by: dict[str, list[Event]] = {}
    for r in events:
        by.setdefault(r["id"], []).append(Event(r["step"], r["kind"], r["level"], r["u"],
                                                r["at"], r["next_shift_at"]))
    return [(_esc(r), by.get(r["escalation_id"], [])) for r in rows]


async def request_reseal(conn: asyncpg.Connection, *, escalation_id: str, thread_id: str,
                         devices: Sequence[str], holders: Sequence[str], now: dt.datetime,
                         deadline: dt.datetime) -> None:
    await conn.execute(
        "INSERT INTO reseal_requests (escalation_id, thread_id, devices, holders, requested_at, "
        "deadline) VALUES ($1, $2, $3::uuid[], $4::uuid[], $5, $6) "
        "ON CONFLICT (escalation_id) DO UPDATE SET devices = $3::uuid[], holders = $4::uuid[], "
        "requested_at = $5, deadline = $6, done_at = NULL",
        escalation_id, thread_id, list(devices), list(holders), now, deadline)


async def pending_reseals(conn: asyncpg.Connection, thread_ids: Sequence[str]
                          ) -> list[tuple[str, str, frozenset[str], frozenset[str]]]:
    """(escalation id, thread id, devices to reach, holder devices) of open requests."""
    rows = await conn.fetch(
        "SELECT escalation_id::text AS e, thread_id::text AS t, devices::text[] AS d, "
        "holders::text[] AS h FROM reseal_requests WHERE thread_id = ANY($1::uuid[]) "
        "AND done_at IS NULL", list(thread_ids))
    return [(r["e"], r["t"], frozenset(r["d"]), frozenset(r["h"])) for r in rows]


async def reseal_done(conn: asyncpg.Connection, escalation_id: str, now: dt.datetime) -> None:
    await conn.execute("UPDATE reseal_requests SET done_at = $2 WHERE escalation_id = $1",
                       escalation_id, now)
    await conn.execute("DELETE FROM device_notices WHERE kind = 'reseal_request' "
                       "AND dedupe_key = $1", f"reseal:{escalation_id}")
