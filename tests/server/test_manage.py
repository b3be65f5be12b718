"""The relay-host commands (``lightbox-server db|admin|org|audit``, server/manage.py) as IT runs
them beside a relay started the way ``make run`` starts it: the relay keeps serving throughout
(``/readyz`` polled during and after each command) and IT's next step, ``lightbox-admin login``,
works. Without a relay they start the embedded cluster for themselves and stop it after."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from clients.admin import cli as admin_cli
from clients.admin.orgkey import create_org_keyfile
from protocol.canonical import b64url_encode
from protocol.keys import CHEAP_PROFILE, OrganisationKey
from server import __main__ as server_cli
from server import migrations
from server.embedded import postmaster_pid
from server.passwords import Passwords
from tests.helpers import Cluster, revision_of, seconds
from tests.make_run import BIN, beside, data_folder, made_run, relay_host_env, run_command

PASSWORD = "lantern-harbour-quince-71"


def _pubfile(folder: Path, org_id: str) -> tuple[Path, bytes]:
    key = OrganisationKey.generate()
    path = folder / f"{org_id}.pub.json"
    path.write_text(json.dumps({"orgs": {org_id: b64url_encode(key.public)}}))
    return path, key.public


@pytest.fixture
def workstation(tmp_path: Path) -> Path:
    return tmp_path


def test_relay_host_commands_leave_the_running_relay_serving(workstation: Path) -> None:
    with made_run() as run:
        env = relay_host_env(run.data, LIGHTBOX_ADMIN_PASSWORD=PASSWORD)
        pub, public = _pubfile(workstation, "st-elsewhere")
        server = str(BIN / "lightbox-server")
        steps = [
            ([server, "org", "trust", str(pub)], "trusted st-elsewhere"),
            ([server, "db", "upgrade"],
             f"database schema already at {migrations.head_revision()} (head): nothing to do"),
            ([server, "admin", "create", "--login", "it.jones"], "administrator it.jones created"),
            ([server, "audit", "verify"], "audit trail intact"),
            ([server, "audit", "head"], None),
        ]
        for argv, expected in steps:
            done = beside(run.url, argv, env)
            if expected is not None:
                assert expected in done.stdout, done.stdout
            else:
                assert re.fullmatch(r"[0-9]+ [0-9a-f]{64}\n", done.stdout), done.stdout
        trusted = json.loads((run.data / "trusted-orgs.json").read_text())
        assert trusted == {"orgs": {"st-elsewhere": b64url_encode(public)}}
        assert run.proc.poll() is None

        login = run_command(
            [str(BIN / "lightbox-admin"), "login", "--server", run.url, "--login", "it.jones"],
            {**env, "LIGHTBOX_ADMIN_HOME": str(workstation / "admin")})
        assert login.returncode == 0, login.stdout + login.stderr
        assert f"logged in to {run.url} as it.jones" in login.stdout

        # What a security auditor reads, with the relay running: the rows of one kind.
        shown = run_command([server, "audit", "show", "--event", "admin."], env)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        lines = shown.stdout.splitlines()
        assert [line.split()[3:5] for line in lines] == [["admin.created", "ok"],
                                                         ["admin.login", "ok"]], lines
        assert all(re.fullmatch(r"[0-9]+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ admin\.\S+ ok "
                                r"actor=\S+ subject=admin:[0-9a-f-]{36}.*", line)
                   for line in lines), lines
        as_json = run_command([server, "audit", "show", "--event", "admin.login", "--json"],
                              env)
        (row,) = [json.loads(line) for line in as_json.stdout.splitlines()]
        assert row["event"] == "admin.login" and row["outcome"] == "ok"
        # Where the login came from, as SECURITY.md says the trail records it.
        assert row["client_ip"] == "127.0.0.1", row
        assert lines[1].split()[7:8] == ["address=127.0.0.1"], lines
        # One subject's rows, asked as a row names it (KIND:ID) or by its id alone.
        subject = lines[0].split()[6].removeprefix("subject=")
        by_kind = run_command([server, "audit", "show", "--subject", subject], env)
        by_id = run_command([server, "audit", "show", "--subject",
                             subject.partition(":")[2]], env)
        assert by_kind.stdout.splitlines() == lines, (by_kind.stdout, by_kind.stderr)
        assert by_id.stdout == by_kind.stdout
        later = run_command([server, "audit", "show", "--event", "admin.",
                             "--after", str(row["seq"])], env)
        assert (later.returncode, later.stdout, later.stderr) == (0, "", "no audit rows match\n")
        bad = run_command([server, "audit", "show", "--limit", "0"], env)
        assert bad.returncode == 2 and bad.stderr.strip().endswith(
            "--limit is a number of rows from 1 to 10000"), bad.stderr
        assert run.proc.poll() is None


@pytest.fixture
def relay_host() -> Iterator[Path]:
    with data_folder() as data:
        yield data


def test_a_command_without_a_relay_starts_the_cluster_and_stops_it_after(
        relay_host: Path) -> None:
    env = relay_host_env(relay_host)
    server = str(BIN / "lightbox-server")
    up = run_command([server, "db", "upgrade"], env)
    assert up.returncode == 0, up.stderr
    assert postmaster_pid(relay_host / "pg") is None
    head = run_command([server, "audit", "head"], env)
    assert head.returncode == 0, head.stderr
    assert re.fullmatch(r"[0-9]+ [0-9a-f]{64}\n", head.stdout), head.stdout
    assert postmaster_pid(relay_host / "pg") is None


# --- bad input: one line on stderr, exit 2, nothing done -------------------------------------


@pytest.fixture
def host_env(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("LIGHTBOX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DATABASE_URL", db_dsn)
    monkeypatch.setenv("LIGHTBOX_DATA_DIR", str(tmp_path / "relay"))
    monkeypatch.setenv("LIGHTBOX_ARGON2_PROFILE", "cheap")
    return tmp_path


def _server(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = server_cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("revision", ["9999", "base"])
def test_db_upgrade_to_no_revision_of_the_release_names_the_revisions_there_are(
        host_env: Path, db_dsn: str, revision: str, capsys: pytest.CaptureFixture[str]) -> None:
    """It was alembic's traceback (``Can't locate revision identified by '9999'``), exit 1."""
    head = migrations.head_revision()
    rc, out, err = _server(["db", "upgrade", revision], capsys)
    assert (rc, out) == (2, "")
    assert _one_line(err) == (f"lightbox-server: no database revision {revision}: the "
                              f"revisions are 0001 to {head} (or head)")
    assert revision_of(db_dsn) == head


def test_db_upgrade_to_a_revision_the_schema_is_past_says_it_never_goes_back(
        host_env: Path, db_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """It said ``database schema upgraded to 0020``, exit 0, and changed nothing."""
    head = migrations.head_revision()
    rc, out, err = _server(["db", "upgrade", "0020"], capsys)
    assert (rc, out) == (2, "")
    assert _one_line(err) == (f"lightbox-server: the database schema is already at {head}, "
                              "past 0020: db upgrade never goes back to an earlier revision")
    assert revision_of(db_dsn) == head


def test_db_upgrade_of_a_schema_newer_than_the_release_says_so(
        host_env: Path, db_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A relay host that went back to an older release: it was alembic's traceback."""
    async def newer() -> None:
        conn = await asyncpg.connect(db_dsn)
        try:
            await conn.execute("UPDATE alembic_version SET version_num = '9999'")
        finally:
            await conn.close()
    asyncio.run(newer())
    head = migrations.head_revision()
    rc, out, err = _server(["db", "upgrade"], capsys)
    assert (rc, out) == (2, "")
    assert _one_line(err) == ("lightbox-server: the database schema is at 9999, a revision this "
                              f"release does not have (the revisions are 0001 to {head} (or "
                              "head)): a newer release's")
    assert revision_of(db_dsn) == "9999"


@pytest.mark.parametrize("argv", [[], ["head"], ["HEAD_REVISION"]])
def test_db_upgrade_at_head_says_there_was_nothing_to_do(
        host_env: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    head = migrations.head_revision()
    argv = [head if word == "HEAD_REVISION" else word for word in argv]
    rc, out, err = _server(["db", "upgrade", *argv], capsys)
    assert (rc, out, err) == (0, f"database schema already at {head} (head): nothing to do\n",
                              "")


@pytest.fixture
async def empty_dsn(cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
                    host_env: Path) -> AsyncIterator[str]:
    """A database with no schema at all, as the relay host's DATABASE_URL."""
    dsn = await cluster.create_database(empty=True)
    monkeypatch.setenv("DATABASE_URL", dsn)
    try:
        yield dsn
    finally:
        await cluster.drop_database(dsn)


def test_db_upgrade_step_by_step_says_from_where_to_where(
        empty_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    head = migrations.head_revision()
    steps = [
        (["0020"], 0, "database schema upgraded from an empty database to 0020\n", ""),
        (["0020"], 0, "database schema already at 0020: nothing to do\n", ""),
        (["0019"], 2, "", "lightbox-server: the database schema is already at 0020, past "
                          "0019: db upgrade never goes back to an earlier revision\n"),
        ([], 0, f"database schema upgraded from 0020 to {head} (head)\n", ""),
    ]
    for argv, *expected in steps:
        assert list(_server(["db", "upgrade", *argv], capsys)) == expected, argv
    assert revision_of(empty_dsn) == head


@pytest.mark.parametrize("argv", [["db", "upgrade"], ["audit", "verify"],
                                  ["scim", "token", "list", "--org", "st-elsewhere"]])
def test_a_database_that_cannot_be_reached_is_named_by_host_and_port_never_password(
        host_env: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """It was asyncio's ``[Errno 111] Connect call failed ('127.0.0.1', 1)``, naming neither
    the database nor what to check."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://lightbox:not-this-one@127.0.0.1:1/db")
    rc, out, err = _server(argv, capsys)
    assert (rc, out) == (2, "")
    assert _one_line(err) == (
        "lightbox-server: the database at DATABASE_URL (127.0.0.1:1) could not be reached "
        "(connection refused): check that Postgres runs there and accepts connections from "
        "this host, and that DATABASE_URL is the one the relay uses")


@pytest.mark.parametrize(("password", "reason"), [
    ("short-1", "password_too_weak: the password must be at least 12 characters long"),
    ("password1234", "password_too_weak: the password is too common"),
    ("it.jones-harbour-9", "password_too_weak: the password must not contain the login name"),
])
def test_admin_create_refuses_a_weak_password(host_env: Path, password: str, reason: str,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIGHTBOX_ADMIN_PASSWORD", password)
    rc, out, err = _server(["admin", "create", "--login", "it.jones"], capsys)
    assert rc == 2 and out == ""
    assert _one_line(err).startswith(f"lightbox-server: {reason}")


def test_admin_create_twice_is_a_conflict_and_without_a_terminal_names_the_variable(
        host_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIGHTBOX_ADMIN_PASSWORD", PASSWORD)
    assert _server(["admin", "create", "--login", "it.jones"], capsys)[0] == 0
    rc, _out, err = _server(["admin", "create", "--login", "it.jones"], capsys)
    assert rc == 2
    assert _one_line(err).startswith("lightbox-server: conflict: ")
    monkeypatch.delenv("LIGHTBOX_ADMIN_PASSWORD")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal
    rc, _out, err = _server(["admin", "create", "--login", "it.smith"], capsys)
    assert rc == 2
    assert _one_line(err) == ("lightbox-server: no terminal to ask for the password: "
                              "set LIGHTBOX_ADMIN_PASSWORD")


NEW_PASSWORD = "copper-meadow-lantern-38"


def _sql(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()
    return asyncio.run(go())


def test_admin_password_sets_a_new_hash_lifts_only_that_logins_locks_and_is_audited(
        host_env: Path, db_dsn: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIGHTBOX_ADMIN_PASSWORD", PASSWORD)
    assert _server(["admin", "create", "--login", "it.jones"], capsys)[0] == 0
    (before,) = _sql(db_dsn, "SELECT admin_id, password_hash FROM admins")
    _sql(db_dsn, "INSERT INTO login_failures (key, failures, locked_until, last_failure_at) "
         "SELECT k, 5, now() + interval '1 hour', now() FROM unnest($1::text[]) AS k",
         ["admin:it.jones", "admin:it.jones 10.0.0.7", "admin:it.jonesy 10.0.0.7",
          "login:it.jones", "addr:10.0.0.7"])
    monkeypatch.setenv("LIGHTBOX_ADMIN_PASSWORD", "short-1")  # the same policy as create
    rc, out, err = _server(["admin", "password", "--login", "it.jones"], capsys)
    assert (rc, out) == (2, "") and _one_line(err).startswith(
        "lightbox-server: password_too_weak: the password must be at least 12 characters long")
    monkeypatch.setenv("LIGHTBOX_ADMIN_PASSWORD", NEW_PASSWORD)
    rc, out, err = _server(["admin", "password", "--login", "it.jones"], capsys)
    assert (rc, err) == (0, "")
    assert out == (f"administrator it.jones has a new password ({before['admin_id']}); "
                   "2 login lock(s) lifted; the admin tokens issued before it are refused\n")
    (after,) = _sql(db_dsn, "SELECT password_hash FROM admins")
    passwords = Passwords("cheap")
    assert after["password_hash"] != before["password_hash"]
    assert asyncio.run(passwords.verify(after["password_hash"], NEW_PASSWORD))
    assert not asyncio.run(passwords.verify(after["password_hash"], PASSWORD))
    kept = {r["key"] for r in _sql(db_dsn, "SELECT key FROM login_failures")}
    assert kept == {"admin:it.jonesy 10.0.0.7", "login:it.jones", "addr:10.0.0.7"}
    rows = _sql(db_dsn, "SELECT event, actor_kind, subject_id, details FROM audit_log "
                "WHERE event LIKE 'admin.%' ORDER BY seq")
    assert [r["event"] for r in rows] == ["admin.created", "admin.password_set"]
    assert rows[1]["actor_kind"] == "cli" and rows[1]["subject_id"] == str(before["admin_id"])
    assert json.loads(rows[1]["details"]) == {"login": "it.jones", "lockouts_cleared": 2}
    assert NEW_PASSWORD not in rows[1]["details"]

    rc, out, err = _server(["admin", "password", "--login", "it.nobody"], capsys)
    assert (rc, out) == (2, "")
    assert _one_line(err) == ("lightbox-server: there is no administrator it.nobody: "
                              "`lightbox-server admin list` names them")


def test_admin_remove_disables_never_the_last_and_list_says_who_is_active(
        host_env: Path, db_dsn: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIGHTBOX_ADMIN_PASSWORD", PASSWORD)
    assert _server(["admin", "list"], capsys) == (
        0, "", "no administrator: `lightbox-server admin create --login LOGIN` makes one\n")
    for login in ("it.jones", "it.smith"):
        assert _server(["admin", "create", "--login", login], capsys)[0] == 0
    assert _server(["admin", "list"], capsys) == (0, "it.jones active\nit.smith active\n", "")
    rc, out, err = _server(["admin", "remove", "--login", "it.smith"], capsys)
    assert (rc, err) == (0, "")
    assert re.fullmatch(r"administrator it\.smith removed \([0-9a-f-]{36}\); 1 active "
                        r"administrator\(s\) left\n", out), out
    rc, out, _err = _server(["admin", "list"], capsys)
    assert rc == 0 and re.fullmatch(
        r"it\.jones active\nit\.smith removed \d{4}-\d\d-\d\d \d\d:\d\d\n", out), out
    assert "$argon2" not in out
    # The row stays (audit rows name its id), disabled with the time.
    (smith,) = _sql(db_dsn, "SELECT admin_id, disabled_at FROM admins WHERE login = 'it.smith'")
    assert smith["disabled_at"] is not None

    rc, out, err = _server(["admin", "remove", "--login", "it.jones"], capsys)
    assert (rc, out) == (2, "")
    assert _one_line(err) == (
        "lightbox-server: conflict: it is the last active administrator: nobody could log in "
        "to the admin API after it; create another one first")
    assert _sql(db_dsn, "SELECT disabled_at FROM admins WHERE login = 'it.jones'"
                )[0]["disabled_at"] is None
    for argv in (["admin", "remove", "--login", "it.smith"],
                 ["admin", "password", "--login", "it.smith"]):
        rc, out, err = _server(argv, capsys)
        assert (rc, out) == (2, "")
        assert re.fullmatch(r"lightbox-server: administrator it\.smith was removed on "
                            r"\d{4}-\d\d-\d\d \d\d:\d\d; a removed administrator stays "
                            r"removed \(create another login\)", _one_line(err)), err
    rc, out, err = _server(["admin", "remove", "--login", "it.nobody"], capsys)
    assert (rc, out) == (2, "")
    assert _one_line(err) == ("lightbox-server: there is no administrator it.nobody: "
                              "`lightbox-server admin list` names them")
    rows = _sql(db_dsn, "SELECT event, subject_id, details FROM audit_log "
                "WHERE event = 'admin.removed'")
    assert [(r["subject_id"], json.loads(r["details"])) for r in rows] == [
        (str(smith["admin_id"]), {"login": "it.smith"})]


def test_admin_password_and_remove_beside_a_running_relay(workstation: Path) -> None:
    """The new password works at ``POST /v1/admin/login`` and the old one no longer does, nor
    do the admin tokens issued with it; a locked-out administrator can log in at once, and a
    removed one cannot log in and its admin token is refused; ``/readyz`` stays 200
    throughout."""
    with made_run() as run:
        env = relay_host_env(run.data, LIGHTBOX_ADMIN_PASSWORD=PASSWORD)
        server = str(BIN / "lightbox-server")
        for who in ("it.jones", "it.smith"):
            assert run_command([server, "admin", "create", "--login", who],
                               env).returncode == 0

        def login(who: str, password: str) -> httpx.Response:
            return httpx.post(run.url + "/v1/admin/login", timeout=seconds(10),
                              json={"login": who, "password": password})

        smith = login("it.smith", PASSWORD)
        assert smith.status_code == 200, smith.text
        smith_token = smith.json()["token"]
        jones = login("it.jones", PASSWORD)  # a token of the old password, say stolen
        assert jones.status_code == 200, jones.text
        jones_old_token = jones.json()["token"]

        def users_with(token: str) -> httpx.Response:
            return httpx.get(run.url + "/v1/admin/users", timeout=seconds(10),
                             headers={"Authorization": f"Bearer {token}"})

        assert users_with(jones_old_token).status_code == 200
        for _ in range(5):  # it.jones forgot the password, and is now locked out
            assert login("it.jones", "wrong-wrong-wrong-1").status_code == 401
        assert login("it.jones", PASSWORD).status_code == 429

        steps = [
            ([server, "admin", "password", "--login", "it.jones"],
             {**env, "LIGHTBOX_ADMIN_PASSWORD": NEW_PASSWORD}, "has a new password"),
            ([server, "admin", "remove", "--login", "it.smith"], env, "removed"),
            ([server, "admin", "list"], env, "it.jones active\nit.smith removed"),
        ]
        for argv, argv_env, expected in steps:
            done = beside(run.url, argv, argv_env)
            assert expected in done.stdout, done.stdout

        renewed = login("it.jones", NEW_PASSWORD)
        assert renewed.status_code == 200, renewed.text
        # The new password ends the tokens of the old one; the new login's token works.
        refused = users_with(jones_old_token)
        assert refused.status_code == 401 and refused.json()["code"] == "token_invalid", \
            refused.text
        assert "password changed since this token was issued" in refused.json()["detail"]
        assert users_with(renewed.json()["token"]).status_code == 200
        old = login("it.jones", PASSWORD)
        assert old.status_code == 401 and old.json()["code"] == "invalid_credentials", old.text
        gone = login("it.smith", PASSWORD)
        assert gone.status_code == 401 and gone.json()["code"] == "invalid_credentials"
        users = users_with(smith_token)
        assert users.status_code == 401 and users.json()["code"] == "token_invalid", users.text
        assert run.proc.poll() is None


def test_org_trust_refuses_a_missing_or_malformed_file_and_a_silent_key_change(
        host_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _out, err = _server(["org", "trust", str(host_env / "nowhere.pub.json")], capsys)
    assert rc == 2
    assert _one_line(err) == f"lightbox-server: no such file: {host_env / 'nowhere.pub.json'}"
    bad = host_env / "bad.pub.json"
    bad.write_text('{"orgs": {"st-elsewhere": "short"}}')
    rc, _out, err = _server(["org", "trust", str(bad)], capsys)
    assert rc == 2
    assert _one_line(err) == (f"lightbox-server: {bad}: key of 'st-elsewhere' is not a b64url "
                              "32-byte key")
    (host_env / "first").mkdir()
    first, _ = _pubfile(host_env / "first", "st-elsewhere")
    assert _server(["org", "trust", str(first)], capsys)[0] == 0
    second, new_key = _pubfile(host_env, "st-elsewhere")
    rc, _out, err = _server(["org", "trust", str(second)], capsys)
    assert rc == 2
    assert "already trusts another key for st-elsewhere" in _one_line(err)
    assert "pass --replace to change it" in err
    assert _server(["org", "trust", str(second), "--replace"], capsys)[0] == 0
    trusted = json.loads((host_env / "relay" / "trusted-orgs.json").read_text())
    assert trusted == {"orgs": {"st-elsewhere": b64url_encode(new_key)}}


def test_org_trust_of_the_private_keyfile_says_to_give_the_public_file_and_prints_no_key(
        host_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It answered ``expected {"orgs": {org_id: key}}``, leaving the private key on the relay
    host with no word that it should not be there."""
    keyfile = host_env / "st-elsewhere.key"
    create_org_keyfile(keyfile, "st-elsewhere", "a passphrase", profile=CHEAP_PROFILE)
    rc, out, err = _server(["org", "trust", str(keyfile)], capsys)
    assert (rc, out) == (2, "")
    assert _one_line(err) == (
        f"lightbox-server: {keyfile} is the organisation's private key, which must never be "
        "copied to the relay: give the relay st-elsewhere.pub.json, written next to it by "
        "`lightbox-admin org init`, instead (and delete this copy)")
    body = json.loads(keyfile.read_text())
    assert body["public_key"] not in err and body["sealed_seed"] not in err
    assert not (host_env / "relay" / "trusted-orgs.json").exists()


def test_org_trust_of_a_key_already_trusted_changes_nothing_and_asks_no_restart(
        host_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pub, _ = _pubfile(host_env, "st-elsewhere")
    rc, out, _err = _server(["org", "trust", str(pub)], capsys)
    assert rc == 0 and out.splitlines()[-1] == (
        "the relay reads this file when it starts: restart it if it is running"), out
    trusted = host_env / "relay" / "trusted-orgs.json"
    written = trusted.stat().st_mtime_ns
    rc, out, _err = _server(["org", "trust", str(pub)], capsys)
    assert rc == 0
    assert out.splitlines()[0].startswith("already trusted st-elsewhere (fingerprint "), out
    assert out.splitlines()[-1] == "nothing changed: no restart needed", out
    assert trusted.stat().st_mtime_ns == written


def test_serving_options_with_a_command_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        server_cli.main(["--port", "9000", "audit", "verify"])
    assert exit_.value.code == 2
    assert "--host, --port, --workers and --migrate start the relay" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "new"), [
    (["db", "upgrade"], "db upgrade"),
    (["admin", "create", "--login", "it.jones"], "admin create"),
    (["audit", "verify"], "audit verify"),
    (["audit", "head"], "audit head"),
    (["org", "trust", "st-elsewhere.pub.json"], "org trust"),
    (["db"], "db"),
])
def test_old_relay_host_spellings_of_lightbox_admin_name_the_new_command(
        argv: list[str], new: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert admin_cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert _one_line(err) == (f"error: `lightbox-admin {new}` is now `lightbox-server {new}`, "
                              "run on the relay host (lightbox-admin talks to the relay over "
                              "HTTP only)")


def test_a_cluster_that_cannot_start_is_one_line_not_a_traceback(relay_host: Path) -> None:
    (relay_host / "pg").mkdir()
    (relay_host / "pg" / "PG_VERSION").write_text("16\n")  # a damaged cluster folder
    env = relay_host_env(relay_host)
    for argv in (["audit", "head"], ["--migrate", "--port", "0"]):
        done = run_command([str(BIN / "lightbox-server"), *argv], env)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.splitlines()[-1] == (
            f"lightbox-server: the embedded Postgres in {relay_host / 'pg'} did not start "
            f"(its log: {relay_host / 'pg' / 'log'})")


def test_a_relay_host_command_does_not_load_the_relay_application() -> None:
    """``lightbox-server db upgrade`` and the other commands import only what they use: the
    application (server/app.py and the SCIM schema under it) is imported by the process that
    serves, so IT's commands start in a fraction of the time."""
    probe = ("import sys; import server.__main__; "
             "print(sorted(m for m in ('server.app', 'server.scim.schema', 'scim2_models') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("argv", [["admin", "create", "--login", "it.smith"],
                                  ["audit", "verify"], ["audit", "head"],
                                  ["scim", "token", "list", "--org", "st-elsewhere"]])
def test_a_command_run_away_from_the_relays_folder_makes_no_database_of_its_own(
        argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``LIGHTBOX_DATA_DIR`` (default ``.data``) is relative to the folder a command runs in:
    run from another folder than the relay's, a command once started a new, empty embedded
    Postgres there and answered from it ("relation "audit_log" does not exist"), or created
    an administrator the relay never saw. It now says where it looked, and makes nothing."""
    for key in [k for k in os.environ if k.startswith("LIGHTBOX_") or k == "DATABASE_URL"]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LIGHTBOX_ADMIN_PASSWORD", PASSWORD)
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, out, err = _server(argv, capsys)
    assert (rc, out) == (2, "")
    assert _one_line(err) == (
        f"lightbox-server: there is no relay database in {elsewhere / '.data' / 'pg'}: run "
        "lightbox-server in the folder the relay runs in (its data folder, "
        "LIGHTBOX_DATA_DIR=.data, is relative to it), or set LIGHTBOX_DATA_DIR or "
        "DATABASE_URL as the relay has them")
    assert not (elsewhere / ".data" / "pg").exists()
