"""A handout names the phone app (``LIGHTBOX_PHONE_APP``) only if the relay lets a browser call
it from there (its ``LIGHTBOX_PHONE_ORIGINS``, docs/OPERATIONS.md): otherwise every phone
enrolled from the handouts would read "The relay cannot be reached" while the relay runs.
``lightbox-admin`` asks the relay with the browser's own question (a CORS preflight) before
any code is made, against a real relay."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.admin import cli as admin_cli
from clients.admin.handout import web_origin
from server import __main__ as server_cli
from tests.clients.test_gateway_handout import ORG, _ok, _run, it_env  # noqa: F401 (fixture)
from tests.helpers import make_settings, running_relay

PHONE = "http://127.0.0.1:8443"
ADD = ["user", "add", "--name", "Ada Byron", "--login", "ada.byron", "--roles", "physician",
       "--licence-type", "MD", "--licence-number", "GMC-7012345", "--jurisdiction", "UK",
       "--licence-expires", "2030-06-30", "--no-qr"]


def test_the_origin_is_the_one_a_browser_sends() -> None:
    assert web_origin("https://phone.example.org/") == "https://phone.example.org"
    assert web_origin("https://phone.example.org:443/app") == "https://phone.example.org"
    assert web_origin("https://phone.example.org:8443") == "https://phone.example.org:8443"
    assert web_origin("http://localhost:80") == "http://localhost"
    assert web_origin("http://[::1]:8443") == "http://[::1]:8443"


@pytest.mark.parametrize("origins", ["", "http://127.0.0.1:8444"], ids=["none", "another"])
async def test_a_phone_app_the_relay_does_not_accept_is_refused_before_any_code_is_made(
        it_env: Path, db_dsn: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        origins: str) -> None:
    await _ok(admin_cli.main, ["org", "init", "--org-id", ORG, "--keyfile",
                               str(it_env / "it" / "org.key")])
    await _ok(server_cli.main, ["org", "trust", str(it_env / "it" / f"{ORG}.pub.json")])
    await _ok(server_cli.main, ["admin", "create", "--login", "it.admin"])
    settings = make_settings(data_dir=it_env / "relay", argon2_profile="cheap",
                             phone_origins=origins)
    async with running_relay(db_dsn, settings) as running:
        await _ok(admin_cli.main, ["login", "--server", running.base_url, "--login",
                                   "it.admin"])
        monkeypatch.setenv("LIGHTBOX_PHONE_APP", f"{PHONE}/")
        rc, out, err = await _run(admin_cli.main, ADD)
        assert (rc, out) == (2, ""), out + err
        assert err == (f"error: the relay does not accept the phone app's address {PHONE}: add "
                       "it to LIGHTBOX_PHONE_ORIGINS on the relay and restart the relay, or "
                       "phones could not reach it from the app the handouts name; nobody was "
                       "provisioned\n")
        out = await _ok(admin_cli.main, ["user", "list"])
        assert "ada.byron" not in out, out

    # The same address named on the relay: provisioned, and the handout names the app.
    settings = make_settings(data_dir=it_env / "relay", argon2_profile="cheap",
                             phone_origins=f"{origins},{PHONE}".lstrip(","))
    async with running_relay(db_dsn, settings) as running:
        await _ok(admin_cli.main, ["login", "--server", running.base_url, "--login",
                                   "it.admin"])
        out = await _ok(admin_cli.main, ADD)
        assert f"phone app:        {PHONE}" in out, out
