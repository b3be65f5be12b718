"""server/embedded.py: the embedded cluster is stopped only by the last of its live holders,
whoever started it (a relay-host command never stops the relay's database under it)."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.embedded import HOLDERS_FILE, EmbeddedPostgres, postmaster_pid
from tests.helpers import ROOT, seconds
from tests.make_run import BIN, data_folder


@pytest.fixture
def pgdata() -> Iterator[Path]:
    with data_folder() as data:
        yield data / "pg"


def test_only_the_last_live_holder_stops_the_cluster(pgdata: Path) -> None:
    relay, command = EmbeddedPostgres(pgdata), EmbeddedPostgres(pgdata)
    relay.start()
    started_by_relay = postmaster_pid(pgdata)
    assert started_by_relay is not None
    assert command.start() == relay.uri  # attached, not a second cluster
    assert command.stop() is False  # the command leaves; the relay still holds it
    assert postmaster_pid(pgdata) == started_by_relay
    assert relay.stop() is True
    assert postmaster_pid(pgdata) is None
    assert not (pgdata / HOLDERS_FILE).exists()
    assert relay.stop() is False  # twice is harmless


def test_a_holder_that_started_the_cluster_leaves_it_running_for_one_that_attached(
        pgdata: Path) -> None:
    command, relay = EmbeddedPostgres(pgdata), EmbeddedPostgres(pgdata)
    command.start()
    relay.start()
    assert command.stop() is False
    assert postmaster_pid(pgdata) is not None
    assert relay.stop() is True
    assert postmaster_pid(pgdata) is None


def test_a_dead_holder_does_not_keep_the_cluster_running(pgdata: Path) -> None:
    pg = EmbeddedPostgres(pgdata)
    pg.start()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    holders = json.loads((pgdata / HOLDERS_FILE).read_text())
    holders.append({"pid": int(gone.stdout), "started": "1", "token": "sigkilled"})
    (pgdata / HOLDERS_FILE).write_text(json.dumps(holders))
    assert pg.stop() is True
    assert postmaster_pid(pgdata) is None


def test_a_cluster_folder_its_server_may_not_write_is_one_sentence_naming_the_fix(
        pgdata: Path) -> None:
    """The server's log file taken from the user PostgreSQL runs as (a copy restored as root,
    say): ``lightbox-server`` said one line after two JSON records of pgserver's with the
    commands, their output and the server's whole log. Now one sentence naming the file, its
    owner and the command that gives the folder back; following it, the relay starts."""
    first = EmbeddedPostgres(pgdata)
    first.start()
    first.stop()
    log = pgdata / "log"
    if os.geteuid() == 0:  # PostgreSQL runs as pgserver (pgserver's rule for root)
        os.chown(log, 0, 0)
        log.chmod(0o600)
        runs_as, owner = "pgserver", "root"
    else:
        log.chmod(0o400)
        runs_as = owner = pwd.getpwuid(os.geteuid()).pw_name
    env = {**os.environ, "LIGHTBOX_DATA_DIR": str(pgdata.parent), "LOG_LEVEL": "info"}
    env.pop("DATABASE_URL", None)
    refused = subprocess.run([str(BIN / "lightbox-server"), "--migrate", "--port", "0"],
                             cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=seconds(60), stdin=subprocess.DEVNULL)
    assert (refused.returncode, refused.stdout) == (2, ""), refused
    assert refused.stderr == (
        f"lightbox-server: the embedded Postgres in {pgdata} did not start: {runs_as}, the user "
        f"PostgreSQL runs as, may not write in it ({log} belongs to {owner}): give the folder "
        f"back with `chown -R {runs_as} {pgdata}`, or set LIGHTBOX_DATA_DIR to a folder of the "
        "relay's own\n")
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", runs_as, str(pgdata)], check=True)
    else:
        log.chmod(0o600)
    again = EmbeddedPostgres(pgdata)
    again.start()
    again.stop()
