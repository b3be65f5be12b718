"""The phone app signs in with the hospital's IdP only: a real certified OpenID provider
(oidc-provider, tests/idp) with its own keys and users, the relay configured to trust it for
the organisation, and the phone app in Debian's Chromium (mobile emulation) running the
Authorization Code flow with PKCE in a sign-in window of its own, the IdP's login page filled
in there as the intern would. The intern enrols with the handout's code and the IdP (no relay
password), signs in to the relay at the IdP, and signs in there again when the relay's single
sign-on session has ended. A forged answer on the app's redirect URI (another ``state``) is
refused with nothing enrolled; a user disabled at the IdP gets no further than its page; an
IdP that cannot be reached is named in a sentence, and the sign-in window closed. A phone off
when IT revoked it with wipe is erased at its next unlock, without a trip to the IdP.
Screenshots go to test-artefacts/phone/ (``sso-*``); axe-core finds no serious or critical
violation on them."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.helpers import make_settings
from tests.identity_world import User, World
from tests.idp_world import CLIENT_ID, IdP, running_idp
from tests.phone.phone_world import (
    PASSPHRASE,
    SHOTS,
    axe_violations,
    bound_socket,
    lost_overnight,
    phone_page,
    phone_world,
    provisioned_intern,
    space_taken,
)

INTERN = "intern"  # the intern's login at the relay and at the IdP (provisioned_intern)


@contextlib.asynccontextmanager
async def sso_phone(db_dsn: str, tmp: Path, accounts: dict[str, dict[str, Any]]
                    ) -> AsyncIterator[tuple[World, str, IdP]]:
    """The IdP (the phone's redirect URI registered for the test client), a relay whose
    organisation signs in with it, and the phone app allowed to call it."""
    sock, port = bound_socket()
    origin = f"http://127.0.0.1:{port}"
    with running_idp(accounts, redirect_uris=(f"{origin}/sso-callback.html",)) as idp:
        identity = tmp / "identity.json"
        identity.write_text(json.dumps({"orgs": {"st-elsewhere": {"oidc": {
            "issuer": idp.issuer, "client_id": CLIENT_ID}}}}))
        async with phone_world(db_dsn, tmp, sock=sock, idps=(idp.issuer,),
                               identity_file=identity) as (world, served):
            assert served == origin
            yield world, served, idp


async def shot(page: Any, name: str, violations: dict[str, Any]) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    found = await axe_violations(page)
    if found:
        violations[name] = found


async def to_the_idp(page: Any, origin: str, code: str, violations: dict[str, Any]) -> None:
    """Type the handout's code, confirm the key, choose a passphrase: the enrol button opens
    the IdP's sign-in window (the caller catches it)."""
    await page.goto(origin)
    await page.fill("#code", code)
    await page.tap("#enrol-next")
    await page.tap("#fp-match")
    await page.locator("#pass-sso").wait_for()
    assert await page.locator("#pass-password").is_hidden()
    await page.fill("#new-pass", PASSPHRASE)
    await page.fill("#new-pass2", PASSPHRASE)
    assert await page.inner_text("#enrol-finish") == \
        "Sign in with your hospital account and enrol"
    await shot(page, "sso-1-passphrase", violations)


async def at_the_idp(popup: Any, origin: str, login: str) -> str:
    """Sign in on the IdP's own pages in the sign-in window (its login form, then its consent
    form, whichever it shows) until it sends the window back to the app (which closes it: "")
    or stops on a page of its own (its text)."""
    from playwright.async_api import Error as PlaywrightError
    try:
        await popup.wait_for_url(lambda url: url != "about:blank")
        for _ in range(4):
            await popup.wait_for_load_state()
            if popup.url.startswith(origin):
                return ""
            if await popup.locator("input[name=login]").count():
                await popup.fill("input[name=login]", login)
                await popup.fill("input[name=password]", "the hospital password")
            elif not await popup.locator("button[type=submit]").count():
                break  # a page of the IdP's own with nothing to submit: an error
            async with popup.expect_navigation():
                await popup.click("button[type=submit]")
        text: str = await popup.inner_text("body")
        return text
    except PlaywrightError:
        assert popup.is_closed()
        return ""


async def devices_of(world: World, user: User) -> int:
    conn = await world.db()
    try:
        found: int = await conn.fetchval("SELECT count(*) FROM devices WHERE user_id = $1",
                                         uuid.UUID(user.user_id))
        return found
    finally:
        await conn.close()


async def idp_window(page: Any, button: str) -> Any:
    """Tap ``button`` and return the sign-in window it opens at the IdP."""
    async with page.context.expect_page() as opened:
        await page.tap(button)
    return await opened.value


async def test_the_intern_enrols_and_signs_in_with_the_hospital_idp_only(
        db_dsn: str, tmp_path: Path) -> None:
    violations: dict[str, Any] = {}
    async with sso_phone(db_dsn, tmp_path, {INTERN: {"name": "Dr Ada Intern"}}) as (
            world, origin, _idp):
        intern = await provisioned_intern(world)
        async with phone_page() as (page, problems):
            await to_the_idp(page, origin, intern.code, violations)
            popup = await idp_window(page, "#enrol-finish")
            await at_the_idp(popup, origin, INTERN)

            # Enrolled with the IdP's ID token, no relay password; the session is begun at
            # the IdP too, from the home screen.
            await page.locator("#signin-panel").wait_for()
            assert await page.inner_text("#conn") == "signed out"
            assert await devices_of(world, intern) == 1
            # The header and the page agree: the page says whose phone it is, and nowhere
            # that she is signed in; the empty notice lines above the screen and in the
            # sign-in panel leave no blank band.
            assert await page.inner_text("#me") == "This phone is Dr Ada Intern's (intern)."
            assert "signed in as" not in (await page.inner_text("body")).lower()
            assert await space_taken(page, "#sso-status") == 0
            assert await space_taken(page, "#signin-error") == 0
            await shot(page, "sso-2-signin-needed", violations)
            await at_the_idp(await idp_window(page, "#sso-signin"), origin, INTERN)
            await page.locator("#conn", has_text="connected").wait_for()
            assert await page.locator("#signin-panel").is_hidden()
            await shot(page, "sso-3-connected", violations)

            # Lock and unlock: the passphrase opens the vault, the session kept there renews.
            await page.tap("#lock")
            await page.fill("#passphrase", PASSPHRASE)
            await page.tap("#unlock")
            await page.locator("#conn", has_text="connected").wait_for()
            assert await page.locator("#signin-panel").is_hidden()

            # The relay's single sign-on session ends (LIGHTBOX_SSO_SESSION_TTL): at the next
            # unlock the app asks for a new sign-in at the IdP, and connects after it.
            await page.tap("#lock")
            relay_settings = make_settings()  # the relay's (phone_world changes neither TTL)
            world.clock.advance(relay_settings.sso_session_ttl
                                + relay_settings.access_token_ttl)
            await page.fill("#passphrase", PASSPHRASE)
            await page.tap("#unlock")
            await page.locator("#signin-panel").wait_for()
            assert await page.inner_text("#conn") == "signed out"
            world.clock.offset = 0  # back to the phone's time, which signs its proofs
            await at_the_idp(await idp_window(page, "#sso-signin"), origin, INTERN)
            await page.locator("#conn", has_text="connected").wait_for()

            # The session ends while the app is open: the next request is refused, and the
            # app asks for the sign-in at the IdP instead of naming a token.
            world.clock.advance(relay_settings.sso_session_ttl
                                + relay_settings.access_token_ttl)
            await page.fill("#text", "Query scaphoid fracture, please review")
            await page.tap("#send")
            await page.locator("#signin-panel").wait_for()
            assert await page.inner_text("#send-status") == (
                "Your hospital sign-in has ended: sign in with your hospital account again, "
                "then try again.")
            world.clock.offset = 0
            await at_the_idp(await idp_window(page, "#sso-signin"), origin, INTERN)
            await page.locator("#signin-panel").wait_for(state="hidden")
            assert problems == []
    assert violations == {}


async def test_an_answer_for_another_request_is_refused_and_nothing_is_enrolled(
        db_dsn: str, tmp_path: Path) -> None:
    async with sso_phone(db_dsn, tmp_path, {INTERN: {"name": "Dr Ada Intern"}}) as (
            world, origin, _idp):
        intern = await provisioned_intern(world)
        async with phone_page() as (page, _problems):
            await to_the_idp(page, origin, intern.code, {})
            popup = await idp_window(page, "#enrol-finish")
            await popup.wait_for_load_state()
            # While the intern is at the IdP, a link (a login CSRF) sends another sign-in's
            # answer to the app's redirect URI.
            forged = await page.context.new_page()
            await forged.goto(f"{origin}/sso-callback.html?code=someone-elses-code"
                              f"&state=not-this-request")
            await page.locator("#pass-error", has_text="was not for this request").wait_for()
            assert await page.inner_text("#pass-error") == (
                "The sign-in answer was not for this request, so it was refused. Sign in "
                "again.")
            assert await forged.evaluate("() => location.search") == ""  # the URL is cleared
            assert await page.evaluate("() => document.body.dataset.screen") == "passphrase"
            assert await devices_of(world, intern) == 0


async def test_a_user_disabled_at_the_idp_gets_no_further_than_its_page(
        db_dsn: str, tmp_path: Path) -> None:
    accounts = {INTERN: {"name": "Dr Ada Intern", "disabled": True}}
    async with sso_phone(db_dsn, tmp_path, accounts) as (world, origin, _idp):
        intern = await provisioned_intern(world)
        async with phone_page() as (page, _problems):
            await to_the_idp(page, origin, intern.code, {})
            popup = await idp_window(page, "#enrol-finish")
            text = await at_the_idp(popup, origin, INTERN)
            assert not popup.url.startswith(origin)
            assert "error" in text
            # The app is still waiting for an answer the IdP never sends; nothing enrolled.
            assert await page.inner_text("#sso-status") == \
                "Sign in with your hospital account in the window that opened…"
            assert await page.inner_text("#pass-error") == ""
            assert await devices_of(world, intern) == 0
            await popup.close()


async def test_an_idp_that_cannot_be_reached_is_a_sentence_and_nothing_is_enrolled(
        db_dsn: str, tmp_path: Path) -> None:
    dead, dead_port = bound_socket()
    dead.close()  # nothing listens there any more
    issuer = f"http://127.0.0.1:{dead_port}"
    identity = tmp_path / "identity.json"
    identity.write_text(json.dumps({"orgs": {"st-elsewhere": {"oidc": {
        "issuer": issuer, "client_id": CLIENT_ID}}}}))
    async with phone_world(db_dsn, tmp_path, idps=(issuer,), identity_file=identity) as (
            world, origin):
        intern = await provisioned_intern(world)
        async with phone_page() as (page, _problems):
            await to_the_idp(page, origin, intern.code, {})
            popup = await idp_window(page, "#enrol-finish")
            await page.locator("#pass-error", has_text="cannot be reached").wait_for()
            assert await page.inner_text("#pass-error") == (
                "Your hospital's sign-in service cannot be reached. Check the network and try "
                "again.")
            if not popup.is_closed():
                await popup.wait_for_event("close")
            assert await devices_of(world, intern) == 0


async def test_a_lost_sso_phone_off_when_revoked_with_wipe_is_wiped_at_its_next_unlock(
        db_dsn: str, tmp_path: Path) -> None:
    """USER_GUIDE "A lost phone" for a phone that signs in with the hospital's IdP: closed when
    IT revoked it with wipe, opened hours later, it is erased at unlock, before any consult is
    shown and without a trip to the IdP (its kept relay session is refused as revoked; its last
    access token, expired, hears the order)."""
    async with sso_phone(db_dsn, tmp_path, {INTERN: {"name": "Dr Ada Intern"}}) as (
            world, origin, _idp):
        intern = await provisioned_intern(world)
        async with phone_page() as (page, _):
            await to_the_idp(page, origin, intern.code, {})
            await at_the_idp(await idp_window(page, "#enrol-finish"), origin, INTERN)
            await at_the_idp(await idp_window(page, "#sso-signin"), origin, INTERN)
            await page.locator("#conn", has_text="connected").wait_for()
            found, _ = await lost_overnight(world, page, origin, intern, wipe=True)
            await found.fill("#passphrase", PASSPHRASE)
            await found.tap("#unlock")
            await found.locator("#banner", has_text="its Lightbox data has been erased").wait_for()
            assert await found.is_visible("#screen-enrol")
            assert len(found.context.pages) == 1  # no sign-in window was opened
