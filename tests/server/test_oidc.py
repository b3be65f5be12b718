"""OpenID Connect sign-in (server/oidc.py) against a real certified provider (oidc-provider,
tests/idp): its discovery document and JWKS are fetched from it, and ID tokens are signed with
its own key, here crafted so that each check can be seen to refuse alone: another issuer,
another audience, expired, a bad signature, a replayed or unknown nonce, a suspended user, each
with its code. The real browser flow is tests/clients/test_sso_journey.py."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from protocol.api import login_signing_input
from protocol.canonical import b64url_decode, b64url_encode
from tests.identity_world import Device, User, World, identity_world
from tests.idp_world import CLIENT_ID, IdP, running_idp
from tests.scim_world import renew, signing_queue
from tests.server.test_http_edge import assert_problem

SSO_ORG, PASSWORD_ORG = "st-elsewhere", "county-general"


@dataclasses.dataclass
class SsoWorld:
    world: World
    idp: IdP

    async def challenge(self) -> str:
        r = await self.world.http.post("/v1/auth/sso/challenge")
        assert r.status_code == 200, r.text
        nonce: str = r.json()["nonce"]
        return nonce

    async def token(self, login: str, **claims: Any) -> str:
        """A genuine ID token for ``login`` with a fresh relay nonce; claims override."""
        nonce = claims.pop("nonce", None) or await self.challenge()
        return self.idp.sign(self.idp.claims(sub=login, nonce=nonce) | claims)

    async def login(self, device: Device, id_token: str, *, org_id: str = SSO_ORG,
                    signer: Device | None = None) -> httpx.Response:
        nonce = jwt.decode(id_token, options={"verify_signature": False})["nonce"]
        sig = (signer or device).keys.sign(login_signing_input(
            b64url_decode(nonce), device.user.login, device.device_id))
        return await self.world.http.post("/v1/auth/sso/login", json={
            "org_id": org_id, "id_token": id_token, "device_id": device.device_id,
            "signature": b64url_encode(sig)})

    async def enrol(self, device: Device, id_token: str) -> httpx.Response:
        return await self.world.http.post("/v1/enrol/complete-sso", json={
            "enrolment_token": device.user.token_b64, "device_certificate": device.cert,
            "signed_prekey": device.signed_prekey(), "one_time_prekeys": device.one_time(1, 3),
            "org_id": device.user.org.org_id, "id_token": id_token})

    async def sso_user(self, login: str) -> Device:
        """Provisioned by IT, enrolled with the IdP only: a device with no relay password."""
        user: User = self.world.orgs[SSO_ORG].user(login)
        (result,) = await self.world.provision(user)
        assert result["ok"], result
        device = user.device()
        r = await self.enrol(device, await self.token(login))
        assert r.status_code == 200, r.text
        return device


@pytest.fixture
async def sso(db_dsn: str, tmp_path: Path) -> AsyncIterator[SsoWorld]:
    with running_idp({"ada.byron": {"name": "Ada Byron"}}) as idp:
        identity = tmp_path / "identity.json"
        identity.write_text(json.dumps({"orgs": {SSO_ORG: {"oidc": {
            "issuer": idp.issuer, "client_id": CLIENT_ID}}}}))
        async with identity_world(db_dsn, tmp_path, orgs=(SSO_ORG, PASSWORD_ORG),
                                  identity_file=identity) as world:
            yield SsoWorld(world, idp)


async def test_enrolled_with_the_idp_only_the_user_logs_in_with_an_id_token(
        sso: SsoWorld) -> None:
    device = await sso.sso_user("ada.byron")
    r = await sso.login(device, await sso.token("ada.byron"))
    assert r.status_code == 200, r.text
    device.access_token = r.json()["access_token"]
    # The session is bound to the device key, as a password login's is.
    assert (await sso.world.call(device, "GET", "/v1/keys/count")).status_code == 200
    # There is no relay password to guess: a password is not even looked at
    # (tests/server/test_sso_passwords.py).
    assert_problem(await sso.world.login_response(device), 401, "sso_required")


async def test_the_organisations_idp_is_public_and_a_password_org_has_none(
        sso: SsoWorld) -> None:
    r = await sso.world.http.get(f"/v1/auth/sso/{SSO_ORG}")
    assert r.json() == {"org_id": SSO_ORG, "issuer": sso.idp.issuer, "client_id": CLIENT_ID,
                        "scopes": ["openid", "profile"]}
    assert_problem(await sso.world.http.get(f"/v1/auth/sso/{PASSWORD_ORG}"), 403, "forbidden")


@pytest.mark.parametrize(("claims", "code"), [
    ({"iss": "http://127.0.0.1:9/another-idp"}, "token_invalid"),
    ({"aud": "another-client"}, "token_audience"),
    ({"aud": [CLIENT_ID, "another-client"], "azp": "another-client"}, "token_audience"),
    ({"aud": [CLIENT_ID, "another-client"]}, "token_audience"),  # several audiences, no azp
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4200}, "token_expired"),
    ({"iat": int(time.time()) + 3600, "exp": int(time.time()) + 4200}, "token_invalid"),
])
async def test_an_id_token_failing_one_check_is_refused_with_its_code(
        sso: SsoWorld, claims: dict[str, Any], code: str) -> None:
    device = await sso.sso_user("ada.byron")
    r = await sso.login(device, await sso.token("ada.byron", **claims))
    assert_problem(r, 401, code)


async def test_an_id_token_with_a_bad_signature_or_an_unknown_key_is_token_invalid(
        sso: SsoWorld) -> None:
    device = await sso.sso_user("ada.byron")
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = sso.idp.claims(sub="ada.byron", nonce=await sso.challenge())
    assert_problem(await sso.login(device, sso.idp.sign(claims, key=forger)), 401,
                   "token_invalid")
    claims = sso.idp.claims(sub="ada.byron", nonce=await sso.challenge())
    assert_problem(await sso.login(device, sso.idp.sign(claims, key=forger, kid="other")), 401,
                   "token_invalid")
    # No key: PyJWT's "none" algorithm (its stubs allow only a key), the unsigned token to refuse.
    unsigned = jwt.encode(sso.idp.claims(sub="ada.byron", nonce=await sso.challenge()),
                          None,  # type: ignore[arg-type]
                          algorithm="none", headers={"kid": sso.idp.kid})
    assert_problem(await sso.login(device, unsigned), 401, "token_invalid")


async def test_a_replayed_or_foreign_nonce_is_challenge_failed(sso: SsoWorld) -> None:
    device = await sso.sso_user("ada.byron")
    token = await sso.token("ada.byron")
    assert (await sso.login(device, token)).status_code == 200
    assert_problem(await sso.login(device, token), 401, "challenge_failed")  # replayed
    foreign = b64url_encode(b"\x01" * 32)  # never issued by this relay
    assert_problem(await sso.login(device, await sso.token("ada.byron", nonce=foreign)), 401,
                   "challenge_failed")


async def test_a_token_for_a_suspended_user_is_user_suspended(sso: SsoWorld) -> None:
    device = await sso.sso_user("ada.byron")
    r = await sso.world.revoke(sso.world.orgs[SSO_ORG], 1, users=(device.user.user_id,))
    assert r.status_code == 200, r.text
    assert_problem(await sso.login(device, await sso.token("ada.byron")), 403,
                   "user_suspended")


async def test_the_device_must_sign_the_nonce_and_the_user_must_be_of_the_organisation(
        sso: SsoWorld) -> None:
    device = await sso.sso_user("ada.byron")
    other = await sso.sso_user("bo.chen")
    r = await sso.login(device, await sso.token("ada.byron"), signer=other)
    assert_problem(r, 401, "challenge_failed")
    r = await sso.login(device, await sso.token("nobody.here"))
    assert_problem(r, 401, "invalid_credentials")
    r = await sso.login(device, await sso.token("ada.byron"), org_id=PASSWORD_ORG)
    assert_problem(r, 403, "forbidden")


async def test_enrolment_with_a_token_for_another_user_is_refused_and_the_code_kept(
        sso: SsoWorld) -> None:
    user = sso.world.orgs[SSO_ORG].user("ada.byron")
    (result,) = await sso.world.provision(user)
    assert result["ok"], result
    device = user.device()
    r = await sso.enrol(device, await sso.token("bo.chen"))
    assert_problem(r, 401, "invalid_credentials")
    r = await sso.enrol(device, await sso.token("ada.byron", aud="another-client"))
    assert_problem(r, 401, "token_audience")
    r = await sso.enrol(device, await sso.token("ada.byron"))
    assert r.status_code == 200, r.text


async def test_a_password_organisation_on_the_same_relay_logs_in_as_before(
        sso: SsoWorld) -> None:
    bo = await sso.world.onboard(sso.world.orgs[PASSWORD_ORG].user("bo.chen"))
    assert bo.access_token is not None
    await sso.sso_user("ada.byron")
    assert (await sso.world.call(bo, "GET", "/v1/keys/count")).status_code == 200



async def test_a_rotated_idp_key_is_fetched_and_the_retired_one_refused(
        db_dsn: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as idps:
        first = idps.enter_context(running_idp({"ada.byron": {}}))
        identity = tmp_path / "identity.json"
        identity.write_text(json.dumps({"orgs": {SSO_ORG: {"oidc": {
            "issuer": first.issuer, "client_id": CLIENT_ID}}}}))
        async with identity_world(db_dsn, tmp_path, orgs=(SSO_ORG,), identity_file=identity,
                                  oidc_key_refetch_cooldown=0.01) as world:
            sso = SsoWorld(world, first)
            device = await sso.sso_user("ada.byron")  # the relay has fetched the first key
            old_token = await sso.token("ada.byron")
            idps.close()
            # The IdP comes back where the relay expects it, signing with a new key only.
            with running_idp({"ada.byron": {}}, port=first.port) as second:
                assert second.kid != first.kid
                sso.idp = second
                r = await sso.login(device, await sso.token("ada.byron"))
                assert r.status_code == 200, r.text
                assert_problem(await sso.login(device, old_token), 401, "token_invalid")


async def test_an_sso_session_must_sign_in_at_the_idp_again_after_its_lifetime(
        sso: SsoWorld) -> None:
    """A user disabled at the IdP alone (no directory push) loses the relay too: an SSO
    session refreshes only until LIGHTBOX_SSO_SESSION_TTL, then needs a new ID token."""
    device = await sso.sso_user("ada.byron")
    r = await sso.login(device, await sso.token("ada.byron"))
    assert r.status_code == 200, r.text
    sso_refresh = r.json()["refresh_token"]
    bo = await sso.world.onboard(sso.world.orgs[PASSWORD_ORG].user("bo.chen"))
    ttl = sso.world.relay.relay.settings.sso_session_ttl
    sso.world.clock.advance(ttl - 60)
    r = await sso.world.http.post("/v1/auth/refresh", json={"refresh_token": sso_refresh})
    assert r.status_code == 200, r.text  # within its lifetime it refreshes as usual
    sso_refresh = r.json()["refresh_token"]
    sso.world.clock.advance(120)
    r = await sso.world.http.post("/v1/auth/refresh", json={"refresh_token": sso_refresh})
    assert_problem(r, 401, "token_expired")
    r = await sso.world.http.post("/v1/auth/refresh", json={"refresh_token": bo.refresh_token})
    assert r.status_code == 200, r.text  # a password session is not affected
    r = await sso.login(device, await sso.token("ada.byron"))
    assert r.status_code == 200, r.text  # a new sign-in at the IdP starts a new one


# --- the IdP's groups and Lightbox roles ------------------------------------------------------

ORTHO, TRAUMA = "Orthopaedics on call", "Trauma on call"


@pytest.fixture
async def sso_roles(db_dsn: str, tmp_path: Path) -> AsyncIterator[SsoWorld]:
    """An organisation whose IdP's ``groups`` claim speaks for two on-call roles."""
    with running_idp({"ada.byron": {"name": "Ada Byron", "groups": [ORTHO]}}) as idp:
        identity = tmp_path / "identity.json"
        identity.write_text(json.dumps({"orgs": {SSO_ORG: {"oidc": {
            "issuer": idp.issuer, "client_id": CLIENT_ID,
            "scopes": ["openid", "profile", "groups"], "role_claim": "groups",
            "claim_roles": {ORTHO: "orthopaedics_oncall", TRAUMA: "trauma_oncall"}}}}}))
        async with identity_world(db_dsn, tmp_path, orgs=(SSO_ORG,),
                                  identity_file=identity) as world:
            yield SsoWorld(world, idp)


async def _signed_in(sso: SsoWorld, device: Device) -> None:
    """A sign-in at the real IdP (its pages, the code flow with PKCE) and at the relay."""
    token = await sso.idp.sign_in(device.user.login, nonce=await sso.challenge())
    r = await sso.login(device, token)
    assert r.status_code == 200, r.text
    device.access_token = r.json()["access_token"]


async def _roles(sso: SsoWorld, device: Device) -> tuple[list[str], list[Any]]:
    """The roles the relay acts on for the user (what colleagues see in the key directory)
    and the renewals IT's queue holds."""
    r = await sso.world.call(device, "GET", f"/v1/directory?login={device.user.login}")
    assert r.status_code == 200, r.text
    (seen,) = r.json()["users"]
    return seen["roles"], (await signing_queue(sso.world))["renewals"]


async def test_idp_groups_changing_between_sign_ins_withdraw_a_role_at_once_and_ask_it_to_sign_one(
        sso_roles: SsoWorld) -> None:
    sso = sso_roles
    user = sso.world.orgs[SSO_ORG].user("ada.byron", roles=("orthopaedics_oncall", "physician"))
    (result,) = await sso.world.provision(user)
    assert result["ok"], result
    device = user.device()
    r = await sso.enrol(device, await sso.idp.sign_in("ada.byron", nonce=await sso.challenge()))
    assert r.status_code == 200, r.text
    await _signed_in(sso, device)
    assert await _roles(sso, device) == (["orthopaedics_oncall", "physician"], [])

    # IT moves her from orthopaedics to trauma in the directory behind the IdP.
    sso.idp.set_account("ada.byron", groups=[TRAUMA])
    await _signed_in(sso, device)
    roles, (asked,) = await _roles(sso, device)
    # Orthopaedics is gone at once; trauma waits for IT's signature; "physician", which the
    # IdP does not speak for, stays.
    assert roles == ["physician"]
    assert (asked["login"], asked["roles"], asked["display_name"]) == \
        ("ada.byron", ["physician", "trauma_oncall"], None)
    r = await renew(sso.world, asked)
    assert r.status_code == 200, r.text
    assert await _roles(sso, device) == (["physician", "trauma_oncall"], [])

    # Signing in again with the same groups asks nothing more.
    await _signed_in(sso, device)
    assert await _roles(sso, device) == (["physician", "trauma_oncall"], [])


async def test_a_role_the_idp_grants_is_never_minted_by_the_relay(sso_roles: SsoWorld) -> None:
    sso = sso_roles
    device = await sso.sso_user("ada.byron")  # certified for orthopaedics_oncall only
    sso.idp.set_account("ada.byron", groups=[ORTHO, TRAUMA, "Hospital admins"])
    await _signed_in(sso, device)
    roles, (asked,) = await _roles(sso, device)
    assert roles == ["orthopaedics_oncall"]
    assert asked["roles"] == ["orthopaedics_oncall", "trauma_oncall"]  # unmapped group ignored
    # A certificate granting more than asked, or signed by another organisation, is refused.
    assert_problem(await renew(sso.world, asked, roles=["hospital_admin", "trauma_oncall"]),
                   422, "certificate_invalid")
    # A withdrawal before IT signs takes back what was asked.
    sso.idp.set_account("ada.byron", groups=[ORTHO])
    await _signed_in(sso, device)
    assert await _roles(sso, device) == (["orthopaedics_oncall"], [])


async def test_a_token_without_the_role_claim_grants_none_of_the_roles_it_speaks_for(
        sso_roles: SsoWorld) -> None:
    sso = sso_roles
    device = await sso.sso_user("ada.byron")
    token = await sso.idp.sign_in("ada.byron", nonce=await sso.challenge(),
                                  scope="openid profile")  # no groups scope, no groups claim
    r = await sso.login(device, token)
    assert r.status_code == 200, r.text
    device.access_token = r.json()["access_token"]
    roles, (asked,) = await _roles(sso, device)
    assert (roles, asked["roles"]) == ([], [])
