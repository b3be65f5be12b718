"""On-call roles and rota shifts (PROTOCOL.md §16): storage, overlap checks, and who is on call.

A role is defined per organisation with its acknowledgement deadlines. A shift is a half-open
period ``[starts_at, ends_at)`` with a ladder of users, primary first. Shifts of one role never
overlap: :func:`add_shift` locks the role's row first, so two concurrent imports cannot both
insert overlapping shifts (the second sees the first's row).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence

import asyncpg

from protocol.errors import ErrorCode
from server.errors import Conflict, InvalidInput, NotFound

__all__ = [
    "Role",
    "Shift",
    "add_shift",
    "delete_shift",
    "get_role",
    "ladder_roles",
    "list_roles",
    "list_shifts",
    "next_start",
    "on_call",
    "resolve_users",
    "set_role",
]


@dataclasses.dataclass(frozen=True)
class Role:
    org_id: str
    role: str
    display_name: str
    urgent_seconds: int
    routine_seconds: int

    def deadline(self, priority: str) -> int:
        return self.urgent_seconds if priority == "urgent" else self.routine_seconds


@dataclasses.dataclass(frozen=True)
class Shift:
    shift_id: str
    org_id: str
    role: str
    starts_at: dt.datetime
    ends_at: dt.datetime
    ladder: tuple[str, ...]


_ROLE_COLS = "org_id, role, display_name, urgent_seconds, routine_seconds"
_SHIFT_COLS = ("shift_id::text AS shift_id, org_id, role, starts_at, ends_at, "
               "ladder::text[] AS ladder")


def _shift(r: asyncpg.Record) -> Shift:
    return Shift(r["shift_id"], r["org_id"], r["role"], r["starts_at"], r["ends_at"],
                 tuple(r["ladder"]))


async def set_role(conn: asyncpg.Connection, *, org_id: str, role: str, display_name: str,
                   urgent_seconds: int, routine_seconds: int, now: dt.datetime) -> Role:
    row = await conn.fetchrow(
        f"INSERT INTO oncall_roles ({_ROLE_COLS}, created_at) VALUES ($1, $2, $3, $4, $5, $6) "
        "ON CONFLICT (org_id, role) DO UPDATE SET display_name = $3, urgent_seconds = $4, "
        f"routine_seconds = $5 RETURNING {_ROLE_COLS}",
        org_id, role, display_name, urgent_seconds, routine_seconds, now)
    return Role(**dict(row))


async def share_role_unless_written(conn: asyncpg.Connection, org_id: str, role: str) -> bool:
    """Lock the role's row for sharing, in the caller's transaction, unless a rota write holds
    it (:func:`get_role` with ``lock``, until it commits): False then, at once. A sweep that
    decides from the rota takes it before reading the rota, so that it and a rota write are
    never both deciding on one consult: the one that comes second sees what the first
    committed (Postgres's row locks, "The Locking Clause" of SELECT). A role that is gone
    (nothing can write its rota) counts as not written."""
    row = await conn.fetchrow(
        "SELECT 1 FROM oncall_roles WHERE org_id = $1 AND role = $2 FOR SHARE SKIP LOCKED",
        org_id, role)
    if row is not None:
        return True
    return not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM oncall_roles WHERE org_id = $1 AND role = $2)",
        org_id, role)


async def share_role(conn: asyncpg.Connection, org_id: str, role: str) -> None:
    """Lock the role's row for sharing in the caller's transaction, waiting for a rota write
    that holds it (:func:`get_role` with ``lock``) to commit: what is read of the rota after
    this includes it."""
    await conn.execute("SELECT 1 FROM oncall_roles WHERE org_id = $1 AND role = $2 FOR SHARE",
                       org_id, role)


async def get_role(conn: asyncpg.Connection, org_id: str, role: str, *, lock: bool = False
                   ) -> Role:
    """Raises ROLE_UNKNOWN."""
    row = await conn.fetchrow(
        f"SELECT {_ROLE_COLS} FROM oncall_roles WHERE org_id = $1 AND role = $2"
        + (" FOR UPDATE" if lock else ""), org_id, role)
    if row is None:
        raise NotFound(ErrorCode.ROLE_UNKNOWN, "no such on-call role")
    return Role(**dict(row))


async def list_roles(conn: asyncpg.Connection, org_id: str | None = None) -> list[Role]:
    rows = await conn.fetch(
        f"SELECT {_ROLE_COLS} FROM oncall_roles WHERE $1::text IS NULL OR org_id = $1 "
        "ORDER BY org_id, role", org_id)
    return [Role(**dict(r)) for r in rows]


async def resolve_users(conn: asyncpg.Connection, org_id: str, refs: Sequence[str]
                        ) -> tuple[list[str], list[str], list[str]]:
    """Ladder entries (user ids or logins) -> (user ids in order, unknown refs, suspended
    refs). A user on a ladder is a member of the organisation who is not suspended: one
    provisioned but not enrolled yet (``pending``) may be, as IT writes next month's rota
    before everyone has enrolled; a ladder member with no active device is passed over when
    the consult comes (:meth:`server.oncall.OncallService._incoming`, ``_step``)."""
    rows = await conn.fetch(
        "SELECT user_id::text AS user_id, login, status FROM users WHERE org_id = $1 "
        "AND (login = ANY($2::text[]) OR user_id::text = ANY($2::text[]))",
        org_id, list(refs))
    by_ref = {r["login"]: r for r in rows} | {r["user_id"]: r for r in rows}
    found = [by_ref[r]["user_id"] for r in refs
             if r in by_ref and by_ref[r]["status"] in ("active", "pending")]
    suspended = [r for r in refs if r in by_ref and by_ref[r]["status"] == "suspended"]
    return found, [r for r in refs if r not in by_ref], suspended


async def add_shift(conn: asyncpg.Connection, *, org_id: str, role: str,
                    starts_at: dt.datetime, ends_at: dt.datetime, ladder: Sequence[str],
                    now: dt.datetime) -> Shift:
    """Insert a shift (call in a transaction). Raises SHIFT_EMPTY, ROTA_INVALID (dates, a user
    twice), ROLE_UNKNOWN or SHIFT_OVERLAP (naming the shift it overlaps)."""
    if not ladder:
        raise InvalidInput(ErrorCode.SHIFT_EMPTY, "the shift names nobody")
    if ends_at <= starts_at:
        raise InvalidInput(ErrorCode.ROTA_INVALID, "the shift ends before it starts")
    if len(set(ladder)) != len(ladder):
        raise InvalidInput(ErrorCode.ROTA_INVALID, "a user appears twice on the ladder")
    await get_role(conn, org_id, role, lock=True)
    clash = await conn.fetchval(
        "SELECT shift_id::text FROM oncall_shifts WHERE org_id = $1 AND role = $2 "
        "AND starts_at < $4 AND $3 < ends_at LIMIT 1", org_id, role, starts_at, ends_at)
    if clash is not None:
        raise Conflict(ErrorCode.SHIFT_OVERLAP, "the shift overlaps another shift of the role",
                       extra={"shift_id": clash})
    row = await conn.fetchrow(
        "INSERT INTO oncall_shifts (shift_id, org_id, role, starts_at, ends_at, ladder, "
        f"created_at) VALUES ($1, $2, $3, $4, $5, $6::uuid[], $7) RETURNING {_SHIFT_COLS}",
        uuid.uuid4(), org_id, role, starts_at, ends_at, list(ladder), now)
    return _shift(row)


async def delete_shift(conn: asyncpg.Connection, org_id: str, role: str, shift_id: str) -> None:
    done = await conn.execute(
        "DELETE FROM oncall_shifts WHERE org_id = $1 AND role = $2 AND shift_id = $3",
        org_id, role, shift_id)
    if done.endswith(" 0"):
        raise NotFound(ErrorCode.NOT_FOUND, "no such shift")


async def list_shifts(conn: asyncpg.Connection, org_id: str, role: str, *,
                      ending_after: dt.datetime | None = None) -> list[Shift]:
    rows = await conn.fetch(
        f"SELECT {_SHIFT_COLS} FROM oncall_shifts WHERE org_id = $1 AND role = $2 "
        "AND ($3::timestamptz IS NULL OR ends_at > $3) ORDER BY starts_at LIMIT 5000",
        org_id, role, ending_after)
    return [_shift(r) for r in rows]


async def on_call(conn: asyncpg.Connection, org_id: str, role: str, at: dt.datetime
                  ) -> Shift | None:
    """The shift of the role covering ``at``, if any."""
    row = await conn.fetchrow(
        f"SELECT {_SHIFT_COLS} FROM oncall_shifts WHERE org_id = $1 AND role = $2 "
        "AND starts_at <= $3 AND $3 < ends_at", org_id, role, at)
    return None if row is None else _shift(row)


async def next_start(conn: asyncpg.Connection, org_id: str, role: str, after: dt.datetime
                     ) -> dt.datetime | None:
    """When the role's next shift starting after ``after`` starts, if the rota has one."""
    start: dt.datetime | None = await conn.fetchval(
        "SELECT min(starts_at) FROM oncall_shifts WHERE org_id = $1 AND role = $2 "
        "AND starts_at > $3", org_id, role, after)
    return start


async def ladder_roles(conn: asyncpg.Connection, org_id: str, user_ids: Sequence[str],
                       at: dt.datetime) -> dict[str, tuple[str, ...]]:
    """The roles each user answers at ``at`` by being on a shift's ladder (a consent naming
    the role covers them, protocol.consent.check_consent)."""
    rows = await conn.fetch(
        "SELECT l::text AS u, array_agg(DISTINCT s.role) AS roles FROM oncall_shifts s, "
        "unnest(s.ladder) AS l WHERE s.org_id = $1 AND s.starts_at <= $3 AND $3 < s.ends_at "
        "AND l = ANY($2::uuid[]) GROUP BY l", org_id, list(user_ids), at)
    return {r["u"]: tuple(r["roles"]) for r in rows}
