"""Failure counters with exponential backoff, per account and per client address.

A key (``login:<name>``, ``addr:<ip>``, ``enrol:<ip>``...) is locked once it reaches its
threshold of failures: for ``base`` seconds, doubling with each further failure, capped at
``cap``. A counter whose last failure is older than ``cap`` starts again from zero. Unknown
logins are counted like known ones, so lockout reveals nothing about which logins exist.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg

from server.store import at

__all__ = ["Policy", "record_failure", "reset", "retry_after"]


@dataclasses.dataclass(frozen=True)
class Policy:
    threshold: int
    base: int
    cap: int

    def lock_seconds(self, failures: int) -> int:
        if failures < self.threshold:
            return 0
        return int(min(self.cap, self.base * 2 ** min(failures - self.threshold, 30)))


async def retry_after(conn: asyncpg.Connection, keys: list[str], *, now: float) -> float | None:
    """Seconds until the longest running lock among ``keys`` ends, or None if none is locked."""
    until = await conn.fetchval(
        "SELECT max(locked_until) FROM login_failures WHERE key = ANY($1::text[]) "
        "AND locked_until > $2", keys, at(now))
    return None if until is None else max(1.0, (until - at(now)).total_seconds())


async def record_failure(conn: asyncpg.Connection, key: str, policy: Policy, *,
                         now: float) -> int:
    """Count a failure; return the lock in seconds this failure started (0: not locked)."""
    stale = at(now) - dt.timedelta(seconds=policy.cap)
    failures = int(await conn.fetchval(
        "INSERT INTO login_failures AS f (key, failures, last_failure_at) VALUES ($1, 1, $2) "
        "ON CONFLICT (key) DO UPDATE SET failures = CASE WHEN f.last_failure_at < $3 "
        "AND (f.locked_until IS NULL OR f.locked_until < $2) THEN 1 ELSE f.failures + 1 END, "
        "last_failure_at = $2 RETURNING failures", key, at(now), stale))
    seconds = policy.lock_seconds(failures)
    if seconds:
        await conn.execute("UPDATE login_failures SET locked_until = $2 WHERE key = $1",
                           key, at(now + seconds))
    return seconds


async def reset(conn: asyncpg.Connection, key: str) -> None:
    await conn.execute("DELETE FROM login_failures WHERE key = $1", key)
