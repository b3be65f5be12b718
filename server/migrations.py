"""Schema migrations: run alembic to head, and tell whether a database is at head.

The relay refuses to start unless the schema is exactly at head (``lightbox-server db upgrade``
or ``make run`` applies migrations). Alembic's ``command.upgrade`` runs its own event loop, so
it is called from a worker thread when a loop is already running (NOTES.md).

``upgrade_forward`` is ``db upgrade``'s: it names the target among this release's revisions
and the schema's own revision first, so that an unknown target, or one the schema is already
past, is refused in one sentence (:class:`BadRevision`) rather than an alembic traceback or
an "upgraded" that changed nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import asyncpg

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Alembic (and SQLAlchemy under it) is imported by the functions that use it, not here: it is
# about 0.4 s of CPU to import, and most of lightbox-server's commands (admin, org, audit, scim)
# never touch a migration (docs/ARCHITECTURE.md, "Start-up").

__all__ = [
    "BadRevision",
    "SchemaNotAtHead",
    "Upgraded",
    "alembic_config",
    "current_revision",
    "ensure_at_head",
    "head_revision",
    "revisions",
    "sqlalchemy_url",
    "upgrade",
    "upgrade_async",
    "upgrade_forward",
]

ROOT = Path(__file__).resolve().parent.parent


class SchemaNotAtHead(RuntimeError):
    """The database schema is not at the migrations' head."""


class BadRevision(ValueError):
    """``db upgrade``'s target is no revision of this release, or one the schema is past (or
    the schema is at a revision this release lacks): one sentence naming the revisions."""


@dataclass(frozen=True)
class Upgraded:
    """What ``upgrade_forward`` did: the schema's revision before and after (None: empty)."""

    before: str | None
    after: str
    head: str

    def __str__(self) -> str:
        after = f"{self.after} (head)" if self.after == self.head else self.after
        if self.before == self.after:
            return f"database schema already at {after}: nothing to do"
        return f"database schema upgraded from {self.before or 'an empty database'} to {after}"


def sqlalchemy_url(dsn: str) -> str:
    """``postgresql://...`` as SQLAlchemy's asyncpg URL (``postgresql+asyncpg://...``)."""
    parts = urlsplit(dsn)
    if parts.scheme not in {"postgresql", "postgres", "postgresql+asyncpg"}:
        raise ValueError("DATABASE_URL must be a postgresql:// URL")
    return urlunsplit(("postgresql+asyncpg", *parts[1:]))


def alembic_config(dsn: str | None = None) -> Config:
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    if dsn is not None:
        # attributes, not main options: a password must never pass through ConfigParser
        # interpolation or be written anywhere.
        cfg.attributes["sqlalchemy_url"] = sqlalchemy_url(dsn)
    return cfg


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = _scripts().get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def revisions() -> frozenset[str]:
    """Every revision of this release (a database at another was made by a newer one)."""
    script = _scripts()
    return frozenset(r.revision for r in script.walk_revisions())


def upgrade(dsn: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (blocking; not inside a running event loop)."""
    from alembic import command

    command.upgrade(alembic_config(dsn), revision)


def upgrade_forward(dsn: str, revision: str = "head") -> Upgraded:
    """``db upgrade REVISION``: apply migrations up to ``revision`` if it is one of this
    release's and the schema is not already past it (blocking; not inside a running event
    loop). Raises :class:`BadRevision` and changes nothing otherwise."""
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    script = _scripts()
    head = head_revision()
    known = f"the revisions are {'/'.join(script.get_bases())} to {head} (or head)"
    try:
        target = script.get_revision(revision)
    except (CommandError, RevisionError):
        target = None
    if target is None:  # unknown, or "base": never a target of an upgrade
        raise BadRevision(f"no database revision {revision}: {known}")
    before = _current_heads(dsn)
    if len(before) > 1:
        raise BadRevision(f"the database schema has several revisions ({', '.join(before)}); "
                          f"{known}")
    current = before[0] if before else None
    if current is not None:
        try:
            reached = {r.revision for r in script.iterate_revisions(current, "base")}
        except (CommandError, RevisionError):
            raise BadRevision(f"the database schema is at {current}, a revision this release "
                              f"does not have ({known}): a newer release's") from None
        if target.revision == current:
            return Upgraded(current, current, head)
        if target.revision in reached:
            raise BadRevision(f"the database schema is already at {current}, past "
                              f"{target.revision}: db upgrade never goes back to an earlier "
                              "revision")
    upgrade(dsn, target.revision)
    return Upgraded(current, target.revision, head)


def _current_heads(dsn: str) -> tuple[str, ...]:
    """The schema's revision as alembic reads it (empty: no migration applied yet)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import pool
    from sqlalchemy.ext.asyncio import create_async_engine

    async def read() -> tuple[str, ...]:
        engine = create_async_engine(sqlalchemy_url(dsn), poolclass=pool.NullPool)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: tuple(MigrationContext.configure(sync).get_current_heads()))
        finally:
            await engine.dispose()
    return asyncio.run(read())


async def upgrade_async(dsn: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, dsn, revision)


async def current_revision(conn: asyncpg.Connection) -> str | None:
    exists = await conn.fetchval("SELECT to_regclass('public.alembic_version') IS NOT NULL")
    if not exists:
        return None
    rows = await conn.fetch("SELECT version_num FROM alembic_version")
    if len(rows) != 1:
        return None
    return str(rows[0]["version_num"])


async def ensure_at_head(conn: asyncpg.Connection) -> None:
    """Raise :class:`SchemaNotAtHead` with a one-line explanation unless at head."""
    current, head = await current_revision(conn), head_revision()
    if current != head:
        raise SchemaNotAtHead(
            f"database schema is at {current or 'nothing'}, this relay needs {head}: "
            "run `lightbox-server db upgrade` (make run does it for you)"
        )
