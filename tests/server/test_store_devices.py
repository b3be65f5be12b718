"""The relay's device records (server/store/devices.py) on a real database: one device per id,
revocation by an organisation's list touching only its own users' active devices and marking
for wipe only those the list says, and what counts as active."""

from __future__ import annotations

import time

import asyncpg
import pytest

from protocol.certs import DeviceCertificate
from protocol.model import DeviceKind
from server.errors import Conflict
from server.store import devices
from tests.identity_world import Device, Org, User
from tests.server.test_store_users import stored

NOW = time.time()


async def enrolled(conn: asyncpg.Connection, user: User,
                   kind: DeviceKind = DeviceKind.MOBILE) -> Device:
    device = user.device(kind)
    await devices.insert_device(conn, body_of(device), device.cert, now=NOW)
    return device


def body_of(device: Device) -> DeviceCertificate:
    return DeviceCertificate(
        v=1, device_id=device.device_id, user_id=device.user.user_id,
        org_id=device.user.org.org_id, kind=device.kind, signing_key=device.keys.signing.public,
        dh_key=device.keys.dh.public, issued_at=int(NOW) - 60, not_after=int(NOW) + 86400)


async def test_a_device_id_is_taken_once_and_read_back(conn: asyncpg.Connection) -> None:
    amy = await stored(conn, Org("st-elsewhere").user("amy"))
    phone = await enrolled(conn, amy)
    with pytest.raises(Conflict):
        await devices.insert_device(conn, body_of(phone), phone.cert, now=NOW)
    got = await devices.get_device(conn, phone.device_id)
    assert got is not None
    assert (got.user_id, got.status, got.signing_key, got.wipe_pending) == (
        amy.user_id, "active", phone.keys.signing.public, False)
    assert await devices.get_device(conn, "not-a-uuid") is None
    assert list(await devices.get_devices(conn, [phone.device_id])) == [phone.device_id]


async def test_a_list_revokes_only_its_own_users_active_devices_and_marks_the_wipes(
        conn: asyncpg.Connection) -> None:
    org, other = Org("st-elsewhere"), Org("county-general")
    amy = await stored(conn, org.user("amy"))
    fay = await stored(conn, other.user("fay"))
    phone, desk = await enrolled(conn, amy), await enrolled(conn, amy, DeviceKind.DESKTOP)
    fays = await enrolled(conn, fay)
    named = [phone.device_id, desk.device_id, fays.device_id]
    revoked = await devices.revoke_devices(conn, named, wipe=[phone.device_id],
                                           org_id=org.org_id, now=NOW)
    assert revoked == sorted([phone.device_id, desk.device_id])  # not another org's device
    state = await devices.get_devices(conn, named)
    assert {d: (r.status, r.wipe_pending) for d, r in state.items()} == {
        phone.device_id: ("revoked", True), desk.device_id: ("revoked", False),
        fays.device_id: ("active", False)}
    assert await devices.count_active(conn, amy.user_id) == 0
    assert await devices.active_device_ids(conn, [amy.user_id, fay.user_id]) == [fays.device_id]
    assert await devices.users_with_active_devices(conn, [amy.user_id, fay.user_id]) == {
        fay.user_id}
    assert await devices.users_with_active_devices(conn, []) == set()
    # The next list names them again: nothing newly revoked, the wipe mark unchanged.
    assert await devices.revoke_devices(conn, named, org_id=org.org_id, now=NOW) == []
    assert (await devices.get_devices(conn, [phone.device_id]))[phone.device_id].wipe_pending
    await devices.clear_wipe_pending(conn, phone.device_id)
    assert not (await devices.get_devices(conn, [phone.device_id]))[phone.device_id].wipe_pending
    assert [d.device_id for d in await devices.list_devices(conn, amy.user_id)] == [
        d.device_id for d in sorted((phone, desk), key=lambda d: d.device_id)]
    assert await devices.list_devices(conn, amy.user_id, active_only=True) == []
