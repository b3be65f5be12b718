"""An organisation that turns single sign-on on (``oidc`` in LIGHTBOX_IDENTITY_FILE) makes its
IdP the first factor of its clinicians: a Lightbox password given before is refused
(``sso_required``, server/login.py step 3), at login and at enrolment, unless the organisation
opts in to keep passwords for a migration period (``"password_login": "allowed"``,
server/orgidentity.py). Through a real relay, restarted with the new identity file as IT
restarts it, and the real test IdP (oidc-provider, tests/idp)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from clients.sdk.transport import KEEPALIVE_EXPIRY
from protocol.certs import AccountKind
from protocol.model import DeviceKind
from server import audit
from server.enrolment import SSO_REQUIRED_ENROL
from server.login import SSO_REQUIRED_LOGIN
from server.orgidentity import IdentitySettings, OidcSettings
from tests.helpers import running_relay
from tests.identity_world import ADMIN_PASSWORD, PASSWORD, Device, World, identity_world
from tests.idp_world import CLIENT_ID, running_idp
from tests.server.test_http_edge import assert_problem
from tests.server.test_oidc import PASSWORD_ORG, SSO_ORG, SsoWorld

WRONG = "not the password at all, surely"


@dataclasses.dataclass
class Hospital:
    """A relay whose organisation SSO_ORG does not sign on yet; :meth:`turn_on_sso` writes its
    ``oidc`` entry and restarts the relay on the same database, as IT does."""

    sso: SsoWorld
    identity: Path
    db_dsn: str

    @property
    def world(self) -> World:
        return self.sso.world

    @contextlib.asynccontextmanager
    async def turn_on_sso(self, **oidc: Any) -> AsyncIterator[SsoWorld]:
        self.identity.write_text(json.dumps({"orgs": {SSO_ORG: {"oidc": {
            "issuer": self.sso.idp.issuer, "client_id": CLIENT_ID, **oidc}}}}))
        before = self.world
        await asyncio.to_thread(before.relay.stop)
        async with running_relay(self.db_dsn, before.relay.relay.settings,
                                 clock=before.clock) as relay, \
                httpx.AsyncClient(base_url=relay.base_url, limits=httpx.Limits(
                    keepalive_expiry=KEEPALIVE_EXPIRY)) as http:  # as identity_world's
            yield SsoWorld(dataclasses.replace(before, relay=relay, http=http), self.sso.idp)


@pytest.fixture
async def hospital(db_dsn: str, tmp_path: Path) -> AsyncIterator[Hospital]:
    with running_idp({"ada.byron": {"name": "Ada Byron"},
                      "cy.dee": {"name": "Cy Dee"}}) as idp:
        identity = tmp_path / "identity.json"
        identity.write_text(json.dumps({"orgs": {}}))  # no organisation signs on yet
        async with identity_world(db_dsn, tmp_path, orgs=(SSO_ORG, PASSWORD_ORG),
                                  identity_file=identity) as world:
            yield Hospital(SsoWorld(world, idp), identity, db_dsn)


def _answer(r: httpx.Response) -> tuple[int, dict[str, Any]]:
    """The status and problem document, without what differs per request."""
    doc = r.json()
    doc.pop("request_id", None)
    return r.status_code, doc


async def _audit(world: World, event: str, user_id: str) -> list[dict[str, Any]]:
    """The audit rows of ``event`` about the user (subject, or named in the details), each as
    its outcome and details; the chain verified."""
    conn = await world.db()
    try:
        assert (await audit.verify(conn)).ok
        found = await audit.rows(conn, event_prefix=event)
    finally:
        await conn.close()
    return [{"outcome": r.outcome, **r.details} for r in found if r.event == event and (
        str(r.subject_id) == user_id or r.details.get("user_id") == user_id)]


async def test_a_password_given_before_sso_is_refused_right_or_wrong_and_sso_still_logs_in(
        hospital: Hospital) -> None:
    ada = await hospital.world.onboard(hospital.world.orgs[SSO_ORG].user("ada.byron"))
    bo = await hospital.world.onboard(hospital.world.orgs[PASSWORD_ORG].user("bo.chen"))
    async with hospital.turn_on_sso() as sso:
        right = await sso.world.login_response(ada)
        assert_problem(right, 401, "sso_required")
        assert right.json()["detail"] == SSO_REQUIRED_LOGIN == (
            "your organisation signs you in with its single sign-on, not a Lightbox password: "
            "sign in with your hospital account (`lightbox login --sso`, or \"Sign in with "
            "your hospital account\" in the phone app)")
        # No oracle: a wrong password gets the very same answer, and, never checked, is never
        # counted: however often it is tried, no lock, no delay.
        for _ in range(sso.world.relay.relay.settings.lockout_account_failures + 2):
            assert _answer(await sso.world.login_response(ada, password=WRONG)) == \
                _answer(right)
        assert _answer(await sso.world.login_response(ada)) == _answer(right)
        # The clinician signs in at the IdP with the device she enrolled with a password.
        r = await sso.login(ada, await sso.token("ada.byron"))
        assert r.status_code == 200, r.text
        # Another organisation on the relay, without single sign-on, logs in as before.
        await sso.world.login(bo)
        # IT's administrators are no clinicians of the organisation: their password works.
        r = await sso.world.http.post("/v1/admin/login", json={
            "login": "it-admin", "password": ADMIN_PASSWORD})
        assert r.status_code == 200, r.text
        audited = await _audit(sso.world, "auth.login", ada.user.user_id)
    tries = sso.world.relay.relay.settings.lockout_account_failures + 4
    assert audited[-tries - 1:-1] == [
        {"outcome": "denied", "reason": "sso_required", "first_factor": "password"}] * tries
    assert not any(PASSWORD in json.dumps(a) or WRONG in json.dumps(a) for a in audited)
    assert audited[-1] == {"outcome": "ok", "user_id": ada.user.user_id, "first_factor": "sso"}


async def test_a_session_begun_with_the_password_ends_at_its_next_refresh(
        hospital: Hospital) -> None:
    """Logged in with her password before sign-on was turned on, the clinician's session does
    not outlive it: its next refresh ends it (as an IdP session past its lifetime), so the IdP
    decides from then on. A password organisation's session refreshes as before."""
    ada = await hospital.world.onboard(hospital.world.orgs[SSO_ORG].user("ada.byron"))
    bo = await hospital.world.onboard(hospital.world.orgs[PASSWORD_ORG].user("bo.chen"))
    async with hospital.turn_on_sso() as sso:
        r = await sso.world.http.post("/v1/auth/refresh",
                                      json={"refresh_token": ada.refresh_token})
        assert_problem(r, 401, "token_expired")
        r = await sso.world.call(ada, "GET", "/v1/keys/count")  # its access token is gone too
        assert_problem(r, 401, "token_invalid")
        r = await sso.world.http.post("/v1/auth/refresh",
                                      json={"refresh_token": bo.refresh_token})
        assert r.status_code == 200, r.text
        r = await sso.login(ada, await sso.token("ada.byron"))
        assert r.status_code == 200, r.text
        r = await sso.world.http.post("/v1/auth/refresh",
                                      json={"refresh_token": r.json()["refresh_token"]})
        assert r.status_code == 200, r.text  # the IdP's session refreshes for its lifetime
        conn = await sso.world.db()
        try:
            ended = [row.details for row in await audit.rows(conn, event_prefix="auth.refresh")
                     if row.outcome == "denied"]
        finally:
            await conn.close()
    assert ended == [{"reason": "sso_required"}]


async def test_a_password_session_refreshes_where_passwords_are_allowed(
        hospital: Hospital) -> None:
    ada = await hospital.world.onboard(hospital.world.orgs[SSO_ORG].user("ada.byron"))
    async with hospital.turn_on_sso(password_login="allowed") as sso:
        r = await sso.world.http.post("/v1/auth/refresh",
                                      json={"refresh_token": ada.refresh_token})
        assert r.status_code == 200, r.text


async def test_without_the_clinicians_device_a_refused_password_looks_like_a_wrong_one(
        hospital: Hospital) -> None:
    """Who does not hold an enrolled device of the account learns nothing: not whether the
    login exists, not that its organisation signs on, not whether the password is right. The
    password is checked against the dummy hash, as an unknown login's, and counted."""
    ada = await hospital.world.onboard(hospital.world.orgs[SSO_ORG].user("ada.byron"))
    stranger = hospital.world.orgs[PASSWORD_ORG].user("mallory").device()  # never enrolled
    async with hospital.turn_on_sso() as sso:
        answers = {
            "right": _answer(await sso.world.login_response(ada, signer=stranger.keys)),
            "wrong": _answer(await sso.world.login_response(ada, password=WRONG,
                                                            signer=stranger.keys)),
            "unknown login": _answer(await sso.world.login_response(
                stranger, login="nobody.here")),
        }
        assert {status for status, _ in answers.values()} == {401}
        assert {doc["code"] for _, doc in answers.values()} == {"invalid_credentials"}
        assert len({json.dumps(doc, sort_keys=True) for _, doc in answers.values()}) == 1
        audited = await _audit(sso.world, "auth.login", ada.user.user_id)
    assert audited[-2:] == [{"outcome": "denied", "reason": "invalid_credentials",
                             "password_login": "refused"}] * 2


async def test_a_password_enrolment_in_an_sso_organisation_is_refused_and_the_code_kept(
        hospital: Hospital) -> None:
    async with hospital.turn_on_sso() as sso:
        user = sso.world.orgs[SSO_ORG].user("cy.dee")
        (result,) = await sso.world.provision(user)
        assert result["ok"], result
        device = user.device()
        r = await sso.world.enrol(device)
        assert_problem(r, 401, "sso_required")
        assert r.json()["detail"] == SSO_REQUIRED_ENROL
        assert await _audit(sso.world, "enrol.complete", user.user_id) == [
            {"outcome": "denied", "reason": "sso_required", "first_factor": "password"}]
        # The code is still good, for the IdP's sign-in.
        r = await sso.enrol(device, await sso.token("cy.dee"))
        assert r.status_code == 200, r.text
        r = await sso.login(device, await sso.token("cy.dee"))
        assert r.status_code == 200, r.text


async def test_an_organisation_that_allows_passwords_keeps_them_beside_the_idp(
        hospital: Hospital) -> None:
    ada = await hospital.world.onboard(hospital.world.orgs[SSO_ORG].user("ada.byron"))
    async with hospital.turn_on_sso(password_login="allowed") as sso:
        await sso.world.login(ada)
        assert_problem(await sso.world.login_response(ada, password=WRONG), 401,
                       "invalid_credentials")
        r = await sso.login(ada, await sso.token("ada.byron"))
        assert r.status_code == 200, r.text
        cy = sso.world.orgs[SSO_ORG].user("cy.dee")
        await sso.world.onboard(cy)  # a password enrolment too


async def test_the_organisations_service_accounts_keep_their_passwords(
        hospital: Hospital) -> None:
    """The record gateway has no account at the IdP: it enrols and logs in with a password
    in an organisation that refuses its clinicians' passwords."""
    async with hospital.turn_on_sso() as sso:
        gateway = sso.world.orgs[SSO_ORG].user(
            "record.gateway", account_kind=AccountKind.SERVICE, roles=("record_gateway",))
        device: Device = await sso.world.onboard(gateway, DeviceKind.GATEWAY)
        assert device.access_token is not None


def test_password_login_is_refused_unless_allowed_and_takes_no_other_value(
        tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    base = {"issuer": "https://login.example.org/tenant/v2.0", "client_id": "lightbox"}
    path.write_text(json.dumps({"orgs": {"a": {"oidc": base}, "b": {},
                                         "c": {"oidc": {**base, "issuer": base["issuer"] + "/c",
                                                        "password_login": "allowed"}}}}))
    settings = IdentitySettings.from_file(path)
    assert settings.for_org("a").refuses_password("clinician")
    assert not settings.for_org("a").refuses_password("service")
    assert not settings.for_org("b").refuses_password("clinician")  # no single sign-on
    assert not settings.for_org("c").refuses_password("clinician")
    assert not settings.for_org(str(uuid.uuid4())).refuses_password("clinician")
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({**base, "password_login": "yes"}, OidcSettings)
