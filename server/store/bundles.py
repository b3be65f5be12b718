"""Recipient key bundles: what a sender seals a message for.

A bundle is a user's certificate and, for each of the user's active devices (oldest first), the
device certificate and its current signed prekey (None before the device uploaded one). Only
active devices of active users are ever bundled. The thread's recipients
(``GET /v1/threads/{id}/recipients``), the organisation's record gateways
(``GET /v1/filing/gateways``) and the key directory (``GET /v1/keys/{user}``) all answer from
:func:`key_bundles`, so they cannot disagree about whose keys a message is sealed for (the
client verifies every chain again, docs/PROTOCOL.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from protocol.api import DeviceBundle, UserDevices

__all__ = ["key_bundles"]


async def key_bundles(conn: asyncpg.Connection, *, user_ids: Sequence[str] = (),
                      device_ids: Sequence[str] = ()) -> list[UserDevices]:
    """Bundles of the active users among ``user_ids`` (all their active devices) and of the
    active devices among ``device_ids`` (of active users), one per user in user id order. A user
    without an active device has no bundle."""
    rows = await conn.fetch(
        "SELECT u.user_id, u.user_certificate, d.device_certificate, s.prekey "
        "FROM users u JOIN devices d ON d.user_id = u.user_id AND d.status = 'active' "
        "LEFT JOIN signed_prekeys s ON s.device_id = d.device_id "
        "WHERE u.status = 'active' "
        "AND (u.user_id = ANY($1::uuid[]) OR d.device_id = ANY($2::uuid[])) "
        "ORDER BY u.user_id, d.created_at, d.device_id",
        [uuid.UUID(u) for u in user_ids], [uuid.UUID(d) for d in device_ids])
    certificates: dict[uuid.UUID, str] = {}
    devices: dict[uuid.UUID, list[DeviceBundle]] = {}
    for r in rows:
        certificates[r["user_id"]] = r["user_certificate"]
        devices.setdefault(r["user_id"], []).append(DeviceBundle(
            device_certificate=r["device_certificate"], signed_prekey=r["prekey"]))
    return [UserDevices(user_certificate=certificates[u], devices=devices[u])
            for u in certificates]
