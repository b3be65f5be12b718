"""A role IT adds by hand while a role renewal is pending (server/renewals.py
:func:`~server.renewals.keep_withdrawn`; docs/SECURITY.md "Two sources, one user"), through the
real commands against a real relay: the directory withdraws a mapped role, so a renewal asks
for less; IT then stores a licence renewal or a re-issued certificate it signed by hand that
adds a role no source maps. The relay acts on that role at once, the renewal asks for it, and
the certificate ``lightbox-admin sign-pending`` signs keeps it, while the role the directory
withdrew stays withdrawn."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest

from clients.admin import cli as admin_cli
from clients.admin.common import admin_relay
from clients.admin.ops import our_certificate
from clients.admin.orgkey import open_org_keyfile
from clients.admin.provisioning import reissue_user, renew_certificate
from clients.admin.session import load_session
from protocol import api
from protocol.canonical import peek_compact
from protocol.certs import UserCertificate
from tests.clients.test_identity_journey import ORG, _ok, _run, journey_env
from tests.scim_world import directory_relay

__all__ = ["journey_env"]

LICENCE = "urn:lightbox:params:scim:schemas:extension:clinician:2.0:User"
ORTHO = "Orthopaedics on call"


class Relay:
    """The relay of one organisation whose directory maps one group, with IT logged in."""

    def __init__(self, tmp: Path, scim: httpx.AsyncClient) -> None:
        self.tmp, self.scim = tmp, scim

    async def shown(self, login: str) -> tuple[list[str], list[str]]:
        """(the roles the relay acts on, as ``user show`` prints them; the certificate's)."""
        out = await _ok(admin_cli.main, ["user", "show", login])
        (line,) = [x for x in out.splitlines() if x.startswith("roles:")]
        acting = [r for r in line.removeprefix("roles:").strip().split(", ") if r]
        async with admin_relay(load_session()) as relay:
            user = (await relay.list_users(q=login)).users[0]
            detail = await relay.get_user(user.user_id)
        return acting, sorted(peek_compact(detail.user_certificate, UserCertificate).roles)

    async def asked(self) -> list[list[str] | None]:
        async with admin_relay(load_session()) as relay:
            return [r.roles for r in (await relay.directory_pending()).renewals]

    async def by_hand(self, login: str, *, reissue: bool = False, add: str = "",
                      remove: str = "") -> None:
        """IT re-signs ``login``'s certificate held, adding or taking out a role: as a licence
        renewal, or as a re-issued enrolment code."""
        org_id, org_key = open_org_keyfile(self.tmp / "it" / "org.key",
                                           os.environ["LIGHTBOX_ORG_PASSPHRASE"])
        now = int(time.time())
        async with admin_relay(load_session()) as relay:
            user = (await relay.list_users(q=login)).users[0]
            current = our_certificate((await relay.get_user(user.user_id)).user_certificate,
                                      user_id=user.user_id, org_id=org_id, org_key=org_key)
            roles = sorted({*current.roles, add} - {remove, ""})
            assert current.licence is not None
            if not reissue:
                await relay.renew_certificate(user.user_id, renew_certificate(
                    current, org_key=org_key, now=now, roles=roles,
                    licence=msgspec.structs.replace(current.licence, expires_at=1_950_000_000)))
                return
            made = reissue_user(msgspec.structs.replace(current, roles=roles), login,
                                org_key=org_key, now=max(now, current.issued_at + 1),
                                code_valid_hours=24)
            await relay.reissue_enrolment(user.user_id, api.EnrolmentReissue(
                user_certificate=made.certificate,
                enrolment_token_hash=made.request.enrolment_token_hash,
                sealed_identity=made.request.sealed_identity,
                enrolment_expires_at=made.request.enrolment_expires_at))


@pytest.fixture
async def relay(journey_env: Path, db_dsn: str) -> AsyncIterator[Relay]:
    """Ada, made by the directory in "Orthopaedics on call" and signed by ``sign-pending``
    (she has not enrolled: a re-issued code is for her too)."""
    tmp = journey_env
    async with directory_relay(tmp, db_dsn, ORG, {ORTHO: "orthopaedics_oncall"}) as (_, scim):
        r = await scim.post("/Users", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "ada.byron",
            "displayName": "Ada Byron", "active": True,
            LICENCE: {"licenceType": "MD", "licenceNumber": "GMC-7", "jurisdiction": "UK",
                      "licenceExpires": "2031-12-31"}})
        assert r.status_code == 201, r.text
        ada = r.json()["id"]
        r = await scim.post("/Groups", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": ORTHO,
            "members": [{"value": ada}]})
        assert r.status_code == 201, r.text
        rc, out, err = await _run(admin_cli.main, ["sign-pending", "--no-qr", "--handout-dir",
                                                   str(tmp / "it" / "handouts")])
        assert (rc, out.splitlines()[-1]) == (0, "1 signed, 0 failed"), (out, err)
        yield Relay(tmp, scim)


async def _out_of_ortho(relay: Relay) -> None:
    """The directory takes her out of the group: withdrawn at once, a renewal asks for less."""
    r = await relay.scim.get("/Groups", params={"filter": f'displayName eq "{ORTHO}"'})
    (group,) = r.json()["Resources"]
    r = await relay.scim.patch(f"/Groups/{group['id']}", json={
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "remove", "path": "members"}]})
    assert r.status_code == 200, r.text
    assert await relay.shown("ada.byron") == ([], ["orthopaedics_oncall"])
    assert await relay.asked() == [[]]


@pytest.mark.parametrize("reissue", [False, True], ids=["licence_renewal", "reissued_code"])
async def test_a_role_it_adds_while_a_renewal_is_pending_survives_sign_pending(
        relay: Relay, reissue: bool) -> None:
    await _out_of_ortho(relay)
    # IT adds a role no source maps, in a certificate made from the one held (which still
    # names orthopaedics): acted on at once and asked; orthopaedics stays withdrawn.
    await relay.by_hand("ada.byron", reissue=reissue, add="physician")
    assert await relay.shown("ada.byron") == (
        ["physician"], ["orthopaedics_oncall", "physician"])
    assert await relay.asked() == [["physician"]]

    out = await _ok(admin_cli.main, ["sign-pending", "--no-qr"])
    assert "ada.byron: certificate renewed" in out
    assert await relay.shown("ada.byron") == (["physician"], ["physician"])
    assert await relay.asked() == []


async def test_a_role_it_takes_out_while_a_renewal_is_pending_is_not_signed_back(
        relay: Relay) -> None:
    await _out_of_ortho(relay)
    await relay.by_hand("ada.byron", add="physician")
    assert await relay.asked() == [["physician"]]
    # IT thinks better of it: another licence renewal gives her sepsis_lead instead.
    await relay.by_hand("ada.byron", add="sepsis_lead", remove="physician")
    assert await relay.shown("ada.byron") == (
        ["sepsis_lead"], ["orthopaedics_oncall", "sepsis_lead"])
    assert await relay.asked() == [["sepsis_lead"]]

    out = await _ok(admin_cli.main, ["sign-pending", "--no-qr"])
    assert "ada.byron: certificate renewed" in out
    assert await relay.shown("ada.byron") == (["sepsis_lead"], ["sepsis_lead"])
    assert await relay.asked() == []
