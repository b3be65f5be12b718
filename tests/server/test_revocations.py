"""Revocation lists: verified, stored, applied in one transaction and published to every relay
process (server/provisioning.py); served at GET /v1/revocations."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pytest

from protocol.keys import OrganisationKey
from server import audit
from server.events import CHANNEL
from tests.identity_world import World, identity_world
from tests.server.test_http_edge import assert_problem


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, orgs=("st-elsewhere", "county-general")) as w:
        yield w


async def test_a_list_revokes_devices_suspends_users_and_publishes(world: World) -> None:
    org = world.org
    amy, ben = org.user("amy.ortho"), org.user("ben.ortho")
    phone = await world.onboard(amy)
    bens = await world.onboard(ben)
    events: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    listener = await asyncpg.connect(world.dsn)
    await listener.add_listener(CHANNEL, lambda *a: events.put_nowait(json.loads(a[-1])))
    try:
        r = await world.revoke(org, 1, devices=(phone.device_id,), users=(ben.user_id,),
                               wipe=True)
        assert r.status_code == 200, r.text
        assert r.json() == {"org_id": org.org_id, "number": 1,
                            "devices_revoked": [phone.device_id],
                            "users_suspended": [ben.user_id], "users_resumed": [],
                            "unchanged": False}
        got = [await asyncio.wait_for(events.get(), 5) for _ in range(2)]
    finally:
        await listener.close()
    assert {"kind": "revoked", "device_ids": [phone.device_id], "user_ids": [],
            "reason": "device_revoked"} in got
    assert {"kind": "revoked", "device_ids": [], "user_ids": [ben.user_id],
            "reason": "user_suspended"} in got
    assert_problem(await world.call(phone, "GET", "/v1/keys/count"), 403, "device_revoked")
    assert_problem(await world.call(bens, "GET", "/v1/keys/count"), 403, "user_suspended")
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT wipe_pending FROM devices WHERE device_id = $1",
                                   uuid.UUID(phone.device_id))
        rows = await audit.rows(conn, event_prefix="revocation.")
        assert (await audit.verify(conn)).ok
    finally:
        await conn.close()
    assert [(r.event, r.subject_id) for r in rows] == [
        ("revocation.list_applied", org.org_id),
        ("revocation.device_revoked", phone.device_id),
        ("revocation.user_suspended", ben.user_id)]
    served = (await world.http.get("/v1/revocations")).json()["lists"]
    assert len(served) == 1 and world.relay.relay.trust.verify_list(served[0]).number == 1
    # The next list no longer names Ben: he is resumed. The device stays revoked.
    r = await world.revoke(org, 2, devices=(phone.device_id,))
    assert r.json()["users_resumed"] == [ben.user_id]
    await world.login(bens)
    assert_problem(await world.login_response(phone), 403, "device_revoked")


async def test_rollback_and_same_number_different_content_are_refused(world: World) -> None:
    org = world.org
    amy = org.user("amy.ortho")
    await world.onboard(amy)
    assert (await world.revoke(org, 5, users=(amy.user_id,))).status_code == 200
    assert_problem(await world.revoke(org, 4), 409, "conflict")
    assert_problem(await world.revoke(org, 5), 409, "conflict")
    r = await world.http.post("/v1/admin/revocations", headers=world.admin_headers(),
                              json={"revocation_list": (await world.http.get(
                                  "/v1/revocations")).json()["lists"][0]})
    assert r.status_code == 200 and r.json()["unchanged"] is True


async def test_a_list_signed_by_another_key_or_org_is_refused(world: World) -> None:
    org = world.org
    forged = type(org)(org.org_id, OrganisationKey.generate())
    assert_problem(await world.revoke(forged, 1), 422, "certificate_invalid")
    assert_problem(await world.revoke(type(org)("unknown-org"), 1), 422,
                   "certificate_untrusted")
    # An organisation's list only touches its own users and devices.
    other = world.orgs["county-general"]
    amy = org.user("amy.ortho")
    phone = await world.onboard(amy)
    r = await world.revoke(other, 1, devices=(phone.device_id,), users=(amy.user_id,))
    assert r.status_code == 200
    assert r.json()["devices_revoked"] == [] and r.json()["users_suspended"] == []
    lists = (await world.http.get("/v1/revocations")).json()["lists"]
    assert len(lists) == 1


async def test_licence_renewal_takes_a_newer_certificate_for_the_same_key(world: World) -> None:
    import time

    from protocol.certs import issue_user_certificate

    org = world.org
    amy = org.user("amy.ortho")
    phone = await world.onboard(amy)
    renewed_body = msgspec.structs.replace(amy.body, issued_at=int(time.time()),
                                           serial=str(uuid.uuid4()))
    renewed = issue_user_certificate(renewed_body, org.key)
    path = f"/v1/admin/users/{amy.user_id}/certificate"
    r = await world.http.put(path, headers=world.admin_headers(),
                             json={"user_certificate": renewed})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active" and r.json()["devices"] == 1
    r = await world.http.put(path, headers=world.admin_headers(),
                             json={"user_certificate": amy.cert})
    assert_problem(r, 409, "conflict")  # not newer
    other_key = org.user("amy.ortho", user_id=amy.user_id)
    r = await world.http.put(path, headers=world.admin_headers(),
                             json={"user_certificate": other_key.cert})
    assert_problem(r, 422, "certificate_invalid")  # another identity key
    detail = await world.http.get(f"/v1/admin/users/{amy.user_id}",
                                  headers=world.admin_headers())
    assert detail.status_code == 200
    assert detail.json()["user_certificate"] == renewed
    assert detail.json()["enrolment"] == "used"
    assert [d["device_id"] for d in detail.json()["devices"]] == [phone.device_id]
    listing = await world.http.get("/v1/admin/users?q=amy&status=active",
                                   headers=world.admin_headers())
    assert [u["user_id"] for u in listing.json()["users"]] == [amy.user_id]
