"""Failure counters with exponential backoff (server/store/lockout.py) on a real database, with
the clock injected: no lock below the threshold, ``base`` seconds at it, doubling with each
further failure up to ``cap``; the longest running lock among several keys is the one to wait
for; a counter forgotten after ``forget`` seconds starts again, and forgotten rows go away
without a sweeper."""

from __future__ import annotations

import asyncpg
import pytest

from server.store import at, lockout

NOW = 1_800_000_000.0
POLICY = lockout.Policy(threshold=3, base=30, cap=200, forget=600)


async def fail(conn: asyncpg.Connection, key: str, times: int, *, now: float = NOW,
               policy: lockout.Policy = POLICY) -> list[int]:
    return [await lockout.record_failure(conn, key, policy, now=now) for _ in range(times)]


async def keys(conn: asyncpg.Connection) -> set[str]:
    return {r["key"] for r in await conn.fetch("SELECT key FROM login_failures")}


@pytest.mark.parametrize(("failures", "seconds"), [
    (0, 0), (2, 0), (3, 30), (4, 60), (5, 120), (6, 200), (50, 200)])
def test_the_lock_is_base_at_the_threshold_doubling_after_it_up_to_the_cap(
        failures: int, seconds: int) -> None:
    assert POLICY.lock_seconds(failures) == seconds


def test_an_enormous_failure_count_stays_at_the_cap() -> None:
    assert POLICY.lock_seconds(10**9) == POLICY.cap


def test_a_counter_is_forgotten_no_sooner_than_the_longest_lock() -> None:
    assert lockout.Policy(threshold=1, base=1, cap=300, forget=60).forget_after == 300
    assert lockout.Policy(threshold=1, base=1, cap=300).forget_after == 300
    assert lockout.Policy(threshold=1, base=1, cap=300, forget=900).forget_after == 900


async def test_failures_below_the_threshold_lock_nothing(conn: asyncpg.Connection) -> None:
    assert await fail(conn, "acct:a", 2) == [0, 0]
    assert await lockout.retry_after(conn, ["acct:a"], now=NOW) is None


async def test_each_failure_from_the_threshold_on_returns_the_lock_it_started(
        conn: asyncpg.Connection) -> None:
    assert await fail(conn, "acct:a", 6) == [0, 0, 30, 60, 120, 200]
    assert await lockout.retry_after(conn, ["acct:a"], now=NOW) == 200


async def test_retry_after_counts_down_with_the_clock_and_ends_with_the_lock(
        conn: asyncpg.Connection) -> None:
    await fail(conn, "acct:a", 3)
    assert await lockout.retry_after(conn, ["acct:a"], now=NOW + 10) == 20
    assert await lockout.retry_after(conn, ["acct:a"], now=NOW + 30) is None


async def test_retry_after_never_asks_for_less_than_a_second_while_locked(
        conn: asyncpg.Connection) -> None:
    await fail(conn, "acct:a", 3)
    assert await lockout.retry_after(conn, ["acct:a"], now=NOW + 29.75) == 1.0


async def test_retry_after_is_the_longest_lock_among_the_keys(conn: asyncpg.Connection) -> None:
    await fail(conn, "pair:a", 3)   # 30 s
    await fail(conn, "addr:a", 4)   # 60 s
    await fail(conn, "acct:b", 5)   # 120 s, not asked about
    assert await lockout.retry_after(conn, ["pair:a", "addr:a"], now=NOW) == 60
    assert await lockout.retry_after(conn, ["pair:a"], now=NOW) == 30
    assert await lockout.retry_after(conn, ["nobody"], now=NOW) is None


async def test_keys_count_their_failures_separately(conn: asyncpg.Connection) -> None:
    await fail(conn, "acct:a", 2)
    assert await fail(conn, "acct:b", 1) == [0]
    assert await fail(conn, "acct:a", 1) == [30]


async def test_a_counter_older_than_forget_starts_again_from_zero(
        conn: asyncpg.Connection) -> None:
    await fail(conn, "acct:a", 2)
    later = NOW + POLICY.forget_after + 1
    assert await fail(conn, "acct:a", 2, now=later) == [0, 0]
    assert await fail(conn, "acct:a", 1, now=later) == [30]


async def test_a_counter_within_forget_keeps_counting(conn: asyncpg.Connection) -> None:
    await fail(conn, "acct:a", 2)
    assert await fail(conn, "acct:a", 1, now=NOW + POLICY.forget_after - 1) == [30]


async def test_a_counter_still_locked_is_not_forgotten(conn: asyncpg.Connection) -> None:
    short = lockout.Policy(threshold=1, base=100, cap=100, forget=0)  # forget after 100 s
    assert await fail(conn, "acct:a", 1, policy=short) == [100]
    # The lock was pushed later than the last failure by hand: the row is stale by its last
    # failure but still locked, so a new failure counts on from it.
    await conn.execute("UPDATE login_failures SET locked_until = $1",
                       at(NOW + 1000))
    assert await fail(conn, "acct:a", 1, now=NOW + 500, policy=short) == [100]
    assert await conn.fetchval("SELECT failures FROM login_failures") == 2


async def test_a_failure_deletes_other_forgotten_unlocked_rows(conn: asyncpg.Connection) -> None:
    await fail(conn, "acct:old", 1)
    await fail(conn, "acct:locked", 3)
    await fail(conn, "acct:recent", 1, now=NOW + 100)
    await conn.execute("UPDATE login_failures SET locked_until = $1 WHERE key = 'acct:locked'",
                       at(NOW + 10_000))
    await fail(conn, "acct:new", 1, now=NOW + POLICY.forget_after + 1)
    assert await keys(conn) == {"acct:locked", "acct:recent", "acct:new"}


async def test_reset_deletes_only_the_named_counters(conn: asyncpg.Connection) -> None:
    await fail(conn, "pair:a", 3)
    await fail(conn, "acct:a", 3)
    await fail(conn, "addr:a", 3)
    await lockout.reset(conn, "pair:a", "acct:a")
    assert await keys(conn) == {"addr:a"}
    assert await lockout.retry_after(conn, ["pair:a", "acct:a"], now=NOW) is None
    assert await fail(conn, "pair:a", 1) == [0]
