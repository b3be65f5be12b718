"""Login challenge nonces (single use, short-lived) and refresh tokens.

Refresh tokens are 256-bit random strings; only their SHA-256 is stored. Each login starts a
*family*; every refresh marks the presented token used and issues the next one in the family.
Presenting a used token again means it was copied: the whole family is revoked (the newest
token too), as OAuth 2.0 Security BCP (RFC 9700 §4.14.2) recommends.

One exception, for the legitimate race of two requests (or two processes) of one device that
both present the token before either sees the new pair: the used token's row keeps the hash of
its successor and the new pair *sealed under a key derived from the used token itself*
(:func:`seal_successor`; HKDF-SHA256 then XChaCha20-Poly1305), so that for a short grace the
same pair can be handed out again to whoever still holds the old token, and to nobody else:
the database alone cannot open it (docs/SECURITY.md "Identity and sessions").
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import uuid
from collections.abc import Sequence

import asyncpg

from protocol.errors import VerificationError
from protocol.keys import SecretBytes
from protocol.local import derive_local_key, open_local, seal_local
from server.store import at, unix

__all__ = [
    "RefreshRecord",
    "consume_nonce",
    "create_nonce",
    "family_active",
    "get_refresh",
    "issue_refresh",
    "open_successor",
    "registration",
    "revoke_family",
    "revoke_for",
    "rotate",
    "seal_successor",
    "successor_live",
    "token_hash",
]

_SUCCESSOR_INFO = b"lightbox refresh successor v1"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_nonce(conn: asyncpg.Connection, *, now: float, ttl: int) -> tuple[bytes, int]:
    """A fresh 32-byte challenge nonce and its expiry; expired nonces are swept."""
    await conn.execute("DELETE FROM auth_nonces WHERE expires_at <= $1", at(now))
    nonce = secrets.token_bytes(32)
    expires = int(now) + ttl
    await conn.execute("INSERT INTO auth_nonces (nonce, expires_at) VALUES ($1, $2)",
                       nonce, at(expires))
    return nonce, expires


async def consume_nonce(conn: asyncpg.Connection, nonce: bytes, *, now: float) -> bool:
    """True if the nonce was issued, unexpired and unused; it is deleted either way."""
    expires = await conn.fetchval("DELETE FROM auth_nonces WHERE nonce = $1 RETURNING expires_at",
                                  nonce)
    return expires is not None and expires > at(now)


@dataclasses.dataclass(frozen=True)
class RefreshRecord:
    family_id: str
    user_id: str
    device_id: str
    expires_at: int
    used: bool
    revoked: bool
    used_at: float | None = None
    successor_hash: bytes | None = None
    successor_sealed: bytes | None = None


async def issue_refresh(conn: asyncpg.Connection, *, family_id: str, user_id: str,
                        device_id: str, now: float, ttl: int) -> tuple[str, int]:
    token = secrets.token_urlsafe(32)
    expires = int(now) + ttl
    await conn.execute(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, device_id, issued_at, "
        "expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        token_hash(token), uuid.UUID(family_id), uuid.UUID(user_id), uuid.UUID(device_id),
        at(now), at(expires))
    return token, expires


async def get_refresh(conn: asyncpg.Connection, token: str) -> RefreshRecord | None:
    """The token's record, locked for the rest of the transaction (rotation is serialised)."""
    row = await conn.fetchrow("SELECT * FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
                              token_hash(token))
    if row is None:
        return None
    return RefreshRecord(family_id=str(row["family_id"]), user_id=str(row["user_id"]),
                         device_id=str(row["device_id"]),
                         expires_at=unix(row["expires_at"]) or 0,
                         used=row["used_at"] is not None, revoked=row["revoked_at"] is not None,
                         used_at=None if row["used_at"] is None else row["used_at"].timestamp(),
                         successor_hash=row["successor_hash"],
                         successor_sealed=row["successor_sealed"])


def _successor_key(token: str) -> SecretBytes:
    return derive_local_key(token.encode(), salt=b"", label=_SUCCESSOR_INFO)


def seal_successor(token: str, pair: bytes) -> bytes:
    """``pair`` (the encoded new token pair) sealed under a key only ``token`` yields, labelled
    with the token's hash (protocol.local.seal_local)."""
    return seal_local(_successor_key(token), pair, label=token_hash(token))


def open_successor(token: str, sealed: bytes) -> bytes | None:
    """The pair sealed by :func:`seal_successor` for ``token``, or None if it does not open."""
    try:
        return open_local(_successor_key(token), sealed, label=token_hash(token))
    except VerificationError:
        return None


async def rotate(conn: asyncpg.Connection, token: str, *, successor: str, sealed: bytes,
                 now: float) -> None:
    """Mark ``token`` used, replaced by ``successor`` (its pair ``sealed``); the token it
    replaced no longer needs its own sealed pair (its grace is over: the family moved on)."""
    await conn.execute(
        "UPDATE refresh_tokens SET used_at = $2, successor_hash = $3, successor_sealed = $4 "
        "WHERE token_hash = $1", token_hash(token), at(now), token_hash(successor), sealed)
    await conn.execute(
        "UPDATE refresh_tokens SET successor_sealed = NULL WHERE successor_hash = $1",
        token_hash(token))


async def successor_live(conn: asyncpg.Connection, successor_hash: bytes) -> bool:
    """True while the token that replaced a used one is itself unused and unrevoked."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM refresh_tokens WHERE token_hash = $1 "
        "AND used_at IS NULL AND revoked_at IS NULL)", successor_hash))


async def revoke_family(conn: asyncpg.Connection, family_id: str, *, now: float) -> int:
    """Revoke every token of the family; return how many were still live. Sealed successor
    pairs are dropped: a revoked family hands out nothing again."""
    await conn.execute(
        "UPDATE refresh_tokens SET successor_sealed = NULL WHERE family_id = $1 "
        "AND successor_sealed IS NOT NULL", uuid.UUID(family_id))
    result = await conn.execute(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
        uuid.UUID(family_id), at(now))
    return int(result.split()[-1])


async def revoke_for(conn: asyncpg.Connection, *, device_ids: Sequence[str] = (),
                     user_ids: Sequence[str] = (), now: float) -> int:
    """Revoke every live refresh token of these devices and users."""
    result = await conn.execute(
        "UPDATE refresh_tokens SET revoked_at = $3 WHERE revoked_at IS NULL "
        "AND (device_id = ANY($1::uuid[]) OR user_id = ANY($2::uuid[]))",
        [uuid.UUID(d) for d in device_ids], [uuid.UUID(u) for u in user_ids], at(now))
    return int(result.split()[-1])


async def family_active(conn: asyncpg.Connection, family_id: str) -> bool:
    """False once the family was revoked (logout, refresh reuse, revocation): the access
    tokens issued under it stop working at once, not only at their expiry."""
    return bool(await conn.fetchval(
        "SELECT NOT EXISTS (SELECT 1 FROM refresh_tokens WHERE family_id = $1 "
        "AND revoked_at IS NOT NULL)", uuid.UUID(family_id)))


async def registration(conn: asyncpg.Connection, family_id: str) -> tuple[int, bool]:
    """Postgres's clock in microseconds and :func:`family_active`, in one round trip: what a
    websocket registers with once per connection (server/ws.py, server/hub.py). The family is
    read after the connection is listening for its end, so an end that commits in between is
    seen either here or by the event (docs/SECURITY.md "Identity and sessions")."""
    row = await conn.fetchrow(
        "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS now_us, "
        "NOT EXISTS (SELECT 1 FROM refresh_tokens WHERE family_id = $1 "
        "AND revoked_at IS NOT NULL) AS active", uuid.UUID(family_id))
    assert row is not None
    return int(row["now_us"]), bool(row["active"])
