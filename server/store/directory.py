"""The hospital directory pushed over SCIM (server/scim/): IT's bearer credentials, directory
users and groups, and the relay user each directory user became once IT signed it.

A directory user is *pending* while ``user_id`` is NULL: it is a request for an identity, not
one (docs/SECURITY.md). Resources are kept as the JSON the SCIM layer validated, with the
columns filters and uniqueness need beside it; ``version`` counts every change (the ETag,
RFC 7644 §3.14). Bearer tokens are 256-bit random strings kept as SHA-256 hashes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import secrets
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import asyncpg

from server.errors import Conflict
from server.store import at, unix

__all__ = [
    "TOKEN_PREFIX",
    "DirectoryGroup",
    "DirectoryUser",
    "TokenRecord",
    "delete_group",
    "delete_user",
    "get_group",
    "get_user",
    "groups_of",
    "insert_group",
    "insert_user",
    "issue_token",
    "link_user",
    "list_groups",
    "list_tokens",
    "list_users",
    "members_of",
    "org_for_token",
    "pending_users",
    "revoke_tokens",
    "set_members",
    "unknown_members",
    "update_group",
    "update_user",
]

TOKEN_PREFIX = "lbscim_"  # noqa: S105 (a label, not a secret)


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


# --- bearer credentials ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Table:
    """How one resource table is read by id and listed (users and groups alike)."""

    name: Literal["scim_users", "scim_groups"]
    name_column: Literal["user_name", "display_name"]  # matched case-insensitively
    live: str  # the condition a row still in the directory meets

    async def one(self, conn: asyncpg.Connection, org_id: str | None, scim_id: str, *,
                  for_update: bool) -> asyncpg.Record | None:
        """The row of ``org_id`` (None: of any organisation) with this id, if it is one."""
        sid = _uuid(scim_id)
        if sid is None:
            return None
        return await conn.fetchrow(
            f"SELECT * FROM {self.name} WHERE ($1::text IS NULL OR org_id = $1) "
            f"AND scim_id = $2 AND {self.live}" + (" FOR UPDATE" if for_update else ""),
            org_id, sid)

    async def many(self, conn: asyncpg.Connection, org_id: str, name: str | None,
                   external_id: str | None, limit: int) -> list[asyncpg.Record]:
        """The organisation's rows, narrowed by an exact name (case-insensitive) or externalId
        (case-exact, RFC 7643 §3.1) when given, oldest first."""
        return list(await conn.fetch(
            f"SELECT * FROM {self.name} WHERE org_id = $1 AND {self.live} "
            f"AND ($2::text IS NULL OR lower({self.name_column}) = lower($2)) "
            "AND ($3::text IS NULL OR external_id = $3) ORDER BY created_at, scim_id LIMIT $4",
            org_id, name, external_id, limit))


_USERS = _Table("scim_users", "user_name", "deleted_at IS NULL")
_GROUPS = _Table("scim_groups", "display_name", "true")


@dataclasses.dataclass(frozen=True)
class TokenRecord:
    token_id: str
    org_id: str
    created_at: int
    revoked_at: int | None


async def issue_token(conn: asyncpg.Connection, org_id: str, *, now: float) -> tuple[str, str]:
    """A new bearer token for ``org_id``'s directory: (token id, token). Only the hash is kept,
    so the token is shown once."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO scim_tokens (token_id, org_id, token_hash, created_at) "
        "VALUES ($1, $2, $3, $4)", token_id, org_id, _hash(token), at(now))
    return str(token_id), token


async def revoke_tokens(conn: asyncpg.Connection, org_id: str, *, now: float,
                        keep: str | None = None) -> int:
    """Revoke the organisation's live tokens (all but ``keep``); how many were revoked."""
    result = await conn.execute(
        "UPDATE scim_tokens SET revoked_at = $2 WHERE org_id = $1 AND revoked_at IS NULL "
        "AND ($3::uuid IS NULL OR token_id <> $3::uuid)",
        org_id, at(now), None if keep is None else uuid.UUID(keep))
    return int(result.split()[-1])


async def list_tokens(conn: asyncpg.Connection, org_id: str) -> list[TokenRecord]:
    rows = await conn.fetch("SELECT * FROM scim_tokens WHERE org_id = $1 ORDER BY created_at",
                            org_id)
    return [TokenRecord(token_id=str(r["token_id"]), org_id=r["org_id"],
                        created_at=unix(r["created_at"]) or 0,
                        revoked_at=unix(r["revoked_at"])) for r in rows]


async def org_for_token(conn: asyncpg.Connection, token: str) -> str | None:
    """The organisation a live token speaks for, or None."""
    org: str | None = await conn.fetchval(
        "SELECT org_id FROM scim_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        _hash(token))
    return org


# --- users ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DirectoryUser:
    scim_id: str
    org_id: str
    user_name: str
    external_id: str | None
    active: bool
    resource: dict[str, Any]
    version: int
    user_id: str | None  # the relay user, once IT signed the certificate
    created_at: dt.datetime
    updated_at: dt.datetime


def _user(row: asyncpg.Record) -> DirectoryUser:
    return DirectoryUser(
        scim_id=str(row["scim_id"]), org_id=row["org_id"], user_name=row["user_name"],
        external_id=row["external_id"], active=row["active"],
        resource=json.loads(row["resource"]), version=row["version"],
        user_id=None if row["user_id"] is None else str(row["user_id"]),
        created_at=row["created_at"], updated_at=row["updated_at"])


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def _login_taken(conn: asyncpg.Connection, user_name: str, scim_id: str) -> bool:
    """Another directory user, or a relay user this entry did not become, has the name."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM users u WHERE u.login = lower($1) AND NOT EXISTS ("
        "SELECT 1 FROM scim_users s WHERE s.scim_id = $2 AND s.user_id = u.user_id))",
        user_name, uuid.UUID(scim_id)))


async def insert_user(conn: asyncpg.Connection, *, scim_id: str, org_id: str, user_name: str,
                      external_id: str | None, active: bool, resource: dict[str, Any],
                      now: float) -> DirectoryUser:
    """A new directory user; Conflict when the name is taken (by any organisation: logins are
    unique on the relay)."""
    if await _login_taken(conn, user_name, scim_id):
        raise Conflict(detail="a user with this userName exists")
    try:
        row = await conn.fetchrow(
            "INSERT INTO scim_users (scim_id, org_id, user_name, external_id, active, resource, "
            "version, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,$6,1,$7,$7) RETURNING *",
            uuid.UUID(scim_id), org_id, user_name, external_id, active, json.dumps(resource),
            at(now))
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(detail="a user with this userName exists") from exc
    return _user(row)


async def get_user(conn: asyncpg.Connection, org_id: str | None, scim_id: str, *,
                   for_update: bool = False) -> DirectoryUser | None:
    """The directory user of ``org_id`` (None: of any organisation, for IT's queue)."""
    row = await _USERS.one(conn, org_id, scim_id, for_update=for_update)
    return None if row is None else _user(row)


async def list_users(conn: asyncpg.Connection, org_id: str, *, user_name: str | None = None,
                     external_id: str | None = None, limit: int) -> list[DirectoryUser]:
    """The organisation's directory users, narrowed by an exact userName (case-insensitive)
    or externalId (case-exact, RFC 7643 §3.1) when given, oldest first."""
    return [_user(r) for r in await _USERS.many(conn, org_id, user_name, external_id, limit)]


async def update_user(conn: asyncpg.Connection, current: DirectoryUser, *, user_name: str,
                      external_id: str | None, active: bool, resource: dict[str, Any],
                      now: float) -> DirectoryUser:
    """Store the new state; the version moves on by one."""
    if user_name.lower() != current.user_name.lower() and await _login_taken(
            conn, user_name, current.scim_id):
        raise Conflict(detail="a user with this userName exists")
    try:
        row = await conn.fetchrow(
            "UPDATE scim_users SET user_name = $2, external_id = $3, active = $4, "
            "resource = $5, version = version + 1, updated_at = $6 WHERE scim_id = $1 "
            "RETURNING *", uuid.UUID(current.scim_id), user_name, external_id, active,
            json.dumps(resource), at(now))
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(detail="a user with this userName exists") from exc
    return _user(row)


async def delete_user(conn: asyncpg.Connection, scim_id: str, *, now: float) -> None:
    """Gone from the directory. A user IT signed keeps its row, inactive and marked deleted
    (its relay user stays suspended, its login taken); its group memberships go."""
    uid = uuid.UUID(scim_id)
    await conn.execute("DELETE FROM scim_members WHERE user_id = $1", uid)
    await conn.execute("DELETE FROM scim_users WHERE scim_id = $1 AND user_id IS NULL", uid)
    await conn.execute(
        "UPDATE scim_users SET active = false, deleted_at = $2, updated_at = $2 "
        "WHERE scim_id = $1", uid, at(now))


async def link_user(conn: asyncpg.Connection, scim_id: str, user_id: str, *,
                    now: float) -> None:
    """The directory user became this relay user (IT signed its certificate)."""
    await conn.execute(
        "UPDATE scim_users SET user_id = $2, version = version + 1, updated_at = $3 "
        "WHERE scim_id = $1", uuid.UUID(scim_id), uuid.UUID(user_id), at(now))


async def pending_users(conn: asyncpg.Connection, *, limit: int) -> list[DirectoryUser]:
    """Active directory users no certificate was signed for yet, oldest first."""
    rows = await conn.fetch(
        "SELECT * FROM scim_users WHERE user_id IS NULL AND active "
        "ORDER BY created_at, scim_id LIMIT $1", limit)
    return [_user(r) for r in rows]


# --- groups --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DirectoryGroup:
    scim_id: str
    org_id: str
    display_name: str
    external_id: str | None
    resource: dict[str, Any]
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime


def _group(row: asyncpg.Record) -> DirectoryGroup:
    return DirectoryGroup(
        scim_id=str(row["scim_id"]), org_id=row["org_id"], display_name=row["display_name"],
        external_id=row["external_id"], resource=json.loads(row["resource"]),
        version=row["version"], created_at=row["created_at"], updated_at=row["updated_at"])


async def insert_group(conn: asyncpg.Connection, *, scim_id: str, org_id: str,
                       display_name: str, external_id: str | None, resource: dict[str, Any],
                       now: float) -> DirectoryGroup:
    row = await conn.fetchrow(
        "INSERT INTO scim_groups (scim_id, org_id, display_name, external_id, resource, "
        "version, created_at, updated_at) VALUES ($1,$2,$3,$4,$5,1,$6,$6) RETURNING *",
        uuid.UUID(scim_id), org_id, display_name, external_id, json.dumps(resource), at(now))
    return _group(row)


async def get_group(conn: asyncpg.Connection, org_id: str, scim_id: str, *,
                    for_update: bool = False) -> DirectoryGroup | None:
    row = await _GROUPS.one(conn, org_id, scim_id, for_update=for_update)
    return None if row is None else _group(row)


async def list_groups(conn: asyncpg.Connection, org_id: str, *,
                      display_name: str | None = None, external_id: str | None = None,
                      limit: int) -> list[DirectoryGroup]:
    rows = await _GROUPS.many(conn, org_id, display_name, external_id, limit)
    return [_group(r) for r in rows]


async def update_group(conn: asyncpg.Connection, current: DirectoryGroup, *, display_name: str,
                       external_id: str | None, resource: dict[str, Any],
                       now: float) -> DirectoryGroup:
    row = await conn.fetchrow(
        "UPDATE scim_groups SET display_name = $2, external_id = $3, resource = $4, "
        "version = version + 1, updated_at = $5 WHERE scim_id = $1 RETURNING *",
        uuid.UUID(current.scim_id), display_name, external_id, json.dumps(resource), at(now))
    return _group(row)


async def delete_group(conn: asyncpg.Connection, scim_id: str) -> None:
    await conn.execute("DELETE FROM scim_groups WHERE scim_id = $1", uuid.UUID(scim_id))


async def unknown_members(conn: asyncpg.Connection, org_id: str,
                          user_ids: Sequence[str]) -> list[str]:
    """The ids that name no directory user of ``org_id``."""
    valid = {str(u) for u in (_uuid(i) for i in user_ids) if u is not None}
    rows = await conn.fetch(
        "SELECT scim_id::text AS id FROM scim_users WHERE org_id = $1 AND deleted_at IS NULL "
        "AND scim_id = ANY($2::uuid[])", org_id, [uuid.UUID(v) for v in valid])
    found = {r["id"] for r in rows}
    return sorted(i for i in user_ids if i not in found)


async def set_members(conn: asyncpg.Connection, group_id: str,
                      members: Sequence[tuple[str, str | None]]) -> list[str]:
    """Replace the group's members ((directory user id, display) pairs); the directory users
    whose membership changed."""
    before = {m for m, _ in await members_of(conn, group_id)}
    await conn.execute("DELETE FROM scim_members WHERE group_id = $1", uuid.UUID(group_id))
    await conn.executemany(
        "INSERT INTO scim_members (group_id, user_id, display) VALUES ($1, $2, $3)",
        [(uuid.UUID(group_id), uuid.UUID(u), d) for u, d in dict(members).items()])
    return sorted(before ^ {m for m, _ in members})


async def members_of(conn: asyncpg.Connection, group_id: str) -> list[tuple[str, str | None]]:
    """(directory user id, display) of the group's members."""
    rows = await conn.fetch(
        "SELECT user_id::text AS id, display FROM scim_members WHERE group_id = $1 "
        "ORDER BY user_id", uuid.UUID(group_id))
    return [(r["id"], r["display"]) for r in rows]


async def groups_of(conn: asyncpg.Connection,
                    user_ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """directory user id -> [(group id, group display name)] for the users given."""
    rows = await conn.fetch(
        "SELECT m.user_id::text AS uid, g.scim_id::text AS gid, g.display_name "
        "FROM scim_members m JOIN scim_groups g ON g.scim_id = m.group_id "
        "WHERE m.user_id = ANY($1::uuid[]) ORDER BY g.display_name, g.scim_id",
        [uuid.UUID(u) for u in user_ids])
    out: dict[str, list[tuple[str, str]]] = {u: [] for u in user_ids}
    for r in rows:
        out[r["uid"]].append((r["gid"], r["display_name"]))
    return out
