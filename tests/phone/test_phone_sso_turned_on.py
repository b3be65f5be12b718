"""The hospital turns single sign-on on for an organisation whose interns already use the phone
app with a Lightbox password (USER_GUIDE "Passwords given before sign-on"): the relay, restarted
with the organisation's ``oidc`` entry in LIGHTBOX_IDENTITY_FILE (passwords refused, the
default), answers the phone's password login ``sso_required``, ends its password session at the
next refresh, and refuses a password enrolment (docs/SECURITY.md "No password beside the IdP").
The phone then switches to the hospital's sign-in, with one sentence saying why: a phone
unlocked after the restart, a phone open through it, and an intern enrolling across it (the
same code, at the IdP). Its vault is kept (the same passphrase unlocks it, nothing erased), and
a consult sent after the sign-in reaches a real SDK client. Real relay (stopped and started
again on its port with the new identity file, as IT restarts it), the real test IdP
(oidc-provider, tests/idp), Debian's Chromium. Screenshots go to test-artefacts/phone/
(``sso-turned-on-*``); axe-core finds no serious or critical violation on them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec

from clients.sdk.client import LightboxClient, MessageEvent
from clients.sdk.transport import KEEPALIVE_EXPIRY
from protocol import api
from protocol.canonical import b64url_decode, b64url_encode
from protocol.keys import Ed25519KeyPair
from tests.clinician_world import Clinician, enrol_clinician
from tests.helpers import running_relay
from tests.identity_world import PASSWORD, World
from tests.idp_world import CLIENT_ID, IdP, running_idp
from tests.phone.phone_world import (
    ORTHO,
    PASSPHRASE,
    bound_socket,
    enrol_by_code,
    next_event,
    phone_page,
    phone_world,
    provisioned_intern,
)
from tests.phone.test_phone_sso import INTERN, at_the_idp, devices_of, idp_window, shot

SIGN_IN_NOW = ("Your hospital now signs you in with your hospital account instead of a "
               "Lightbox password; your passphrase still unlocks Lightbox on this phone.")
ENROL_NOW = ("Your hospital now signs you in with your hospital account instead of a "
             "Lightbox password: enrol with it, with the same code and passphrase.")
BEFORE = "Wrist, bay 6: fell on outstretched hand, snuffbox tender. Scaphoid views?"
AFTER = "Scaphoid views done, no fracture seen: can she go home with a splint?"


@dataclasses.dataclass
class Hospital:
    """The phone's world, its organisation not signing on yet; :meth:`turn_on_sso` writes its
    ``oidc`` entry and restarts the relay where it was, as IT does."""

    world: World
    origin: str
    idp: IdP
    identity: Path
    stack: contextlib.AsyncExitStack

    async def turn_on_sso(self) -> None:
        self.identity.write_text(json.dumps({"orgs": {self.world.org.org_id: {"oidc": {
            "issuer": self.idp.issuer, "client_id": CLIENT_ID}}}}))
        before = self.world.relay
        await asyncio.to_thread(before.stop)  # off this loop: its clients answer the close
        settings = dataclasses.replace(before.relay.settings,
                                       port=int(before.base_url.rsplit(":", 1)[1]))
        relay = await self.stack.enter_async_context(
            running_relay(self.world.dsn, settings, clock=self.world.clock))
        self.world.relay = relay
        self.world.http = await self.stack.enter_async_context(httpx.AsyncClient(
            base_url=relay.base_url, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY)))


@contextlib.asynccontextmanager
async def hospital(db_dsn: str, tmp: Path) -> AsyncIterator[Hospital]:
    sock, port = bound_socket()
    origin = f"http://127.0.0.1:{port}"
    with running_idp({INTERN: {"name": "Dr Ada Intern"}},
                     redirect_uris=(f"{origin}/sso-callback.html",)) as idp:
        identity = tmp / "identity.json"
        identity.write_text(json.dumps({"orgs": {}}))  # no organisation signs on yet
        async with phone_world(db_dsn, tmp, sock=sock, idps=(idp.issuer,),
                               identity_file=identity, autolock_seconds=600) as (world, served), \
                contextlib.AsyncExitStack() as stack:
            yield Hospital(world, served, idp, identity, stack)


async def signed_in_at_the_idp(h: Hospital, specialist: Clinician
                               ) -> asyncio.Queue[Any]:
    """The specialist, enrolled with a password too, signs in at the IdP from his SDK client's
    device (its session kept in his vault, as ``lightbox login --sso`` keeps it) and starts it;
    his events."""
    state = specialist.vault.state
    r = await h.world.http.post("/v1/auth/sso/challenge")
    assert r.status_code == 200, r.text
    nonce = r.json()["nonce"]
    id_token = h.idp.sign(h.idp.claims(sub=state.login, nonce=nonce))
    assert jwt.decode(id_token, options={"verify_signature": False})["nonce"] == nonce
    signature = Ed25519KeyPair.from_seed(state.device_seed).sign(api.login_signing_input(
        b64url_decode(nonce), state.login, state.device_id))
    r = await h.world.http.post("/v1/auth/sso/login", json={
        "org_id": state.org_id, "id_token": id_token, "device_id": state.device_id,
        "signature": b64url_encode(signature)})
    assert r.status_code == 200, r.text
    specialist.vault.save(msgspec.structs.replace(
        state, sso=True, session=msgspec.convert(r.json(), api.TokenPair)))
    specialist.client = LightboxClient(specialist.vault, specialist.vault, password=PASSWORD,
                                       backoff_base=0.05, backoff_max=0.5)  # as enrol_clinician
    events = specialist.client.subscribe()
    await specialist.client.start(wait_connected=30)
    return events


async def sent(page: Any) -> None:
    await page.locator("#send-status", has_text="Sent").wait_for()
    assert await page.inner_text("#send-status") == "Sent: the relay stored it."


async def test_a_password_phone_unlocked_after_sso_is_turned_on_signs_in_at_the_idp(
        db_dsn: str, tmp_path: Path) -> None:
    violations: dict[str, Any] = {}
    async with hospital(db_dsn, tmp_path) as h:
        intern = await provisioned_intern(h.world)
        specialist = await enrol_clinician(h.world, tmp_path, "ortho", roles=(ORTHO,),
                                           display_name="Dr Bo Ortho")
        async with phone_page() as (page, problems):
            await enrol_by_code(page, h.origin, intern.code)  # a password, no IdP yet
            await page.fill("#text", BEFORE)
            await page.tap("#send")
            await sent(page)
            await page.tap("#lock")

            await h.turn_on_sso()
            await page.fill("#passphrase", PASSPHRASE)
            await page.tap("#unlock")
            # The same passphrase opens the vault; the relay refuses the password behind it,
            # and the phone offers the hospital's sign-in, saying why, with its consults.
            await page.locator("#signin-panel").wait_for()
            assert await page.inner_text("#signin-why") == SIGN_IN_NOW
            assert await page.inner_text("#conn") == "signed out"
            assert await page.inner_text("#signin-error") == ""
            assert "refused" not in (await page.inner_text("body"))
            assert await page.locator(".thread", has_text="Scaphoid views?").count() == 1
            await shot(page, "sso-turned-on-1-unlocked", violations)

            await at_the_idp(await idp_window(page, "#sso-signin"), h.origin, INTERN)
            await page.locator("#conn", has_text="connected").wait_for()
            assert await page.locator("#signin-panel").is_hidden()
            assert await devices_of(h.world, intern) == 1  # the same device, not enrolled again
            await shot(page, "sso-turned-on-2-signed-in", violations)

            events = await signed_in_at_the_idp(h, specialist)
            try:
                await page.fill("#text", AFTER)
                await page.tap("#send")
                await sent(page)
                got = await next_event(events, MessageEvent, lambda e: AFTER in e.body.text)
                assert got.message.sender_user_id == intern.user_id
                # Locked and unlocked: the passphrase, and the session begun at the IdP renews.
                await page.tap("#lock")
                await page.fill("#passphrase", PASSPHRASE)
                await page.tap("#unlock")
                await page.locator("#conn", has_text="connected").wait_for()
                assert await page.locator("#signin-panel").is_hidden()
            finally:
                specialist.client.unsubscribe(events)
                await specialist.client.close()
            assert problems == []
    assert violations == {}


async def test_a_password_phone_open_when_sso_is_turned_on_asks_for_the_hospital_sign_in(
        db_dsn: str, tmp_path: Path) -> None:
    """Open through the restart: its password session ends at the next refresh
    (``token_expired``), and the phone offers the hospital's sign-in, saying why."""
    async with hospital(db_dsn, tmp_path) as h:
        intern = await provisioned_intern(h.world)
        async with phone_page() as (page, _problems):
            await enrol_by_code(page, h.origin, intern.code)
            await h.turn_on_sso()
            await page.locator("#signin-panel").wait_for()
            assert await page.inner_text("#signin-why") == SIGN_IN_NOW
            await shot(page, "sso-turned-on-3-while-open", {})
            await at_the_idp(await idp_window(page, "#sso-signin"), h.origin, INTERN)
            await page.locator("#conn", has_text="connected").wait_for()
            assert await page.locator("#signin-panel").is_hidden()
            assert await page.inner_text("#signin-why") == ""


async def test_an_intern_enrolling_with_a_password_is_offered_the_hospital_sign_in(
        db_dsn: str, tmp_path: Path) -> None:
    """The code typed and the key confirmed while the organisation had no IdP, the relay
    restarted with one: the password enrolment is refused (``sso_required``, the code kept),
    and the same screen enrols with the hospital's sign-in instead, with the same code."""
    violations: dict[str, Any] = {}
    async with hospital(db_dsn, tmp_path) as h:
        intern = await provisioned_intern(h.world)
        async with phone_page() as (page, problems):
            await page.goto(h.origin)
            await page.fill("#code", intern.code)
            await page.tap("#enrol-next")
            await page.tap("#fp-match")
            assert await page.locator("#pass-password").is_visible()
            await h.turn_on_sso()
            await page.fill("#new-pass", PASSPHRASE)
            await page.fill("#new-pass2", PASSPHRASE)
            await page.tap("#enrol-finish")
            await page.locator("#pass-sso").wait_for()
            assert await page.inner_text("#pass-why") == ENROL_NOW
            assert await page.locator("#pass-password").is_hidden()
            assert await page.inner_text("#pass-error") == ""
            assert await page.inner_text("#enrol-finish") == \
                "Sign in with your hospital account and enrol"
            assert await devices_of(h.world, intern) == 0
            await shot(page, "sso-turned-on-4-enrol", violations)

            await at_the_idp(await idp_window(page, "#enrol-finish"), h.origin, INTERN)
            await page.locator("#signin-panel").wait_for()
            assert await devices_of(h.world, intern) == 1
            await at_the_idp(await idp_window(page, "#sso-signin"), h.origin, INTERN)
            await page.locator("#conn", has_text="connected").wait_for()
            assert problems == []
    assert violations == {}
