"""Schema migrations (server/migrations.py) on real databases: an empty database is upgraded
to head from inside a running event loop, a database anywhere but at head is refused with the
one line that says what to run, each downgrade undoes its upgrade, and the relay's DSN becomes
SQLAlchemy's asyncpg URL without its password passing through the configuration file's
parser."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import asyncpg
import pytest

from server import migrations
from server.app import create_app
from tests.helpers import make_settings, previous


def test_the_head_is_the_revision_no_other_migration_follows() -> None:
    texts = [p.read_text() for p in (Path(migrations.ROOT) / "alembic" / "versions").glob(
        "*.py")]
    revisions = {m for t in texts for m in re.findall(r'^revision = "([^"]+)"', t, re.M)}
    followed = {m for t in texts for m in re.findall(r'^down_revision = "([^"]+)"', t, re.M)}
    assert revisions - followed == {migrations.head_revision()}


async def test_an_empty_database_is_upgraded_to_head_from_a_running_loop(
        empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await migrations.current_revision(conn) is None
        await migrations.upgrade_async(empty_dsn)
        assert await migrations.current_revision(conn) == migrations.head_revision()
        await migrations.ensure_at_head(conn)
    finally:
        await conn.close()


async def test_a_database_with_no_schema_is_refused_saying_what_to_run(
        empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        with pytest.raises(migrations.SchemaNotAtHead) as info:
            await migrations.ensure_at_head(conn)
    finally:
        await conn.close()
    assert str(info.value) == (
        f"database schema is at nothing, this relay needs {migrations.head_revision()}: "
        "run `lightbox-server db upgrade` (make run does it for you)")


async def test_a_database_one_migration_behind_is_refused_then_upgraded(
        empty_dsn: str) -> None:
    head = migrations.head_revision()
    behind = previous(head)
    await migrations.upgrade_async(empty_dsn, behind)
    conn = await asyncpg.connect(empty_dsn)
    try:
        assert await migrations.current_revision(conn) == behind
        with pytest.raises(migrations.SchemaNotAtHead, match=f"^database schema is at "
                                                             f"{behind}, this relay needs {head}"):
            await migrations.ensure_at_head(conn)
        await migrations.upgrade_async(empty_dsn)
        await migrations.ensure_at_head(conn)
    finally:
        await conn.close()


async def test_a_version_table_with_other_than_one_row_is_no_revision(
        conn: asyncpg.Connection) -> None:
    head = migrations.head_revision()
    assert await migrations.current_revision(conn) == head
    await conn.execute("INSERT INTO alembic_version VALUES ('other')")
    assert await migrations.current_revision(conn) is None
    await conn.execute("DELETE FROM alembic_version")
    assert await migrations.current_revision(conn) is None
    with pytest.raises(migrations.SchemaNotAtHead):
        await migrations.ensure_at_head(conn)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
def test_a_postgres_dsn_becomes_the_asyncpg_url_with_everything_else_kept(
        scheme: str) -> None:
    assert migrations.sqlalchemy_url(f"{scheme}://u:p%40ss@db.example:5433/lb?sslmode=require"
                                     ) == "postgresql+asyncpg://u:p%40ss@db.example:5433/lb?sslmode=require"


@pytest.mark.parametrize("dsn", ["mysql://u@h/db", "sqlite:///x.db", "db.example:5432/lb", ""])
def test_a_dsn_that_is_not_postgres_is_refused(dsn: str) -> None:
    with pytest.raises(ValueError, match=re.escape("DATABASE_URL must be a postgresql:// URL")):
        migrations.sqlalchemy_url(dsn)


def test_the_password_stays_out_of_the_parsed_configuration() -> None:
    """A ``%`` in a password would break ConfigParser interpolation, and options can be
    written out: the URL is an attribute."""
    cfg = migrations.alembic_config("postgresql://u:100%25secret@db.example/lb")
    assert cfg.attributes["sqlalchemy_url"] == "postgresql+asyncpg://u:100%25secret@db.example/lb"
    assert "secret" not in (cfg.get_main_option("sqlalchemy.url") or "")
    assert cfg.get_main_option("script_location") == str(migrations.ROOT / "alembic")


async def test_every_migration_down_to_the_first_and_back_up_leaves_the_same_functions(
        empty_dsn: str) -> None:
    """Each migration's downgrade undoes its upgrade: the newest one down gives back the
    functions and storage settings of the schema before it, and all of them down to the first
    migration and up again give back those of the head (the SQL functions with their full
    definitions, each column's storage, each table's options and every index)."""
    from alembic import command

    functions = (
        "SELECT 'function ' || p.proname AS what, pg_get_functiondef(p.oid) AS how "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'public' "
        "UNION ALL SELECT 'storage ' || c.relname || '.' || a.attname, a.attstorage::text "
        "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 "
        "AND NOT a.attisdropped "
        "UNION ALL SELECT 'options ' || c.relname, array_to_string(c.reloptions, ',') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.reloptions IS NOT NULL "
        "UNION ALL SELECT 'index ' || indexname, indexdef FROM pg_indexes "
        "WHERE schemaname = 'public' "
        "ORDER BY 1, 2")
    head = migrations.head_revision()
    cfg = migrations.alembic_config(empty_dsn)
    await migrations.upgrade_async(empty_dsn, previous(head))
    conn = await asyncpg.connect(empty_dsn)
    try:
        before_head = await conn.fetch(functions)
        await migrations.upgrade_async(empty_dsn)
        at_head = await conn.fetch(functions)
        assert at_head != before_head
        await asyncio.to_thread(command.downgrade, cfg, previous(head))
        assert await conn.fetch(functions) == before_head
        await asyncio.to_thread(command.downgrade, cfg, "0001")
        assert await migrations.current_revision(conn) == "0001"
        await migrations.upgrade_async(empty_dsn)
        assert await conn.fetch(functions) == at_head
    finally:
        await conn.close()


async def test_a_relay_started_on_a_database_behind_is_refused_as_such_and_leaves_nothing_open(
        empty_dsn: str) -> None:
    """The relay's own start (its lifespan) checks the schema before anything else starts, and
    stops only what it started: the refusal reaches the runner as itself."""
    relay = create_app(make_settings(), dsn=empty_dsn)
    with pytest.raises(migrations.SchemaNotAtHead,
                       match="^" + re.escape("database schema is at nothing")):
        async with relay.app.router.lifespan_context(relay.app):
            pass
    with pytest.raises(RuntimeError, match="database pool is not open"):
        relay.db.pool  # noqa: B018 (closed again on the way out)
