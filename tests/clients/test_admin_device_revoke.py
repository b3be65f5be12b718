"""``lightbox-admin device revoke`` checks the id against the relay before anything is signed
(docs/USER_GUIDE.md, IT, "Day to day"): an id no device of the organisation has (a mistyped
character, or another organisation's device) is refused with one sentence and exit status 2,
and a device revoked already is said to be so; in both cases the revocation list keeps its
number and a still-active device keeps working. Run as a subprocess against a real relay, with
the admin route it asks (``GET /v1/admin/devices/{device_id}``) and its bad input."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from protocol import certs
from protocol.errors import ProtocolError
from tests.clients.test_cli_failures import _env, _write_org_keyfile, run
from tests.identity_world import Device, World, identity_world

ORG, OTHER = "st-elsewhere", "county-general"


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, orgs=(ORG, OTHER)) as w:
        yield w


async def _list_number(world: World) -> int | None:
    """The number of our organisation's revocation list in force at the relay."""
    r = await world.http.get("/v1/revocations")
    assert r.status_code == 200, r.text
    org = world.orgs[ORG]
    for token in r.json()["lists"]:
        try:
            return certs.verify_revocation_list(
                token, trusted_orgs={ORG: org.key.public}).number
        except ProtocolError:  # another organisation's list
            continue
    return None


async def _still_works(world: World, device: Device) -> None:
    r = await world.call(device, "GET", "/v1/keys/count")
    assert r.status_code == 200, r.text


async def _cli(world: World, tmp: Path, *argv: str) -> tuple[int, str, str]:
    _write_org_keyfile(world, tmp / "it" / "org.key")
    return await run("lightbox-admin", "device", "revoke", *argv, env=_env(tmp, world))


async def test_an_id_no_device_of_ours_has_is_refused_and_nothing_is_signed(
        world: World, tmp_path: Path) -> None:
    phone = await world.onboard(world.orgs[ORG].user("ada.byron"))
    elsewhere = await world.onboard(world.orgs[OTHER].user("cid.other"))
    r = await world.revoke(world.orgs[ORG], 1)
    assert r.status_code == 200, r.text
    for unknown in ("00000000-0000-0000-0000-000000000000", elsewhere.device_id):
        rc, out, err = await _cli(world, tmp_path, unknown, "--wipe")
        assert (rc, out) == (2, ""), err
        assert err == (f"error: no device with id {unknown} in organisation {ORG}: check the "
                       "id with `lightbox-admin user show LOGIN`; nothing was revoked\n")
    assert await _list_number(world) == 1
    await _still_works(world, phone)
    await _still_works(world, elsewhere)


async def test_a_device_revoked_already_is_said_so_and_nothing_is_signed(
        world: World, tmp_path: Path) -> None:
    phone = await world.onboard(world.orgs[ORG].user("ada.byron"))
    desk = await world.onboard(world.orgs[ORG].user("bea.desk"))
    rc, out, err = await _cli(world, tmp_path, phone.device_id)
    assert (rc, err) == (0, ""), err
    assert out == (f"device {phone.device_id} revoked: revocation list 1 signed and applied "
                   "(1 entry)\n")
    rc, out, err = await _cli(world, tmp_path, phone.device_id, "--wipe")
    assert (rc, err) == (0, ""), err
    assert out == f"device {phone.device_id} (ada.byron) is revoked already; nothing was changed\n"
    assert await _list_number(world) == 1
    await _still_works(world, desk)


async def test_the_admin_device_route_answers_only_an_administrator_about_a_real_id(
        world: World) -> None:
    phone = await world.onboard(world.orgs[ORG].user("ada.byron"))
    headers = world.admin_headers()
    r = await world.http.get(f"/v1/admin/devices/{phone.device_id}", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "device": {"device_id": phone.device_id, "kind": "mobile", "status": "active",
                   "created_at": r.json()["device"]["created_at"],
                   "last_seen_at": r.json()["device"]["last_seen_at"]},
        "user_id": phone.user.user_id, "login": "ada.byron", "org_id": ORG}
    # An id no device has, and one that is not a UUID, as every route named by a UUID answers.
    for device_id in (str(uuid.uuid4()), "not-a-uuid", "'%20OR%201=1"):
        r = await world.http.get(f"/v1/admin/devices/{device_id}", headers=headers)
        assert (r.status_code, r.json()["code"], r.json()["detail"]) == (
            404, "not_found", "no such device"), r.text
    for bad in ({}, {"authorization": "Bearer not-a-token"},
                {"authorization": f"Bearer {phone.access_token}"}):
        r = await world.http.get(f"/v1/admin/devices/{phone.device_id}", headers=bad)
        assert r.status_code == 401, r.text
