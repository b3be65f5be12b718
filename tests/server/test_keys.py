"""The key directory (server/keydir.py) and device request authentication (server/authn.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest

from protocol.canonical import peek_compact
from protocol.certs import DeviceCertificate
from protocol.model import DeviceKind
from tests.identity_world import World, identity_world
from tests.server.test_http_edge import assert_problem


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, db_pool_max=12, max_devices_per_user=2) as w:
        yield w


# --- authentication ---------------------------------------------------------------------------


async def test_proof_signed_by_another_device_key_is_token_device_mismatch(world: World) -> None:
    amy = world.org.user("amy.ortho")
    device = await world.onboard(amy)
    other = amy.device()
    assert device.access_token
    headers = device.proof("GET", "/v1/keys/count", device.access_token, signer=other.keys)
    assert_problem(await world.http.get("/v1/keys/count", headers=headers), 401,
                   "token_device_mismatch")
    headers = {"authorization": f"Bearer {device.access_token}"}  # no proof at all
    assert_problem(await world.http.get("/v1/keys/count", headers=headers), 401,
                   "token_device_mismatch")
    stale = device.proof("GET", "/v1/keys/count", device.access_token, at=int(time.time()) - 600)
    assert_problem(await world.http.get("/v1/keys/count", headers=stale), 401,
                   "token_device_mismatch")
    wrong_path = device.proof("GET", "/v1/directory", device.access_token)
    assert_problem(await world.http.get("/v1/keys/count", headers=wrong_path), 401,
                   "token_device_mismatch")


async def test_forged_tokens_get_their_exact_codes_over_http(world: World) -> None:
    device = await world.onboard(world.org.user("amy.ortho"))
    assert device.access_token
    payload = jwt.decode(device.access_token, options={"verify_signature": False})

    def b64(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    none_token = f"{b64({'alg': 'none'})}.{b64(payload)}."
    hs_token = jwt.encode(payload, "secret-of-32-bytes-at-least-ok!!", algorithm="HS256")
    for token in (none_token, hs_token):
        headers = device.proof("GET", "/v1/keys/count", token)
        assert_problem(await world.http.get("/v1/keys/count", headers=headers), 401,
                       "token_invalid")
    headers = device.proof("GET", "/v1/keys/count", world.admin_token)
    assert_problem(await world.http.get("/v1/keys/count", headers=headers), 401,
                   "token_audience")
    headers = {"authorization": f"Bearer {device.access_token}"}
    assert_problem(await world.http.get("/v1/admin/users", headers=headers), 401,
                   "token_audience")
    assert_problem(await world.http.get("/v1/keys/count"), 401, "unauthenticated")


async def test_an_access_token_used_by_another_device_is_token_device_mismatch(
        world: World) -> None:
    amy = world.org.user("amy.ortho")
    phone = await world.onboard(amy)
    ben = world.org.user("ben.ortho")
    bens = await world.onboard(ben)
    assert phone.access_token
    # Ben's device presents Amy's phone's token with its own proof.
    headers = bens.proof("GET", "/v1/keys/count", phone.access_token)
    assert_problem(await world.http.get("/v1/keys/count", headers=headers), 401,
                   "token_device_mismatch")


# --- keys ---------------------------------------------------------------------------------------


async def test_user_devices_lists_certificates_and_signed_prekeys(world: World) -> None:
    amy = world.org.user("amy.ortho")
    phone = await world.onboard(amy)
    ben = await world.onboard(world.org.user("ben.ortho"))
    r = await world.call(ben, "GET", f"/v1/users/{amy.user_id}/devices")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_certificate"] == amy.cert
    assert [d["device_certificate"] for d in body["devices"]] == [phone.cert]
    assert body["devices"][0]["signed_prekey"]
    assert_problem(await world.call(ben, "GET", f"/v1/users/{world.org.user('x.y').user_id}"
                                    "/devices"), 404, "not_found")


async def test_concurrent_claims_never_hand_out_a_prekey_twice(world: World) -> None:
    amy = world.org.user("amy.ortho")
    await world.onboard(amy, prekeys=10)
    ben = await world.onboard(world.org.user("ben.ortho"))
    listing = (await world.call(ben, "GET", f"/v1/users/{amy.user_id}/devices")).json()
    target = peek_compact(listing["devices"][0]["device_certificate"],
                          DeviceCertificate).device_id
    results = await asyncio.gather(*(
        world.call(ben, "POST", "/v1/keys/claim", json={"devices": [target]})
        for _ in range(20)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    one_time = [r.json()["keys"][0]["one_time_prekey"] for r in results]
    handed = [k for k in one_time if k is not None]
    assert len(handed) == 10 and len(set(handed)) == 10
    assert one_time.count(None) == 10
    assert all(r.json()["keys"][0]["signed_prekey"] for r in results)


async def test_claim_of_unknown_or_revoked_devices_is_not_found_naming_them(
        world: World) -> None:
    amy = world.org.user("amy.ortho")
    phone = await world.onboard(amy)
    ben = await world.onboard(world.org.user("ben.ortho"))
    ghost = world.org.user("ghost.user").device().device_id
    r = await world.call(ben, "POST", "/v1/keys/claim",
                         json={"devices": [phone.device_id, ghost]})
    body = assert_problem(r, 404, "not_found")
    assert body["extra"] == {"device_ids": [ghost]}
    assert (await world.revoke(world.org, 1, devices=(phone.device_id,))).status_code == 200
    r = await world.call(ben, "POST", "/v1/keys/claim", json={"devices": [phone.device_id]})
    assert_problem(r, 404, "not_found")


async def test_prekey_upload_reports_the_count_and_refuses_bad_batches(world: World) -> None:
    amy = world.org.user("amy.ortho")
    phone = await world.onboard(amy, prekeys=5)
    r = await world.call(phone, "POST", "/v1/keys/one-time",
                         json={"prekeys": phone.one_time(100, 10)})
    assert r.status_code == 200, r.text
    assert r.json() == {"remaining": 15, "low_water": 20, "target": 100}
    r = await world.call(phone, "POST", "/v1/keys/one-time",
                         json={"prekeys": phone.one_time(200, 101)})
    assert_problem(r, 413, "prekey_batch_too_large")
    r = await world.call(phone, "POST", "/v1/keys/one-time",
                         json={"prekeys": phone.one_time(300, 2) + phone.one_time(300, 1)})
    assert_problem(r, 409, "prekey_duplicate")
    r = await world.call(phone, "POST", "/v1/keys/one-time",
                         json={"prekeys": phone.one_time(1, 1)})  # id uploaded at enrolment
    assert_problem(r, 409, "prekey_duplicate")
    r = await world.call(phone, "POST", "/v1/keys/one-time",
                         json={"prekeys": amy.device().one_time(400, 1)})
    assert_problem(r, 422, "certificate_invalid")
    assert (await world.call(phone, "GET", "/v1/keys/count")).json()["remaining"] == 15
    r = await world.call(phone, "PUT", "/v1/keys/signed-prekey",
                         json={"signed_prekey": phone.signed_prekey(2)})
    assert r.status_code == 204


async def test_directory_finds_active_credentialed_users_only(world: World) -> None:
    org = world.org
    amy = org.user("amy.ortho", display_name="Dr Amy Bone", specialty="Orthopaedics",
                   department="Trauma")
    await world.onboard(amy)
    pending = org.user("pat.pending", display_name="Dr Pat Bone")
    await world.provision(pending)
    me = await world.onboard(org.user("ben.ed", display_name="Dr Ben Emergency",
                                      roles=("ed_registrar",)))
    for q in ("bone", "ORTHO", "trauma", "oncall"):
        r = await world.call(me, "GET", f"/v1/directory?q={q}")
        assert r.status_code == 200, r.text
        assert [u["user_id"] for u in r.json()["users"]] == [amy.user_id], q
    assert r.json()["users"][0] == {
        "user_id": amy.user_id, "org_id": org.org_id, "login": "amy.ortho",
        "display_name": "Dr Amy Bone",
        "roles": ["orthopaedics_oncall"], "specialty": "Orthopaedics", "department": "Trauma"}
    # LIKE wildcards in q are literal characters, not patterns.
    assert (await world.call(me, "GET", "/v1/directory?q=%25%25")).json()["users"] == []
    assert (await world.call(me, "GET", "/v1/directory?q=__")).json()["users"] == []
    assert_problem(await world.call(me, "GET", "/v1/directory?q=a"), 422, "validation_failed")
    assert_problem(await world.call(me, "GET", "/v1/directory?q=" + "a" * 65), 422,
                   "validation_failed")
    assert (await world.revoke(org, 1, users=(amy.user_id,))).status_code == 200
    assert (await world.call(me, "GET", "/v1/directory?q=bone")).json()["users"] == []


async def test_device_limit_is_enforced_at_pairing(world: World) -> None:
    # max_devices_per_user=2 in this module's relay
    from tests.server.test_pairing import pair

    amy = world.org.user("amy.ortho")
    phone = await world.onboard(amy)
    assert (await pair(world, phone, DeviceKind.DESKTOP)).status_code == 204
    r = await pair(world, phone, DeviceKind.DESKTOP)
    assert_problem(r, 409, "device_limit")
