"""The relay's connection pool (server/db.py): what a released connection carries over.

Releasing a connection runs no statement when it is idle; a transaction left open is rolled
back; and the relay's code never changes session state that only a full reset would undo
(docs/BENCHMARKS.md, "the pool's reset")."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from server.db import Database
from server.store import messages
from tests.helpers import query_loggers_called

ROOT = Path(__file__).resolve().parents[2]


async def test_releasing_an_idle_connection_sends_no_statement(db_dsn: str) -> None:
    db = Database(db_dsn, min_size=1, max_size=1)
    await db.open()
    try:
        seen: list[str] = []
        async with db.pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
            conn.add_query_logger(lambda q: seen.append(q.query))
        await query_loggers_called()
        assert seen == []
    finally:
        await db.close()


async def test_a_transaction_left_open_is_rolled_back_on_release(db_dsn: str) -> None:
    db = Database(db_dsn, min_size=1, max_size=1)
    await db.open()
    try:
        async with db.pool.acquire() as conn:
            await conn.execute("CREATE TABLE pool_probe (x int)")
        async with db.pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO pool_probe VALUES (1)")
        async with db.pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM pool_probe") == 0
    finally:
        await db.close()


# Session state that would outlive a release without RESET ALL / UNLISTEN * / CLOSE ALL /
# pg_advisory_unlock_all(): settings (SET without LOCAL, set_config(..., false)), LISTEN,
# cursors held past their transaction, session advisory locks, prepared statements, temporary
# tables. Scanned over whole files, so that a statement on the line after its call counts.
_SESSION_STATE = re.compile(
    r"""(execute|fetch\w*)\(\s*f?["']\s*SET\s+(?!LOCAL\b)"""
    r"""|set_config\([^)]*false|(?-i:\bLISTEN\s)|add_listener\(|WITH\s+HOLD"""
    r"""|pg_advisory_lock(_shared)?\(|pg_try_advisory_lock(_shared)?\("""
    r"""|["']\s*PREPARE\s|CREATE\s+TEMP""", re.I)


def test_relay_code_leaves_no_session_state_on_pooled_connections() -> None:
    offenders = []
    for path in sorted((ROOT / "server").rglob("*.py")):
        if path.name == "events.py":  # its LISTEN connection is its own, never pooled
            continue
        text = path.read_text()
        for m in _SESSION_STATE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)}")
    assert offenders == []


def test_the_session_state_pattern_finds_what_it_looks_for() -> None:
    for text in ('await conn.execute("SET statement_timeout = 0")',
                 "await conn.execute(\n    'SET SESSION search_path TO x')",
                 'await conn.execute("SELECT set_config($1, $2, false)")',
                 'await conn.execute("LISTEN lightbox")',
                 'await conn.execute("SELECT pg_advisory_lock(1)")',
                 "conn.add_listener(CHANNEL, cb)"):
        assert _SESSION_STATE.search(text), text
    for text in ('await conn.execute("SET LOCAL statement_timeout = 0")',
                 'await conn.execute("UPDATE devices SET revoked_at = $1")',
                 '"ON CONFLICT (device_id) DO UPDATE "\n"SET prekey = EXCLUDED.prekey"',
                 'parser.add_argument("--host", help="listen address")',
                 'await conn.execute("SELECT pg_advisory_xact_lock(1)")'):
        assert not _SESSION_STATE.search(text), text


async def test_the_message_path_plans_a_statement_once_and_the_rest_per_execution(
        db_dsn: str) -> None:
    """The message path's reads (arrays through ``unnest``, window functions; the batch read
    in ``lock_and_read_batch`` too, whose statements Postgres caches the same way) would be
    planned again at every execution under Postgres's default,
    which cost more than executing them; everything else keeps the default, so that a query with
    an optional filter gets a plan for its actual values (server/db.py)."""
    db = Database(db_dsn, min_size=1, max_size=1)
    await db.open()
    try:
        plans = []
        for pool in (db.hot_pool, db.pool):
            async with pool.acquire() as conn:
                for _ in range(8):
                    await messages.fetch_next_deliveries(
                        conn, [messages.DeliveryRequest(str(uuid.uuid4()), [], 8)])
                row = await conn.fetchrow(
                    "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                    "WHERE statement = $1", messages._NEXT_DELIVERIES)
                plans.append((row["generic_plans"], row["custom_plans"]))
        assert plans == [(8, 0), (0, 8)]
        assert db.hot_max_size == 2  # two batches in flight even from the smallest pool
    finally:
        await db.close()
