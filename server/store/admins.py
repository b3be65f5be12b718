"""IT administrator accounts: created on the relay host (``lightbox-server admin create``, with
direct database access), used to log in to the admin API. Passwords are Argon2id hashes
(server/passwords.py); the relay never stores a password."""

from __future__ import annotations

import dataclasses
import time
import uuid

import asyncpg

from protocol.errors import ErrorCode
from server.errors import Conflict, Unauthorized
from server.passwords import Passwords
from server.store import at

__all__ = ["AdminRecord", "check_admin_password", "create_admin", "disable_admin", "get_admin",
           "get_admin_by_login", "list_admins", "set_admin_password", "verify_admin_login"]


@dataclasses.dataclass(frozen=True)
class AdminRecord:
    admin_id: str
    login: str
    password_hash: str
    disabled: bool
    disabled_at: float | None = None
    password_set_at: float | None = None  # None: not changed since the account was made


def _record(row: asyncpg.Record) -> AdminRecord:
    gone, changed = row["disabled_at"], row["password_set_at"]
    return AdminRecord(admin_id=str(row["admin_id"]), login=row["login"],
                       password_hash=row["password_hash"], disabled=gone is not None,
                       disabled_at=None if gone is None else gone.timestamp(),
                       password_set_at=None if changed is None else changed.timestamp())


async def create_admin(conn: asyncpg.Connection, login: str, password_hash: str, *,
                       now: float | None = None) -> str:
    """Insert an administrator and return the new admin id; Conflict if the login exists."""
    admin_id = str(uuid.uuid4())
    try:
        await conn.execute(
            "INSERT INTO admins (admin_id, login, password_hash, created_at) "
            "VALUES ($1, $2, $3, $4)",
            uuid.UUID(admin_id), login, password_hash, at(time.time() if now is None else now))
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(detail="an administrator with this login exists") from exc
    return admin_id


async def get_admin_by_login(conn: asyncpg.Connection, login: str, *,
                             for_update: bool = False) -> AdminRecord | None:
    """``for_update``: the row stays locked until the transaction ends."""
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT * FROM admins WHERE login = $1{lock}", login)
    return None if row is None else _record(row)


async def get_admin(conn: asyncpg.Connection, admin_id: str) -> AdminRecord | None:
    row = await conn.fetchrow("SELECT * FROM admins WHERE admin_id = $1", uuid.UUID(admin_id))
    return None if row is None else _record(row)


async def verify_admin_login(conn: asyncpg.Connection, passwords: Passwords, login: str,
                             password: str) -> AdminRecord:
    """The administrator with this login and password, or Unauthorized(invalid_credentials)."""
    return await check_admin_password(passwords, await get_admin_by_login(conn, login),
                                      password)


async def check_admin_password(passwords: Passwords, admin: AdminRecord | None,
                               password: str) -> AdminRecord:
    """``admin`` (the account a login names, None if none) if ``password`` is its own and it
    is active, or Unauthorized(invalid_credentials). An unknown or disabled login costs one
    Argon2id verification too (same timing)."""
    ok = await passwords.verify(admin.password_hash if admin else None, password)
    if admin is None or not ok or admin.disabled:
        raise Unauthorized(ErrorCode.INVALID_CREDENTIALS, "login or password is wrong")
    return admin


async def list_admins(conn: asyncpg.Connection) -> list[AdminRecord]:
    """Every administrator, removed ones too, by login."""
    return [_record(r) for r in await conn.fetch("SELECT * FROM admins ORDER BY login")]


async def set_admin_password(conn: asyncpg.Connection, admin_id: str, password_hash: str, *,
                             now: float | None = None) -> None:
    """A new password; the admin tokens issued before it are refused from now on
    (server/authn.py)."""
    await conn.execute("UPDATE admins SET password_hash = $2, password_set_at = $3 "
                       "WHERE admin_id = $1", uuid.UUID(admin_id), password_hash,
                       at(time.time() if now is None else now))


async def disable_admin(conn: asyncpg.Connection, admin_id: str, *,
                        now: float | None = None) -> int:
    """Disable an administrator (the row stays: audit rows name its id); return how many
    active administrators are left. Conflict, nothing changed, if it is the last active one.

    The active rows are locked first, so two removals at once cannot leave none."""
    active = {str(r["admin_id"]) for r in await conn.fetch(
        "SELECT admin_id FROM admins WHERE disabled_at IS NULL FOR UPDATE")}
    if active <= {admin_id}:
        raise Conflict(detail="it is the last active administrator: nobody could log in to "
                              "the admin API after it; create another one first")
    await conn.execute("UPDATE admins SET disabled_at = $2 WHERE admin_id = $1",
                       uuid.UUID(admin_id), at(time.time() if now is None else now))
    return len(active) - 1
