"""The relay's Postgres connection pool (asyncpg).

Postgres is the relay's only stateful dependency (docs/ARCHITECTURE.md §3). The pool is created when
the app starts and closed when it stops; storage modules receive a connection, never the pool.

Releasing a connection resets only what the relay's code can change on it. asyncpg's default
reset sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every
release: a round trip and a Postgres transaction for each time any code path borrows a
connection, a third of the statements of a paced delivery (docs/BENCHMARKS.md). The relay's
pooled connections never hold that state: advisory locks are transaction-level
(``pg_advisory_xact_lock``), cursors live inside transactions, ``SET`` is never used without
``LOCAL``, and the one ``LISTEN`` connection (server/events.py) is not pooled;
tests/server/test_db.py scans server/ for statements that would break this. What a connection
can carry over is an open transaction after an error, and asyncpg still rolls that back before
the reset hook runs (``Connection._reset``), so the hook itself has nothing left to do.

Two pools. The message path (group commit, acknowledgements, delivery reads: server/sends.py,
server/acks.py, server/reads.py) borrows from :attr:`Database.hot_pool`, whose connections plan
each prepared statement once (``plan_cache_mode = force_generic_plan``). asyncpg prepares every
statement and reuses it; Postgres's default plans each execution again for its parameter values
whenever it guesses that a plan for "any value" would cost more, and for the message path's
statements (arrays of keys through ``unnest``, the inlined ``thread_participants``) it always
guessed so: planning cost four to seven times the execution, most of Postgres's CPU per paced
message (docs/BENCHMARKS.md, round 4). Those statements look rows up by key or arrays of keys,
so one plan serves every value. Everything else uses :attr:`Database.pool` with Postgres's
default, because some of its statements have optional filters (``$1 IS NULL OR column = $1``:
the audit trail, SCIM searches, admin listings) for which only a plan made for the actual
values can use an index.

The hot pool's connections also plan with ``enable_seqscan = off`` (PostgreSQL 16 manual,
§20.7.1: it "discourages the planner from using one if there are other methods available").
A generic plan is made once, from the table sizes of the moment, and kept for the
connection's life. ``deliveries`` is a queue, often empty, and a plan made while it was
empty reads it, and ``threads``, sequentially: every read then walked every queued and dead
row of every device (round 12 of docs/BENCHMARKS.md: up to 55 rows read per message by
sequential scans of ``deliveries`` in the closed-loop runs that got such a plan, and 20-90 µs
more of Postgres CPU per message than in the runs that did not). Every statement of the
message path finds its rows by a key that has an index, so the index is the right plan at
every size; a table with no index for a statement is still scanned. tests/server/test_plans.py
checks the message path on an empty database whose statistics say so.
"""

from __future__ import annotations

import asyncpg

__all__ = ["Database"]


async def _reset(conn: asyncpg.Connection) -> None:
    """Nothing beyond asyncpg's own rollback of an open transaction (see the module
    docstring): the relay leaves no session state on a pooled connection."""


class Database:
    """Holds the pool for the app's lifetime; built at assembly, opened in the lifespan."""

    def __init__(self, dsn: str, *, min_size: int = 2, max_size: int = 10,
                 timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._min, self._max, self.timeout = min_size, max_size, timeout
        self._pool: asyncpg.Pool | None = None
        self._hot: asyncpg.Pool | None = None

    @property
    def hot_max_size(self) -> int:
        """Connections of :attr:`hot_pool` at most: half the main pool's, and never fewer than
        two (two group-commit batches in flight, server/sends.py)."""
        return max(2, self._max // 2)

    async def open(self) -> None:
        if self._pool is None:
            self._pool = await self._create(self._min, self._max, {})
        if self._hot is None:
            self._hot = await self._create(
                1, self.hot_max_size,
                {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"})

    async def _create(self, min_size: int, max_size: int, settings: dict[str, str]
                      ) -> asyncpg.Pool:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            self._dsn, min_size=min_size, max_size=max_size, command_timeout=self.timeout,
            timeout=self.timeout, reset=_reset, server_settings=settings)
        return pool

    async def close(self) -> None:
        for name in ("_hot", "_pool"):
            pool = getattr(self, name)
            if pool is not None:
                setattr(self, name, None)
                await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database pool is not open")
        return self._pool

    @property
    def hot_pool(self) -> asyncpg.Pool:
        """The message path's connections: each prepared statement planned once (above)."""
        if self._hot is None:
            raise RuntimeError("database pool is not open")
        return self._hot

    @property
    def dsn(self) -> str:
        return self._dsn
