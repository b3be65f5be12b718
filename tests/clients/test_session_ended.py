"""A session the relay ended, as a clinician meets it through the real ``lightbox`` commands
against a real relay, a real hospital directory (SCIM) and the real test IdP (oidc-provider,
tests/idp): suspended by the directory and resumed, the next command says at once that the
session has ended and how to sign in again, never "cannot reach the relay" after half a
minute of reconnecting; a clinician who signs in at the hospital's IdP is told to sign in
there again (``lightbox login --sso``), never that a password they do not have is wrong, and
a revoked one that the device was revoked; signing in at the IdP as someone else says so."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import msgspec
import pytest

from clients.sdk import identity
from clients.sdk.keystore import KeyStore
from clients.sdk.sso import SignedIn
from protocol.keys import CHEAP_PROFILE
from tests.clients.test_cli_failures import (
    _env,
    _write_org_keyfile,
    assert_one_sentence,
    finish,
    run,
)
from tests.clinician_world import Clinician, enrol_clinician
from tests.helpers import ROOT, seconds
from tests.identity_world import PASSWORD, World
from tests.idp_world import CLIENT_ID, IdP, running_idp
from tests.scim_world import ScimWorld, scim_world

ENDED = "error: your session has ended (token_invalid): run `lightbox login`"
SSO_ENDED = ("error: your session has ended: sign in again with your hospital account: run "
             "`lightbox login --sso`")
# With the relay's code when a request of the command was refused, without when the relay
# closed its connection (clients/sdk/failures.py).
REVOKED = re.compile(r"^This device was revoked by your organisation( \(device_revoked\))?; "
                     r"ask your IT team for a new enrolment code to use Lightbox on it again\.$")


@dataclasses.dataclass
class Hospital:
    scim: ScimWorld
    idp: IdP
    tmp: Path

    @property
    def world(self) -> World:
        return self.scim.world

    def env(self) -> dict[str, str]:
        return _env(self.tmp, self.world)

    async def id_token(self, login: str) -> SignedIn:
        """The IdP's ID token for ``login`` (its real sign-in and consent pages) carrying a
        fresh relay nonce, as ``lightbox enroll --sso`` and ``login --sso`` get it."""
        r = await self.world.http.post("/v1/auth/sso/challenge")
        assert r.status_code == 200, r.text
        nonce: str = r.json()["nonce"]
        return SignedIn(id_token=await self.idp.sign_in(login, nonce=nonce), nonce=nonce)

    async def phone(self, login: str, *, sso: bool) -> tuple[Clinician, str]:
        """``login``, signed by IT from the directory, with the profile ``phone`` (its key
        store, as ``lightbox enroll`` leaves it) logged in: with a password, or (``sso``)
        at the IdP only. Returns the clinician and the directory's id of the user."""
        created, user = await self.scim.signed_user(login)
        token = (await self.id_token(login)).id_token if sso else None
        c = await enrol_clinician(self.world, self.tmp, login, user=user, provision=False,
                                  vault_dir=self.tmp / "home" / "phone", id_token=token)
        if sso:
            await identity.sso_login(c.client.relay, c.vault.state, await self.id_token(login))
        else:
            await c.client.ensure_login()
        await c.client.close()
        KeyStore(c.vault.directory).create(c.vault.state, PASSWORD, profile=CHEAP_PROFILE)
        c.vault.lock()
        for kept in c.vault.directory.glob("vault.db*"):  # as `lightbox enroll` leaves it
            kept.unlink()
        return c, created["id"]

    async def set_active(self, directory_id: str, active: bool) -> None:
        r = await self.scim.patch(f"/Users/{directory_id}",
                                  [{"op": "replace", "value": {"active": active}}])
        assert r.status_code == 200, r.text


@pytest.fixture
async def hospital(db_dsn: str, tmp_path: Path, request: pytest.FixtureRequest
                   ) -> AsyncIterator[Hospital]:
    """The identity world's organisation signs on with the IdP; its clinicians' Lightbox
    passwords are refused (server/orgidentity.py ``password_login``) unless the test asks
    for ``"allowed"`` (indirect parameter), the migration period in which both kinds sign in."""
    accounts = {login: {"name": login.replace(".", " ").title()}
                for login in ("ada.byron", "bo.chen", "cy.dee")}
    passwords = getattr(request, "param", "refused")
    with running_idp(accounts) as idp:
        sso = tmp_path / "hospital.json"
        sso.write_text(json.dumps({"orgs": {"st-elsewhere": {"oidc": {
            "issuer": idp.issuer, "client_id": CLIENT_ID, "password_login": passwords}}}}))
        async with scim_world(db_dsn, tmp_path, identity_file=sso) as scim:
            yield Hospital(scim, idp, tmp_path)


def _said(err: str) -> str:
    """The command's sentence: its last line (a test run's own warning about the cheap
    passphrase sealing may come first)."""
    lines = [line for line in err.splitlines() if not line.startswith("warning: LIGHTBOX_")]
    assert len(lines) == 1, err
    return lines[0]


async def _commands(env: dict[str, str]) -> list[tuple[tuple[str, ...], int, str, str]]:
    """The everyday commands on the profile ``phone``, each with its status and output."""
    out: list[tuple[tuple[str, ...], int, str, str]] = []
    for argv in (("inbox", "--timeout", "20"), ("threads",),
                 ("send", "--to", "role:intern", "hello")):
        started = time.monotonic()
        rc, stdout, err = await run("lightbox", "--profile", "phone", *argv, env=env)
        out.append((argv, rc, stdout, err))
        # At once: not after the command's wait for a relay it believes unreachable.
        assert time.monotonic() - started < seconds(15), (argv, err)
    return out


@pytest.mark.parametrize(("hospital", "sso"), [("allowed", False), ("refused", True)],
                         ids=["password", "sso"], indirect=["hospital"])
async def test_resumed_by_the_directory_every_command_signs_in_again_or_says_at_once_to(
        hospital: Hospital, sso: bool) -> None:
    """The directory's ``active: false`` ended the device's sessions; ``active: true`` lets the
    user sign in again, but the access token the device holds, not expired, names an ended
    session: the relay refuses it (token_invalid) on every request and at the websocket. A
    clinician with a password: the next command signs in again by itself with the password
    that unlocked the device, and every command works (docs/USER_GUIDE.md "Your session
    renews itself"). One who signs in at the IdP: every command says at once to sign in
    there."""
    _, directory_id = await hospital.phone("ada.byron", sso=sso)
    await hospital.set_active(directory_id, False)
    await hospital.set_active(directory_id, True)
    env = hospital.env()
    for argv, rc, out, err in await _commands(env):
        if sso:
            assert_one_sentence(rc, out, err)
            assert rc == 1, (argv, err)
            assert _said(err) == SSO_ENDED, (argv, err)
        else:
            assert "Traceback" not in err and "session has ended" not in err, (argv, err)
            if argv[0] == "send":  # signed in, it reached the relay's check of the role
                assert "role_unknown" in err, (argv, err)
            else:
                assert rc == 0 and "error" not in err, (argv, out + err)


@pytest.mark.parametrize("hospital", ["refused", "allowed"], indirect=True)
async def test_at_the_end_of_the_idps_session_the_clinician_is_told_to_sign_in_there(
        hospital: Hospital) -> None:
    """Once a day the relay asks a clinician who signs in at the IdP to sign in there again
    (``LIGHTBOX_SSO_SESSION_TTL``); she has no Lightbox password to be asked for, so nothing
    says "login or password is wrong". So too for a profile enrolled before the device kept
    how it signs in, whether the relay refuses passwords in her organisation (sso_required) or
    still allows them (the key store's passphrase is no password of hers)."""
    c, _ = await hospital.phone("ada.byron", sso=True)
    settings = hospital.world.relay.relay.settings
    hospital.world.clock.advance(settings.sso_session_ttl + settings.access_token_ttl)
    env = hospital.env()
    for argv, rc, out, err in await _commands(env):
        assert_one_sentence(rc, out, err)
        assert _said(err) == SSO_ENDED, (argv, err)
    rc, out, err = await run("lightbox", "--profile", "phone", "devices", env=env)
    assert (rc, _said(err)) == (1, SSO_ENDED), out + err
    # The same profile as an earlier version kept it: nothing said how it signs in.
    opened = KeyStore(c.vault.directory).open(PASSWORD)
    opened.save(msgspec.structs.replace(opened.state, sso=False))
    rc, out, err = await run("lightbox", "--profile", "phone", "threads", env=env)
    assert (rc, _said(err)) == (1, SSO_ENDED), out + err


async def test_a_revoked_sso_device_whose_session_ended_is_told_it_was_revoked(
        hospital: Hospital) -> None:
    c, _ = await hospital.phone("ada.byron", sso=True)
    _write_org_keyfile(hospital.world, hospital.tmp / "it" / "org.key")
    env = hospital.env()
    device_id = KeyStore(c.vault.directory).open(PASSWORD).state.device_id
    rc, out, err = await run("lightbox-admin", "device", "revoke", device_id, env=env)
    assert rc == 0, out + err
    settings = hospital.world.relay.relay.settings
    hospital.world.clock.advance(settings.sso_session_ttl + settings.access_token_ttl)
    for argv in (("threads",), ("devices",)):
        rc, out, err = await run("lightbox", "--profile", "phone", *argv, env=env)
        assert rc == 1 and REVOKED.match(_said(err)), (argv, out + err)


async def _sign_in_at_the_idp(url: str, login: str) -> None:
    """What the clinician does in the browser: the IdP's sign-in and consent pages as
    ``login``, then its redirect to the command's loopback address (RFC 8252 §7.3)."""
    async with httpx.AsyncClient(timeout=seconds(10)) as http:
        response = await http.get(url)
        for _ in range(10):
            if response.is_redirect:
                target = urljoin(str(response.url), response.headers["location"])
                response = await http.get(target)
                if target.startswith("http://127.0.0.1") and "/callback?" in target:
                    return
                continue
            action = re.search(r'<form[^>]*action="([^"]+)"', response.text)
            prompt = re.search(r'name="prompt" value="(\w+)"', response.text)
            assert action and prompt, response.text
            form = {"prompt": prompt.group(1)}
            if form["prompt"] == "login":
                form |= {"login": login, "password": "the hospital password"}
            response = await http.post(urljoin(str(response.url), action.group(1)), data=form)
    raise AssertionError("the IdP never redirected back to the command")


async def _login_sso_as(env: dict[str, str], login: str) -> tuple[int, str, str]:
    """``lightbox login --sso``, signed in at the IdP as ``login``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.clinician.cli", "--profile", "phone", "login", "--sso",
        "--no-browser", cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), seconds(30))).decode()
            assert line, (await proc.stderr.read()).decode()
            if found := re.match(r"\s+(http://\S+/auth\?\S+)", line):
                break
        await _sign_in_at_the_idp(found.group(1), login)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return await finish(proc)


async def test_signing_in_at_the_idp_as_someone_else_says_so_and_changes_nothing(
        hospital: Hospital) -> None:
    """At the hospital's page the clinician signs in as a colleague with a Lightbox account
    (the relay: challenge_failed, the device is not theirs), or as someone the relay does not
    know (invalid_credentials); either way the CLI names what happened. Signed in as herself,
    it works."""
    c, _ = await hospital.phone("ada.byron", sso=True)
    await hospital.scim.signed_user("bo.chen")
    keystore = KeyStore(c.vault.directory)
    before = keystore.open(PASSWORD).state.session
    env = hospital.env()
    wrong = ("error: you signed in at the hospital's sign-on as someone else than ada.byron; "
             "nothing changed: sign in there as ada.byron")
    for someone_else in ("bo.chen", "cy.dee"):
        rc, out, err = await _login_sso_as(env, someone_else)
        assert (rc, _said(err)) == (1, wrong), (someone_else, out + err)
    assert keystore.open(PASSWORD).state.session == before  # nothing changed
    rc, out, err = await _login_sso_as(env, "ada.byron")
    assert rc == 0, out + err
    assert "logged in as ada.byron" in out
