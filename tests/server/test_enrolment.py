"""Provisioning by IT and enrolment of a first device (server/provisioning.py,
server/enrolment.py), through a real relay."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol.keys import OrganisationKey
from server import audit
from tests.identity_world import World, identity_world
from tests.server.test_http_edge import assert_problem


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, orgs=("st-elsewhere", "county-general"),
                              lockout_address_failures=4) as w:
        yield w


async def test_provisioning_reports_each_row_and_bad_rows_do_not_stop_good_ones(
        world: World) -> None:
    org = world.org
    good = org.user("amy.ortho")
    forged = org.user("eve.forged", signer=OrganisationKey.generate())
    stranger = world.orgs["county-general"].user("bob.county")
    unknown_org = type(org)("not-trusted").user("carl.nowhere")
    expired = org.user("dan.expired", not_before=1, not_after=1_000_000_000)
    results = await world.provision(good, forged, stranger, unknown_org, expired)
    assert [(r["index"], r["ok"], r.get("code")) for r in results] == [
        (0, True, None), (1, False, "certificate_invalid"), (2, True, None),
        (3, False, "certificate_untrusted"), (4, False, "certificate_expired")]
    assert results[0]["user_id"] == good.user_id
    dup_login = org.user("amy.ortho")
    dup_id = org.user("amy.again", user_id=good.user_id)
    results = await world.provision(dup_login, dup_id, org.user("eve.fine"))
    assert [(r["ok"], r.get("code")) for r in results] == [
        (False, "conflict"), (False, "conflict"), (True, None)]


async def test_admin_routes_need_an_admin_token(world: World) -> None:
    r = await world.http.post("/v1/admin/users", json={"users": []})
    assert_problem(r, 401, "unauthenticated")
    r = await world.http.get("/v1/admin/users", headers={"authorization": "Bearer nope"})
    assert_problem(r, 401, "token_invalid")


async def test_fetch_returns_the_sealed_package_and_is_audited(world: World) -> None:
    amy = world.org.user("amy.ortho")
    await world.provision(amy)
    r = await world.http.post("/v1/enrol/fetch", json={"enrolment_token": amy.token_b64})
    assert r.status_code == 200, r.text
    assert r.json()["user_certificate"] == amy.cert
    assert r.json()["sealed_identity"].startswith("TEJQV")  # b64url of b"LBPW"
    conn = await world.db()
    try:
        rows = await audit.rows(conn, event_prefix="enrol.fetch")
    finally:
        await conn.close()
    assert [(r.subject_id, r.outcome) for r in rows] == [(amy.user_id, "ok")]


async def test_enrolment_code_wrong_reused_and_expired(world: World) -> None:
    amy, ben = world.org.user("amy.ortho"), world.org.user("ben.ortho")
    await world.provision(amy)
    await world.provision(ben, enrolment_expires_at=int(__import__("time").time()) + 2)
    wrong = world.org.user("not.provisioned")
    assert_problem(await world.http.post("/v1/enrol/fetch",
                                         json={"enrolment_token": wrong.token_b64}),
                   400, "enrolment_code_invalid")
    assert_problem(await world.enrol(wrong.device(), token=wrong.token_b64), 400,
                   "enrolment_code_invalid")
    assert (await world.enrol(amy.device())).status_code == 200
    assert_problem(await world.enrol(amy.device()), 409, "enrolment_code_used")
    assert_problem(await world.http.post("/v1/enrol/fetch",
                                         json={"enrolment_token": amy.token_b64}),
                   409, "enrolment_code_used")
    world.clock.advance(2.1)  # the relay's clock: the code's two seconds have passed
    assert_problem(await world.enrol(ben.device()), 410, "enrolment_code_expired")


async def test_wrong_codes_are_rate_limited_per_address(world: World) -> None:
    for _ in range(4):
        token = world.org.user("x.y").token_b64
        assert_problem(await world.http.post("/v1/enrol/fetch",
                                             json={"enrolment_token": token}),
                       400, "enrolment_code_invalid")
    amy = world.org.user("amy.ortho")
    await world.provision(amy)
    r = await world.http.post("/v1/enrol/fetch", json={"enrolment_token": amy.token_b64})
    body = assert_problem(r, 429, "rate_limited")
    assert body["retry_after"]


async def test_device_certificate_signed_by_another_user_is_refused(world: World) -> None:
    amy, ben = world.org.user("amy.ortho"), world.org.user("ben.ortho")
    await world.provision(amy)
    forged = amy.device(signer=ben.identity)
    assert_problem(await world.enrol(forged), 422, "certificate_invalid")


async def test_weak_password_and_bad_prekey_batches_are_refused(world: World) -> None:
    amy = world.org.user("amy.ortho")
    await world.provision(amy)
    device = amy.device()
    body = assert_problem(await world.enrol(device, password="password1234"), 422,
                          "password_too_weak")
    assert "common" in str(body["detail"])
    assert_problem(await world.enrol(device, password="short"), 422, "password_too_weak")
    assert_problem(await world.enrol(device, prekeys=101), 413, "prekey_batch_too_large")
    r = await world.http.post("/v1/enrol/complete", json={
        "enrolment_token": amy.token_b64, "device_certificate": device.cert,
        "signed_prekey": device.signed_prekey(),
        "one_time_prekeys": device.one_time(1, 3) + device.one_time(2, 1),
        "password": "correct horse battery staple"})
    assert_problem(r, 409, "prekey_duplicate")
    other = amy.device()
    r = await world.http.post("/v1/enrol/complete", json={
        "enrolment_token": amy.token_b64, "device_certificate": device.cert,
        "signed_prekey": device.signed_prekey(), "one_time_prekeys": other.one_time(1, 2),
        "password": "correct horse battery staple"})
    assert_problem(r, 422, "certificate_invalid")  # prekeys signed by another device
    # Nothing of the refused attempts was stored: the code still works.
    assert (await world.enrol(device)).status_code == 200


async def test_concurrent_completions_one_wins_the_other_gets_code_used(world: World) -> None:
    amy = world.org.user("amy.ortho")
    await world.provision(amy)
    results = await asyncio.gather(world.enrol(amy.device()), world.enrol(amy.device()))
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409], [r.text for r in results]
    loser = next(r for r in results if r.status_code == 409)
    assert loser.json()["code"] == "enrolment_code_used"
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM devices WHERE user_id = $1",
                                   uuid.UUID(amy.user_id)) == 1
        assert await conn.fetchval("SELECT status FROM users WHERE user_id = $1",
                                   uuid.UUID(amy.user_id)) == "active"
        pw = await conn.fetchval("SELECT password_hash FROM users WHERE user_id = $1",
                                 uuid.UUID(amy.user_id))
        assert pw.startswith("$argon2id$")
    finally:
        await conn.close()


async def test_enrolment_expiry_is_capped_by_the_setting(world: World) -> None:
    amy = world.org.user("amy.ortho")
    import time

    await world.provision(amy, enrolment_expires_at=int(time.time()) + 30 * 86400)
    r = await world.http.post("/v1/enrol/fetch", json={"enrolment_token": amy.token_b64})
    assert r.json()["expires_at"] <= time.time() + 72 * 3600 + 5
