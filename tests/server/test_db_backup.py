"""``lightbox-server db backup DIR`` and ``db restore DIR`` (server/backups.py), as IT runs
them: a backup taken beside a running relay is restored into a new data folder, and a relay
started there knows its administrator, its organisations, its audit trail and the admin token
signed before the backup. Every refusal is one sentence, and changes nothing.

One backup, of a relay on DATABASE_URL at the schema revision before head, is shared by the
tests after the first: it is taken once (module fixture) and copied by each test that alters
it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from protocol.keys import OrganisationKey
from server import __main__ as server_cli
from server import backups, migrations
from server.tokens import ensure_token_key
from server.trust import write_trusted_orgs
from tests.helpers import Cluster, previous, revision_of, seconds
from tests.make_run import BIN, MadeRun, beside, data_folder, made_run, relay_host_env, run_command

PASSWORD = "lantern-harbour-quince-71"
HEAD = migrations.head_revision()
PREVIOUS = previous(HEAD)
NEXT = ("next: start the relay; from IT's workstation, give it the newest revocation list kept "
        "(`lightbox-admin revocations restore FILE`, docs/OPERATIONS.md \"What a restore brings "
        "back\"); then take a new audit anchor (`lightbox-server audit head`)")


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _when(folder: Path) -> str:
    """The time backup.json gives, as restore prints it."""
    taken = json.loads((folder / "backup.json").read_text())["taken_at"]
    return f"{dt.datetime.fromisoformat(taken):%Y-%m-%d %H:%M} UTC"


def test_a_backup_beside_the_running_relay_restores_into_a_new_data_folder(
        tmp_path: Path) -> None:
    """The whole round trip, as OPERATIONS.md "Backups" tells IT: the relay keeps serving
    while it is backed up; restored elsewhere, its administrator, trusted organisation, audit
    trail and token key are there, and an admin token signed before the backup still works."""
    server = str(BIN / "lightbox-server")
    kept = tmp_path / "backups" / "20261207-0200"
    with made_run() as run:
        env = relay_host_env(run.data, LIGHTBOX_ADMIN_PASSWORD=PASSWORD)
        # What `org trust` writes (tests/server/test_manage.py runs it).
        write_trusted_orgs(run.data / "trusted-orgs.json",
                           {"st-elsewhere": OrganisationKey.generate().public})
        done = run_command([server, "admin", "create", "--login", "it.jones"], env)
        assert done.returncode == 0, done.stdout + done.stderr
        login = httpx.post(run.url + "/v1/admin/login", timeout=seconds(10),
                           json={"login": "it.jones", "password": PASSWORD})
        assert login.status_code == 200, login.text
        token = login.json()["token"]
        anchor = run_command([server, "audit", "head"], env).stdout.split()
        taken = beside(run.url, [server, "db", "backup", str(kept)], env)
        key = (run.data / "token-key").read_bytes()
        trusted = (run.data / "trusted-orgs.json").read_bytes()

    manifest = json.loads((kept / "backup.json").read_text())
    assert re.fullmatch(
        rf"backup of the relay's database \(schema {HEAD}\) in {re.escape(str(kept))}: "
        r"lightbox\.dump \(\d+ kB\), token-key, trusted-orgs\.json\n", taken.stdout), taken
    assert taken.stderr == ""
    assert sorted(p.name for p in kept.iterdir()) == ["backup.json", "lightbox.dump",
                                                      "token-key", "trusted-orgs.json"]
    assert _mode(kept) == 0o700 and {_mode(p) for p in kept.iterdir()} == {0o600}
    assert sorted(p.name for p in kept.parent.iterdir()) == [kept.name]  # no partial left

    with data_folder() as fresh:
        env = relay_host_env(fresh)
        done = run_command([server, "db", "restore", str(kept)], env)
        assert (done.returncode, done.stderr) == (0, ""), done.stdout + done.stderr
        assert done.stdout.splitlines() == [
            f"restored the backup of {_when(kept)} (schema {HEAD}) into the embedded Postgres "
            f"in {fresh / 'pg'}, with its token-key and trusted-orgs.json", NEXT]
        assert (fresh / "token-key").read_bytes() == key and _mode(fresh / "token-key") == 0o600
        assert (fresh / "trusted-orgs.json").read_bytes() == trusted
        assert sorted(p.name for p in fresh.iterdir()) == ["pg", "token-key",
                                                           "trusted-orgs.json"]
        assert manifest["schema"] == HEAD

        relay = MadeRun(fresh, 1)
        try:
            relay.wait_ready()
            ready = httpx.get(relay.url + "/readyz", timeout=seconds(5))
            assert ready.json() == {"status": "ready", "schema": HEAD}
            users = httpx.get(relay.url + "/v1/admin/users", timeout=seconds(10),
                              headers={"Authorization": f"Bearer {token}"})
            assert users.status_code == 200, users.text
            listed = beside(relay.url, [server, "admin", "list"], env)
            assert listed.stdout == "it.jones active\n"
            verified = beside(relay.url, [server, "audit", "verify", "--head", *anchor], env)
            assert verified.stdout.startswith("audit trail intact: "), verified.stdout
            assert verified.stdout.endswith(
                f"; it still passes through the kept head (row {anchor[0]})\n")
            out, err = relay.signal_group(signal.SIGINT)
        finally:
            relay.close()
    # Neither the new database's, the new key's nor the missing organisations' sentence.
    assert out.splitlines()[1:] == ["Embedded Postgres stopped."], out + err


# --- one backup shared by the tests below ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kept:
    folder: Path
    out: str
    err: str
    key: bytes
    trusted: bytes


def _relay_host(mp: pytest.MonkeyPatch, data: Path, dsn: str | None) -> None:
    """A shell on the relay host: the relay's data folder, and DATABASE_URL if it has one."""
    for name in [k for k in os.environ if k.startswith("LIGHTBOX_") or k == "DATABASE_URL"]:
        mp.delenv(name)
    mp.setenv("LIGHTBOX_DATA_DIR", str(data))
    mp.setenv("LIGHTBOX_ARGON2_PROFILE", "cheap")
    if dsn is not None:
        mp.setenv("DATABASE_URL", dsn)


def _server(argv: list[str]) -> tuple[int, str, str]:
    """``lightbox-server ARGV`` in this process: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = server_cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def kept(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kept]:
    """A backup of a relay on DATABASE_URL at the revision before head, into an empty folder
    made beforehand (mode 0755)."""
    dsn = asyncio.run(cluster.create_database(empty=True))
    try:
        migrations.upgrade(dsn, PREVIOUS)
        home = tmp_path_factory.mktemp("relay-host")
        data = home / "relay"
        ensure_token_key(data / "token-key")
        write_trusted_orgs(data / "trusted-orgs.json",
                           {"st-elsewhere": OrganisationKey.generate().public})
        folder = home / "backup"
        folder.mkdir(mode=0o755)
        with pytest.MonkeyPatch.context() as mp:
            _relay_host(mp, data, dsn)
            rc, out, err = _server(["db", "backup", str(folder)])
        assert rc == 0, out + err
        yield Kept(folder, out, err, (data / "token-key").read_bytes(),
                   (data / "trusted-orgs.json").read_bytes())
    finally:
        asyncio.run(cluster.drop_database(dsn))


def test_a_backup_is_private_and_its_manifest_names_each_file_with_its_hash(kept: Kept) -> None:
    folder = kept.folder
    assert kept.out == (f"backup of the relay's database (schema {PREVIOUS}) in {folder}: "
                        f"lightbox.dump ({(folder / 'lightbox.dump').stat().st_size / 1000:.0f} "
                        "kB), token-key, trusted-orgs.json\n")
    assert kept.err == ""
    assert _mode(folder) == 0o700  # the empty folder given was 0755
    assert {p.name: _mode(p) for p in folder.iterdir()} == {
        "backup.json": 0o600, "lightbox.dump": 0o600, "token-key": 0o600,
        "trusted-orgs.json": 0o600}
    manifest = json.loads((folder / "backup.json").read_text())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", manifest.pop("taken_at"))
    assert manifest == {
        "format": 1, "lightbox": importlib.metadata.version("lightbox"), "schema": PREVIOUS,
        "files": {name: {"bytes": (folder / name).stat().st_size,
                         "sha256": _sha256(folder / name)}
                  for name in ("lightbox.dump", "token-key", "trusted-orgs.json")}}
    assert (folder / "token-key").read_bytes() == kept.key
    assert (folder / "trusted-orgs.json").read_bytes() == kept.trusted


def _tables(dsn: str) -> list[str]:
    async def read() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            return [r["tablename"] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        finally:
            await conn.close()
    return asyncio.run(read())


def test_a_backup_of_an_older_schema_is_restored_into_an_empty_database_and_upgraded(
        kept: Kept, empty_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "relay"
    _relay_host(monkeypatch, data, empty_dsn)
    rc, out, err = _server(["db", "restore", str(kept.folder)])
    assert (rc, err) == (0, ""), out + err
    assert out.splitlines() == [
        f"restored the backup of {_when(kept.folder)} (schema {PREVIOUS}, upgraded to {HEAD}) "
        "into the database at DATABASE_URL, with its token-key and trusted-orgs.json", NEXT]
    assert revision_of(empty_dsn) == HEAD
    assert (data / "token-key").read_bytes() == kept.key and _mode(data / "token-key") == 0o600
    assert (data / "trusted-orgs.json").read_bytes() == kept.trusted
    assert _mode(data / "trusted-orgs.json") == 0o644  # public keys, as `org trust` writes them


# --- refused: one sentence, nothing changed --------------------------------------------------


def _refused(argv: list[str]) -> str:
    rc, out, err = _server(argv)
    assert (rc, out) == (2, ""), out + err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_backup_into_a_folder_that_is_not_empty_is_refused_and_writes_nothing(
        db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _relay_host(monkeypatch, tmp_path / "relay", db_dsn)
    used = tmp_path / "backups" / "20261207-0200"
    used.mkdir(parents=True)
    (used / "notes.txt").write_text("last night's\n")
    assert _refused(["db", "backup", str(used)]) == (
        f"lightbox-server: {used} is not empty: a backup goes into a new folder or an empty "
        "one, and nothing was written")
    assert [p.name for p in used.iterdir()] == ["notes.txt"]
    assert [p.name for p in used.parent.iterdir()] == [used.name]


def test_what_a_backup_stopped_midway_left_is_removed_by_the_next_and_said(
        db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup killed before it finished (kill -9, the host's power) left its hidden folder
    with a partial dump and a copy of token-key, which nothing removed. The next backup beside
    it removes it and says so, whatever name that one was for (IT names each by its date); one
    still being written (its process alive) and a folder holding anything a backup does not
    write are left alone."""
    _relay_host(monkeypatch, tmp_path / "relay", db_dsn)
    ensure_token_key(tmp_path / "relay" / "token-key")
    backups_dir = tmp_path / "backups"
    target = backups_dir / "nightly"
    # Killed processes' folders: the pid of a child that has exited since, and of one killed
    # whose parent has not reaped it yet (a zombie, as a backup killed a moment ago is).
    gone = subprocess.Popen(["true"])
    gone.wait()
    zombie = subprocess.Popen(["true"])
    while Path(f"/proc/{zombie.pid}/stat").read_text().split(") ", 1)[1][0] != "Z":
        time.sleep(0.01)
    stopped = backups_dir / f".nightly.{zombie.pid}.k3x9q2zd.partial"
    yesterdays = backups_dir / f".20261206-0200.{gone.pid}.b7c1xx4q.partial"
    still_running = backups_dir / f".nightly.{os.getpid()}.a8f2mm0p.partial"
    not_ours = backups_dir / f".nightly.{gone.pid}.c0ffee12.partial"
    for folder in (stopped, yesterdays, still_running, not_ours):
        folder.mkdir(parents=True)
        (folder / "token-key").write_bytes(b"k" * 32)
        (folder / "lightbox.dump").write_bytes(b"PGDMP")
    (not_ours / "notes.txt").write_text("someone's\n")

    rc, out, err = _server(["db", "backup", str(target)])
    zombie.wait()
    assert rc == 0, out + err
    assert sorted(p.name for p in backups_dir.iterdir()) == sorted(
        ["nightly", still_running.name, not_ours.name])
    assert err.splitlines()[:2] == [
        f"removed {yesterdays}: what an earlier backup into 20261206-0200 left when it was "
        "stopped before it finished (a partial dump, perhaps a copy of token-key)",
        f"removed {stopped}: what an earlier backup into nightly left when it was stopped "
        "before it finished (a partial dump, perhaps a copy of token-key)"]
    assert "Traceback" not in err


def _alter(folder: Path, change: str) -> None:
    manifest = folder / "backup.json"
    body = json.loads(manifest.read_text())
    if change == "no manifest":
        manifest.unlink()
    elif change == "a byte of the dump":
        dump = bytearray((folder / "lightbox.dump").read_bytes())
        dump[len(dump) // 2] ^= 0x01
        (folder / "lightbox.dump").write_bytes(bytes(dump))
    elif change == "a newer release's revision":
        manifest.write_text(json.dumps({**body, "schema": "9999", "lightbox": "0.9.0"}))
    elif change == "another revision than the dump's":
        manifest.write_text(json.dumps({**body, "schema": "0001"}))
    elif change == "no token-key":
        (folder / "token-key").unlink()


@pytest.mark.parametrize(("change", "said"), [
    ("no manifest", "{folder} holds no backup: there is no backup.json in it (`lightbox-server "
                    "db backup DIR` writes one)"),
    ("a byte of the dump", "{folder}/lightbox.dump is not the file backup.json names (its "
                           "SHA-256 differs): the backup is damaged or was altered; restore "
                           "another one"),
    ("a newer release's revision", "the backup's database is at schema 9999, which this "
                                   "release does not have (its last is {head}): it was taken "
                                   "by a newer release (Lightbox 0.9.0); restore it with that "
                                   "release"),
    ("another revision than the dump's", "{folder}/lightbox.dump holds schema {previous}, not "
                                         "the 0001 that backup.json says: the backup was "
                                         "altered; restore another one"),
    ("no token-key", "{folder}/token-key is missing, though backup.json names it: the backup "
                     "is incomplete; restore another one"),
])
def test_restore_of_a_backup_that_does_not_check_out_is_refused_naming_why(
        kept: Kept, change: str, said: str, empty_dsn: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "20261207-0200"
    shutil.copytree(kept.folder, folder)
    _alter(folder, change)
    data = tmp_path / "relay"
    _relay_host(monkeypatch, data, empty_dsn)
    assert _refused(["db", "restore", str(folder)]) == "lightbox-server: " + said.format(
        folder=folder, head=HEAD, previous=PREVIOUS)
    assert _tables(empty_dsn) == [] and not data.exists()


def test_restore_into_a_data_folder_that_holds_a_database_says_to_move_it_aside(
        kept: Kept) -> None:
    with data_folder() as data, pytest.MonkeyPatch.context() as mp:
        (data / "pg").mkdir()
        (data / "pg" / "PG_VERSION").write_text("16\n")
        (data / "token-key").write_bytes(b"k" * 32)  # the relay's own, not the backup's
        _relay_host(mp, data, None)
        said = _refused(["db", "restore", str(kept.folder)])
        aside = re.escape(f"{data}.before-restore-")
        assert re.fullmatch(
            re.escape(f"lightbox-server: there is already a relay database in {data / 'pg'}: "
                      "restore never writes over a database; stop the relay, move its data "
                      f"folder aside (`mv {data} ") + aside + r"\d{8}-\d{4}"
            + re.escape("`) and restore again"), said), said
        assert sorted(p.name for p in data.iterdir()) == ["pg", "token-key"]
        assert [p.name for p in (data / "pg").iterdir()] == ["PG_VERSION"]
        assert (data / "token-key").read_bytes() == b"k" * 32


def test_restore_beside_a_token_key_that_differs_from_the_backups_is_refused(
        kept: Kept) -> None:
    with data_folder() as data, pytest.MonkeyPatch.context() as mp:
        key = data / "token-key"
        key.write_bytes(b"k" * 32)
        _relay_host(mp, data, None)
        assert _refused(["db", "restore", str(kept.folder)]) == (
            f"lightbox-server: {key} is already there and differs from the backup's token-key: "
            f"restore never writes over it; move it aside (`mv {key} {key}.before-restore`) "
            "and restore again")
        assert [p.name for p in data.iterdir()] == ["token-key"]
        assert key.read_bytes() == b"k" * 32


def test_restore_into_a_database_that_has_tables_is_refused(
        kept: Kept, db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "relay"
    _relay_host(monkeypatch, data, db_dsn)
    assert _refused(["db", "restore", str(kept.folder)]) == (
        "lightbox-server: the database at DATABASE_URL already has tables: restore never writes "
        "over a database; create an empty database owned by the role in DATABASE_URL, point "
        "DATABASE_URL at it, and restore again")
    assert revision_of(db_dsn) == HEAD and not data.exists()


@pytest.mark.parametrize("where", ["embedded", "DATABASE_URL"])
def test_a_restore_that_fails_midway_leaves_no_database_and_no_files(
        kept: Kept, where: str, empty_dsn: str, tmp_path: Path) -> None:
    """A dump cut short (its manifest rewritten to match, as a forger would): pg_restore
    stops at the end of the file, after most tables were made. Nothing of it stays: the
    restore is one transaction, and the embedded cluster it made is removed."""
    folder = tmp_path / "20261207-0200"
    shutil.copytree(kept.folder, folder)
    dump = folder / "lightbox.dump"
    dump.write_bytes(dump.read_bytes()[:-200])
    manifest = json.loads((folder / "backup.json").read_text())
    manifest["files"]["lightbox.dump"]["sha256"] = _sha256(dump)
    (folder / "backup.json").write_text(json.dumps(manifest))
    with data_folder() as data, pytest.MonkeyPatch.context() as mp:
        _relay_host(mp, data, empty_dsn if where == "DATABASE_URL" else None)
        assert _refused(["db", "restore", str(folder)]) == (
            "lightbox-server: pg_restore stopped, and restored nothing (one transaction): "
            "could not read from input file: end of file")
        assert list(data.iterdir()) == []
    assert _tables(empty_dsn) == []


def test_a_database_url_that_cannot_be_reached_is_said_as_every_command_says_it(
        kept: Kept, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _relay_host(monkeypatch, tmp_path / "relay",
                "postgresql://lightbox:not-this-one@127.0.0.1:1/lightbox")
    parent = tmp_path / "backups"
    for argv in (["db", "backup", str(parent / "20261207-0200")],
                 ["db", "restore", str(kept.folder)]):
        assert _refused(argv) == (
            "lightbox-server: the database at DATABASE_URL (127.0.0.1:1) could not be reached "
            "(connection refused): check that Postgres runs there and accepts connections "
            "from this host, and that DATABASE_URL is the one the relay uses")
    assert list(parent.iterdir()) == [] and not (tmp_path / "relay").exists()


def test_the_password_of_database_url_goes_to_the_postgresql_tools_in_their_environment(
        ) -> None:
    """Never on their command line, which any user of the relay host can read (ps)."""
    url, env = backups._libpq(
        "postgresql://lightbox_owner:n%2Fot-this-one@db.example.org:5433/lightbox"
        "?sslmode=verify-full")
    assert url == "postgresql://lightbox_owner@db.example.org:5433/lightbox?sslmode=verify-full"
    assert env["PGPASSWORD"] == "n/ot-this-one"
    url, env = backups._libpq("postgresql://postgres:@/postgres?host=/srv/lightbox/.data/pg")
    assert url == "postgresql://postgres@/postgres?host=/srv/lightbox/.data/pg"
    assert "PGPASSWORD" not in env


def test_a_server_newer_than_the_bundled_pg_dump_is_said_with_what_to_do() -> None:
    """pg_dump 16's own words for a PostgreSQL 17 server (no such server here to run it on)."""
    said = ("pg_dump: error: aborting because of server version mismatch\n"
            "pg_dump: detail: server version: 17.2; pg_dump version: 16.2\n")
    assert str(backups._dump_failed(said, "the database at DATABASE_URL")) == (
        "the database at DATABASE_URL runs PostgreSQL 17.2, newer than the pg_dump that comes "
        "with the relay (16.2): take the dump with a pg_dump of that server's version, as "
        "docs/OPERATIONS.md \"Backups\" says")
