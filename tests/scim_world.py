"""A relay with a hospital directory: an identity world (tests/identity_world.py) plus SCIM
bearer tokens issued as ``lightbox-server scim token issue`` issues them, and an HTTP client
for ``/scim/v2``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from clients.sdk.addresses import tls_context
from protocol.canonical import peek_compact
from protocol.certs import UserCertificate, issue_user_certificate
from server.store import directory
from tests.identity_world import User, World, identity_world

__all__ = ["SCIM_JSON", "ScimWorld", "directory_relay", "issue_scim_token", "renew",
           "renewed_certificate", "scim_world", "signing_queue"]

SCIM_JSON = "application/scim+json"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


async def issue_scim_token(dsn: str, org_id: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        _, token = await directory.issue_token(conn, org_id, now=time.time())
    finally:
        await conn.close()
    return token


async def signing_queue(world: World) -> dict[str, Any]:
    """IT's queue as ``lightbox-admin sign-pending`` reads it: ``users`` and ``renewals``."""
    r = await world.http.get("/v1/admin/directory/pending", headers=world.admin_headers())
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def renewed_certificate(world: World, entry: dict[str, Any], **changes: Any) -> str:
    """The renewal's certificate held, re-signed by the test organisation's key with what is
    asked (``changes`` override it)."""
    held = peek_compact(entry["user_certificate"], UserCertificate)
    asked = {k: v for k, v in (("display_name", entry["display_name"]),
                               ("roles", entry["roles"])) if v is not None}
    body = msgspec.structs.replace(held, serial=str(uuid.uuid4()),
                                   issued_at=held.issued_at + 1, **(asked | changes))
    return issue_user_certificate(body, world.orgs[entry["org_id"]].key)


async def renew(world: World, entry: dict[str, Any], *, version: int | None = None,
                **changes: Any) -> httpx.Response:
    """What ``lightbox-admin sign-pending`` does for one renewal (:func:`renewed_certificate`),
    posted with the version read."""
    cert = renewed_certificate(world, entry, **changes)
    return await world.http.post(
        f"/v1/admin/directory/renewals/{entry['user_id']}", headers=world.admin_headers(),
        json={"version": entry["version"] if version is None else version,
              "user_certificate": cert})


@dataclasses.dataclass
class ScimWorld:
    world: World
    token: str
    scim: httpx.AsyncClient  # base URL .../scim/v2, the bearer set

    def user_body(self, login: str, **extra: Any) -> dict[str, Any]:
        return {"schemas": [USER_SCHEMA], "userName": login,
                "name": {"givenName": "Jane", "familyName": "Doe"},
                "displayName": "Dr Jane Doe", "active": True, **extra}

    async def create_user(self, login: str, **extra: Any) -> dict[str, Any]:
        r = await self.scim.post("/Users", json=self.user_body(login, **extra),
                                 headers={"content-type": SCIM_JSON})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    async def pending(self) -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = (await signing_queue(self.world))["users"]
        return users

    async def sign(self, entry: dict[str, Any], **cert: Any) -> tuple[User, httpx.Response]:
        """What ``lightbox-admin sign-pending`` does for one pending user, with the test
        organisation's key: the certificate and enrolment row, posted with the version read."""
        org = self.world.orgs[entry["org_id"]]
        user = org.user(entry["login"], display_name=entry["display_name"],
                        roles=tuple(entry["roles"]), **cert)
        r = await self.world.http.post(
            f"/v1/admin/directory/pending/{entry['directory_id']}",
            headers=self.world.admin_headers(),
            json={"version": entry["version"], "user": user.provision_row()})
        return user, r

    async def signed_user(self, login: str, **extra: Any) -> tuple[dict[str, Any], User]:
        """A directory user IT has signed: (its SCIM resource, the relay user to enrol)."""
        created = await self.create_user(login, **extra)
        (entry,) = [e for e in await self.pending() if e["directory_id"] == created["id"]]
        user, r = await self.sign(entry)
        assert r.status_code == 200, r.text
        return created, user

    async def patch(self, path: str, operations: list[dict[str, Any]],
                    **headers: str) -> httpx.Response:
        return await self.scim.patch(path, json={"schemas": [PATCH_SCHEMA],
                                                 "Operations": operations},
                                     headers={"content-type": SCIM_JSON, **headers})


@contextlib.asynccontextmanager
async def scim_world(dsn: str, tmp: Path, **kw: Any) -> AsyncIterator[ScimWorld]:
    """The first organisation maps the groups "Orthopaedics on call" and "Trauma on call" to
    their roles."""
    orgs = kw.get("orgs", ("st-elsewhere",))
    identity = tmp / "identity.json"
    identity.write_text(json.dumps({"orgs": {orgs[0]: {
        "group_roles": {"Orthopaedics on call": "orthopaedics_oncall",
                        "Trauma on call": "trauma_oncall"}}}}))
    kw.setdefault("identity_file", identity)
    async with identity_world(dsn, tmp, **kw) as world:
        token = await issue_scim_token(dsn, world.org.org_id)
        async with httpx.AsyncClient(base_url=world.relay.base_url + "/scim/v2",
                                     headers={"authorization": f"Bearer {token}"},
                                     verify=tls_context()) as scim:
            yield ScimWorld(world=world, token=token, scim=scim)


@contextlib.asynccontextmanager
async def directory_relay(tmp: Path, dsn: str, org: str, group_roles: dict[str, str]
                          ) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """A relay set up by the real commands in journey_env's environment
    (tests/clients/test_identity_journey.py): IT's organisation key (``lightbox-admin org
    init``) trusted on the relay host, an administrator created there and logged in with
    ``lightbox-admin login``, a SCIM token issued, the directory's ``group_roles`` mapped:
    (the relay's URL, a client of its ``/scim/v2`` with the token)."""
    from clients.admin import cli as admin_cli
    from server import __main__ as server_cli
    from tests.clients.test_identity_journey import _ok
    from tests.helpers import make_settings, running_relay

    await _ok(admin_cli.main, ["org", "init", "--org-id", org, "--keyfile",
                               str(tmp / "it" / "org.key")])
    await _ok(server_cli.main, ["org", "trust", str(tmp / "it" / f"{org}.pub.json")])
    await _ok(server_cli.main, ["admin", "create", "--login", "it.admin"])
    token = (await _ok(server_cli.main, ["scim", "token", "issue", "--org", org])).strip()
    identity = tmp / "identity.json"
    identity.write_text(json.dumps({"orgs": {org: {"group_roles": group_roles}}}))
    settings = make_settings(data_dir=tmp / "relay", argon2_profile="cheap",
                             identity_file=identity)
    async with running_relay(dsn, settings) as running, httpx.AsyncClient(
            base_url=running.base_url + "/scim/v2",
            headers={"authorization": f"Bearer {token}", "content-type": SCIM_JSON},
            verify=tls_context()) as scim:
        await _ok(admin_cli.main, ["login", "--server", running.base_url,
                                   "--login", "it.admin"])
        yield running.base_url, scim
