"""``lightbox-admin`` checks what it prints on a handout, and says which option is missing, before
the relay is asked for anything (docs/USER_GUIDE.md, IT, "Handouts"): a ``LIGHTBOX_PHONE_APP``
a phone's browser could not open (no scheme, plain http to another host) is refused with a
sentence naming the variable and an example, exit status 2, before any user is provisioned or
any code made; ``user add`` without ``--licence-type`` names the option, not the CSV column.
The relay here is a closed port: reaching it would fail differently."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from clients.admin import cli as admin_cli
from tests.clients.test_cli_failures import ORG_PASSPHRASE, _env

PHONE_APP = ("LIGHTBOX_PHONE_APP must be the phone app's https address, such as "
             "https://phone.example.org")
ADD = ["user", "add", "--name", "Ada Byron", "--login", "ada.byron", "--roles", "physician",
       "--licence-type", "MD", "--licence-number", "GMC-7012345", "--jurisdiction", "UK",
       "--licence-expires", "2030-06-30", "--no-qr"]


@pytest.fixture
def it_workstation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """IT's workstation with an organisation key, logged in to a relay that is down."""
    keyfile = tmp_path / "it" / "org.key"
    env = _env(tmp_path, LIGHTBOX_SERVER="http://127.0.0.1:9", LIGHTBOX_ADMIN_TOKEN="token",
               LIGHTBOX_ORG_KEYFILE=str(keyfile), LIGHTBOX_ORG_PASSPHRASE=ORG_PASSPHRASE)
    for key in os.environ.keys() - env.keys():
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert admin_cli.main(["org", "init", "--org-id", "st-example", "--keyfile",
                           str(keyfile)]) == 0
    return tmp_path


def _admin(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = admin_cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("address", ["phone.example.org", "http://phone.example.org",
                                     "https://", "https://phone.example.org?app=1"])
@pytest.mark.parametrize(("argv", "nothing_done"), [
    (ADD, "nobody was provisioned"),
    (["sign-pending", "--no-qr"], "nobody was signed"),
    (["user", "reissue", "ada.byron", "--no-qr"], "no new code was issued"),
], ids=["user-add", "sign-pending", "user-reissue"])
def test_a_phone_app_address_a_phone_cannot_open_is_refused_before_any_code_is_made(
        it_workstation: Path, monkeypatch: pytest.MonkeyPatch, address: str,
        argv: list[str], nothing_done: str) -> None:
    monkeypatch.setenv("LIGHTBOX_PHONE_APP", address)
    rc, out, err = _admin(*argv)
    assert (rc, out, err) == (2, "", f"error: {PHONE_APP}; {nothing_done}\n")


def test_a_phone_app_address_on_https_or_on_this_computer_passes_the_check(
        it_workstation: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It then goes on to the relay (down here): the address was not what stopped it."""
    for address in ("https://phone.example.org/", "http://localhost:8443",
                    "http://127.0.0.1:8443"):
        monkeypatch.setenv("LIGHTBOX_PHONE_APP", address)
        rc, _, err = _admin(*ADD)
        assert rc == 2 and "LIGHTBOX_PHONE_APP" not in err
        assert err.startswith("error: cannot reach the relay"), err


@pytest.mark.parametrize(("option", "sentence"), [
    ("--licence-type", "--licence-type is required (for example --licence-type MD)"),
    ("--licence-number",
     "--licence-number is required (for example --licence-number GMC-7023456)"),
    ("--jurisdiction", "--jurisdiction is required (for example --jurisdiction UK)"),
    ("--licence-expires",
     "--licence-expires is required (for example --licence-expires 2030-06-30)"),
])
def test_user_add_without_a_licence_option_names_the_option_and_an_example(
        it_workstation: Path, option: str, sentence: str) -> None:
    at = ADD.index(option)
    rc, out, err = _admin(*ADD[:at], *ADD[at + 2:])
    assert (rc, out, err) == (2, "", f"error: {sentence}\n")


def test_user_add_with_an_overlong_licence_type_names_the_option(it_workstation: Path) -> None:
    at = ADD.index("--licence-type")
    rc, out, err = _admin(*ADD[:at + 1], "M" * 201, *ADD[at + 2:])
    assert (rc, out, err) == (2, "", "error: --licence-type is longer than 200 characters\n")
