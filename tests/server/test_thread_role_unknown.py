"""A consult addressed to a role nobody in the organisation holds is refused when its thread is
created (404 ``role_unknown``, a detail naming the role), not accepted to reach nobody; a role
the organisation knows, through its rota or a certificate, is accepted even while nobody holding
it has a device (docs/PROTOCOL.md §16.2). Real relay, real Postgres."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.identity_world import Device, World
from tests.server.test_http_edge import assert_problem

ORG, OTHER = "st-elsewhere", "county-general"
pytestmark = pytest.mark.world(orgs=(ORG, OTHER))


async def create(world: World, device: Device, roles: list[str]) -> tuple[str, httpx.Response]:
    tid = str(uuid.uuid4())
    r = await world.call(device, "POST", "/v1/threads", json={
        "thread_id": tid, "users": [], "roles": roles, "priority": "urgent"})
    return tid, r


async def created_audited(world: World) -> int:
    conn = await world.db()
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE event = 'thread.created'")
    finally:
        await conn.close()
    return n


async def refused(world: World, device: Device, roles: list[str]) -> dict[str, Any]:
    """The creation is refused as ``role_unknown`` and leaves nothing: no thread, no roles, no
    members, no ``thread.created`` audit entry (a refusal is not audited)."""
    before = await created_audited(world)
    tid, r = await create(world, device, roles)
    body = assert_problem(r, 404, "role_unknown")
    conn = await world.db()
    try:
        for table in ("threads", "thread_roles", "thread_members"):
            assert await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE thread_id = $1", uuid.UUID(tid)) == 0
    finally:
        await conn.close()
    assert await created_audited(world) == before
    return body


async def accepted(world: World, device: Device, roles: list[str]) -> None:
    tid, r = await create(world, device, roles)
    assert r.status_code == 201, r.text
    assert r.json()["thread_id"] == tid


async def test_a_role_nobody_holds_is_refused_naming_it(world: World) -> None:
    intern = await world.onboard(world.org.user("intern", roles=("foundation_doctor",)))
    body = await refused(world, intern, ["role:cardiology-oncal"])
    assert body["detail"] == ("nobody in this organisation holds the role 'cardiology_oncal' "
                              "and no on-call rota names it")
    assert body["extra"] == {"roles": ["cardiology_oncal"]}


async def test_a_role_known_only_through_a_rota_is_accepted(world: World) -> None:
    """Nobody's certificate holds it: before IT defines its rota it is unknown, after it the
    consult is accepted (no shift yet, so it waits for one, docs/PROTOCOL.md §16.4)."""
    intern = await world.onboard(world.org.user("intern", roles=("foundation_doctor",)))
    await refused(world, intern, ["trauma_oncall"])
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/trauma_oncall",
                             headers=world.admin_headers(), json={})
    assert r.status_code == 200, r.text
    await accepted(world, intern, ["trauma_oncall"])


async def test_a_role_whose_only_holder_has_no_device_yet_is_accepted(world: World) -> None:
    """Provisioned, not enrolled: a known role nobody can be reached through yet, as before."""
    intern = await world.onboard(world.org.user("intern", roles=("foundation_doctor",)))
    await refused(world, intern, ["orthopaedist"])
    (result,) = await world.provision(world.org.user("ortho", roles=("orthopaedist",)))
    assert result["ok"], result
    await accepted(world, intern, ["orthopaedist"])


async def test_a_role_whose_only_holder_is_suspended_is_refused(world: World) -> None:
    intern = await world.onboard(world.org.user("intern", roles=("foundation_doctor",)))
    locum = await world.onboard(world.org.user("locum", roles=("locum_ortho",)))
    await accepted(world, intern, ["locum_ortho"])
    await world.execute("UPDATE users SET status = 'suspended' WHERE user_id = $1",
                        uuid.UUID(locum.user.user_id))
    body = await refused(world, intern, ["locum_ortho"])
    assert body["detail"] == ("nobody in this organisation holds the role 'locum_ortho' "
                              "and no on-call rota names it")


async def test_a_role_of_another_organisation_is_unknown_here(world: World) -> None:
    """County General has a cardiologist and a cardiology rota: neither is St Elsewhere's."""
    (result,) = await world.provision(world.orgs[OTHER].user("cardio", roles=("cardiologist",)))
    assert result["ok"], result
    r = await world.http.put(f"/v1/admin/oncall/{OTHER}/cardiology_oncall",
                             headers=world.admin_headers(), json={})
    assert r.status_code == 200, r.text
    intern = await world.onboard(world.org.user("intern", roles=("foundation_doctor",)))
    body = await refused(world, intern, ["cardiologist", "cardiology_oncall"])
    assert body["detail"] == ("nobody in this organisation holds the roles 'cardiologist', "
                              "'cardiology_oncall' and no on-call rota names them")
    assert body["extra"] == {"roles": ["cardiologist", "cardiology_oncall"]}


async def test_a_known_and_an_unknown_role_are_refused_naming_the_unknown(world: World) -> None:
    intern = await world.onboard(world.org.user("intern", roles=("foundation_doctor",)))
    await world.onboard(world.org.user("ortho", roles=("orthopaedics_oncall",)))
    body = await refused(world, intern, ["orthopaedics_oncall", "orthopedics_oncall"])
    assert body["detail"] == ("nobody in this organisation holds the role 'orthopedics_oncall' "
                              "and no on-call rota names it")
    assert body["extra"] == {"roles": ["orthopedics_oncall"]}
    await accepted(world, intern, ["orthopaedics_oncall"])


async def test_a_role_nobody_holds_added_to_a_consult_later_is_refused_too(world: World) -> None:
    """``POST /v1/threads/{id}/participants`` checks its roles as creation does: nothing is
    added, and a known role then is."""
    intern = await world.onboard(world.org.user("intern", roles=("foundation_doctor",)))
    await world.onboard(world.org.user("ortho", roles=("orthopaedics_oncall",)))
    tid, r = await create(world, intern, [])
    assert r.status_code == 201, r.text
    add = f"/v1/threads/{tid}/participants"
    r = await world.call(intern, "POST", add, json={"users": [], "roles": ["orthopedic_oncall"]})
    body = assert_problem(r, 404, "role_unknown")
    assert body["detail"] == ("nobody in this organisation holds the role 'orthopedic_oncall' "
                              "and no on-call rota names it")
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM thread_roles WHERE thread_id = $1",
                                   uuid.UUID(tid)) == 0
    finally:
        await conn.close()
    r = await world.call(intern, "POST", add, json={"users": [], "roles": ["orthopaedics_oncall"]})
    assert r.status_code == 204, r.text
