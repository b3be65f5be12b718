"""The identity journey of PROTOCOL.md §11, driven through the real CLIs against a real relay:

org init, trust the org on the relay, admin create, admin login, import ten users from CSV,
enrol one on a "phone", link a "desktop", log in from both, look up a colleague's devices
(a second enrolled user) and claim their prekeys, suspend/resume and renew a licence, revoke
the desktop and watch its login fail with device_revoked; every step is in the audit trail and
``lightbox-server audit verify`` passes (trust, admin create and audit verify are the relay
host's commands, ``lightbox-server``'s).

The CLIs run through their ``main(argv)`` in a worker thread (the relay runs in its own
thread), except the new device of the linking step, which runs as a subprocess because it
blocks until the enrolled device approves it. Secrets come from environment variables and
every Argon2id profile is the cheap one (LIGHTBOX_INSECURE_FAST_KDF, LIGHTBOX_ARGON2_PROFILE).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import msgspec
import pytest

from clients.admin import cli as admin_cli
from clients.admin.csvio import COLUMNS
from clients.admin.handout import enrol_uri
from clients.clinician import cli as device_cli
from clients.sdk import identity
from clients.sdk.errors import RelayRequestError
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import KeyStore
from clients.sdk.socket import RelaySocket
from protocol.errors import CloseCode
from server import __main__ as server_cli
from server import audit
from tests.documents import pdf_page_png, pdf_text, qr_codes
from tests.helpers import ROOT, make_settings, running_relay, seconds

PASSWORDS = {"ada.byron": "lamp-orbit-canyon-7", "bo.chen": "velvet-harbour-quiet-3"}
ORG = "st-elsewhere"


def _csv() -> str:
    rows = [",".join(COLUMNS)]
    people = [("Ada Byron", "ada.byron", "physician;intern", "emergency medicine"),
              ("Bo Chen", "bo.chen", "physician;orthopaedic_on_call", "orthopaedics"),
              ("=cmd|' /C calc'!A0", "mallory", "physician", "radiology")]
    people += [(f"Doctor Number{i}", f"doc{i}", "physician", "general medicine")
               for i in range(3, 10)]
    for name, login, roles, specialty in people:
        rows.append(f'"{name}",{login},{roles},{specialty},Surgery,MD,GMC-{login},UK,2031-12-31')
    return "\n".join(rows) + "\n"


async def _run(main: object, argv: Sequence[str]) -> tuple[int, str, str]:
    """Run a CLI's main(argv) in a thread, capturing its output."""
    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))  # type: ignore[operator]
        return rc, out.getvalue(), err.getvalue()
    return await asyncio.to_thread(call)


async def _ok(main: object, argv: Sequence[str]) -> str:
    rc, out, err = await _run(main, argv)
    assert rc == 0, f"{argv}: exit {rc}\n{out}\n{err}"
    return out


def _codes(handout_text: str) -> dict[str, str]:
    logins = re.findall(r"--- Lightbox enrolment: .* \(([a-z0-9._-]+)\) ---", handout_text)
    codes = re.findall(r"enrolment code:\s+([0-9A-Z-]{24})", handout_text)
    assert len(logins) == len(codes)
    return dict(zip(logins, codes, strict=True))


@pytest.fixture
def journey_env(tmp_path: Path, db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in {
        "LIGHTBOX_INSECURE_FAST_KDF": "1", "LIGHTBOX_ARGON2_PROFILE": "cheap",
        "LIGHTBOX_HOME": str(tmp_path / "devices"),
        "LIGHTBOX_ADMIN_HOME": str(tmp_path / "it"),
        "LIGHTBOX_ORG_KEYFILE": str(tmp_path / "it" / "org.key"),
        "LIGHTBOX_ORG_PASSPHRASE": "orbit lantern quarry 42",
        "LIGHTBOX_ADMIN_PASSWORD": "harbour-mosaic-tundra-9",
        "LIGHTBOX_DATA_DIR": str(tmp_path / "relay"), "DATABASE_URL": db_dsn,
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("LIGHTBOX_ADMIN_TOKEN", "LIGHTBOX_SERVER", "LIGHTBOX_TRUSTED_ORGS_FILE",
                "LIGHTBOX_PASSWORD", "LIGHTBOX_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


async def test_identity_journey(journey_env: Path, db_dsn: str,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = journey_env
    # --- IT: organisation key, trust on the relay host, an administrator ---------------------
    out = await _ok(admin_cli.main, ["org", "init", "--org-id", ORG, "--keyfile",
                                     str(tmp / "it" / "org.key")])
    fingerprint = re.search(r"fingerprint: (\S+)", out)
    assert fingerprint is not None
    await _ok(server_cli.main, ["org", "trust", str(tmp / "it" / f"{ORG}.pub.json")])
    assert (tmp / "relay" / "trusted-orgs.json").exists()
    await _ok(server_cli.main, ["admin", "create", "--login", "it.admin"])

    settings = make_settings(data_dir=tmp / "relay", argon2_profile="cheap")
    async with running_relay(db_dsn, settings) as running:
        url = running.base_url
        await _ok(admin_cli.main, ["login", "--server", url, "--login", "it.admin"])
        assert stat.S_IMODE((tmp / "it" / "session.json").stat().st_mode) == 0o600

        # --- import ten users, with handouts ------------------------------------------------
        csv_path = tmp / "it" / "department.csv"
        csv_path.write_text(_csv())
        out = await _ok(admin_cli.main, ["user", "import", str(csv_path), "--handout-dir",
                                         str(tmp / "it" / "handouts")])
        assert "10 provisioned, 0 failed" in out
        assert fingerprint.group(1) in out
        codes = _codes(out)
        assert len(codes) == 10
        png = tmp / "it" / "handouts" / "ada.byron.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert stat.S_IMODE(png.stat().st_mode) == 0o600
        pdf = tmp / "it" / "handouts" / "ada.byron.pdf"
        assert stat.S_IMODE(pdf.stat().st_mode) == 0o600
        assert f"handout: {pdf} (print), {png} (screen)" in out
        for image in (png, pdf_page_png(pdf, tmp)):  # what a phone scanning the handout reads
            assert qr_codes(image) == [enrol_uri(url, codes["ada.byron"])]
        assert re.search(rf"Enrolment code\s+{codes['ada.byron']}\n", pdf_text(pdf))
        # importing the same file again: every row refused by the relay, reported per line
        rc, _out, err = await _run(admin_cli.main, ["user", "import", str(csv_path), "--no-qr"])
        assert rc == 1
        assert "line 2 (ada.byron):" in err

        listing = await _ok(admin_cli.main, ["user", "list", "--csv"])
        assert "'=cmd|' /C calc'!A0" in listing or "\"'=cmd|' /C calc'!A0\"" in listing
        assert "\n=cmd" not in listing and ",=cmd" not in listing

        # --- enrol Ada on a phone and Bo on his phone ---------------------------------------
        monkeypatch.setenv("LIGHTBOX_PASSWORD", "password1234")  # common: refused, code kept
        rc, _out, err = await _run(device_cli.main, ["--profile", "phone", "enroll", "--server",
                                                     url, "--code", codes["ada.byron"]])
        assert rc == 1
        assert "password_too_weak" in err
        assert not KeyStore.for_profile("phone").exists()
        for login, profile in (("ada.byron", "phone"), ("bo.chen", "bo-phone")):
            monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORDS[login])
            out = await _ok(device_cli.main, ["--profile", profile, "enroll", "--server", url,
                                              "--code", codes[login].lower()])
            assert f"enrolled {login}" in out
        # the code is single use
        rc, _out, err = await _run(device_cli.main, ["--profile", "again", "enroll", "--server",
                                                     url, "--code", codes["bo.chen"]])
        assert rc == 1
        assert "enrolment_code_used" in err

        # --- log in on the phone, link the desktop ------------------------------------------
        monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORDS["ada.byron"])
        await _ok(device_cli.main, ["--profile", "phone", "login"])
        desktop = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "clients.clinician.cli", "--profile", "desktop", "link",
            "--server",
            url, "--kind", "desktop", "--wait", str(seconds(60)), "--poll", "0.2",
            cwd=ROOT, env=dict(os.environ), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            assert desktop.stdout is not None
            line = await asyncio.wait_for(desktop.stdout.readline(), seconds(30))
            match = re.match(rb"pairing code: ([0-9A-Z-]+)", line)
            assert match, line
            out = await _ok(device_cli.main, ["--profile", "phone", "link", "--approve",
                                              match.group(1).decode()])
            assert "approved: desktop device" in out
            rest, desktop_err = await asyncio.wait_for(desktop.communicate(), seconds(60))
        finally:
            if desktop.returncode is None:
                desktop.kill()
                await desktop.wait()
        assert desktop.returncode == 0, desktop_err.decode()
        assert b"linked: ada.byron on this desktop" in rest
        await _ok(device_cli.main, ["--profile", "desktop", "login"])
        rc, _out, err = await _run(device_cli.main, ["--profile", "desktop", "link",
                                                     "--approve", match.group(1).decode()])
        assert rc == 1
        assert "does not hold the identity key" in err

        phone = KeyStore.for_profile("phone").open(PASSWORDS["ada.byron"]).state
        desk = KeyStore.for_profile("desktop").open(PASSWORDS["ada.byron"]).state
        assert phone.identity_seed is not None
        assert desk.identity_seed is None  # the identity key never left the phone
        assert desk.org_public_key == phone.org_public_key

        out = await _ok(device_cli.main, ["--profile", "desktop", "devices"])
        assert "2 devices" in out and desk.device_id in out and phone.device_id in out
        out = await _ok(device_cli.main, ["--profile", "desktop", "whoami"])
        assert "not on this device" in out
        assert re.search(r"^session: +valid; \d+ one-time prekeys at the relay$", out, re.M), out

        # --- look up a colleague and claim his prekeys --------------------------------------
        out = await _ok(device_cli.main, ["--profile", "phone", "lookup", "Bo Chen"])
        bo_id = re.search(r"^([0-9a-f-]{36})\s+Bo Chen", out, re.M)
        assert bo_id, out
        out = await _ok(device_cli.main, ["--profile", "phone", "keys", "claim",
                                          bo_id.group(1)])
        assert "1 device claimed" in out and "one-time prekey" in out
        assert "chain and signatures verified" in out

        # --- the access token is renewed shortly before it expires, and the rotated refresh
        # token is saved; once the device has moved on (renewed again), presenting the old one
        # again revokes the whole family (within the grace and before that, it would be the
        # device's own racing request: tests/clients/test_token_refresh.py) ----------------
        opened = KeyStore.for_profile("phone").open(PASSWORDS["ada.byron"])
        old = opened.state.session
        assert old is not None
        for _ in range(2):
            stale = opened.state.session
            assert stale is not None
            opened.save(msgspec.structs.replace(
                opened.state, session=msgspec.structs.replace(stale, expires_at=0)))
            async with identity.device_relay(opened) as relay:
                await relay.prekey_count()
        renewed = KeyStore.for_profile("phone").open(PASSWORDS["ada.byron"]).state.session
        assert renewed is not None and renewed.refresh_token != old.refresh_token
        async with RelayHTTP(url, tokens=old) as relay:
            with pytest.raises(RelayRequestError) as exc:
                await relay.refresh()
        assert exc.value.code == "refresh_reused"
        await _ok(device_cli.main, ["--profile", "phone", "login"])

        # --- IT: show, suspend, resume, renew a licence --------------------------------------
        out = await _ok(admin_cli.main, ["user", "show", "ada.byron"])
        assert desk.device_id in out and "GMC-ada.byron" in out
        await _ok(admin_cli.main, ["user", "suspend", "doc3"])
        assert "suspended" in await _ok(admin_cli.main, ["user", "list", "--status",
                                                         "suspended"])
        await _ok(admin_cli.main, ["user", "resume", "doc3"])
        await _ok(admin_cli.main, ["user", "renew-licence", "bo.chen", "--expires",
                                   "2033-03-31"])
        out = await _ok(admin_cli.main, ["user", "show", "bo.chen"])
        assert "valid through 2033-03-31" in out

        # --- revoke the desktop: its open socket closes, its login fails, the phone's works ---
        await _ok(device_cli.main, ["--profile", "desktop", "login"])
        desk = KeyStore.for_profile("desktop").open(PASSWORDS["ada.byron"]).state
        assert desk.session is not None
        socket = await RelaySocket.connect(
            url.replace("http", "ws", 1) + "/v1/ws", access_token=desk.session.access_token,
            device_id=desk.device_id, sign=desk.device_keys().sign)
        out = await _ok(admin_cli.main, ["device", "revoke", desk.device_id, "--wipe"])
        assert "revoked" in out
        code, reason = await asyncio.wait_for(socket.closed, seconds(10))
        assert (code, reason) == (CloseCode.DEVICE_REVOKED, "device_revoked")
        rc, _out, err = await _run(device_cli.main, ["--profile", "desktop", "login"])
        assert rc == 1
        assert "device_revoked" in err
        async with RelayHTTP(url) as relay:
            with pytest.raises(RelayRequestError) as exc:
                await identity.login(relay, desk, PASSWORDS["ada.byron"])
        assert exc.value.code == "device_revoked"
        out = await _ok(device_cli.main, ["--profile", "phone", "devices"])
        assert "1 device," in out and desk.device_id not in out

    # --- the audit trail holds every step and verifies ---------------------------------------
    assert "audit trail intact" in await _ok(server_cli.main, ["audit", "verify"])
    conn = await asyncpg.connect(db_dsn)
    try:
        events = [(r.event, r.outcome) for r in await audit.rows(conn, limit=10_000)]
    finally:
        await conn.close()
    names = {e for e, _ in events}
    for expected in ("admin.created", "admin.login", "admin.user_provision", "enrol.fetch",
                     "enrol.complete", "pairing.offer", "pairing.complete", "auth.login",
                     "keys.one_time_uploaded", "revocation.user_suspended",
                     "revocation.user_resumed", "admin.licence_renewal",
                     "revocation.device_revoked", "auth.refresh", "auth.refresh_reused"):
        assert expected in names, f"{expected} missing from {sorted(names)}"
    assert ("auth.login", "ok") in events
    assert any(e == "auth.login" and o != "ok" for e, o in events)


async def test_it_reissues_a_code_for_a_user_who_has_not_enrolled_or_lost_every_device(
        journey_env: Path, db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``lightbox-admin user reissue``: the new code enrols with ``lightbox enroll``, the old
    one is enrolment_code_invalid, an expired code is replaced; a user whose only phone was
    lost and revoked gets a new code and enrols again; a user with a device still active or
    an unknown login gets a sentence (never a traceback)."""
    tmp = journey_env
    await _ok(admin_cli.main, ["org", "init", "--org-id", ORG, "--keyfile",
                               str(tmp / "it" / "org.key")])
    await _ok(server_cli.main, ["org", "trust", str(tmp / "it" / f"{ORG}.pub.json")])
    await _ok(server_cli.main, ["admin", "create", "--login", "it.admin"])
    settings = make_settings(data_dir=tmp / "relay", argon2_profile="cheap")
    async with running_relay(db_dsn, settings) as running:
        url = running.base_url
        await _ok(admin_cli.main, ["login", "--server", url, "--login", "it.admin"])
        codes: dict[str, str] = {}
        for name, login in (("Ada Byron", "ada.byron"), ("Bo Chen", "bo.chen")):
            codes |= _codes(await _ok(admin_cli.main, [
                "user", "add", "--name", name, "--login", login, "--roles", "physician",
                "--licence-type", "MD", "--licence-number", f"GMC-{login}", "--jurisdiction",
                "UK", "--licence-expires", "2031-12-31", "--no-qr"]))
        out = await _ok(admin_cli.main, ["user", "show", "ada.byron"])
        assert re.search(r"enrolment code: pending, valid until \d{4}-\d\d-\d\d \d\d:\d\d\n",
                         out), out

        # --- lost handout: a new code, the old one stops working at once --------------------
        out = await _ok(admin_cli.main, ["user", "reissue", "ada.byron", "--no-qr",
                                         "--code-valid-hours", "24", "--handout-dir",
                                         str(tmp / "it" / "handouts")])
        new = _codes(out)["ada.byron"]
        assert new != codes["ada.byron"]
        assert "the previous code no longer works" in out
        assert (tmp / "it" / "handouts" / "ada.byron.png").exists()
        assert re.search(rf"Enrolment code\s+{new}\n",
                         pdf_text(tmp / "it" / "handouts" / "ada.byron.pdf"))
        monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORDS["ada.byron"])
        rc, _out, err = await _run(device_cli.main, ["--profile", "old", "enroll", "--server",
                                                     url, "--code", codes["ada.byron"]])
        assert rc == 1 and "enrolment_code_invalid" in err and "Traceback" not in err
        out = await _ok(device_cli.main, ["--profile", "phone", "enroll", "--server", url,
                                          "--code", new])
        assert "enrolled ada.byron" in out
        await _ok(device_cli.main, ["--profile", "phone", "login"])

        # --- a user with a device still active is not re-issued a code: they link from it ---
        rc, _out, err = await _run(admin_cli.main, ["user", "reissue", "ada.byron", "--no-qr"])
        assert rc == 2 and "Traceback" not in err
        assert "ada.byron has a device still active" in err and "lightbox link" in err

        # --- her only phone lost: revoked, then a new code re-keys her, and she enrols again -
        out = await _ok(admin_cli.main, ["user", "show", "ada.byron"])
        lost = re.search(r"device:\s+(\S+) mobile\s+active", out)
        assert lost, out
        await _ok(admin_cli.main, ["device", "revoke", lost.group(1), "--wipe"])
        out = await _ok(admin_cli.main, ["user", "reissue", "ada.byron", "--no-qr"])
        assert ("ada.byron: new enrolment code issued, with a new identity key: the revoked "
                "devices' key no longer certifies anything") in out, out
        again = _codes(out)
        out = await _ok(device_cli.main, ["--profile", "newphone", "enroll", "--server", url,
                                          "--code", again["ada.byron"]])
        assert "enrolled ada.byron" in out
        await _ok(device_cli.main, ["--profile", "newphone", "login"])
        out = await _ok(admin_cli.main, ["user", "show", "ada.byron"])
        assert re.search(rf"device:\s+{lost.group(1)} mobile\s+revoked", out), out
        assert len(re.findall(r"device:\s+\S+ mobile\s+active", out)) == 1, out

        # --- an expired code: `user show` says so, a re-issue replaces it -------------------
        conn = await asyncpg.connect(db_dsn)
        try:
            await conn.execute("UPDATE enrolment_codes SET expires_at = now() - interval "
                               "'1 hour' WHERE used_at IS NULL")
        finally:
            await conn.close()
        out = await _ok(admin_cli.main, ["user", "show", "bo.chen"])
        assert "enrolment code: expired" in out
        assert "lightbox-admin user reissue bo.chen" in out
        rc, _out, err = await _run(device_cli.main, ["--profile", "bo", "enroll", "--server",
                                                     url, "--code", codes["bo.chen"]])
        assert rc == 1 and "enrolment_code_expired" in err and "ask IT for a new one" in err
        not_a_folder = tmp / "it" / "not-a-folder"
        not_a_folder.write_text("")
        rc, _out, err = await _run(admin_cli.main, ["user", "reissue", "bo.chen", "--no-qr",
                                                    "--handout-dir", str(not_a_folder)])
        assert rc == 2 and "no new code was issued" in err
        assert "enrolment code: expired" in await _ok(admin_cli.main, ["user", "show", "bo.chen"])
        reissued = _codes(await _ok(admin_cli.main, ["user", "reissue", "bo.chen", "--no-qr"]))
        monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORDS["bo.chen"])
        out = await _ok(device_cli.main, ["--profile", "bo", "enroll", "--server", url,
                                          "--code", reissued["bo.chen"]])
        assert "enrolled bo.chen" in out

        # --- bad input: a sentence and exit status 2 ----------------------------------------
        for argv, sentence in (
                (["user", "reissue", "nobody.here"], "no user with login 'nobody.here'"),
                (["user", "reissue", "bo.chen", "--code-valid-hours", "0"],
                 "--code-valid-hours must be at least 1")):
            rc, _out, err = await _run(admin_cli.main, [*argv, "--no-qr"])
            assert (rc, "Traceback" in err) == (2, False), err
            assert sentence in err

    conn = await asyncpg.connect(db_dsn)
    try:
        events = [r.event for r in await audit.rows(conn, limit=10_000)]
    finally:
        await conn.close()
    # Ada's lost handout, her lost only phone, Bo's expired code
    assert events.count("admin.enrolment_reissued") == 3
