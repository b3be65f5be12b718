"""Whom ``GET /v1/admin/devices/{device_id}`` answers, and about what (docs/SECURITY.md
"Identity and sessions", IT administrators). Administrators are accounts of the relay, not of
an organisation (the ``admins`` table has no organisation; every admin route answers for every
trusted organisation): the device route tells an administrator of any organisation's device
exactly what ``GET /v1/admin/users/{user_id}`` already lists for its user, nothing more, and
``lightbox-admin device revoke`` compares the organisation with the key IT holds
(tests/clients/test_admin_device_revoke.py). Anyone else gets the same answer for a real
device as for an unknown id: 401 before the id is looked at, so no existence oracle."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.api import ADMIN_TOKEN_AUDIENCE
from server.passwords import Passwords
from server.store import admins
from server.tokens import ISSUER
from tests.identity_world import World, identity_world

ORG, OTHER = "st-elsewhere", "county-general"
SECOND_PASSWORD = "second administrator passphrase"


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, orgs=(ORG, OTHER)) as w:
        yield w


async def _second_admin(world: World) -> tuple[str, str]:
    """Another administrator created on the relay host, logged in: (admin id, token)."""
    conn = await world.db()
    try:
        admin_id = await admins.create_admin(conn, "second-admin",
                                             Passwords("cheap").hash_sync(SECOND_PASSWORD))
    finally:
        await conn.close()
    r = await world.http.post("/v1/admin/login", json={"login": "second-admin",
                                                       "password": SECOND_PASSWORD})
    assert r.status_code == 200, r.text
    token: str = r.json()["token"]
    return admin_id, token


async def test_every_administrator_reads_any_organisations_device_as_its_user_lists_it(
        world: World) -> None:
    ours = await world.onboard(world.orgs[ORG].user("ada.byron"))
    theirs = await world.onboard(world.orgs[OTHER].user("cid.other"))
    _, second = await _second_admin(world)
    for token in (world.admin_token, second):
        headers = {"authorization": f"Bearer {token}"}
        for device, org in ((ours, ORG), (theirs, OTHER)):
            r = await world.http.get(f"/v1/admin/devices/{device.device_id}", headers=headers)
            assert r.status_code == 200, r.text
            user = await world.http.get(f"/v1/admin/users/{device.user.user_id}",
                                        headers=headers)
            assert user.status_code == 200, user.text
            assert r.json() == {"device": user.json()["devices"][0],
                                "user_id": device.user.user_id, "login": device.user.login,
                                "org_id": org}


async def test_anyone_but_an_administrator_gets_one_answer_for_a_real_and_an_unknown_id(
        world: World) -> None:
    theirs = await world.onboard(world.orgs[OTHER].user("cid.other"))
    admin_id, second = await _second_admin(world)
    now = int(time.time())
    forged = jwt.encode({"iss": ISSUER, "aud": ADMIN_TOKEN_AUDIENCE, "sub": admin_id,
                         "iat": now, "exp": now + 600, "jti": str(uuid.uuid4())},
                        Ed25519PrivateKey.generate(), algorithm="EdDSA")
    await world.execute("UPDATE admins SET disabled_at = now() WHERE admin_id = $1",
                        uuid.UUID(admin_id))
    cases = {
        "unauthenticated": ({}, "unauthenticated", "a bearer token is required"),
        "forged": ({"authorization": f"Bearer {forged}"}, "token_invalid",
                   "token malformed or signature bad"),
        "disabled administrator": ({"authorization": f"Bearer {second}"}, "token_invalid",
                                   "administrator unknown or disabled"),
        "a clinician's token": ({"authorization": f"Bearer {theirs.access_token}"},
                                "token_audience", "token issued for another audience"),
    }
    for name, (headers, code, detail) in cases.items():
        for device_id in (theirs.device_id, str(uuid.uuid4()), "not-a-uuid"):
            r = await world.http.get(f"/v1/admin/devices/{device_id}", headers=headers)
            assert (r.status_code, r.json()["code"], r.json()["detail"]) == (
                401, code, detail), (name, device_id, r.text)
    # An administrator: an unknown id and a non-UUID are one 404.
    for device_id in (str(uuid.uuid4()), "not-a-uuid"):
        r = await world.http.get(f"/v1/admin/devices/{device_id}",
                                 headers=world.admin_headers())
        assert (r.status_code, r.json()["code"], r.json()["detail"]) == (
            404, "not_found", "no such device"), r.text
