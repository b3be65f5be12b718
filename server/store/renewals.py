"""Certificates waiting for IT's signature again (table ``certificate_renewals``): what the
directory or the IdP asks a user's next certificate to say. The relay cannot sign; IT's
workstation reads these and posts the renewed certificate (server/scim/pending.py)."""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg

from server.store import at

__all__ = ["Renewal", "delete", "get", "list_renewals", "request"]


@dataclasses.dataclass(frozen=True)
class Renewal:
    user_id: str
    org_id: str
    display_name: str | None  # None: keep the certificate's
    roles: list[str] | None  # None: keep the certificate's
    version: int
    login: str = ""
    user_certificate: str = ""


def _renewal(row: asyncpg.Record) -> Renewal:
    return Renewal(user_id=str(row["user_id"]), org_id=row["org_id"],
                   display_name=row["display_name"],
                   roles=None if row["roles"] is None else list(row["roles"]),
                   version=row["version"], login=row.get("login") or "",
                   user_certificate=row.get("user_certificate") or "")


async def get(conn: asyncpg.Connection, user_id: str, *,
              for_update: bool = False) -> Renewal | None:
    """The renewal asked for the user, or None (a malformed id names none)."""
    try:
        uid = uuid.UUID(user_id)
    except ValueError:
        return None
    row = await conn.fetchrow(
        "SELECT * FROM certificate_renewals WHERE user_id = $1"
        + (" FOR UPDATE" if for_update else ""), uid)
    return None if row is None else _renewal(row)


async def request(conn: asyncpg.Connection, user_id: str, org_id: str, *,
                  display_name: str | None, roles: list[str] | None, now: float) -> None:
    """Ask for (or change) the user's renewal; both None withdraws it. The version moves
    only when what is asked changes, so IT's reading stays good otherwise."""
    if display_name is None and roles is None:
        await conn.execute("DELETE FROM certificate_renewals WHERE user_id = $1",
                           uuid.UUID(user_id))
        return
    await conn.execute(
        "INSERT INTO certificate_renewals (user_id, org_id, display_name, roles, version, "
        "requested_at) VALUES ($1, $2, $3, $4, 1, $5) "
        "ON CONFLICT (user_id) DO UPDATE SET display_name = EXCLUDED.display_name, "
        "roles = EXCLUDED.roles, version = certificate_renewals.version + 1 "
        "WHERE certificate_renewals.display_name IS DISTINCT FROM EXCLUDED.display_name "
        "OR certificate_renewals.roles IS DISTINCT FROM EXCLUDED.roles",
        uuid.UUID(user_id), org_id, display_name, roles, at(now))


async def delete(conn: asyncpg.Connection, user_id: str) -> None:
    await conn.execute("DELETE FROM certificate_renewals WHERE user_id = $1",
                       uuid.UUID(user_id))


async def list_renewals(conn: asyncpg.Connection, *, limit: int) -> list[Renewal]:
    """Renewals of active users, oldest request first, with the login and the certificate
    held (IT's tool re-signs it with the same key, licence and validity)."""
    rows = await conn.fetch(
        "SELECT r.*, u.login, u.user_certificate FROM certificate_renewals r "
        "JOIN users u USING (user_id) WHERE u.status <> 'suspended' "
        "ORDER BY r.requested_at, r.user_id LIMIT $1", limit)
    return [_renewal(r) for r in rows]
