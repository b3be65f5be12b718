"""server/embedded.py: the embedded cluster is stopped only by the last of its live holders,
whoever started it (a relay-host command never stops the relay's database under it)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.embedded import HOLDERS_FILE, EmbeddedPostgres, postmaster_pid
from tests.make_run import data_folder


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
