"""The benchmark's profile summary (bench/relay.py): each py-spy sample is charged to the
bucket of its innermost matching frame, so the server stack every request runs under (uvicorn's
``run_asgi``, Starlette) is charged only for its own time (docs/BENCHMARKS.md). Also how the
bench counts statements and sizes its paced rows, sets the disk's flushes beside a paced row's
slowest sends, and a row of its first table."""

from __future__ import annotations

import time
from pathlib import Path

from bench.relay import (
    MIN_PACED_SAMPLES,
    DiskProbe,
    logged_statements,
    row_seconds,
    summarise_profile,
    table,
)

_ASGI = ("run_asgi (uvicorn/protocols/websockets/websockets_sansio_impl.py:420);"
         "__call__ (starlette/routing.py:100);endpoint (server/ws.py:180);run (server/ws.py:300)")


def _raw(*samples: tuple[str, int]) -> str:
    return "\n".join(f"{stack} {n}" for stack, n in samples)


def test_a_sample_under_run_asgi_is_charged_to_its_innermost_bucket() -> None:
    raw = _raw(
        (f"{_ASGI};_pump (server/ws.py:640);fetch (asyncpg/connection.py:690)", 6),
        (f"{_ASGI};_read_loop (server/ws.py:400);receive_data (protocol/session.py:300)", 3),
        (f"{_ASGI};_write_raw (server/ws.py:700);send (uvicorn/protocols/websockets/"
         "websockets_sansio_impl.py:460)", 1))
    own = summarise_profile(raw, seconds=1.0, rate=10)["own_percent"]
    assert own == {"asyncpg (driver, protocol)": 60.0,
                   "protocol session (protocol/session.py)": 30.0,
                   "uvicorn websocket protocol (framing, transport)": 10.0}


def test_inclusive_buckets_count_a_sample_once_per_label() -> None:
    raw = _raw((f"{_ASGI};_on_ack (server/ws.py:490);ack (server/acks.py:45)", 2))
    inclusive = summarise_profile(raw, seconds=1.0, rate=2)["inclusive_percent"]
    assert inclusive["acks (acks.py, ws._on_ack)"] == 100.0
    assert inclusive["uvicorn websocket protocol (framing, transport)"] == 100.0


def test_statements_are_counted_once_each_from_postgres_log() -> None:
    """bench/relay.py's statement count: a simple-protocol statement and an extended-protocol
    execute count once; the parse and bind lines of the same execute, and other log lines,
    do not."""
    log = b"\n".join([
        b"2026-12-03 16:46:34.240 UTC [29180] LOG:  duration: 0.027 ms  statement: BEGIN;",
        b"2026-12-03 16:46:34.241 UTC [29180] LOG:  duration: 0.210 ms  parse "
        b"__asyncpg_stmt_3__: SELECT thread_id FROM threads",
        b"2026-12-03 16:46:34.241 UTC [29180] LOG:  duration: 0.020 ms  bind "
        b"__asyncpg_stmt_3__: SELECT thread_id FROM threads",
        b"2026-12-03 16:46:34.242 UTC [29180] LOG:  duration: 0.056 ms  execute "
        b"__asyncpg_stmt_3__: SELECT thread_id FROM threads",
        b"2026-12-03 16:46:34.242 UTC [29180] DETAIL:  parameters: $1 = '{}'",
        b"2026-12-03 16:46:34.243 UTC [29180] LOG:  duration: 0.030 ms  execute <unnamed>: "
        b"SELECT 1",
        b"2026-12-03 16:46:34.250 UTC [29180] LOG:  duration: 0.650 ms  statement: COMMIT;",
        b"2026-12-03 16:46:35.000 UTC [29157] LOG:  checkpoint starting: time",
    ])
    assert logged_statements(log) == 4


def test_a_paced_row_at_a_low_rate_runs_long_enough_for_its_p99() -> None:
    """A p99 over 600 latencies (6 s at 100 msg/s) is the sixth slowest, one stall: a row
    runs until it has measured MIN_PACED_SAMPLES messages, and never shorter than asked."""
    assert row_seconds(100, 6.0) * 100 == MIN_PACED_SAMPLES == 2_000
    assert row_seconds(1_000, 6.0) == 6.0
    assert row_seconds(100, 40.0) == 40.0


def test_the_disk_probe_flushes_in_the_folder_it_is_given_and_leaves_nothing(
        tmp_path: Path) -> None:
    with DiskProbe(tmp_path, every=0.005) as disk:
        while len(disk.flushes) < 3:
            time.sleep(0.01)
    assert all(seconds >= 0 for _, seconds in disk.flushes)
    assert list(tmp_path.iterdir()) == []


def test_a_paced_rows_p99_tail_is_counted_beside_the_disks_stalls(tmp_path: Path) -> None:
    """Of the sends at or over the row's p99, those that spent half their wait or more beside
    a flush that took 10 ms or more; flushes before the row are not its own."""
    disk = DiskProbe(tmp_path)
    disk.flushes = [(5.0, 0.2),  # before the row
                    (100.0, 0.0003), (100.5, 0.060), (102.0, 0.0004), (103.0, 0.012),
                    (103.012, 0.048)]  # three stalls: 100.5-100.56, 103.0-103.012-103.06
    latencies = [0.004] * 295 + [0.006, 0.065, 0.070, 0.070, 0.070]  # the p99: 70 ms
    slow = [(100.49, 0.070),  # 100.49-100.56: 60 of its 70 ms beside a stall
            (102.99, 0.070),  # 102.99-103.06: 12 + 48 ms beside two
            (103.03, 0.070),  # 103.03-103.10: 30 ms beside one, under half its wait
            (101.0, 0.065),   # no stall, and under the p99
            (100.51, 0.006)]  # in a stall, but under the p99
    beside = disk.beside(slow, latencies, since=50.0)
    assert beside["flushes"] == 5 and beside["stalls"] == 3
    assert beside["flush"]["max_ms"] == 60.0
    assert (beside["tail"], beside["tail_beside_a_stall"]) == (3, 2)


def test_the_first_table_says_whether_the_relay_let_any_connection_compress() -> None:
    """The bench's devices offer permessage-deflate as a browser does; the relay must decline
    it (server/runner.py), and the first table says so, or says NOT MET."""
    declined = table({"compressed_connections": 0})
    accepted = table({"compressed_connections": 3})
    assert "devices that got permessage-deflate (all offer it) | 0 " in declined
    assert declined.rstrip().endswith("0 MET")
    assert "| 3 " in accepted and "NOT MET" in accepted
    assert "permessage-deflate" not in table({"durable": {}})  # an older result: no row
