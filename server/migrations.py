"""Schema migrations: run alembic to head, and tell whether a database is at head.

The relay refuses to start unless the schema is exactly at head (``lightbox-server db upgrade``
or ``make run`` applies migrations). Alembic's ``command.upgrade`` runs its own event loop, so
it is called from a worker thread when a loop is already running (NOTES.md).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from alembic.config import Config
from alembic.script import ScriptDirectory

from alembic import command

__all__ = [
    "SchemaNotAtHead",
    "alembic_config",
    "current_revision",
    "ensure_at_head",
    "head_revision",
    "sqlalchemy_url",
    "upgrade",
    "upgrade_async",
]

ROOT = Path(__file__).resolve().parent.parent


class SchemaNotAtHead(RuntimeError):
    """The database schema is not at the migrations' head."""


def sqlalchemy_url(dsn: str) -> str:
    """``postgresql://...`` as SQLAlchemy's asyncpg URL (``postgresql+asyncpg://...``)."""
    parts = urlsplit(dsn)
    if parts.scheme not in {"postgresql", "postgres", "postgresql+asyncpg"}:
        raise ValueError("DATABASE_URL must be a postgresql:// URL")
    return urlunsplit(("postgresql+asyncpg", *parts[1:]))


def alembic_config(dsn: str | None = None) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    if dsn is not None:
        # attributes, not main options: a password must never pass through ConfigParser
        # interpolation or be written anywhere.
        cfg.attributes["sqlalchemy_url"] = sqlalchemy_url(dsn)
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def upgrade(dsn: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (blocking; not inside a running event loop)."""
    command.upgrade(alembic_config(dsn), revision)


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
