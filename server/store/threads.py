"""Consult threads: creation, participants (users and roles), membership, unread counts, and
the set of devices a message to the thread must be sealed for.

A participant is a user listed in ``thread_members`` (not removed), or someone a thread's role
(``thread_roles``) reaches: the ladder of the role's current on-call shift (server/store/oncall.py),
or, when no shift covers the moment, every active user of the thread's organisation whose
certificate holds the role. That rule is written once, as the SQL functions ``role_reach`` and
``thread_participants`` that an alembic migration creates, and every reader passes the moment
(the relay's injected clock), never the database's ``now()``. Role names are normalised
(``orthopaedics-oncall`` is ``orthopaedics_oncall``, protocol.oncall). Every send is checked
against the *current* membership (docs/ARCHITECTURE.md §5: the sender names every recipient device).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence

import asyncpg

from protocol.errors import ErrorCode
from protocol.oncall import normalise_role
from server.errors import Forbidden, InvalidInput, NotFound

__all__ = [
    "DeviceSet",
    "ThreadSummary",
    "add_participants",
    "create_thread",
    "device_set",
    "ids_starting",
    "is_participant",
    "list_threads",
    "mark_read",
    "participants",
    "remove_participant",
]

MEMBERS_SQL = "SELECT user_id FROM thread_participants(ARRAY[$1::uuid], $2)"
"""A thread's participants at ``$2``: the SQL function ``thread_participants``, the one
definition of who a thread and its roles reach, which server/store/batches.py reads too
(:func:`list_threads` asks its ``role_reach`` the other way round: which roles reach a user).
The moment is always the caller's (the relay's injected clock), never the database's
``now()``."""


UNKNOWN_ROLES_SQL = (
    "SELECT r.role FROM unnest($2::text[]) WITH ORDINALITY AS r(role, n) "
    "WHERE NOT EXISTS (SELECT 1 FROM oncall_roles o WHERE o.org_id = $1 AND o.role = r.role) "
    "AND NOT EXISTS (SELECT 1 FROM users u WHERE u.org_id = $1 AND u.status IN "
    "('active', 'pending') AND r.role = ANY (u.roles)) ORDER BY r.n")
"""The roles, of those given, that nobody in organisation ``$1`` holds: no on-call rota of it
(``oncall_roles``, primary key ``(org_id, role)``) and no certificate of one of its users who is
active or provisioned and not yet enrolled (``pending``; index ``users_org_status``, the scan
``role_reach`` makes too). Such a role reaches nobody, ever, until IT gives it to someone: a
mistyped role, or another organisation's. A role it knows reaches someone now, or is a known
role nobody can be reached through at the moment (holders with no device yet, a rota whose
ladder has not enrolled, a gap between shifts): the send path's to handle, as before
(docs/PROTOCOL.md §16.4), not refused here. Nothing deletes a rota, so a role found known
stays known."""


@dataclasses.dataclass(frozen=True)
class ThreadSummary:
    thread_id: str
    priority: str
    created_by: str
    created_at: dt.datetime
    last_seq: int
    read_seq: int
    members: list[str]
    roles: list[str]

    @property
    def unread(self) -> int:
        return max(0, self.last_seq - self.read_seq)


@dataclasses.dataclass(frozen=True)
class DeviceSet:
    """Devices of the thread's current participants, as the relay sees them now."""

    active: frozenset[str]  # devices that must receive a message
    inactive: frozenset[str]  # revoked devices, or devices of suspended/removed users: stale
    orgs: Mapping[str, str] = dataclasses.field(default_factory=dict)  # device -> organisation


async def _check_users(conn: asyncpg.Connection, org_id: str, user_ids: Sequence[str]) -> None:
    if not user_ids:
        return
    rows = await conn.fetch(
        "SELECT user_id::text AS user_id FROM users WHERE user_id = ANY($1::uuid[]) "
        "AND status = 'active'", list(user_ids))
    found = {r["user_id"] for r in rows}
    unknown = [u for u in user_ids if u not in found]
    if unknown:
        raise InvalidInput(ErrorCode.VALIDATION_FAILED, "unknown or inactive participants",
                           extra={"users": unknown[:50]})


async def create_thread(
    conn: asyncpg.Connection, *, thread_id: str, org_id: str, creator: str, priority: str,
    users: Sequence[str], roles: Sequence[str], now: dt.datetime,
) -> None:
    """Create a thread with its creator and the given users and roles as participants.
    Raises VALIDATION_FAILED (a malformed role, an unknown or inactive user), ROLE_UNKNOWN (a
    role nobody in the organisation holds: :data:`UNKNOWN_ROLES_SQL`) or CONFLICT, before
    anything is stored."""
    members = list(dict.fromkeys([creator, *users]))
    roles = _roles(roles)
    await _check_users(conn, org_id, members)
    await _check_roles(conn, org_id, roles)
    async with conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO threads (thread_id, org_id, created_by, priority, created_at) "
                "VALUES ($1, $2, $3, $4, $5)", thread_id, org_id, creator, priority, now)
        except asyncpg.UniqueViolationError as exc:
            raise InvalidInput(ErrorCode.CONFLICT, "thread id already used") from exc
        await conn.executemany(
            "INSERT INTO thread_members (thread_id, user_id, added_at, added_by) "
            "VALUES ($1, $2, $3, $4)", [(thread_id, u, now, creator) for u in members])
        await conn.executemany(
            "INSERT INTO thread_roles (thread_id, role, added_at) VALUES ($1, $2, $3)",
            [(thread_id, r, now) for r in dict.fromkeys(roles)])


async def _check_roles(conn: asyncpg.Connection, org_id: str, roles: Sequence[str]) -> None:
    """ROLE_UNKNOWN naming every role (normalised) nobody in the organisation holds."""
    if not roles:
        return
    unknown = [r["role"] for r in await conn.fetch(UNKNOWN_ROLES_SQL, org_id, list(roles))]
    if len(unknown) == 1:
        raise NotFound(ErrorCode.ROLE_UNKNOWN, f"nobody in this organisation holds the role "
                       f"{unknown[0]!r} and no on-call rota names it", extra={"roles": unknown})
    if unknown:
        raise NotFound(ErrorCode.ROLE_UNKNOWN, "nobody in this organisation holds the roles "
                       + ", ".join(repr(r) for r in unknown) + " and no on-call rota names them",
                       extra={"roles": unknown})


def _roles(roles: Sequence[str]) -> list[str]:
    try:
        return list(dict.fromkeys(normalise_role(r) for r in roles))
    except ValueError as exc:
        raise InvalidInput(ErrorCode.VALIDATION_FAILED, str(exc)) from exc


async def _thread_org(conn: asyncpg.Connection, thread_id: str) -> str:
    org = await conn.fetchval("SELECT org_id FROM threads WHERE thread_id = $1", thread_id)
    if org is None:
        raise NotFound(ErrorCode.THREAD_NOT_FOUND, "no such thread")
    return str(org)


async def creator(conn: asyncpg.Connection, thread_id: str) -> str | None:
    """Who made the thread (None: no such thread)."""
    made_by = await conn.fetchval("SELECT created_by FROM threads WHERE thread_id = $1",
                                  thread_id)
    return None if made_by is None else str(made_by)


async def participants(conn: asyncpg.Connection, thread_id: str, at: dt.datetime) -> set[str]:
    rows = await conn.fetch(MEMBERS_SQL, thread_id, at)
    return {str(r["user_id"]) for r in rows}


async def is_participant(conn: asyncpg.Connection, thread_id: str, user_id: str,
                         at: dt.datetime) -> bool:
    """Raises THREAD_NOT_FOUND for an unknown thread."""
    await _thread_org(conn, thread_id)
    return user_id in await participants(conn, thread_id, at)


async def require_participant(conn: asyncpg.Connection, thread_id: str, user_id: str,
                              at: dt.datetime) -> None:
    if not await is_participant(conn, thread_id, user_id, at):
        raise Forbidden(ErrorCode.NOT_THREAD_MEMBER, "not a participant of this thread")


async def add_participants(
    conn: asyncpg.Connection, *, thread_id: str, actor: str, users: Sequence[str],
    roles: Sequence[str], now: dt.datetime,
) -> None:
    org = await _thread_org(conn, thread_id)
    await require_participant(conn, thread_id, actor, now)
    await _check_users(conn, org, users)
    roles = _roles(roles)
    await _check_roles(conn, org, roles)  # as at creation: a role nobody holds is refused
    async with conn.transaction():
        await conn.executemany(
            "INSERT INTO thread_members (thread_id, user_id, added_at, added_by) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (thread_id, user_id) "
            "DO UPDATE SET removed_at = NULL, added_at = $3, added_by = $4",
            [(thread_id, u, now, actor) for u in users])
        await conn.executemany(
            "INSERT INTO thread_roles (thread_id, role, added_at) VALUES ($1, $2, $3) "
            "ON CONFLICT (thread_id, role) DO UPDATE SET removed_at = NULL, added_at = $3",
            [(thread_id, r, now) for r in roles])


async def remove_participant(
    conn: asyncpg.Connection, *, thread_id: str, actor: str, user_id: str | None = None,
    role: str | None = None, now: dt.datetime,
) -> None:
    await _thread_org(conn, thread_id)
    await require_participant(conn, thread_id, actor, now)
    if user_id is not None:
        done = await conn.execute(
            "UPDATE thread_members SET removed_at = $3 WHERE thread_id = $1 AND user_id = $2 "
            "AND removed_at IS NULL", thread_id, user_id, now)
    else:
        done = await conn.execute(
            "UPDATE thread_roles SET removed_at = $3 WHERE thread_id = $1 AND role = $2 "
            "AND removed_at IS NULL", thread_id, role, now)
    if done.endswith(" 0"):
        raise NotFound(ErrorCode.NOT_FOUND, "no such participant")


async def list_threads(conn: asyncpg.Connection, user_id: str, *, at: dt.datetime,
                       limit: int = 200) -> list[ThreadSummary]:
    """Threads the user takes part in at ``at`` (directly or through a role), newest activity
    first: the threads of which the user is a member, and those naming a role that
    ``role_reach`` says reaches the user (asked once per role of the user's organisation, not
    once per thread). A thread no message was stored in yet (its first one on its way, or
    refused: docs/PROTOCOL.md §11, ``GET /v1/threads``) is its creator's alone: the others
    would see an empty consult with nothing to read or answer."""
    rows = await conn.fetch(
        """
        WITH roles AS (
            SELECT DISTINCT t.org_id, r.role FROM thread_roles r
              JOIN threads t ON t.thread_id = r.thread_id
              JOIN users u ON u.user_id = $1 AND u.org_id = t.org_id
             WHERE r.removed_at IS NULL
        ), reaching AS (
            SELECT o.org_id, o.role FROM roles o
             WHERE $1 IN (SELECT user_id FROM role_reach(o.org_id, o.role, $3))
        ), mine AS (
            SELECT thread_id FROM thread_members WHERE user_id = $1 AND removed_at IS NULL
            UNION
            SELECT r.thread_id FROM thread_roles r
              JOIN threads t ON t.thread_id = r.thread_id
              JOIN reaching x ON x.org_id = t.org_id AND x.role = r.role
             WHERE r.removed_at IS NULL
        )
        SELECT t.thread_id::text AS thread_id, t.priority, t.created_by::text AS created_by,
               t.created_at, t.last_seq, COALESCE(m.read_seq, 0) AS read_seq,
               ARRAY(SELECT user_id::text FROM thread_members x
                      WHERE x.thread_id = t.thread_id AND x.removed_at IS NULL) AS members,
               ARRAY(SELECT role FROM thread_roles y
                      WHERE y.thread_id = t.thread_id AND y.removed_at IS NULL) AS roles
          FROM threads t JOIN mine USING (thread_id)
          LEFT JOIN thread_members m ON m.thread_id = t.thread_id AND m.user_id = $1
         WHERE t.last_seq > 0 OR t.created_by = $1
         ORDER BY t.last_seq > COALESCE(m.read_seq, 0) DESC, t.priority = 'urgent' DESC,
                  t.created_at DESC
         LIMIT $2
        """, user_id, limit, at)
    return [ThreadSummary(**dict(r)) for r in rows]


async def mark_read(conn: asyncpg.Connection, thread_id: str, user_id: str, seq: int, *,
                    now: dt.datetime) -> None:
    """Record that the user has read the thread up to ``seq`` (never moves backwards). Someone
    the thread reaches through a role gets a row already marked removed: it only holds the
    read mark."""
    await conn.execute(
        "INSERT INTO thread_members (thread_id, user_id, added_at, read_seq, removed_at) "
        "VALUES ($1, $2, $4, $3, $4) ON CONFLICT (thread_id, user_id) "
        "DO UPDATE SET read_seq = GREATEST(thread_members.read_seq, $3)",
        thread_id, user_id, seq, now)


async def device_set(conn: asyncpg.Connection, thread_id: str, at: dt.datetime) -> DeviceSet:
    """Active and inactive devices of the thread's participants at ``at``."""
    rows = await conn.fetch(
        f"""
        WITH members AS ({MEMBERS_SQL})
        SELECT d.device_id::text AS device_id,
               (d.status = 'active' AND u.status = 'active') AS active
          FROM devices d JOIN users u USING (user_id)
         WHERE d.user_id IN (SELECT user_id FROM members)
        """, thread_id, at)
    active = frozenset(r["device_id"] for r in rows if r["active"])
    inactive = frozenset(r["device_id"] for r in rows if not r["active"])
    return DeviceSet(active=active, inactive=inactive)


async def ids_starting(conn: asyncpg.Connection, prefix: str, *, limit: int = 2) -> list[str]:
    """Up to ``limit`` thread ids that begin with ``prefix`` (8 to 31 lowercase hex digits,
    the short form ``lightbox`` prints, without the dashes), in order: a range over the
    primary key's index, the prefix padded with 0s and with fs."""
    low, high = (uuid.UUID(prefix.ljust(32, pad)) for pad in "0f")
    rows = await conn.fetch("SELECT thread_id::text FROM threads WHERE thread_id BETWEEN $1 "
                            "AND $2 ORDER BY thread_id LIMIT $3", low, high, limit)
    return [r[0] for r in rows]
