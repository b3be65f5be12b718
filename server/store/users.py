"""Users (their organisation-signed certificates, status and password hash) and the
single-use enrolment codes of their first device.

The relay stores the certificate IT's tool signed and the columns it needs to search and to
enforce status; it cannot make a certificate. Of an enrolment code it stores only
SHA-256(enrolment token) and the identity key sealed under the code (which it cannot open).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

import asyncpg

from protocol.certs import UserCertificate
from protocol.errors import ErrorCode
from server.errors import Conflict, NotFound, RelayError
from server.store import at, unix

__all__ = [
    "EnrolmentRecord",
    "UserRecord",
    "certificates_of_device_owners",
    "consume_enrolment",
    "enrolment_state",
    "get_enrolment",
    "get_user",
    "get_user_by_login",
    "insert_enrolment",
    "insert_user",
    "list_users",
    "lock_enrolments",
    "replace_certificate",
    "replace_enrolment",
    "resume_all_but",
    "search_directory",
    "set_password_hash",
    "set_roles",
    "set_status",
    "suspend",
]


@dataclasses.dataclass(frozen=True)
class UserRecord:
    user_id: str
    org_id: str
    login: str
    display_name: str
    account_kind: str
    roles: list[str]
    specialty: str | None
    department: str | None
    licence_expires_at: int | None
    cert_not_after: int
    identity_key: bytes
    user_certificate: str
    status: str  # pending | active | suspended
    password_hash: str | None
    devices: int = 0  # active devices (list_users only)

    def licence_valid(self, now: float) -> bool:
        return self.licence_expires_at is None or now < self.licence_expires_at

    def standing(self, now: float) -> ErrorCode | None:
        """Why this enrolled user may not act at ``now``, in the order every check reports it
        (login, each request, the key directory): ``user_suspended``, ``licence_expired``,
        ``certificate_expired``; None when it may. A pending user is the caller's to judge."""
        if self.status != "active":
            return ErrorCode.USER_SUSPENDED
        if not self.licence_valid(now):
            return ErrorCode.LICENCE_EXPIRED
        if now >= self.cert_not_after:
            return ErrorCode.CERTIFICATE_EXPIRED
        return None


def _user(row: asyncpg.Record) -> UserRecord:
    return UserRecord(
        user_id=str(row["user_id"]), org_id=row["org_id"], login=row["login"],
        display_name=row["display_name"], account_kind=row["account_kind"],
        roles=list(row["roles"]), specialty=row["specialty"], department=row["department"],
        licence_expires_at=unix(row["licence_expires_at"]),
        cert_not_after=unix(row["cert_not_after"]) or 0,
        identity_key=bytes(row["identity_key"]), user_certificate=row["user_certificate"],
        status=row["status"], password_hash=row["password_hash"],
        devices=row["devices"] if "devices" in row else 0,
    )


def _cert_columns(cert: UserCertificate) -> tuple[object, ...]:
    licence_expiry = None if cert.licence is None else at(cert.licence.expires_at)
    return (cert.org_id, cert.display_name, cert.account_kind.value, list(cert.roles),
            cert.specialty, cert.department, licence_expiry, at(cert.not_after),
            cert.identity_key)


async def insert_user(conn: asyncpg.Connection, cert: UserCertificate, token: str, login: str,
                      *, now: float) -> None:
    """A provisioned user, ``pending`` until their first device enrols.
    Conflict when the user id or the login is taken."""
    try:
        await conn.execute(
            "INSERT INTO users (user_id, org_id, display_name, account_kind, roles, specialty, "
            "department, licence_expires_at, cert_not_after, identity_key, login, "
            "user_certificate, status, created_at, updated_at) "
            "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,'pending',$13,$13)",
            uuid.UUID(cert.user_id), *_cert_columns(cert), login, token, at(now))
    except asyncpg.UniqueViolationError as exc:
        what = "login" if "login" in (exc.constraint_name or "") else "user id"
        raise Conflict(detail=f"a user with this {what} exists") from exc


async def replace_certificate(conn: asyncpg.Connection, cert: UserCertificate, token: str, *,
                              now: float) -> None:
    """Store a renewed or re-issued certificate (the caller checked it is the same user and
    organisation, and the same key unless the user never enrolled)."""
    await conn.execute(
        "UPDATE users SET org_id=$2, display_name=$3, account_kind=$4, roles=$5, specialty=$6, "
        "department=$7, licence_expires_at=$8, cert_not_after=$9, identity_key=$10, "
        "user_certificate=$11, updated_at=$12 WHERE user_id=$1",
        uuid.UUID(cert.user_id), *_cert_columns(cert), token, at(now))


async def get_user(conn: asyncpg.Connection, user_id: str, *,
                   for_update: bool = False) -> UserRecord | None:
    """The user, or None. ``for_update`` locks the row (serialises device registration)."""
    try:
        uid = uuid.UUID(user_id)
    except ValueError:
        return None
    sql = "SELECT * FROM users WHERE user_id = $1" + (" FOR UPDATE" if for_update else "")
    row = await conn.fetchrow(sql, uid)
    return None if row is None else _user(row)


async def certificates_of_device_owners(conn: asyncpg.Connection, device_ids: Sequence[str]
                                        ) -> dict[str, tuple[str, str]]:
    """device id -> (owner's user id, owner's user certificate) for the devices given."""
    rows = await conn.fetch(
        "SELECT d.device_id::text AS device_id, u.user_id::text AS user_id, u.user_certificate "
        "FROM devices d JOIN users u USING (user_id) WHERE d.device_id = ANY($1::uuid[])",
        [uuid.UUID(d) for d in device_ids])
    return {r["device_id"]: (r["user_id"], r["user_certificate"]) for r in rows}


async def get_user_by_login(conn: asyncpg.Connection, login: str) -> UserRecord | None:
    row = await conn.fetchrow("SELECT * FROM users WHERE login = $1", login)
    return None if row is None else _user(row)


def _like(q: str) -> str:
    return "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def list_users(conn: asyncpg.Connection, *, q: str | None = None,
                     status: str | None = None, limit: int = 1000) -> list[UserRecord]:
    """Users for IT, optionally filtered by a substring of login or name, and by status."""
    rows = await conn.fetch(
        "SELECT u.*, (SELECT count(*) FROM devices d WHERE d.user_id = u.user_id "
        "AND d.status = 'active')::int AS devices FROM users u "
        "WHERE ($1::text IS NULL OR lower(u.login) LIKE $1 OR lower(u.display_name) LIKE $1) "
        "AND ($2::text IS NULL OR u.status = $2) ORDER BY u.display_name, u.login LIMIT $3",
        None if not q else _like(q), status, limit)
    return [_user(r) for r in rows]


async def search_directory(conn: asyncpg.Connection, q: str, *, org_ids: Sequence[str],
                           now: float, limit: int = 50, exact_login: bool = False
                           ) -> list[UserRecord]:
    """Active users of the given organisations whose certificate and licence are valid, with
    ``q`` (case-insensitive) in their login, name, a role, their specialty or department; with
    ``exact_login``, only the user whose login is ``q`` (logins are lower case)."""
    where = "login = $3" if exact_login else (
        "(login LIKE $3 OR lower(display_name) LIKE $3 "
        "OR lower(coalesce(specialty, '')) LIKE $3 OR lower(coalesce(department, '')) LIKE $3 "
        "OR EXISTS (SELECT 1 FROM unnest(roles) r WHERE lower(r) LIKE $3))")
    rows = await conn.fetch(
        "SELECT * FROM users WHERE status = 'active' AND org_id = ANY($1::text[]) "
        "AND cert_not_after > $2 AND (licence_expires_at IS NULL OR licence_expires_at > $2) "
        f"AND {where} ORDER BY display_name, user_id LIMIT $4",
        list(org_ids), at(now), q if exact_login else _like(q), limit)
    return [_user(r) for r in rows]


async def set_roles(conn: asyncpg.Connection, user_id: str, roles: Sequence[str], *,
                    now: float) -> None:
    """The roles the relay acts on: those of the certificate, less any the IdP withdrew
    (server/renewals.py); never one the certificate lacks."""
    await conn.execute("UPDATE users SET roles = $2, updated_at = $3 WHERE user_id = $1",
                       uuid.UUID(user_id), list(roles), at(now))


async def set_status(conn: asyncpg.Connection, user_id: str, status: str, *,
                     now: float) -> None:
    await conn.execute("UPDATE users SET status = $2, updated_at = $3 WHERE user_id = $1",
                       uuid.UUID(user_id), status, at(now))


async def suspend(conn: asyncpg.Connection, org_id: str, user_ids: Sequence[str], *,
                  now: float) -> list[str]:
    """Suspend the named users of ``org_id``; return those newly suspended."""
    rows = await conn.fetch(
        "UPDATE users SET status = 'suspended', updated_at = $3 WHERE org_id = $1 "
        "AND user_id = ANY($2::uuid[]) AND status <> 'suspended' RETURNING user_id",
        org_id, [uuid.UUID(u) for u in user_ids], at(now))
    return sorted(str(r["user_id"]) for r in rows)


async def resume_all_but(conn: asyncpg.Connection, org_id: str, user_ids: Sequence[str], *,
                         now: float) -> list[str]:
    """Resume the suspended users of ``org_id`` not named (active again, or pending if they
    never enrolled); return them. A user the hospital directory deactivated or deleted
    (server/store/directory.py keeps a deleted user's row, inactive) stays suspended: that
    suspension is the directory's to lift (server/scim/service.py)."""
    rows = await conn.fetch(
        "UPDATE users SET status = CASE WHEN password_hash IS NULL THEN 'pending' "
        "ELSE 'active' END, updated_at = $3 WHERE org_id = $1 AND status = 'suspended' "
        "AND NOT user_id = ANY($2::uuid[]) AND NOT EXISTS (SELECT 1 FROM scim_users s "
        "WHERE s.user_id = users.user_id AND NOT s.active) RETURNING user_id",
        org_id, [uuid.UUID(u) for u in user_ids], at(now))
    return sorted(str(r["user_id"]) for r in rows)


async def set_password_hash(conn: asyncpg.Connection, user_id: str, password_hash: str, *,
                            now: float) -> None:
    await conn.execute(
        "UPDATE users SET password_hash = $2, updated_at = $3 WHERE user_id = $1",
        uuid.UUID(user_id), password_hash, at(now))


# --- enrolment codes ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EnrolmentRecord:
    user_id: str
    sealed_identity: bytes
    expires_at: int
    used: bool


async def insert_enrolment(conn: asyncpg.Connection, token_hash: bytes, user_id: str,
                           sealed_identity: bytes, *, expires_at: float, now: float) -> None:
    try:
        await conn.execute(
            "INSERT INTO enrolment_codes (token_hash, user_id, sealed_identity, created_at, "
            "expires_at) VALUES ($1, $2, $3, $4, $5)",
            token_hash, uuid.UUID(user_id), sealed_identity, at(now), at(expires_at))
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(detail="this enrolment token is already registered") from exc


async def get_enrolment(conn: asyncpg.Connection, token_hash: bytes, *,
                        now: float) -> EnrolmentRecord:
    """The enrolment behind a token hash, if it can still be used; else
    enrolment_code_invalid, enrolment_code_used or enrolment_code_expired."""
    row = await conn.fetchrow("SELECT * FROM enrolment_codes WHERE token_hash = $1", token_hash)
    if row is None:
        raise NotFound(ErrorCode.ENROLMENT_CODE_INVALID, "unknown enrolment code")
    if row["used_at"] is not None:
        raise Conflict(ErrorCode.ENROLMENT_CODE_USED, "this enrolment code was already used")
    if row["expires_at"] <= at(now):
        raise RelayError(ErrorCode.ENROLMENT_CODE_EXPIRED,
                         "this enrolment code has expired: ask IT for a new one")
    return EnrolmentRecord(user_id=str(row["user_id"]),
                           sealed_identity=bytes(row["sealed_identity"]),
                           expires_at=unix(row["expires_at"]) or 0, used=False)


async def consume_enrolment(conn: asyncpg.Connection, token_hash: bytes, *, now: float) -> str:
    """Mark the code used, atomically: of two concurrent completions, the second waits on the
    row lock, then finds it used (enrolment_code_used). Returns the user id."""
    user_id = await conn.fetchval(
        "UPDATE enrolment_codes SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL "
        "AND expires_at > $2 RETURNING user_id", token_hash, at(now))
    if user_id is None:
        await get_enrolment(conn, token_hash, now=now)  # raises the precise reason
        raise Conflict(ErrorCode.ENROLMENT_CODE_USED, "this enrolment code was already used")
    return str(user_id)


async def lock_enrolments(conn: asyncpg.Connection, user_id: str) -> None:
    """Lock the user's enrolment codes. Enrolment locks the code's row, then the user's; taking
    them in the same order lets a re-issue and a completing enrolment run one after the other
    instead of deadlocking. A malformed user id has no codes."""
    try:
        uid = uuid.UUID(user_id)
    except ValueError:
        return
    await conn.execute("SELECT 1 FROM enrolment_codes WHERE user_id = $1 FOR UPDATE", uid)


async def replace_enrolment(conn: asyncpg.Connection, token_hash: bytes, user_id: str,
                            sealed_identity: bytes, *, expires_at: float, now: float) -> int:
    """Delete the user's unused codes (their tokens are unknown from now on:
    enrolment_code_invalid) and insert the new one; returns how many were deleted."""
    deleted = await conn.fetch(
        "DELETE FROM enrolment_codes WHERE user_id = $1 AND used_at IS NULL RETURNING 1",
        uuid.UUID(user_id))
    await insert_enrolment(conn, token_hash, user_id, sealed_identity, expires_at=expires_at,
                           now=now)
    return len(deleted)


async def enrolment_state(conn: asyncpg.Connection, user_id: str, *,
                          now: float) -> tuple[str, int | None]:
    """pending | used | expired | none, for the user's most recent enrolment code, and when
    that code expires (None when there is none)."""
    row = await conn.fetchrow(
        "SELECT used_at, expires_at FROM enrolment_codes WHERE user_id = $1 "
        "ORDER BY created_at DESC LIMIT 1", uuid.UUID(user_id))
    if row is None:
        return "none", None
    expires_at = unix(row["expires_at"])
    if row["used_at"] is not None:
        return "used", expires_at
    return ("expired" if row["expires_at"] <= at(now) else "pending"), expires_at
