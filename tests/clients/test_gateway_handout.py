"""The record gateway's handout and enrolment, followed as IT and the guide say
(docs/USER_GUIDE.md "The record gateway" §1-2): the handout of a service account gives the
gateway's own first command, exactly the guide's §2 command, and no QR code (the phone app
would enrol it as a phone); ``lightbox enroll`` without ``--kind gateway`` refuses the record
gateway's account before the code is used, saying the right command, and the code then enrols
the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from clients.admin import cli as admin_cli
from clients.admin.handout import GATEWAY_NOTE, Handout, print_handout, save_handout
from clients.clinician import cli as device_cli
from server import __main__ as server_cli
from tests.documents import pdf_page_png, pdf_text, qr_codes
from tests.helpers import ROOT, make_settings, running_relay

ORG = "st-gateway"
GATEWAY_PASSWORD = "granite-ledger-violet-5"
GUIDE = ROOT / "docs" / "USER_GUIDE.md"


def _guide_enrol_command() -> str:
    """The enrol command of the guide's "The record gateway" §2, as printed there."""
    text = GUIDE.read_text()
    section = text[text.index("### 2. Enrol it (gateway host)"):]
    section = section[:section.index("\n### 3.")]
    commands: list[str] = re.findall(r"^lightbox enroll .*$", section, re.M)
    assert len(commands) == 1, commands
    return commands[0].strip()


def _guide_command_for(server: str, code: str) -> str:
    return _guide_enrol_command().replace("https://relay.example.org", server) \
        .replace("GATEWAY_CODE", code)


GATEWAY = Handout(name="Record gateway", login="record.gateway",
                  server="https://relay.example.org:8443", code="7K2M-9QXP-4RTV-8WJN-3HBC",
                  expires_at=1_814_778_300, org_fingerprint="q3VnWc1x_8yZ-kP0aB7d2Q",
                  gateway=True)


def test_the_gateways_handout_gives_the_guides_gateway_command_and_no_qr_code(
        tmp_path: Path) -> None:
    expected = _guide_command_for(GATEWAY.server, GATEWAY.code)
    assert "--kind gateway" in expected
    assert GATEWAY.first_command() == expected
    out = io.StringIO()
    print_handout(out, GATEWAY)
    assert f"  on the gateway host: {expected}\n" in out.getvalue()
    assert "on the phone" not in out.getvalue()
    assert "\u2580" not in out.getvalue() and "\u2588" not in out.getvalue()  # no QR drawn

    files = save_handout(tmp_path, GATEWAY)
    text = " ".join(pdf_text(files.pdf).split())
    assert expected in text and GATEWAY_NOTE in text
    for image in (files.png, pdf_page_png(files.pdf, tmp_path)):
        assert qr_codes(image) == []


async def _run(main: object, argv: Sequence[str]) -> tuple[int, str, str]:
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


@pytest.fixture
def it_env(tmp_path: Path, db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in {
        "LIGHTBOX_INSECURE_FAST_KDF": "1", "LIGHTBOX_ARGON2_PROFILE": "cheap",
        "LIGHTBOX_HOME": str(tmp_path / "gateway-host"),
        "LIGHTBOX_ADMIN_HOME": str(tmp_path / "it"),
        "LIGHTBOX_ORG_KEYFILE": str(tmp_path / "it" / "org.key"),
        "LIGHTBOX_ORG_PASSPHRASE": "orbit lantern quarry 42",
        "LIGHTBOX_ADMIN_PASSWORD": "harbour-mosaic-tundra-9",
        "LIGHTBOX_PASSWORD": GATEWAY_PASSWORD,
        "LIGHTBOX_DATA_DIR": str(tmp_path / "relay"), "DATABASE_URL": db_dsn,
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("LIGHTBOX_ADMIN_TOKEN", "LIGHTBOX_SERVER", "LIGHTBOX_TRUSTED_ORGS_FILE",
                "LIGHTBOX_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


async def test_the_gateway_enrolled_as_its_handout_says_and_refused_as_a_phone(
        it_env: Path, db_dsn: str) -> None:
    tmp = it_env
    await _ok(admin_cli.main, ["org", "init", "--org-id", ORG, "--keyfile",
                               str(tmp / "it" / "org.key")])
    await _ok(server_cli.main, ["org", "trust", str(tmp / "it" / f"{ORG}.pub.json")])
    await _ok(server_cli.main, ["admin", "create", "--login", "it.admin"])
    settings = make_settings(data_dir=tmp / "relay", argon2_profile="cheap")
    async with running_relay(db_dsn, settings) as running:
        url = running.base_url
        await _ok(admin_cli.main, ["login", "--server", url, "--login", "it.admin"])
        # The guide's §1, as IT types it.
        out = await _ok(admin_cli.main, [
            "user", "add", "--service", "--name", "Record gateway", "--login",
            "record.gateway", "--roles", "record_gateway", "--handout-dir",
            str(tmp / "it" / "handouts")])
        code = re.search(r"enrolment code:\s+(\S+)", out)
        command = re.search(r"on the gateway host: (lightbox enroll .*)$", out, re.M)
        assert code and command, out
        assert command.group(1) == _guide_command_for(url, code.group(1))
        pdf = " ".join(pdf_text(tmp / "it" / "handouts" / "record.gateway.pdf").split())
        assert command.group(1) in pdf

        # Enrolled as a phone (the command a clinician's handout gives): refused, code kept.
        rc, out, err = await _run(device_cli.main, ["enroll", "--server", url, "--code",
                                                    code.group(1)])
        assert rc == 1 and out == "", out + err
        assert err == (
            "error: validation_failed: record.gateway is the record gateway's service account, "
            "not a clinician's: enrol it on the gateway host with `lightbox enroll --kind "
            f"gateway --server {url} --code CODE` (this code has not been used)\n")
        assert not (tmp / "gateway-host" / "default" / "keystore.lbx").exists()

        # The handout's command, word for word: the gateway, in the profile lightbox-gateway
        # reads.
        out = await _ok(device_cli.main, command.group(1).split()[1:])
        assert re.search(r"^enrolled record\.gateway on this gateway \(device ", out, re.M), out
        assert (tmp / "gateway-host" / "gateway" / "keystore.lbx").exists()
