"""The hospital directory's journey through the real commands against a real relay: IT issues
a SCIM token on the relay host, the directory creates a clinician and puts her in a mapped
group, ``lightbox-admin sign-pending`` signs her certificate on IT's workstation and prints her
handout, she enrols and logs in with the code, a rename in the directory is renewed by the next
``sign-pending``, and the directory's ``active: false`` locks her out at once. A
CSV-provisioned colleague of the same relay is untouched throughout."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.admin import cli as admin_cli
from clients.clinician import cli as device_cli
from tests.clients.test_identity_journey import (  # the same workstation and relay host
    ORG,
    _codes,
    _ok,
    _run,
    journey_env,
)
from tests.scim_world import directory_relay

__all__ = ["journey_env"]

LICENCE = "urn:lightbox:params:scim:schemas:extension:clinician:2.0:User"
PASSWORD = "quarry-violet-lantern-5"


async def test_directory_user_is_signed_by_it_enrols_and_is_suspended_by_the_directory(
        journey_env: Path, db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = journey_env
    async with directory_relay(tmp, db_dsn, ORG, {"Radiology consultants": "radiologist"}) \
            as (url, scim):
        # A colleague provisioned the old way, by CSV, on the same relay.
        await _ok(admin_cli.main, ["user", "add", "--name", "Bo Chen", "--login", "bo.chen",
                                   "--roles", "physician", "--licence-type", "MD",
                                   "--licence-number", "GMC-1", "--jurisdiction", "UK",
                                   "--licence-expires", "2031-12-31", "--no-qr"])
        # Added twice: the relay's refusal names the login, not a CSV line there is not.
        rc, out, err = await _run(admin_cli.main, [
            "user", "add", "--name", "Bo Chen", "--login", "bo.chen", "--roles", "physician",
            "--licence-type", "MD", "--licence-number", "GMC-1", "--jurisdiction", "UK",
            "--licence-expires", "2031-12-31", "--no-qr"])
        assert (rc, out) == (1, "0 provisioned, 1 failed\n"), (rc, out, err)
        assert err.startswith("bo.chen: ") and "line" not in err, err

        r = await scim.post("/Users", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "Ada.Byron",
            "externalId": "00u1ada", "name": {"givenName": "Ada", "familyName": "Byron"},
            "active": True, LICENCE: {"licenceType": "MD", "licenceNumber": "GMC-7",
                                      "jurisdiction": "UK", "licenceExpires": "2031-12-31",
                                      "specialty": "radiology"}})
        assert r.status_code == 201, r.text
        ada = r.json()
        r = await scim.post("/Groups", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "Radiology consultants", "members": [{"value": ada["id"]}]})
        assert r.status_code == 201, r.text

        # A colleague the directory describes without a licence is not signed.
        r = await scim.post("/Users", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "cy.dee",
            "active": True})
        assert r.status_code == 201, r.text
        rc, out, err = await _run(admin_cli.main, ["sign-pending", "--no-qr", "--handout-dir",
                                                   str(tmp / "it" / "handouts")])
        assert rc == 1
        assert "1 signed, 1 failed" in out
        assert "cy.dee: not signed: no role given" in err
        codes = _codes(out)
        assert list(codes) == ["ada.byron"]
        assert (tmp / "it" / "handouts" / "ada.byron.pdf").exists()
        rc, out, _err = await _run(admin_cli.main, ["sign-pending", "--no-qr"])
        assert "0 signed, 1 failed" in out  # Ada is done; Cy still waits
        shown = await _ok(admin_cli.main, ["user", "show", "ada.byron"])
        assert "radiologist" in shown and "Ada Byron" in shown

        monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORD)
        out = await _ok(device_cli.main, ["--profile", "ada", "enroll", "--server", url,
                                          "--code", codes["ada.byron"]])
        assert "enrolled ada.byron" in out
        await _ok(device_cli.main, ["--profile", "ada", "login"])

        # The directory renames her: the certificate carries the name, so IT renews it; until
        # then the one she has still serves.
        r = await scim.patch(f"/Users/{ada['id']}", json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "displayName", "value": "Ada King"}]})
        assert r.status_code == 200, r.text
        await _ok(device_cli.main, ["--profile", "ada", "login"])
        assert "Ada Byron" in await _ok(admin_cli.main, ["user", "show", "ada.byron"])
        rc, out, _err = await _run(admin_cli.main, ["sign-pending", "--no-qr"])
        assert "ada.byron: certificate renewed" in out
        assert "0 signed, 1 renewed, 1 failed" in out
        shown = await _ok(admin_cli.main, ["user", "show", "ada.byron"])
        assert "Ada King" in shown and "radiologist" in shown
        await _ok(device_cli.main, ["--profile", "ada", "login"])

        r = await scim.patch(f"/Users/{ada['id']}", json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "replace", "path": "active", "value": False}]})
        assert r.status_code == 200, r.text
        rc, _out, err = await _run(device_cli.main, ["--profile", "ada", "login"])
        assert rc == 1
        assert "user_suspended" in err
        # IT cannot lift what the directory did, and is told so, not "already so".
        rc, out, err = await _run(admin_cli.main, ["user", "resume", "ada.byron"])
        assert (rc, out) == (2, "")
        assert err.strip() == (
            "error: ada.byron is suspended by the hospital directory, not by a revocation of "
            "yours: make them active there (a user deleted there keeps their login suspended "
            "for good); nothing was changed"), err
        shown = await _ok(admin_cli.main, ["user", "show", "bo.chen"])
        assert "pending" in shown  # the CSV user is as he was
