"""Failure counters with exponential backoff, one row per key.

A key (server/throttle.py names them: an account and address pair, an account, an address) is
locked once it reaches its threshold of failures: for ``base`` seconds, doubling with each
further failure, capped at ``cap``. A counter whose last failure is older than ``forget``
(default ``cap``) and which is not locked starts again from zero; each failure also deletes a
few such forgotten rows, so the table holds one window of failures without a sweeper.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg

from server.store import at

__all__ = ["Policy", "record_failure", "reset", "reset_account", "retry_after"]


_PURGE_BATCH = 64


@dataclasses.dataclass(frozen=True)
class Policy:
    threshold: int
    base: int
    cap: int
    forget: int = 0  # 0: ``cap``

    @property
    def forget_after(self) -> int:
        return max(self.forget, self.cap)

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
    stale = at(now) - dt.timedelta(seconds=policy.forget_after)
    failures = int(await conn.fetchval(
        "INSERT INTO login_failures AS f (key, failures, last_failure_at) VALUES ($1, 1, $2) "
        "ON CONFLICT (key) DO UPDATE SET failures = CASE WHEN f.last_failure_at < $3 "
        "AND (f.locked_until IS NULL OR f.locked_until < $2) THEN 1 ELSE f.failures + 1 END, "
        "last_failure_at = $2 RETURNING failures", key, at(now), stale))
    seconds = policy.lock_seconds(failures)
    if seconds:
        await conn.execute("UPDATE login_failures SET locked_until = $2 WHERE key = $1",
                           key, at(now + seconds))
    await conn.execute(
        "DELETE FROM login_failures WHERE ctid = ANY (ARRAY(SELECT ctid FROM login_failures "
        "WHERE last_failure_at < $1 AND (locked_until IS NULL OR locked_until < $2) "
        "LIMIT $3))", stale, at(now), _PURGE_BATCH)
    return seconds


async def reset(conn: asyncpg.Connection, *keys: str) -> None:
    await conn.execute("DELETE FROM login_failures WHERE key = ANY($1::text[])", list(keys))


async def reset_account(conn: asyncpg.Connection, account: str) -> int:
    """Forget an account's counter and its pairs with every address (``account`` then a space
    and the address); never an address's own counter. Return the rows deleted."""
    done = await conn.execute(
        "DELETE FROM login_failures WHERE key = $1 OR starts_with(key, $1 || ' ')", account)
    return int(done.split()[-1])
