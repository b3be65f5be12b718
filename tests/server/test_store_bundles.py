"""Recipient key bundles (server/store/bundles.py), the one answer of the thread's recipients,
the record gateways and the key directory, against the real Postgres."""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

from protocol.api import DeviceBundle, UserDevices
from server.store import bundles, prekeys
from tests.server.test_store_threads import NOW, add_device, add_user


async def _device(conn: asyncpg.Connection, user_id: str, *, minutes: int,
                  status: str = "active", prekey: str | None = None) -> str:
    """A device created ``minutes`` after NOW with a certificate naming it (and its prekey)."""
    did = await add_device(conn, user_id, status=status)
    await conn.execute("UPDATE devices SET created_at = $2, device_certificate = $3 "
                       "WHERE device_id = $1", did, NOW + dt.timedelta(minutes=minutes),
                       f"cert-{did}")
    if prekey is not None:
        await prekeys.set_signed(conn, did, 1, prekey, now=NOW.timestamp())
    return did


async def _certificate(conn: asyncpg.Connection, user_id: str) -> str:
    await conn.execute("UPDATE users SET user_certificate = $2 WHERE user_id = $1", user_id,
                       f"user-{user_id}")
    return f"user-{user_id}"


async def test_a_users_bundle_holds_each_active_device_oldest_first_with_its_prekey(
        conn: asyncpg.Connection) -> None:
    ana = await add_user(conn)
    cert = await _certificate(conn, ana)
    newer = await _device(conn, ana, minutes=5)
    older = await _device(conn, ana, minutes=1, prekey="signed-prekey")
    await _device(conn, ana, minutes=3, status="revoked")
    assert await bundles.key_bundles(conn, user_ids=[ana]) == [UserDevices(
        user_certificate=cert, devices=[
            DeviceBundle(device_certificate=f"cert-{older}", signed_prekey="signed-prekey"),
            DeviceBundle(device_certificate=f"cert-{newer}", signed_prekey=None)])]


async def test_suspended_users_and_users_without_an_active_device_have_no_bundle(
        conn: asyncpg.Connection) -> None:
    suspended = await add_user(conn, status="suspended")
    await _device(conn, suspended, minutes=1)
    revoked_only = await add_user(conn)
    gone = await _device(conn, revoked_only, minutes=1, status="revoked")
    assert await bundles.key_bundles(conn, user_ids=[suspended, revoked_only]) == []
    assert await bundles.key_bundles(conn, device_ids=[gone]) == []
    assert await bundles.key_bundles(conn) == []


async def test_named_devices_are_bundled_alone_grouped_by_user_in_user_id_order(
        conn: asyncpg.Connection) -> None:
    a, b = sorted([await add_user(conn), await add_user(conn)], key=uuid.UUID)
    cert_a, cert_b = await _certificate(conn, a), await _certificate(conn, b)
    b1 = await _device(conn, b, minutes=1)
    await _device(conn, b, minutes=2)  # not named
    a1, a2 = await _device(conn, a, minutes=4), await _device(conn, a, minutes=3)
    suspended = await add_user(conn, status="suspended")
    s1 = await _device(conn, suspended, minutes=1)
    found = await bundles.key_bundles(conn, device_ids=[b1, a1, a2, s1, str(uuid.uuid4())])
    assert found == [
        UserDevices(user_certificate=cert_a, devices=[
            DeviceBundle(device_certificate=f"cert-{a2}", signed_prekey=None),
            DeviceBundle(device_certificate=f"cert-{a1}", signed_prekey=None)]),
        UserDevices(user_certificate=cert_b, devices=[
            DeviceBundle(device_certificate=f"cert-{b1}", signed_prekey=None)])]
