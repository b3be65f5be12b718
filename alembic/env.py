"""Alembic environment: async, over asyncpg, URL supplied by server.migrations.

Every schema change is a migration here; the relay never creates tables itself. Migrations
use one SQL statement per ``op.execute`` (asyncpg prepares each call as one statement).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context

config = context.config


def _run(connection: object) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    url = config.attributes.get("sqlalchemy_url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: run migrations through server.migrations")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) mode is not supported")
asyncio.run(_main())
