"""Two sources of roles for one organisation, each speaking only for its own mapping
(server/renewals.py; docs/SECURITY.md "The hospital directory (SCIM)", "Single sign-on"): the
directory's groups (``group_roles``, pushed over SCIM) and the IdP's claim (``claim_roles``,
read at each single sign-on against the real test IdP, tests/idp). A role one source withdrew
stays withdrawn whatever the other then states, in what the relay acts on, in the renewal IT's
queue asks for and in the certificate IT then signs; a role one source asked for is still asked
after the other restates its own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol.canonical import peek_compact
from protocol.certs import UserCertificate
from tests.idp_world import CLIENT_ID, running_idp
from tests.scim_world import SCIM_JSON, ScimWorld, renew, renewed_certificate, scim_world
from tests.server.test_oidc import SSO_ORG, SsoWorld, _roles, _signed_in

ORTHO, TRAUMA, RADIOLOGY = "Orthopaedics on call", "Trauma on call", "Radiology"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"


class Both:
    """The directory (SCIM) and the IdP of one organisation, on one relay."""

    def __init__(self, sw: ScimWorld, sso: SsoWorld) -> None:
        self.sw, self.sso = sw, sso

    async def group(self, name: str, *members: str) -> str:
        r = await self.sw.scim.post("/Groups", headers={"content-type": SCIM_JSON}, json={
            "schemas": [GROUP_SCHEMA], "displayName": name,
            "members": [{"value": m} for m in members]})
        assert r.status_code == 201, r.text
        group_id: str = r.json()["id"]
        return group_id

    async def certificate_roles(self, device: Any) -> list[str]:
        """The roles of the certificate the relay serves colleagues' devices for the user."""
        r = await self.sso.world.call(device, "GET", f"/v1/users/{device.user.user_id}/devices")
        assert r.status_code == 200, r.text
        return sorted(peek_compact(r.json()["user_certificate"], UserCertificate).roles)


@pytest.fixture
async def both(db_dsn: str, tmp_path: Path) -> AsyncIterator[Both]:
    """ada.byron's IdP account is in no group yet; the directory maps two groups, the IdP a
    third: each role is mapped in one place only."""
    with running_idp({"ada.byron": {"name": "Ada Byron", "groups": []}}) as idp:
        identity = tmp_path / "two-sources.json"  # scim_world writes identity.json
        identity.write_text(json.dumps({"orgs": {SSO_ORG: {
            "group_roles": {ORTHO: "orthopaedics_oncall", TRAUMA: "trauma_oncall"},
            "oidc": {"issuer": idp.issuer, "client_id": CLIENT_ID,
                     "scopes": ["openid", "profile", "groups"], "role_claim": "groups",
                     "claim_roles": {RADIOLOGY: "radiologist"}}}}}))
        async with scim_world(db_dsn, tmp_path, orgs=(SSO_ORG,),
                              identity_file=identity) as sw:
            yield Both(sw, SsoWorld(sw.world, idp))


async def _enrolled_in_ortho(both: Both) -> tuple[dict[str, Any], str, Any]:
    """ada.byron made by the directory in "Orthopaedics on call", signed by IT, enrolled with
    the IdP and signed in: (her SCIM resource, the group's id, her device)."""
    ada = await both.sw.create_user("ada.byron")
    ortho = await both.group(ORTHO, ada["id"])
    (entry,) = await both.sw.pending()
    user, r = await both.sw.sign(entry)
    assert r.status_code == 200, r.text
    device = user.device()
    sso = both.sso
    r = await sso.enrol(device, await sso.idp.sign_in("ada.byron", nonce=await sso.challenge()))
    assert r.status_code == 200, r.text
    await _signed_in(sso, device)
    return ada, ortho, device


async def _acting_and_asked(both: Both, device: Any) -> tuple[list[str], list[Any]]:
    roles, queue = await _roles(both.sso, device)
    return roles, [e["roles"] for e in queue]


async def test_a_role_the_directory_withdrew_does_not_come_back_at_the_next_sso_sign_in(
        both: Both) -> None:
    _, ortho, device = await _enrolled_in_ortho(both)
    assert await _acting_and_asked(both, device) == (["orthopaedics_oncall"], [])

    # The directory takes her out of the group: the role is withdrawn at once.
    r = await both.sw.patch(f"/Groups/{ortho}", [{"op": "remove", "path": "members"}])
    assert r.status_code == 200, r.text
    assert await _acting_and_asked(both, device) == ([], [[]])

    # She signs in at the IdP, which now also puts her in radiology: the IdP speaks for
    # radiology only, so orthopaedics stays withdrawn and is not asked of IT again.
    both.sso.idp.set_account("ada.byron", groups=[RADIOLOGY])
    await _signed_in(both.sso, device)
    assert await _acting_and_asked(both, device) == ([], [["radiologist"]])
    await _signed_in(both.sso, device)  # and again, the same
    assert await _acting_and_asked(both, device) == ([], [["radiologist"]])

    # IT signs what is asked: the new certificate lacks orthopaedics.
    (asked,) = (await _roles(both.sso, device))[1]
    r = await renew(both.sso.world, asked)
    assert r.status_code == 200, r.text
    assert await _acting_and_asked(both, device) == (["radiologist"], [])
    assert await both.certificate_roles(device) == ["radiologist"]
    await _signed_in(both.sso, device)
    assert await _acting_and_asked(both, device) == (["radiologist"], [])


async def test_a_licence_renewal_then_an_sso_sign_in_does_not_restore_a_withdrawn_role(
        both: Both) -> None:
    _, ortho, device = await _enrolled_in_ortho(both)
    r = await both.sw.patch(f"/Groups/{ortho}", [{"op": "remove", "path": "members"}])
    assert r.status_code == 200, r.text
    # IT renews her licence from the certificate held, which still names orthopaedics.
    (held,) = (await _roles(both.sso, device))[1]
    cert = peek_compact(held["user_certificate"], UserCertificate)
    assert cert.licence is not None and cert.roles == ["orthopaedics_oncall"]
    renewed = renewed_certificate(both.sso.world, held | {"roles": None, "display_name": None},
                                  licence=msgspec.structs.replace(cert.licence,
                                                                  expires_at=2_000_000_000))
    r = await both.sso.world.http.put(f"/v1/admin/users/{device.user.user_id}/certificate",
                                      headers=both.sso.world.admin_headers(),
                                      json={"user_certificate": renewed})
    assert r.status_code == 200, r.text
    assert await _acting_and_asked(both, device) == ([], [[]])
    await _signed_in(both.sso, device)
    assert await _acting_and_asked(both, device) == ([], [[]])


async def test_a_role_the_idp_withdrew_does_not_come_back_at_the_next_directory_change(
        both: Both) -> None:
    ada, _, device = await _enrolled_in_ortho(both)
    # The IdP puts her in radiology; IT signs it.
    both.sso.idp.set_account("ada.byron", groups=[RADIOLOGY])
    await _signed_in(both.sso, device)
    (asked,) = (await _roles(both.sso, device))[1]
    assert asked["roles"] == ["orthopaedics_oncall", "radiologist"]
    r = await renew(both.sso.world, asked)
    assert r.status_code == 200, r.text
    assert await _acting_and_asked(both, device) == (["orthopaedics_oncall", "radiologist"], [])

    # The IdP takes radiology away: withdrawn at once at her sign-in.
    both.sso.idp.set_account("ada.byron", groups=[])
    await _signed_in(both.sso, device)
    assert await _acting_and_asked(both, device) == (["orthopaedics_oncall"],
                                                     [["orthopaedics_oncall"]])

    # The directory then changes her: she joins trauma (the directory speaks for it), and is
    # renamed. Radiology stays withdrawn; trauma and the name are asked beside what was.
    await both.group(TRAUMA, ada["id"])
    assert await _acting_and_asked(both, device) == (
        ["orthopaedics_oncall"], [["orthopaedics_oncall", "trauma_oncall"]])
    r = await both.sw.patch(f"/Users/{ada['id']}", [
        {"op": "replace", "path": "displayName", "value": "Dr Ada Lovelace"}])
    assert r.status_code == 200, r.text
    (asked,) = (await _roles(both.sso, device))[1]
    assert (asked["roles"], asked["display_name"]) == (
        ["orthopaedics_oncall", "trauma_oncall"], "Dr Ada Lovelace")
    assert (await _acting_and_asked(both, device))[0] == ["orthopaedics_oncall"]

    r = await renew(both.sso.world, asked)
    assert r.status_code == 200, r.text
    assert await _acting_and_asked(both, device) == (
        ["orthopaedics_oncall", "trauma_oncall"], [])
    assert await both.certificate_roles(device) == ["orthopaedics_oncall", "trauma_oncall"]
