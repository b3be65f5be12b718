"""Re-issuing an enrolment code (POST /v1/admin/users/{user_id}/enrolment, server/provisioning.py):
only for a user who never enrolled, the certificate and every unused code replaced in one
transaction, the expiry capped, audited; every refusal leaves the user as it was."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol.canonical import b64url_encode
from protocol.certs import issue_user_certificate
from protocol.keys import OrganisationKey
from server import audit
from tests.identity_world import User, World, identity_world
from tests.server.test_http_edge import assert_problem

TTL = 48 * 3600


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, orgs=("st-elsewhere", "county-general"),
                              enrolment_code_ttl=TTL) as w:
        yield w


def _body(new: User, *, expires_in: int = 24 * 3600) -> dict[str, Any]:
    row = new.provision_row(expires_in=expires_in)
    del row["login"]
    return row


async def _reissue(world: World, user_id: str, body: object, *,
                   headers: dict[str, str] | None = None) -> Any:
    return await world.http.post(f"/v1/admin/users/{user_id}/enrolment", json=body,
                                 headers=world.admin_headers() if headers is None else headers)


async def _state(world: World, user_id: str) -> tuple[Any, ...]:
    """Everything a refused re-issue must leave alone."""
    conn = await world.db()
    try:
        user = await conn.fetchrow("SELECT user_certificate, identity_key, status FROM users "
                                   "WHERE user_id = $1", uuid.UUID(user_id))
        codes = await conn.fetch("SELECT token_hash, expires_at, used_at FROM enrolment_codes "
                                 "WHERE user_id = $1 ORDER BY token_hash", uuid.UUID(user_id))
    finally:
        await conn.close()
    return tuple(user), tuple(tuple(c) for c in codes)


async def _provision(world: World, user: User) -> None:
    (result,) = await world.provision(user)
    assert result["ok"], result


async def _enrolled_with(world: World, new: User) -> tuple[Any, dict[str, Any]]:
    """A device enrolled and logged in with ``new``'s code: the device and the user's detail,
    active, the code used, the new certificate held."""
    device = new.device()
    r = await world.enrol(device)
    assert r.status_code == 200, r.text
    await world.login(device)
    detail: dict[str, Any] = (await world.http.get(f"/v1/admin/users/{new.user_id}",
                                                   headers=world.admin_headers())).json()
    assert detail["user"]["status"] == "active" and detail["enrolment"] == "used"
    assert detail["user_certificate"] == new.cert
    return device, detail


async def test_a_reissued_code_enrols_and_the_old_code_is_enrolment_code_invalid(
        world: World) -> None:
    org = world.org
    amy = org.user("amy.ortho")
    await _provision(world, amy)
    new = org.user("amy.ortho", user_id=amy.user_id)
    r = await _reissue(world, amy.user_id, _body(new))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["user_id"] == amy.user_id and answer["login"] == "amy.ortho"
    assert answer["replaced"] == 1
    assert_problem(await world.http.post("/v1/enrol/fetch",
                                         json={"enrolment_token": amy.token_b64}),
                   400, "enrolment_code_invalid")
    assert_problem(await world.enrol(amy.device()), 400, "enrolment_code_invalid")
    fetched = await world.http.post("/v1/enrol/fetch", json={"enrolment_token": new.token_b64})
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["user_certificate"] == new.cert
    await _enrolled_with(world, new)
    conn = await world.db()
    try:
        rows = await audit.rows(conn, event_prefix="admin.enrolment_reissued")
        assert (await audit.verify(conn)).ok
    finally:
        await conn.close()
    assert [(r.subject_id, r.outcome) for r in rows] == [(amy.user_id, "ok")]
    assert set(rows[0].details) == {"org_id", "enrolment_expires_at", "codes_replaced",
                                    "after_enrolment"}
    assert rows[0].details["after_enrolment"] is False
    assert new.token_hash_b64 not in str(rows[0].details)


async def test_an_expired_code_reissued_enrols_and_the_expiry_is_capped_by_the_ttl(
        world: World) -> None:
    org = world.org
    ben = org.user("ben.ortho")
    await _provision(world, ben)
    await world.execute("UPDATE enrolment_codes SET expires_at = now() - interval '1 hour' "
                        "WHERE user_id = $1", uuid.UUID(ben.user_id))
    assert_problem(await world.enrol(ben.device()), 410, "enrolment_code_expired")
    detail = (await world.http.get(f"/v1/admin/users/{ben.user_id}",
                                   headers=world.admin_headers())).json()
    assert detail["enrolment"] == "expired" and detail["enrolment_expires_at"] < time.time()
    new = org.user("ben.ortho", user_id=ben.user_id)
    before = int(time.time())
    r = await _reissue(world, ben.user_id, _body(new, expires_in=30 * 24 * 3600))
    assert r.status_code == 200, r.text
    assert before + TTL <= r.json()["enrolment_expires_at"] <= int(time.time()) + TTL
    detail = (await world.http.get(f"/v1/admin/users/{ben.user_id}",
                                   headers=world.admin_headers())).json()
    assert detail["enrolment"] == "pending"
    assert detail["enrolment_expires_at"] == r.json()["enrolment_expires_at"]
    r = await world.enrol(new.device())
    assert r.status_code == 200, r.text


async def test_a_user_who_enrolled_is_user_already_enrolled_and_nothing_changes(
        world: World) -> None:
    org = world.org
    cat = org.user("cat.ortho")
    await world.onboard(cat)
    before = await _state(world, cat.user_id)
    new = org.user("cat.ortho", user_id=cat.user_id)
    assert_problem(await _reissue(world, cat.user_id, _body(new)), 409,
                   "user_already_enrolled")
    assert await _state(world, cat.user_id) == before
    assert_problem(await world.enrol(new.device(), token=new.token_b64), 400,
                   "enrolment_code_invalid")


async def test_a_user_whose_every_device_was_revoked_gets_a_new_code_and_a_new_identity_key(
        world: World) -> None:
    """A lost only phone: its identity key was on it, so no device is left to link a new one
    from. Once IT has revoked it, a new code re-keys the user (new identity key and
    certificate); the new phone enrols with it, and a device certificate signed by the old
    key, as the phone's finder could make, no longer chains to the user."""
    org = world.org
    dan = org.user("dan.ortho")
    phone = await world.onboard(dan)
    new = org.user("dan.ortho", user_id=dan.user_id)
    before = await _state(world, dan.user_id)
    assert_problem(await _reissue(world, dan.user_id, _body(new)), 409,
                   "user_already_enrolled")  # the phone is still active: link from it
    assert await _state(world, dan.user_id) == before
    r = await world.revoke(org, 1, devices=(phone.device_id,))
    assert r.status_code == 200, r.text
    r = await _reissue(world, dan.user_id, _body(new))
    assert r.status_code == 200, r.text
    assert_problem(await world.enrol(dan.device(), token=new.token_b64), 422,
                   "certificate_invalid")  # signed by the lost phone's identity key
    again, detail = await _enrolled_with(world, new)
    assert [(d["device_id"], d["status"]) for d in detail["devices"]] == [
        (phone.device_id, "revoked"), (again.device_id, "active")]
    conn = await world.db()
    try:
        rows = await audit.rows(conn, event_prefix="admin.enrolment_reissued")
    finally:
        await conn.close()
    assert [(r.subject_id, r.details["after_enrolment"]) for r in rows] == [(dan.user_id, True)]


async def test_a_suspended_user_is_user_suspended_and_nothing_changes(world: World) -> None:
    org = world.org
    dan = org.user("dan.ortho")
    await _provision(world, dan)
    r = await world.revoke(org, 1, users=(dan.user_id,))
    assert r.status_code == 200, r.text
    before = await _state(world, dan.user_id)
    new = org.user("dan.ortho", user_id=dan.user_id)
    assert_problem(await _reissue(world, dan.user_id, _body(new)), 403, "user_suspended")
    assert await _state(world, dan.user_id) == before


async def test_an_unknown_user_is_not_found(world: World) -> None:
    ghost = world.org.user("ghost")
    assert_problem(await _reissue(world, ghost.user_id, _body(ghost)), 404, "not_found")
    assert_problem(await _reissue(world, "not-a-uuid", _body(ghost)), 404, "not_found")


async def test_without_or_with_a_forged_admin_token_is_401(world: World) -> None:
    org = world.org
    eve = org.user("eve.ortho")
    await _provision(world, eve)
    before = await _state(world, eve.user_id)
    new = org.user("eve.ortho", user_id=eve.user_id)
    assert_problem(await _reissue(world, eve.user_id, _body(new), headers={}), 401,
                   "unauthenticated")
    head, payload, sig = world.admin_token.split(".")
    forged = ".".join((head, payload, sig[::-1]))
    assert_problem(await _reissue(world, eve.user_id, _body(new),
                                  headers={"authorization": f"Bearer {forged}"}),
                   401, "token_invalid")
    phone = await world.onboard(org.user("fay.ortho"))
    assert phone.access_token is not None
    assert_problem(await _reissue(world, eve.user_id, _body(new),
                                  headers={"authorization": f"Bearer {phone.access_token}"}),
                   401, "token_audience")
    assert await _state(world, eve.user_id) == before


@pytest.mark.parametrize("change", [
    {"unexpected": 1}, {"enrolment_expires_at": "tomorrow"}, {"user_certificate": None},
    {"enrolment_token_hash": "not base64url!"}, {"sealed_identity": "A" * 9000},
])
async def test_a_malformed_body_is_validation_failed(world: World,
                                                     change: dict[str, Any]) -> None:
    org = world.org
    gil = org.user("gil.ortho")
    await _provision(world, gil)
    before = await _state(world, gil.user_id)
    body = {**_body(org.user("gil.ortho", user_id=gil.user_id)), **change}
    assert_problem(await _reissue(world, gil.user_id, body), 422, "validation_failed")
    missing = _body(org.user("gil.ortho", user_id=gil.user_id))
    del missing["sealed_identity"]
    assert_problem(await _reissue(world, gil.user_id, missing), 422, "validation_failed")
    short = {**_body(org.user("gil.ortho", user_id=gil.user_id)),
             "enrolment_token_hash": b64url_encode(b"short")}
    assert_problem(await _reissue(world, gil.user_id, short), 422, "validation_failed")
    past = _body(org.user("gil.ortho", user_id=gil.user_id), expires_in=-60)
    assert_problem(await _reissue(world, gil.user_id, past), 422, "validation_failed")
    assert await _state(world, gil.user_id) == before


async def test_a_certificate_of_another_user_org_or_signer_is_refused_and_nothing_changes(
        world: World) -> None:
    org, other_org = world.orgs["st-elsewhere"], world.orgs["county-general"]
    hal = org.user("hal.ortho")
    await _provision(world, hal)
    before = await _state(world, hal.user_id)
    cases = [
        (org.user("hal.ortho"), 422, "certificate_invalid"),  # another user id
        (other_org.user("hal.ortho", user_id=hal.user_id), 422, "certificate_invalid"),
        (org.user("hal.ortho", user_id=hal.user_id, signer=OrganisationKey.generate()),
         422, "certificate_invalid"),  # not signed by the organisation key
        (org.user("hal.ortho", user_id=hal.user_id, not_after=int(time.time()) - 10,
                  not_before=int(time.time()) - 3600), 422, "certificate_expired"),
    ]
    for new, status, code in cases:
        assert_problem(await _reissue(world, hal.user_id, _body(new)), status, code)
        assert await _state(world, hal.user_id) == before
    fresh = org.user("hal.ortho", user_id=hal.user_id)
    for replayed in (hal.cert, issue_user_certificate(msgspec.structs.replace(
            fresh.body, issued_at=hal.body.issued_at - 3600), org.key)):  # held, or older
        body = {**_body(fresh), "user_certificate": replayed}
        assert_problem(await _reissue(world, hal.user_id, body), 409, "conflict")
        assert await _state(world, hal.user_id) == before
    held = (await world.http.get(f"/v1/admin/users/{hal.user_id}",
                                 headers=world.admin_headers())).json()["user_certificate"]
    assert held == hal.cert
    fetched = await world.http.post("/v1/enrol/fetch", json={"enrolment_token": hal.token_b64})
    assert fetched.status_code == 200, fetched.text  # the old code still works


async def test_a_reissue_racing_an_enrolment_lets_exactly_one_of_them_through(
        world: World) -> None:
    org = world.org
    for i in range(6):
        user = org.user(f"race{i}.ortho")
        await _provision(world, user)
        new = org.user(user.login, user_id=user.user_id)
        enrolled, reissued = await asyncio.gather(world.enrol(user.device()),
                                                  _reissue(world, user.user_id, _body(new)))
        if enrolled.status_code == 200:
            assert_problem(reissued, 409, "user_already_enrolled")
        else:
            assert_problem(enrolled, 400, "enrolment_code_invalid")
            assert reissued.status_code == 200, reissued.text
            r = await world.enrol(new.device())
            assert r.status_code == 200, r.text
