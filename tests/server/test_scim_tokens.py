"""``lightbox-server scim token issue|rotate|revoke|list --org ORG`` (server/manage.py) against
a relay on the same database: the token printed once works at ``/scim/v2``, rotation retires
the old one at once, revocation retires them all, and bad input is one line, exit 2."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import httpx
import pytest

from server import __main__ as server_cli
from tests.helpers import make_settings, running_relay
from tests.identity_world import Org, write_trusted_orgs


@pytest.fixture
def host_env(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("LIGHTBOX_")]:
        monkeypatch.delenv(key)
    trusted = write_trusted_orgs(tmp_path / "trusted-orgs.json", Org("st-elsewhere"))
    monkeypatch.setenv("DATABASE_URL", db_dsn)
    monkeypatch.setenv("LIGHTBOX_DATA_DIR", str(tmp_path / "relay"))
    monkeypatch.setenv("LIGHTBOX_TRUSTED_ORGS_FILE", str(trusted))
    return trusted


async def _server(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = await asyncio.to_thread(server_cli.main, argv)
    out, err = capsys.readouterr()
    return rc, out, err


async def test_issue_rotate_and_revoke_take_effect_on_the_running_relay(
        host_env: Path, db_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(trusted_orgs_file=host_env)
    async with running_relay(db_dsn, settings) as relay, \
            httpx.AsyncClient(base_url=relay.base_url + "/scim/v2") as http:
        async def status(token: str) -> int:
            r = await http.get("/Users", headers={"authorization": f"Bearer {token}"})
            return r.status_code

        rc, first, err = await _server(["scim", "token", "issue", "--org", "st-elsewhere"],
                                       capsys)
        assert rc == 0, err
        first = first.strip()
        assert first.startswith("lbscim_") and "shown once" in err
        assert await status(first) == 200
        rc, second, _ = await _server(["scim", "token", "rotate", "--org", "st-elsewhere"],
                                      capsys)
        assert rc == 0
        second = second.strip()
        assert (await status(first), await status(second)) == (401, 200)
        rc, listed, _ = await _server(["scim", "token", "list", "--org", "st-elsewhere"], capsys)
        assert rc == 0
        assert [line.endswith("live") for line in listed.splitlines()] == [False, True]
        stamp = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}"  # the guide's times, never seconds since 1970
        assert re.fullmatch(rf"\S+ created {stamp} revoked {stamp}", listed.splitlines()[0])
        assert re.fullmatch(rf"\S+ created {stamp} live", listed.splitlines()[1])
        assert first not in listed and second not in listed  # hashes only, never shown again
        rc, out, err = await _server(["scim", "token", "revoke", "--org", "st-elsewhere"],
                                     capsys)
        assert (rc, out) == (0, "")
        assert "revoked 1 token(s) of st-elsewhere" in err
        assert await status(second) == 401


async def test_a_token_for_an_untrusted_organisation_is_refused_in_one_line(
        host_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It sent IT to `org trust` even for a typo of a trusted organisation: it names them."""
    rc, out, err = await _server(["scim", "token", "issue", "--org", "st-elswhere"], capsys)
    assert (rc, out) == (2, "")
    assert err.strip() == (f"lightbox-server: st-elswhere is not a trusted organisation "
                           f"(trusted in {host_env}: st-elsewhere); for a new organisation, "
                           "run `lightbox-server org trust ORG.pub.json` first")


async def test_list_with_no_token_says_so_and_how_to_make_one(
        host_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It printed nothing at all (found following the guide by hand)."""
    rc, out, err = await _server(["scim", "token", "list", "--org", "st-elsewhere"], capsys)
    assert (rc, err) == (0, "")
    assert out == ("no SCIM token for st-elsewhere: `lightbox-server scim token issue --org "
                   "st-elsewhere` makes one\n")
