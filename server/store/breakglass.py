"""Break-glass cases (docs/PROTOCOL.md §17): one row per emergency message sent without a
consent, with the sender's follow-up and the privacy office's review. Rows are read as the
wire's ``BreakGlassCase`` (times in seconds since 1970), the one shape every reader needs.

No row holds patient data: the clinician's reason stays sealed in the message; the relay keeps
its category (protocol.model.EmergencyCategory).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence

import asyncpg

from protocol.api import BreakGlassCase

__all__ = [
    "NewCase",
    "Owner",
    "close",
    "count_since",
    "device_owners",
    "get",
    "insert",
    "list_cases",
    "lock_senders",
    "oldest_since",
    "pending_by_thread",
    "pending_of_sender",
    "record_follow_up",
]


@dataclasses.dataclass(frozen=True)
class NewCase:
    message_id: str
    thread_id: str
    org_id: str
    sender_user_id: str
    sender_device_id: str
    category: str
    recipients: int
    attachments: int


@dataclasses.dataclass(frozen=True)
class Owner:
    """The user behind a device, as break-glass checks a recipient."""

    device_id: str
    user_id: str
    org_id: str
    account_kind: str
    status: str
    licence_expires_at: dt.datetime | None


_SELECT = (
    "SELECT c.case_id::text AS case_id, c.message_id::text AS message_id, "
    "c.thread_id::text AS thread_id, c.org_id, c.sender_user_id::text AS sender_user_id, "
    "u.login AS sender_login, u.display_name AS sender_name, "
    "c.sender_device_id::text AS sender_device_id, c.category, c.recipients, c.attachments, "
    "extract(epoch FROM c.declared_at)::bigint AS declared_at, c.follow_up, "
    "c.follow_up_consent::text AS follow_up_consent, c.follow_up_detail, "
    "extract(epoch FROM c.followed_up_at)::bigint AS followed_up_at, c.status, c.outcome, "
    "c.note, c.closed_by, extract(epoch FROM c.closed_at)::bigint AS closed_at "
    "FROM break_glass_cases c JOIN users u ON u.user_id = c.sender_user_id ")


def _case(row: asyncpg.Record) -> BreakGlassCase:
    return BreakGlassCase(**dict(row))


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def device_owners(conn: asyncpg.Connection, device_ids: Sequence[str]) -> list[Owner]:
    rows = await conn.fetch(
        "SELECT d.device_id::text AS device_id, u.user_id::text AS user_id, u.org_id, "
        "u.account_kind, u.status, u.licence_expires_at FROM devices d "
        "JOIN users u USING (user_id) WHERE d.device_id = ANY($1::uuid[]) ORDER BY 1",
        [uuid.UUID(d) for d in device_ids])
    return [Owner(**dict(r)) for r in rows]


async def lock_senders(conn: asyncpg.Connection, user_ids: Sequence[str]) -> None:
    """Serialise break-glass sends of each user across relay processes (the daily limit is a
    count): transaction-level advisory locks, taken in one sorted order so that two batches
    never wait for each other crosswise."""
    for user_id in sorted(set(user_ids)):
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                           f"break-glass:{user_id}")


async def count_since(conn: asyncpg.Connection, user_id: str, since: dt.datetime) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM break_glass_cases WHERE sender_user_id = $1 "
        "AND declared_at > $2", uuid.UUID(user_id), since))


async def oldest_since(conn: asyncpg.Connection, user_id: str,
                       since: dt.datetime) -> dt.datetime | None:
    value: dt.datetime | None = await conn.fetchval(
        "SELECT min(declared_at) FROM break_glass_cases WHERE sender_user_id = $1 "
        "AND declared_at > $2", uuid.UUID(user_id), since)
    return value


async def insert(conn: asyncpg.Connection, cases: Sequence[NewCase],
                 now: dt.datetime) -> list[str]:
    """Insert the cases; returns their ids in order."""
    ids = [str(uuid.uuid4()) for _ in cases]
    await conn.executemany(
        "INSERT INTO break_glass_cases (case_id, message_id, thread_id, org_id, "
        "sender_user_id, sender_device_id, category, recipients, attachments, declared_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        [(uuid.UUID(i), uuid.UUID(c.message_id), uuid.UUID(c.thread_id), c.org_id,
          uuid.UUID(c.sender_user_id), uuid.UUID(c.sender_device_id), c.category,
          c.recipients, c.attachments, now) for i, c in zip(ids, cases, strict=True)])
    return ids


async def get(conn: asyncpg.Connection, case_id: str, *,
              lock: bool = False) -> BreakGlassCase | None:
    uid = _uuid(case_id)
    if uid is None:
        return None
    row = await conn.fetchrow(_SELECT + "WHERE c.case_id = $1" +
                              (" FOR UPDATE OF c" if lock else ""), uid)
    return None if row is None else _case(row)


async def list_cases(conn: asyncpg.Connection, *, status: str | None, since: dt.datetime,
                     until: dt.datetime, limit: int) -> list[BreakGlassCase]:
    """Cases declared in [since, until), oldest first, optionally of one status."""
    rows = await conn.fetch(
        _SELECT + "WHERE c.declared_at >= $1 AND c.declared_at < $2 "
        "AND ($3::text IS NULL OR c.status = $3) ORDER BY c.declared_at, c.case_id LIMIT $4",
        since, until, status, limit)
    return [_case(r) for r in rows]


async def pending_of_sender(conn: asyncpg.Connection, user_id: str) -> list[BreakGlassCase]:
    """The sender's cases still waiting for a consent or a reason why none was possible."""
    rows = await conn.fetch(_SELECT + "WHERE c.sender_user_id = $1 AND c.follow_up IS NULL "
                            "ORDER BY c.declared_at", uuid.UUID(user_id))
    return [_case(r) for r in rows]


async def pending_by_thread(conn: asyncpg.Connection,
                            thread_ids: Sequence[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT thread_id::text AS thread_id, count(*) AS n FROM break_glass_cases "
        "WHERE thread_id = ANY($1::uuid[]) AND follow_up IS NULL GROUP BY thread_id",
        [uuid.UUID(t) for t in thread_ids])
    return {r["thread_id"]: int(r["n"]) for r in rows}


async def record_follow_up(conn: asyncpg.Connection, case_id: str, *, kind: str,
                           consent_id: str | None, detail: str, now: dt.datetime) -> None:
    await conn.execute(
        "UPDATE break_glass_cases SET follow_up = $2, follow_up_consent = $3, "
        "follow_up_detail = $4, followed_up_at = $5 WHERE case_id = $1",
        uuid.UUID(case_id), kind, None if consent_id is None else uuid.UUID(consent_id),
        detail, now)


async def close(conn: asyncpg.Connection, case_id: str, *, outcome: str, note: str,
                closed_by: str, now: dt.datetime) -> None:
    await conn.execute(
        "UPDATE break_glass_cases SET status = 'closed', outcome = $2, note = $3, "
        "closed_by = $4, closed_at = $5 WHERE case_id = $1",
        uuid.UUID(case_id), outcome, note or None, closed_by, now)
