"""A clinician enrols and signs in with the hospital's IdP only, through the real commands: a
real certified OpenID provider (oidc-provider, tests/idp) with its own keys and users, the
relay, ``lightbox enroll --sso`` and ``lightbox login --sso`` doing the Authorization Code
flow with PKCE and a loopback redirect (RFC 8252 §7.3), and a real Chromium (Playwright)
filling in the IdP's own login page. A user the IdP has disabled gets no further than the
IdP's page; one the directory suspended is refused by the relay."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from clients.admin import cli as admin_cli
from clients.clinician import cli as device_cli
from server import __main__ as server_cli
from tests.clients.test_desktop import browser_page
from tests.clients.test_identity_journey import ORG, _codes, _ok, _run, journey_env
from tests.helpers import ROOT, ShiftedClock, make_settings, running_relay, seconds
from tests.idp_world import CLIENT_ID, running_idp

__all__ = ["journey_env"]

KEYSTORE_PASSPHRASE = "copper-meadow-signal-8"


async def _lightbox(*argv: str) -> asyncio.subprocess.Process:
    """``lightbox ARGV`` as a clinician runs it (it waits for the browser's redirect)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.clinician.cli", *argv, cwd=ROOT,
        env={**os.environ, "LIGHTBOX_PASSWORD": KEYSTORE_PASSPHRASE},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _sign_in_url(proc: asyncio.subprocess.Process) -> str:
    """The address the command prints for the browser (RFC 8252: the user's own agent)."""
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), seconds(30))).decode()
        assert line, "the command ended before printing the sign-in address"
        match = re.match(r"\s+(http://\S+/auth\?\S+)", line)
        if match:
            return match.group(1)


async def _at_the_idp(url: str, login: str) -> str:
    """Sign in on the IdP's own page, as the clinician would; the text it ends on."""
    async with browser_page() as (page, _problems):
        await page.goto(url)
        await page.fill("input[name=login]", login)
        await page.fill("input[name=password]", "the hospital password")
        await page.click("button[type=submit]")
        await page.wait_for_load_state()
        if await page.locator("button[type=submit]").count():  # the consent prompt
            await page.click("button[type=submit]")
            await page.wait_for_load_state()
        text: str = await page.inner_text("body")
        return text


async def _finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), seconds(60))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_clinician_enrols_and_signs_in_with_the_idp_only(
        journey_env: Path, db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = journey_env
    accounts: dict[str, dict[str, Any]] = {
        "ada.byron": {"name": "Ada Byron"}, "cy.dee": {"name": "Cy Dee", "disabled": True}}
    with running_idp(accounts) as idp:
        await _ok(admin_cli.main, ["org", "init", "--org-id", ORG, "--keyfile",
                                   str(tmp / "it" / "org.key")])
        await _ok(server_cli.main, ["org", "trust", str(tmp / "it" / f"{ORG}.pub.json")])
        await _ok(server_cli.main, ["admin", "create", "--login", "it.admin"])
        identity = tmp / "identity.json"
        identity.write_text(json.dumps({"orgs": {ORG: {"oidc": {
            "issuer": idp.issuer, "client_id": CLIENT_ID}}}}))
        settings = make_settings(data_dir=tmp / "relay", argon2_profile="cheap",
                                 identity_file=identity)
        clock = ShiftedClock()
        async with running_relay(db_dsn, settings, clock=clock) as running:
            url = running.base_url
            await _ok(admin_cli.main, ["login", "--server", url, "--login", "it.admin"])
            codes = {}
            for login, name in (("ada.byron", "Ada Byron"), ("cy.dee", "Cy Dee")):
                out = await _ok(admin_cli.main, [
                    "user", "add", "--name", name, "--login", login, "--roles", "physician",
                    "--licence-type", "MD", "--licence-number", f"GMC-{login}",
                    "--jurisdiction", "UK", "--licence-expires", "2031-12-31", "--no-qr"])
                codes.update(_codes(out))

            # Enrol with the code from the handout and the IdP's sign-in: no relay password.
            enrol = await _lightbox("--profile", "ada", "enroll", "--sso", "--no-browser",
                                    "--server", url, "--code", codes["ada.byron"])
            await _at_the_idp(await _sign_in_url(enrol), "ada.byron")
            rc, out, err = await _finish(enrol)
            assert rc == 0, out + err
            assert "enrolled ada.byron" in out

            signing_in = await _lightbox("--profile", "ada", "login", "--sso", "--no-browser")
            await _at_the_idp(await _sign_in_url(signing_in), "ada.byron")
            rc, out, err = await _finish(signing_in)
            assert rc == 0, out + err
            assert "logged in as ada.byron" in out
            monkeypatch.setenv("LIGHTBOX_PASSWORD", KEYSTORE_PASSPHRASE)
            assert "1 device, every certificate verified" in await _ok(
                device_cli.main, ["--profile", "ada", "devices"])

            # A day later the session no longer refreshes: she is told to sign in again at
            # the IdP (she has no Lightbox password to be asked for).
            clock.advance(settings.sso_session_ttl + settings.access_token_ttl)
            rc, _out, err = await _run(device_cli.main, ["--profile", "ada", "devices"])
            assert rc == 1
            assert err.strip() == ("error: your session has ended: sign in again with your "
                                   "hospital account: run `lightbox login --sso`"), err
            clock.offset = 0  # back to the time the devices' proofs are signed at

            # Disabled at the IdP: its page refuses, the relay is never reached.
            enrol = await _lightbox("--profile", "cy", "enroll", "--sso", "--no-browser",
                                    "--sso-wait", str(seconds(5)), "--server", url,
                                    "--code", codes["cy.dee"])
            page = await _at_the_idp(await _sign_in_url(enrol), "cy.dee")
            assert "error" in page
            rc, out, err = await _finish(enrol)
            assert rc == 1
            assert "sso_failed: no answer from the sign-in page in time" in err

            # Suspended by IT (a signed revocation list): the IdP still signs her in, the
            # relay refuses.
            await _ok(admin_cli.main, ["user", "suspend", "ada.byron"])
            signing_in = await _lightbox("--profile", "ada", "login", "--sso", "--no-browser")
            await _at_the_idp(await _sign_in_url(signing_in), "ada.byron")
            rc, out, err = await _finish(signing_in)
            assert rc == 1
            assert "user_suspended" in err
