"""Sessions begun with the hospital's OpenID provider (server/oidc.py): the refresh family and
the time after which it no longer refreshes, so that a user the IdP disabled is out once the
IdP would have to sign them in again (docs/SECURITY.md "Single sign-on")."""

from __future__ import annotations

import uuid

import asyncpg

from server.store import at, unix

__all__ = ["reauth_at", "record"]


async def record(conn: asyncpg.Connection, family_id: str, user_id: str, *,
                 reauth_at: float) -> None:
    await conn.execute(
        "INSERT INTO sso_sessions (family_id, user_id, reauth_at) VALUES ($1, $2, $3)",
        uuid.UUID(family_id), uuid.UUID(user_id), at(reauth_at))


async def reauth_at(conn: asyncpg.Connection, family_id: str) -> int | None:
    """When the family must sign in at the IdP again (None: not an SSO session)."""
    value = await conn.fetchval("SELECT reauth_at FROM sso_sessions WHERE family_id = $1",
                                uuid.UUID(family_id))
    return unix(value)
