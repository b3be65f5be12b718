"""Pairing offers: a new device's public keys, waiting (for a few minutes) for an enrolled
device of the same user to certify them. Keyed by SHA-256 of the pairing token, which only the
two devices know; the MACs (keyed with the pairing secret) let each device tell that the other's
message was not swapped by the relay."""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg

from protocol.errors import ErrorCode
from server.errors import Conflict, NotFound
from server.store import at, unix

__all__ = ["PairingRecord", "complete", "create_offer", "get_offer"]


@dataclasses.dataclass(frozen=True)
class PairingRecord:
    token_hash: bytes
    device_id: str
    kind: str
    signing_key: bytes
    dh_key: bytes
    offer_mac: bytes
    expires_at: int
    user_id: str | None
    device_certificate: str | None
    org_public_key: bytes | None
    result_mac: bytes | None

    @property
    def completed(self) -> bool:
        return self.device_certificate is not None


def _record(row: asyncpg.Record) -> PairingRecord:
    def opt(v: bytes | None) -> bytes | None:
        return None if v is None else bytes(v)

    return PairingRecord(
        token_hash=bytes(row["token_hash"]), device_id=str(row["device_id"]), kind=row["kind"],
        signing_key=bytes(row["signing_key"]), dh_key=bytes(row["dh_key"]),
        offer_mac=bytes(row["offer_mac"]), expires_at=unix(row["expires_at"]) or 0,
        user_id=None if row["user_id"] is None else str(row["user_id"]),
        device_certificate=row["device_certificate"], org_public_key=opt(row["org_public_key"]),
        result_mac=opt(row["result_mac"]))


async def create_offer(conn: asyncpg.Connection, *, token_hash: bytes, device_id: str, kind: str,
                       signing_key: bytes, dh_key: bytes, mac: bytes, now: float,
                       ttl: int) -> int:
    """Store an offer (expired offers are swept first); return its expiry."""
    await conn.execute("DELETE FROM pairings WHERE expires_at <= $1", at(now))
    expires = int(now) + ttl
    try:
        await conn.execute(
            "INSERT INTO pairings (token_hash, device_id, kind, signing_key, dh_key, offer_mac, "
            "created_at, expires_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
            token_hash, uuid.UUID(device_id), kind, signing_key, dh_key, mac, at(now),
            at(expires))
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(detail="this pairing token is already in use") from exc
    return expires


async def get_offer(conn: asyncpg.Connection, token_hash: bytes, *, now: float,
                    for_update: bool = False) -> PairingRecord:
    """The unexpired offer, or pairing_code_invalid."""
    sql = "SELECT * FROM pairings WHERE token_hash = $1 AND expires_at > $2"
    row = await conn.fetchrow(sql + (" FOR UPDATE" if for_update else ""), token_hash, at(now))
    if row is None:
        raise NotFound(ErrorCode.PAIRING_CODE_INVALID, "unknown or expired pairing code")
    return _record(row)


async def complete(conn: asyncpg.Connection, token_hash: bytes, *, user_id: str,
                   device_certificate: str, org_public_key: bytes, mac: bytes,
                   now: float) -> None:
    """Attach the certificate; pairing_code_invalid if another device already did."""
    done = await conn.fetchval(
        "UPDATE pairings SET user_id = $2, device_certificate = $3, org_public_key = $4, "
        "result_mac = $5, completed_at = $6 WHERE token_hash = $1 AND expires_at > $6 "
        "AND device_certificate IS NULL RETURNING true",
        token_hash, uuid.UUID(user_id), device_certificate, org_public_key, mac, at(now))
    if not done:
        raise NotFound(ErrorCode.PAIRING_CODE_INVALID, "pairing already completed or expired")
