"""Devices: each one's certificate (signed by its user's identity key), its public keys and
its status. A revoked device stays revoked for good (docs/ARCHITECTURE.md §4)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

import asyncpg

from protocol.certs import DeviceCertificate
from server.errors import Conflict
from server.store import at, unix

__all__ = [
    "DeviceRecord",
    "active_device_ids",
    "clear_wipe_pending",
    "count_active",
    "get_device",
    "get_devices",
    "insert_device",
    "list_devices",
    "revoke_devices",
    "touch",
    "users_with_active_devices",
]


@dataclasses.dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    user_id: str
    kind: str
    device_certificate: str
    signing_key: bytes
    dh_key: bytes
    status: str  # active | revoked
    wipe_pending: bool
    created_at: int
    last_seen_at: int | None


def _device(row: asyncpg.Record) -> DeviceRecord:
    return DeviceRecord(
        device_id=str(row["device_id"]), user_id=str(row["user_id"]), kind=row["kind"],
        device_certificate=row["device_certificate"], signing_key=bytes(row["signing_key"]),
        dh_key=bytes(row["dh_key"]), status=row["status"], wipe_pending=row["wipe_pending"],
        created_at=unix(row["created_at"]) or 0, last_seen_at=unix(row["last_seen_at"]))


async def insert_device(conn: asyncpg.Connection, cert: DeviceCertificate, token: str, *,
                        now: float) -> None:
    """Register an active device; Conflict if its id is taken."""
    try:
        await conn.execute(
            "INSERT INTO devices (device_id, user_id, kind, device_certificate, signing_key, "
            "dh_key, status, created_at) VALUES ($1,$2,$3,$4,$5,$6,'active',$7)",
            uuid.UUID(cert.device_id), uuid.UUID(cert.user_id), cert.kind.value, token,
            cert.signing_key, cert.dh_key, at(now))
    except asyncpg.UniqueViolationError as exc:
        raise Conflict(detail="a device with this id exists") from exc


async def get_device(conn: asyncpg.Connection, device_id: str) -> DeviceRecord | None:
    try:
        did = uuid.UUID(device_id)
    except ValueError:
        return None
    row = await conn.fetchrow("SELECT * FROM devices WHERE device_id = $1", did)
    return None if row is None else _device(row)


async def get_devices(conn: asyncpg.Connection,
                      device_ids: Sequence[str]) -> dict[str, DeviceRecord]:
    rows = await conn.fetch("SELECT * FROM devices WHERE device_id = ANY($1::uuid[])",
                            [uuid.UUID(d) for d in device_ids])
    return {str(r["device_id"]): _device(r) for r in rows}


async def list_devices(conn: asyncpg.Connection, user_id: str, *,
                       active_only: bool = False) -> list[DeviceRecord]:
    rows = await conn.fetch(
        "SELECT * FROM devices WHERE user_id = $1 AND (NOT $2 OR status = 'active') "
        "ORDER BY created_at, device_id", uuid.UUID(user_id), active_only)
    return [_device(r) for r in rows]


async def count_active(conn: asyncpg.Connection, user_id: str) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM devices WHERE user_id = $1 AND status = 'active'",
        uuid.UUID(user_id)))


async def active_device_ids(conn: asyncpg.Connection, user_ids: Sequence[str]) -> list[str]:
    """The active devices of these users, in id order (where a notice for them is queued)."""
    rows = await conn.fetch(
        "SELECT device_id::text AS d FROM devices WHERE user_id = ANY($1::uuid[]) "
        "AND status = 'active' ORDER BY device_id", [uuid.UUID(u) for u in user_ids])
    return [r["d"] for r in rows]


async def users_with_active_devices(conn: asyncpg.Connection,
                                    user_ids: Sequence[str]) -> set[str]:
    """Those of these users with an active device, the only ones a message can reach."""
    if not user_ids:
        return set()
    rows = await conn.fetch(
        "SELECT DISTINCT user_id::text AS u FROM devices WHERE user_id = ANY($1::uuid[]) "
        "AND status = 'active'", [uuid.UUID(u) for u in user_ids])
    return {r["u"] for r in rows}


async def revoke_devices(conn: asyncpg.Connection, device_ids: Sequence[str], *,
                         wipe: Sequence[str] = (), org_id: str, now: float) -> list[str]:
    """Revoke the named active devices of ``org_id``'s users; return those newly revoked."""
    rows = await conn.fetch(
        "UPDATE devices d SET status = 'revoked', revoked_at = $3, "
        "wipe_pending = d.device_id = ANY($4::uuid[]) FROM users u "
        "WHERE d.user_id = u.user_id AND u.org_id = $2 AND d.status = 'active' "
        "AND d.device_id = ANY($1::uuid[]) RETURNING d.device_id",
        [uuid.UUID(d) for d in device_ids], org_id, at(now), [uuid.UUID(d) for d in wipe])
    return sorted(str(r["device_id"]) for r in rows)


async def clear_wipe_pending(conn: asyncpg.Connection, device_id: str) -> None:
    """The device confirmed its wipe: no order is sent to it again."""
    await conn.execute("UPDATE devices SET wipe_pending = false WHERE device_id = $1",
                       uuid.UUID(device_id))


async def touch(conn: asyncpg.Connection, device_id: str, *, now: float) -> None:
    """Record that the device was seen (login, websocket connect)."""
    await conn.execute("UPDATE devices SET last_seen_at = $2 WHERE device_id = $1",
                       uuid.UUID(device_id), at(now))
