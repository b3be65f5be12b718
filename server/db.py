"""The relay's Postgres connection pool (asyncpg).

Postgres is the relay's only stateful dependency (docs/ARCHITECTURE.md §3). The pool is created when
the app starts and closed when it stops; storage modules receive a connection, never the pool.
"""

from __future__ import annotations

import asyncpg

__all__ = ["Database"]


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
                command_timeout=self.timeout, timeout=self.timeout,
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
