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

Pooled connections plan prepared statements once (``plan_cache_mode = force_generic_plan``).
asyncpg prepares every statement and reuses it; Postgres's default then plans each execution
again for its parameter values whenever it guesses that a plan for "any value" would cost more,
and for the statements of the send and delivery paths (arrays through ``unnest``, the inlined
``thread_participants``) it always guesses so: planning cost four to seven times the execution
itself, most of Postgres's CPU per paced message (docs/BENCHMARKS.md has the figures). The
relay's statements look rows up by key or by arrays of keys; none of them needs a plan chosen
for particular values, so one generic plan per statement and connection serves.
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

    async def open(self) -> None:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=self._min, max_size=self._max,
                command_timeout=self.timeout, timeout=self.timeout, reset=_reset,
                server_settings={"plan_cache_mode": "force_generic_plan"},
            )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database pool is not open")
        return self._pool

    @property
    def dsn(self) -> str:
        return self._dsn
