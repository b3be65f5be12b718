"""``make bench``: the relay's benchmark (ARCHITECTURE.md §8). Not part of ``make test``.

It starts everything it needs and stops everything it started: a private embedded Postgres in
``.data/bench-<pid>`` (stopped with ``pg_ctl stop`` and removed at the end, even after an error
or Ctrl-C), real ``lightbox-server`` processes pointed at it with DATABASE_URL, the bare
websocket relay of bench/bare.py, and load-generator processes (bench/load.py). All traffic is
on 127.0.0.1. Every phase is bounded in messages and in seconds.

Phases, each printed and written to ``bench/results/latest.json``:

1. raw asyncpg ceiling (b): batched insert + delete of message and delivery rows, set-based
   and in the relay's own per-row shape (server/store/messages.py), two connections;
2. durable throughput: N devices (pairs sharing a thread, each sending to its peer) through
   ``lightbox-server --workers 2``; counted are messages accepted (after COMMIT) and delivered
   to the recipient, which acknowledges them;
3. the paced table, run first on the fresh database: open loop from 100 senders at 100, 500,
   1,000 and 2,000 msg/s offered, with p50/p99 send to deliver, the achieved rate, and per
   delivered message the relay's and Postgres's CPU, Postgres transactions and websocket
   frames; the same rows against the bare relay (``--paced-only``: just these);
4. the bare websocket relay ceiling (a): the same generator, same sealed frames, 2 processes;
5. memory per idle device and the 10,000-device test on ``lightbox-server --workers 1``.

STYLE.md: performance is measured, not assumed; the ceilings are measured in the same run, on
the same (shared, 2-core) machine, so each figure is also printed as a ratio to its ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench import load
from bench.world import DeviceSpec, World, build_world, make_org, write_trusted_orgs
from server import migrations
from server.embedded import EmbeddedPostgres, postmaster_pid
from server.store import messages as store_messages
from server.tokens import TokenService, ensure_token_key, load_token_key

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# Closed-loop throughput: at least 5,000 msg/s on this 2-core machine with the generator on
# it, and at least a quarter of the bare relay measured in the same run (docs/BENCHMARKS.md).
TARGETS = {"durable_msgs_per_s": 5_000, "durable_of_bare": 0.25, "p99_ms": 20.0,
           "kib_per_idle_device": 50.0, "idle_devices": 10_000}

# --- the per-row store (the relay's before group commit), for the relay-shaped baseline -------


async def _lookup_existing(conn: asyncpg.Connection, msg: store_messages.NewMessage) -> bool:
    """One SELECT per message: is this (sender device, message id) already stored?"""
    return await conn.fetchval(
        "SELECT 1 FROM messages WHERE sender_device_id = $1 AND message_id = $2",
        msg.sender_device_id, msg.message_id) is not None


async def _insert_message(conn: asyncpg.Connection, msg: store_messages.NewMessage,
                          now: dt.datetime) -> None:
    """One message and its deliveries, row by row: the thread's next number, the message,
    the delivery rows (inside the caller's transaction)."""
    seq = await conn.fetchval(
        "UPDATE threads SET last_seq = last_seq + 1 WHERE thread_id = $1 RETURNING last_seq",
        msg.thread_id)
    message_pk = await conn.fetchval(
        "INSERT INTO messages (message_id, thread_id, thread_seq, sender_user_id, "
        "sender_device_id, priority, purpose, consent_id, body_hash, recipients, sealed, size, "
        "created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10::uuid[],$11,$12,$13) "
        "RETURNING message_pk",
        msg.message_id, msg.thread_id, seq, msg.sender_user_id, msg.sender_device_id,
        msg.priority, msg.purpose, msg.consent_id, msg.body_hash, list(msg.recipients),
        msg.sealed, len(msg.sealed), now)
    await conn.execute(
        "INSERT INTO deliveries (delivery_id, device_id, message_pk, priority, created_at) "
        "SELECT d, r, $3, $4, $5 FROM unnest($1::uuid[], $2::uuid[]) AS x(d, r)",
        [uuid.uuid4() for _ in msg.recipients], list(msg.recipients), message_pk,
        store_messages.PRIORITY_RANK[msg.priority], now)



def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; children (relays, generators) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


# -- processes we start --------------------------------------------------------------------------


class RelayProcess:
    """``python -m server --workers N`` on our Postgres (DATABASE_URL), logs to a file."""

    def __init__(self, data: Path, dsn: str, workers: int, env: dict[str, str]) -> None:
        self.port = free_port()
        self.workers = workers
        self.logfile = data / f"relay-{self.port}.log"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("LIGHTBOX_")},
                    **env, "DATABASE_URL": dsn, "HOST": "127.0.0.1", "PORT": str(self.port),
                    "LOG_LEVEL": "warning"}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def start(self, timeout: float = 60.0) -> None:
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "--workers", str(self.workers)],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        ready = 0
        with httpx.Client(timeout=2.0) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"relay exited: {self.logfile.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if c.get(f"http://127.0.0.1:{self.port}/readyz").status_code == 200:
                        ready += 1
                        if ready >= 3 * self.workers:  # several answers: all workers are up
                            return
                time.sleep(0.1)
        raise TimeoutError("relay not ready")

    def relay_pids(self) -> list[psutil.Process]:
        """The processes serving requests (the parent itself with one worker)."""
        assert self.proc is not None
        parent = psutil.Process(self.proc.pid)
        if self.workers == 1:
            return [parent]
        return [p for p in parent.children()
                if "resource_tracker" not in " ".join(p.cmdline())]

    def log_errors(self) -> dict[str, int]:
        """Error lines in the relay's log, by message and error type."""
        errors: Counter[str] = Counter()
        for line in self.logfile.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("level") in {"error", "critical"}:
                    errors[f"{rec.get('msg')}: {rec.get('error_type', '')}"] += 1
        return dict(errors)

    def metric(self, name: str) -> float | None:
        with contextlib.suppress(httpx.HTTPError):
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
            m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
            return float(m.group(1)) if m else None
        return None

    def gc_pauses(self) -> dict[str, float]:
        """Every relay process's garbage collections (one scrape answers for all of them,
        server/metrics.py): how many, how many paused the process 25 ms or more, and the
        seconds paused, over every generation."""
        with contextlib.suppress(httpx.HTTPError):
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
            got = {"collections": 0.0, "over_25ms": 0.0, "seconds": 0.0}
            for family in text_string_to_metric_families(text):
                if family.name != "lightbox_gc_pause_seconds":
                    continue
                for s in family.samples:
                    if s.name.endswith("_count"):
                        got["collections"] += s.value
                        got["over_25ms"] += s.value
                    elif s.name.endswith("_sum"):
                        got["seconds"] += s.value
                    elif s.labels.get("le") == "0.025":
                        got["over_25ms"] -= s.value
            return got
        return {}

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    p.kill()
            self.proc.kill()
            self.proc.wait(10)


class BareRelay:
    """bench/bare.py, one process per port."""

    def __init__(self, data: Path, processes: int) -> None:
        self.ports = [free_port() for _ in range(processes)]
        self.logfile = data / "bare.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, timeout: float = 30.0) -> None:
        with self.logfile.open("ab") as out:
            for port in self.ports:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "bench.bare", "--port", str(port)], cwd=ROOT,
                    stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while True:
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", port), timeout=1):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("bare relay not listening")
                time.sleep(0.1)

    def pids(self) -> list[psutil.Process]:
        return [psutil.Process(p.pid) for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


class Generators:
    """Load-generator processes (bench/load.py), each driving a slice of the devices."""

    def __init__(self, slices: list[list[DeviceSpec]], trusted: dict[str, bytes]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for specs in slices:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=load.main, args=(child, specs, trusted), daemon=True,
                            name="bench-load")
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)

    def call(self, cmd: str, timeout: float, per: list[dict[str, Any]] | None = None,
             **kw: Any) -> list[dict[str, Any]]:
        for i, pipe in enumerate(self.pipes):
            pipe.send((cmd, {**kw, **(per[i] if per else {})}))
        out = []
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"load generator did not finish {cmd!r} in {timeout:.0f} s")
            r = pipe.recv()
            if "error" in r:
                raise RuntimeError(f"load generator failed in {cmd!r}: {r['error']}")
            out.append(r)
        return out

    def pids(self) -> list[psutil.Process]:
        return [psutil.Process(p.pid) for p in self.procs]

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(("exit", {}))
        for p in self.procs:
            p.join(20)
            if p.is_alive():
                p.kill()
                p.join(5)


def slice_pairs(specs: list[DeviceSpec], n: int) -> list[list[DeviceSpec]]:
    """Split devices over ``n`` generators, keeping both devices of a pair together."""
    out: list[list[DeviceSpec]] = [[] for _ in range(n)]
    for s in specs:
        out[(s.index // 2) % n].append(s)
    return out


# -- measurements --------------------------------------------------------------------------------


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


def sleeps(procs: list[psutil.Process]) -> dict[int, int]:
    """Each process's voluntary context switches so far: one each time it waited (for a
    socket, a lock, the disk) and was woken again, in its main thread (the relay's event loop,
    a Postgres backend)."""
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out[p.pid] = p.num_ctx_switches().voluntary
    return out


def postgres_procs(pgdata: Path) -> list[psutil.Process]:
    pid = postmaster_pid(pgdata)
    if pid is None:
        return []
    pm = psutil.Process(pid)
    return [pm, *pm.children(recursive=True)]


class CpuMeter:
    """CPU seconds used by groups of processes over a window (new processes count in full)."""

    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups  # name -> callable returning the processes
        self.start: dict[str, dict[int, float]] = {}
        self.t0 = 0.0

    def __enter__(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.start = {k: cpu_seconds(f()) for k, f in self.groups.items()}
        self.start_sleeps = {k: sleeps(f()) for k, f in self.groups.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.used = {}
        self.woken: dict[str, int] = {}  # wake-ups (voluntary context switches) per group
        for k, f in self.groups.items():
            end = cpu_seconds(f())
            self.used[k] = sum(v - self.start[k].get(pid, 0.0) for pid, v in end.items())
            self.woken[k] = sum(v - self.start_sleeps[k].get(pid, 0)
                                for pid, v in sleeps(f()).items())

    def shares(self) -> dict[str, float]:
        """Percent of one core, per group, over the window."""
        return {k: round(100 * v / self.wall, 1) for k, v in self.used.items()}


def merge_rate(results: list[dict[str, Any]], key: str, warmup: float) -> dict[str, Any]:
    """Steady-state rate from the generators' bucketed counts: skip ``warmup`` seconds, stop at
    the window's end or when a sender ran out of pre-sealed messages, whichever is first."""
    start = results[0]["start"]
    end = min(min(r["end"] for r in results), min(r["exhausted_at"] for r in results))
    total: Counter[int] = Counter()
    for r in results:
        for b, n in r[key].items():
            total[int(b)] += n
    first = int(warmup / load.BUCKET)
    last = int((end - start) / load.BUCKET)  # exclusive: the last bucket may be partial
    if last <= first:
        return {"rate": 0.0, "seconds": 0.0, "series": []}
    count = sum(total[b] for b in range(first, last))
    secs = (last - first) * load.BUCKET
    per_s = [sum(total[b] for b in range(s, min(s + int(1 / load.BUCKET), last)))
             / (min(s + int(1 / load.BUCKET), last) - s) / load.BUCKET
             for s in range(first, last, int(1 / load.BUCKET))]
    return {"rate": count / secs, "seconds": secs, "series": [round(x) for x in per_s]}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)

    def q(p: float) -> float:
        return round(1000 * v[min(len(v) - 1, int(p * len(v)))], 2)

    return {"n": len(v), "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99),
            "max_ms": round(1000 * v[-1], 2), "mean_ms": round(1000 * statistics.fmean(v), 2)}


# -- profiling (py-spy) --------------------------------------------------------------------------

PROFILE_BUCKETS = [
    # (label, substring of a frame). Inclusive: a sample counts once for every label one of
    # its frames matches. Own: a sample counts once, for the label of its innermost matching
    # frame, so that the server stack every request runs under (uvicorn's ``run_asgi``,
    # Starlette) is charged only for time spent in its own code, not for the relay's.
    ("sender signature check (envelope.verify_sealed)", "verify_sealed"),
    ("canonical JSON (RFC 8785)", "canonical"),
    ("Ed25519 / SHA-256 (nacl)", "nacl/"),
    ("group commit (sends._store)", "_store (server/sends.py"),
    ("send validation (sends.enqueue)", "enqueue (server/sends.py"),
    ("delivery pump (ws._pump)", "_pump (server/ws.py"),
    ("acks (acks.py, ws._on_ack)", "server/acks.py"),
    ("acks (acks.py, ws._on_ack)", "_on_ack (server/ws.py"),
    ("websocket read loop (ws._read_loop)", "_read_loop (server/ws.py"),
    ("relay connection code (server/ws.py)", "server/ws.py"),
    ("handshake (ws._handshake)", "_handshake (server/ws.py"),
    ("asyncpg (driver, protocol)", "asyncpg/"),
    ("uvicorn websocket protocol (framing, transport)", "uvicorn/protocols/websockets"),
    ("websockets library (framing)", "/websockets/"),
    ("Starlette (WebSocket wrapper, routing)", "starlette/"),
    ("protocol session (protocol/session.py)", "protocol/session.py"),
    ("msgspec frame codec (protocol/frames.py)", "protocol/frames.py"),
    ("sealed-message codec (encode/decode_sealed)", "code_sealed"),
    ("NOTIFY handling (events._on_notify)", "_on_notify"),
    ("asyncio: timeouts (asyncio.timeout)", "asyncio/timeouts.py"),
    ("asyncio/uvloop scheduling", "asyncio/"),
    ("metrics (prometheus_client)", "prometheus_client/"),
    ("logging", "logging/"),
]


def _own_bucket(frames: list[str]) -> str:
    """The label of the innermost frame that matches a bucket ('other' if none does)."""
    for frame in reversed(frames):
        for label, needle in PROFILE_BUCKETS:
            if needle in frame:
                return label
    return "other"


def summarise_profile(raw: str, seconds: float, rate: int) -> dict[str, Any]:
    total = 0
    leaves: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        leaves[re.sub(r":\d+\)$", ")", frames[-1])] += count
        for label in {label for label, needle in PROFILE_BUCKETS if needle in stack}:
            buckets[label] += count
        own[_own_bucket(frames)] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "busy_percent_of_core": round(100 * total / (seconds * rate), 1),
        "own_percent": {k: round(100 * v / total, 1) for k, v in own.most_common()},
        "inclusive_percent": {k: round(100 * v / total, 1) for k, v in buckets.most_common()},
        "top_self_percent": {k: round(100 * v / total, 1) for k, v in leaves.most_common(15)},
    }


def start_profilers(pids: list[int], seconds: float, out: Path, rate: int = 100
                    ) -> list[tuple[subprocess.Popen[bytes], Path]]:
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return []
    procs = []
    for pid in pids:
        dest = out / f"pyspy-{pid}.txt"
        procs.append((subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds)),
             "--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(dest)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), dest))
    return procs


def collect_profiles(procs: list[tuple[subprocess.Popen[bytes], Path]], seconds: float,
                     rate: int = 100) -> list[dict[str, Any]]:
    out = []
    for p, dest in procs:
        try:
            p.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        if dest.exists():
            out.append(summarise_profile(dest.read_text(), seconds, rate))
    return out


# -- history -------------------------------------------------------------------------------------

_HISTORY = """
INSERT INTO messages (message_id, thread_id, thread_seq, sender_user_id, sender_device_id,
                      priority, purpose, body_hash, recipients, sealed, size, created_at)
SELECT gen_random_uuid(), t.thread_id, g.n, t.created_by, d.device_id, 'routine', 'direct_care',
       sha256(convert_to(g.n::text, 'UTF8')), '{}', NULL, 2016,
       now() - interval '30 days' + g.n * interval '1 second'
  FROM threads t JOIN devices d ON d.user_id = t.created_by
 CROSS JOIN generate_series(1, $1) AS g(n)
"""


async def seed_history(dsn: str, messages: int) -> None:
    """A relay in service holds history: ``messages`` delivered and acknowledged messages
    (ciphertext already purged, no delivery rows) spread over the threads, then ``VACUUM
    ANALYZE``, so that Postgres plans for tables of a relay in use rather than for the empty
    ones of a fresh database (a plan made for an empty ``messages`` scans it whole)."""
    conn = await asyncpg.connect(dsn)
    try:
        threads = int(await conn.fetchval("SELECT count(*) FROM threads"))
        per_thread = max(1, messages // max(1, threads))
        async with conn.transaction():
            await conn.execute(_HISTORY, per_thread)
            await conn.execute("UPDATE threads SET last_seq = $1", per_thread)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


# -- the raw asyncpg ceiling ---------------------------------------------------------------------


async def raw_ceiling(dsn: str, world: World, seconds: float, batch: int, conns: int
                      ) -> dict[str, Any]:
    """Message + delivery rows inserted, then the delivery rows deleted (the ack), in batched
    transactions on ``conns`` connections: (1) set-based (one statement per table per batch),
    (2) the relay's own per-row store functions (lookup, sequence, message, deliveries) inside
    one transaction per batch, plus one NOTIFY, then acks per device."""
    pairs = [(d, world.devices[d.peer]) for d in world.devices if d.index % 2 == 0]
    body = os.urandom(2747)
    body_hash = hashlib.sha256(body).digest()
    results: dict[str, Any] = {}

    async def set_based(conn: asyncpg.Connection, k: int, stop: float) -> int:
        done, seq = 0, 10**12 * (k + 1)
        for _ in range(100_000):  # bounded; stops at ``stop``
            if time.monotonic() >= stop:
                break
            rows = []
            for i in range(batch):
                s, r = pairs[(done + i) % len(pairs)]
                seq += 1
                rows.append((uuid.uuid4(), s.thread_id, seq, s.user_id, s.device_id,
                             r.device_id))
            async with conn.transaction():
                pks = await conn.fetch(
                    "INSERT INTO messages (message_id, thread_id, thread_seq, sender_user_id, "
                    "sender_device_id, priority, purpose, consent_id, body_hash, recipients, "
                    "sealed, size, created_at) SELECT m, t, q, u, d, 'routine', 'direct_care', "
                    "NULL, $7, ARRAY[r], $8, $9, now() FROM unnest($1::uuid[], $2::uuid[], "
                    "$3::bigint[], $4::uuid[], $5::uuid[], $6::uuid[]) AS x(m, t, q, u, d, r) "
                    "RETURNING message_pk",
                    *[list(c) for c in zip(*rows, strict=True)], body_hash, body, len(body))
                dids = [uuid.uuid4() for _ in rows]
                await conn.execute(
                    "INSERT INTO deliveries (delivery_id, device_id, message_pk, priority, "
                    "created_at) SELECT d, r, m, 1, now() FROM unnest($1::uuid[], $2::uuid[], "
                    "$3::bigint[]) AS x(d, r, m)",
                    dids, [row[5] for row in rows], [p["message_pk"] for p in pks])
                await conn.execute("SELECT pg_notify('bench_raw', 'x')")
            await conn.execute("DELETE FROM deliveries WHERE delivery_id = ANY($1::uuid[])",
                               dids)
            done += batch
        return done

    async def relay_shaped(conn: asyncpg.Connection, k: int, stop: float) -> int:
        done = 0
        now = dt.datetime.now(dt.UTC)
        # Disjoint threads per connection: two transactions taking the same thread rows in
        # different orders deadlock (see docs/BENCHMARKS.md).
        mine = pairs[k::conns]
        for _ in range(100_000):
            if time.monotonic() >= stop:
                break
            msgs = []
            for i in range(batch):
                s, r = mine[(done + i) % len(mine)]
                msgs.append(store_messages.NewMessage(
                    message_id=str(uuid.uuid4()), thread_id=s.thread_id,
                    sender_user_id=s.user_id, sender_device_id=s.device_id, priority="routine",
                    purpose="direct_care", consent_id=None, body_hash=body_hash, sealed=body,
                    recipients=[r.device_id]))
            async with conn.transaction():
                for m in msgs:
                    await _lookup_existing(conn, m)
                    await _insert_message(conn, m, now)
                await conn.execute("SELECT pg_notify('bench_raw', 'x')")
            # The pump's query, then the device's acknowledgement (server/ws.py).
            for dev in {m.recipients[0] for m in msgs}:
                queued = await store_messages.fetch_deliveries(conn, dev, after_pk=0,
                                                               limit=batch)
                await store_messages.ack(conn, dev, [d.delivery_id for d in queued])
            done += batch
        return done

    for name, fn in (("set_based", set_based), ("relay_shaped", relay_shaped)):
        cs = [await asyncpg.connect(dsn) for _ in range(conns)]
        try:
            started = time.monotonic()
            stop = started + seconds
            counts = await asyncio.gather(*(fn(c, k, stop) for k, c in enumerate(cs)))
            took = time.monotonic() - started
        finally:
            for c in cs:
                await c.close()
        results[name] = {"messages": sum(counts), "seconds": round(took, 2),
                         "msgs_per_s": round(sum(counts) / took)}
    return results


# -- the run -------------------------------------------------------------------------------------


def relay_env(data: Path, token_key: Path, trusted: Path, args: argparse.Namespace
              ) -> dict[str, str]:
    return {
        "LIGHTBOX_DATA_DIR": str(data),
        "LIGHTBOX_TOKEN_KEY_FILE": str(token_key),
        "LIGHTBOX_TRUSTED_ORGS_FILE": str(trusted),
        "LIGHTBOX_ARGON2_PROFILE": "cheap",
        "LIGHTBOX_ACCESS_TOKEN_TTL": "7200",
        "LIGHTBOX_RATE_MESSAGES_PER_MINUTE": "100000000",
        "LIGHTBOX_RATE_BYTES_PER_MINUTE": str(2**40),
        "LIGHTBOX_WS_SEND_WINDOW": str(args.relay_window),
        # The relay deletes a message's ciphertext once no delivery of it is queued
        # (server/purge.py), by default once a minute: every second here, so that the purge of
        # what a phase delivered costs that phase, not whichever one a minute later runs.
        "LIGHTBOX_CIPHERTEXT_PURGE_INTERVAL": "1",
        **dict(kv.split("=", 1) for kv in args.relay_env),
    }


def _git() -> dict[str, Any]:
    def git(*a: str) -> str:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty_files": len(git("status", "--porcelain", "--untracked-files=no").splitlines())}


def cleanup_stale(base: Path) -> None:
    """Stop and remove clusters left by an earlier bench that was killed (NOTES.md)."""
    for d in sorted(base.glob("bench-*")):
        try:
            owner = int(d.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if psutil.pid_exists(owner):
            continue
        if postmaster_pid(d / "pg") is not None:
            log(f"stopping a cluster left running by an earlier bench in {d}")
            pg = EmbeddedPostgres(d / "pg")
            with contextlib.suppress(Exception):
                pg.start()
                pg.stop(mode="immediate")
        shutil.rmtree(d, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = raise_nofile()
    base = ROOT / ".data"
    base.mkdir(exist_ok=True)
    cleanup_stale(base)
    data = base / f"bench-{os.getpid()}"
    data.mkdir()
    out: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                    "nofile": [soft, hard]},
        "git": _git(),
        "options": vars(args), "targets": TARGETS,
    }
    with contextlib.ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, data, True)
        pg = EmbeddedPostgres(data / "pg")
        stack.callback(pg.stop, mode="fast")
        admin = pg.start()
        pgdata = data / "pg"
        log(f"embedded Postgres up in {pgdata}")
        dsn = admin  # the cluster's default database, migrated for the bench
        migrations.upgrade(dsn)
        token_key = data / "token-key"
        ensure_token_key(token_key)
        tokens = TokenService(load_token_key(token_key), access_ttl=7200, admin_ttl=600)
        org = make_org()
        trusted_file = write_trusted_orgs(data / "trusted-orgs.json", org.public)
        env = relay_env(data, token_key, trusted_file, args)

        async def make(count: int, prefix: str, pair: bool) -> World:
            conn = await asyncpg.connect(dsn)
            try:
                return await build_world(conn, org, tokens, count, prefix=prefix, pair=pair)
            finally:
                await conn.close()

        t = time.monotonic()
        world = asyncio.run(make(args.devices, "d", True))
        log(f"{args.devices} devices, {args.devices // 2} threads provisioned in "
            f"{time.monotonic() - t:.1f} s")
        trusted = world.trusted
        if args.history:
            t = time.monotonic()
            asyncio.run(seed_history(dsn, args.history))
            log(f"{args.history:,} delivered messages of history written and analysed in "
                f"{time.monotonic() - t:.1f} s")

        # (b) raw asyncpg ceiling, before any relay runs (nothing else on the database).
        if not args.skip_raw and not args.paced_only:
            log(f"raw asyncpg ceiling: {args.raw_seconds:.0f} s per variant, batches of "
                f"{args.raw_batch}, 2 connections")
            out["raw_asyncpg"] = asyncio.run(
                raw_ceiling(dsn, world, args.raw_seconds, args.raw_batch, 2))
            log(f"  {out['raw_asyncpg']}")

        gens = Generators(slice_pairs(world.devices, args.procs), trusted)
        stack.callback(gens.stop)
        senders = sum(1 for d in world.devices if d.peer != d.index)
        per_device_tp = 0 if args.paced_only else max(1, args.messages // max(1, senders))
        per_device_prof = per_device_tp if args.profile else 0
        # The paced table: only the even device of each pair sends; each rate once timed and
        # once for the statement count (COUNT_SECONDS).
        per_sender_paced = sum(int(r * (row_seconds(r, args.paced_seconds) + COUNT_SECONDS)
                                   / max(1, senders // 2)) + 4 for r in args.paced_rates)
        t = time.monotonic()
        seal = gens.call("seal", 600, per_device=per_device_tp + per_device_prof,
                         extra_even=per_sender_paced, body_bytes=args.body)
        out["sealing"] = {"messages": sum(r["sealed"] for r in seal),
                          "seconds": round(time.monotonic() - t, 1),
                          "send_frame_bytes": seal[0]["frame_bytes"],
                          "body_bytes": args.body}
        log(f"pre-sealed {out['sealing']['messages']} messages of {args.body} B "
            f"(send frame {seal[0]['frame_bytes']} B) in {out['sealing']['seconds']} s")

        # Before anything is timed, the set-up's own upkeep is done and on the disk (the
        # history, and the raw ceiling's 100,000-odd rows in the relay's own tables): left to
        # itself, autovacuum went over them during the first paced rows and dirtied 400 MB,
        # which the kernel wrote back 30 s later in one burst, holding Postgres's WAL flush
        # (so every commit) for 70-190 ms (BENCHMARKS.md, round 16).
        t = time.monotonic()
        asyncio.run(_settle(dsn))
        log(f"set-up vacuumed and flushed to disk (VACUUM ANALYZE, CHECKPOINT, sync) in "
            f"{time.monotonic() - t:.1f} s")

        # -- the real relay, 2 processes ---------------------------------------------------------
        if not args.skip_relay:
            relay = RelayProcess(data, dsn, args.workers, env)
            stack.callback(relay.stop)
            relay.start()
            workers = relay.relay_pids()
            log(f"lightbox-server --workers {args.workers} on port {relay.port} "
                f"(pids {[p.pid for p in workers]})")
            conn = gens.call("connect", 300, url=relay.url, kind="relay",
                             bundles=not args.no_bundles)
            n_ok = sum(r["connected"] for r in conn)
            compressed = sum(r["compressed"] for r in conn)
            log(f"  {n_ok}/{args.devices} devices connected in "
                f"{max(r['seconds'] for r in conn):.1f} s, offering permessage-deflate as "
                f"browsers do: {compressed} accepted by the relay")
            if n_ok < args.devices:
                raise RuntimeError(f"devices failed to connect: {[r['errors'] for r in conn]}")
            out["compressed_connections"] = compressed
            groups = {"relay": relay.relay_pids, "postgres": lambda: postgres_procs(pgdata),
                      "generators": gens.pids}
            # The paced table first, on a fresh database, so that --paced-only measures the
            # same thing as the full run.
            out["idle_cost"] = idle_cost(groups, dsn)
            log(f"  idle, 200 devices connected: {out['idle_cost']}")
            out["paced"] = []
            asyncio.run(_log_background(dsn))
            for rate in args.paced_rates:
                before = relay.log_errors()
                with RowWatch(relay, pgdata) as beside, DiskProbe(data) as disk:
                    row = paced(gens, groups, args, cyclic=False, rate=rate, one_per_pair=True,
                                seconds=row_seconds(rate, args.paced_seconds), dsn=dsn,
                                disk=disk)
                row["relay_log_errors"] = _diff(relay.log_errors(), before)
                row["beside"] = beside.result
                out["paced"].append(row)
                log(f"  paced {rate:,.0f} msg/s: {_paced_line(row)}")
            for row in out["paced"]:  # after the timed rows: logging every statement costs
                row["statements"] = count_statements(gens, groups, args, dsn, pgdata,
                                                     rate=row["offered_per_s"])
                log(f"  statements at {row['offered_per_s']:,.0f} msg/s: {row['statements']}")
            if not args.paced_only:
                gc_before = relay.gc_pauses()
                out["durable"] = throughput(gens, groups, args, cyclic=False, dsn=dsn)
                out["durable"]["gc"] = _gc_per_message(gc_before, relay.gc_pauses(),
                                                       out["durable"])
                out["durable"]["relay_log_errors"] = relay.log_errors()
                out["durable"]["connect_seconds"] = round(max(r["seconds"] for r in conn), 2)
                log(f"  durable: {out['durable']}")
                if out["durable"]["ran_out_of_sealed_messages"]:
                    log(f"  the durable window ran out of pre-sealed messages: measured over "
                        f"{out['durable']['measured_seconds']} s, not {args.seconds - args.warmup}"
                        f" (raise --messages)")
            if args.profile and not (Path(sys.executable).parent / "py-spy").exists():
                log("  --profile: py-spy is not installed in this environment "
                    "(.venv/bin/pip install py-spy); no profile taken")
            elif args.profile and not args.paced_only:
                log(f"  profiling the relay workers with py-spy ({args.seconds:.0f} s, "
                    "a separate pass, not counted)")
                before = relay.log_errors()
                spies = start_profilers([p.pid for p in relay.relay_pids()], args.seconds + 1,
                                        data)
                prof_run = throughput(gens, groups, args, cyclic=False)
                out["durable_profile"] = {
                    "msgs_per_s_under_profiler": prof_run["msgs_per_s"],
                    "refused": prof_run["refused"],
                    "relay_log_errors": _diff(relay.log_errors(), before),
                    "workers": collect_profiles(spies, args.seconds + 1)}
                log(f"  under py-spy: {prof_run['msgs_per_s']} msg/s, refused "
                    f"{prof_run['refused']}")
            out["left_in_queue"] = asyncio.run(_count(dsn, "deliveries"))
            kept = out["ciphertext"] = asyncio.run(_kept(dsn))
            kept["purged_total"] = int(relay.metric("lightbox_ciphertext_purged_total") or 0)
            log(f"  ciphertext the relay still keeps: {kept['kept_undelivered']:,} messages "
                f"for queued deliveries and {kept['kept_delivered']:,} with none queued (after "
                f"{kept['waited_s']} s); its sweep purged {kept['purged_total']:,}, the "
                "acknowledgements the rest")
            gens.call("close", 120)
            out.setdefault("durable", {})["relay_metrics"] = {
                "accepted_total": relay.metric("lightbox_messages_accepted_total"),
                "delivered_total": relay.metric("lightbox_messages_delivered_total")}
            relay.stop()

        # -- (a) the bare websocket relay --------------------------------------------------------
        if not args.skip_bare:
            bare = BareRelay(data, args.workers)
            stack.callback(bare.stop)
            bare.start()
            per = [{"url": f"ws://127.0.0.1:{bare.ports[i % len(bare.ports)]}/ws"}
                   for i in range(args.procs)]
            conn = gens.call("connect", 300, per=per, kind="bare")
            log(f"bare relay ({len(bare.ports)} processes): "
                f"{sum(r['connected'] for r in conn)} devices connected")
            groups = {"relay": bare.pids, "generators": gens.pids}
            if not args.paced_only:
                out["bare"] = throughput(gens, groups, args, cyclic=True)
                log(f"  bare: {out['bare']['msgs_per_s']:.0f} msg/s  cpu {out['bare']['cpu']}")
            out["bare_paced"] = []
            for rate in args.paced_rates:
                row = paced(gens, groups, args, cyclic=True, rate=rate, one_per_pair=True,
                            seconds=row_seconds(rate, args.paced_seconds))
                out["bare_paced"].append(row)
                log(f"  bare paced {rate:,.0f} msg/s: {_paced_line(row)}")
            gens.call("close", 120)
            bare.stop()
        gens.stop()

        # -- memory per idle device, and 10,000 idle devices on one process -------------------
        if not args.skip_idle and not args.paced_only:
            out["idle"] = idle(dsn, data, env, args, make, pgdata)
    return out


async def _count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


async def _kept(dsn: str, wait: float = 5.0) -> dict[str, Any]:
    """The messages whose ciphertext the relay still keeps (server/purge.py), for a queued
    delivery or, the purge behind, for none; waits up to ``wait`` seconds, a few sweeps, for
    the latter to reach 0."""
    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        while True:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE EXISTS (SELECT 1 FROM deliveries d "
                "WHERE d.message_pk = m.message_pk)) AS undelivered, count(*) FILTER (WHERE NOT "
                "EXISTS (SELECT 1 FROM deliveries d WHERE d.message_pk = m.message_pk)) AS "
                "delivered FROM messages m WHERE m.sealed IS NOT NULL")
            if row["delivered"] == 0 or time.monotonic() - started >= wait:
                break
            await asyncio.sleep(0.25)
        return {"kept_undelivered": int(row["undelivered"]),
                "kept_delivered": int(row["delivered"]),
                "waited_s": round(time.monotonic() - started, 1)}
    finally:
        await conn.close()


PG_COUNTERS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched", "tup_inserted",
               "tup_updated", "tup_deleted")


async def _pg_counters(dsn: str) -> dict[str, int]:
    """The database's cumulative counters (pg_stat_database). The embedded Postgres has no
    pg_stat_statements (its build ships no contrib modules), so statements are not counted
    one by one: every statement outside BEGIN/COMMIT is a transaction of its own, so
    transactions per message is the closest statement count Postgres keeps. A busy backend
    reports its counters at most once a second, an idle one within 10 s
    (``PGSTAT_IDLE_INTERVAL``): the caller waits 11 s before reading, so nothing of a window
    is left unreported or counted in the next one."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(
            f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database "
            "WHERE datname = current_database()")
        out = {k: int(row[k]) for k in PG_COUNTERS}
        # Where the tuples are read: index entries returned per index, rows read by
        # sequential scans per table (pg_stat_user_indexes, pg_stat_user_tables).
        for r in await conn.fetch(
                "SELECT 'index ' || indexrelname AS name, idx_tup_read AS n "
                "FROM pg_stat_user_indexes UNION ALL "
                "SELECT 'seq scan ' || relname, coalesce(seq_tup_read, 0) "
                "FROM pg_stat_user_tables"):
            out[r["name"]] = int(r["n"])
        return out
    finally:
        await conn.close()


async def _dead_tuples(dsn: str) -> dict[str, int]:
    """Dead rows not yet vacuumed, per table (pg_stat_user_tables.n_dead_tup)."""
    conn = await asyncpg.connect(dsn)
    try:
        return {r["relname"]: int(r["n_dead_tup"]) for r in await conn.fetch(
            "SELECT relname, n_dead_tup FROM pg_stat_user_tables WHERE n_dead_tup > 0")}
    finally:
        await conn.close()


PG_SETTLE = 11.0  # seconds: PGSTAT_IDLE_INTERVAL (10 s) and a margin


class PgMeter:
    """pg_stat_database counters over a window (None when there is no database: bare).
    ``settle`` waits before the first reading too (when the window before was not metered)."""

    def __init__(self, dsn: str | None, *, settle: bool = False) -> None:
        self.dsn, self.settle = dsn, settle
        self.used: dict[str, int] = {}
        self.by_relation: dict[str, int] = {}
        self.dead: dict[str, int] = {}

    def __enter__(self) -> PgMeter:
        if self.dsn:
            if self.settle:
                time.sleep(PG_SETTLE)
            self.start = asyncio.run(_pg_counters(self.dsn))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.dsn and exc[0] is None:
            time.sleep(PG_SETTLE)
            end = asyncio.run(_pg_counters(self.dsn))
            # Our own two snapshot connections count one transaction each.
            self.used = {k: end[k] - self.start[k] for k in PG_COUNTERS}
            self.used["xact_commit"] -= 2
            self.by_relation = {k: end[k] - self.start.get(k, 0) for k in end
                                if k not in PG_COUNTERS}
            self.dead = asyncio.run(_dead_tuples(self.dsn))

    def per_message(self, messages: int) -> dict[str, Any]:
        if not self.used or not messages:
            return {}
        u = self.used
        top = sorted(((n, k) for k, n in self.by_relation.items() if n), reverse=True)[:6]
        return {"xacts": round((u["xact_commit"] + u["xact_rollback"]) / messages, 2),
                "tuples_read": round((u["tup_returned"] + u["tup_fetched"]) / messages, 1),
                "tuples_written": round((u["tup_inserted"] + u["tup_updated"]
                                         + u["tup_deleted"]) / messages, 2),
                "tuples_read_where": {k: round(n / messages, 1) for n, k in top},
                "dead_rows_after": self.dead}


def per_message(cm: CpuMeter, pm: PgMeter, res: list[dict[str, Any]]) -> dict[str, Any]:
    """CPU (µs, from /proc through psutil), Postgres transactions and tuples, and websocket
    frames (both directions, counted by the generators) per delivered message."""
    n = sum(r["delivered"] for r in res)
    if not n:
        return {}
    frames = sum(r["frames_in"] + r["frames_out"] for r in res)
    return {"messages": n,
            "cpu_us": {k: round(1e6 * v / n) for k, v in cm.used.items()},
            "wakeups": {k: round(v / n, 2) for k, v in cm.woken.items()},
            "frames": round(frames / n, 2), **({"postgres": pm.per_message(n)} if pm.used else {})}


def throughput(gens: Generators, groups: dict[str, Any], args: argparse.Namespace, *,
               cyclic: bool, dsn: str | None = None) -> dict[str, Any]:
    with PgMeter(dsn) as pm:
        start_at = time.monotonic() + 1.0
        with CpuMeter(groups) as cm:
            res = gens.call("throughput", args.seconds + 120, start_at=start_at,
                            duration=args.seconds, window=args.window, cyclic=cyclic)
    delivered = merge_rate(res, "del_buckets", args.warmup)
    accepted = merge_rate(res, "acc_buckets", args.warmup)
    refused: Counter[str] = Counter()
    for r in res:
        refused.update(r["refused"])
    gen_cpu = sum(r["cpu"] for r in res)
    return {
        "msgs_per_s": round(min(delivered["rate"], accepted["rate"])),
        "delivered_per_s": round(delivered["rate"]), "accepted_per_s": round(accepted["rate"]),
        "measured_seconds": delivered["seconds"], "per_second": delivered["series"],
        "sent": sum(r["sent"] for r in res), "accepted": sum(r["accepted"] for r in res),
        "delivered": sum(r["delivered"] for r in res), "refused": dict(refused),
        "ran_out_of_sealed_messages": min(r["exhausted_at"] for r in res) < float("inf"),
        "cpu": cm.shares(), "per_message": per_message(cm, pm, res),
        "generator_cpu_share_percent": round(100 * gen_cpu / (cm.wall * (os.cpu_count() or 1)),
                                             1),
        "window_per_device": args.window, "devices": args.devices,
    }


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


class DiskProbe:
    """The disk's own flush time beside a paced row, the ceiling under its tail: a thread that
    writes 8 KiB to a file in the cluster's folder and ``fdatasync``s it every ``every``
    seconds, as a COMMIT's WAL flush does (PostgreSQL's ``wal_sync_method`` is ``fdatasync``
    on Linux). A send is not ``accepted`` before its COMMIT's flush (docs/ARCHITECTURE.md), so
    while this disk takes tens of milliseconds to flush, no relay on it can answer faster."""

    STALL_S = 0.010  # a flush this slow is a stall: the smallest paced target (PACED_TARGETS)

    def __init__(self, folder: Path, every: float = 0.02) -> None:
        self.path, self.every = folder / "disk-probe.bin", every
        self.flushes: list[tuple[float, float]] = []  # (started, monotonic; seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-probe", daemon=True)

    def __enter__(self) -> DiskProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while not self._stop.wait(self.every):
                os.pwrite(fd, os.urandom(8192), 0)
                t = time.monotonic()
                os.fdatasync(fd)
                self.flushes.append((t, time.monotonic() - t))
        finally:
            os.close(fd)

    def beside(self, slow: list[tuple[float, float]], latencies: list[float],
               since: float) -> dict[str, Any]:
        """The flushes since ``since`` (p50, p99, the slowest, how many stalled), and how many
        of the row's sends at or over its p99 (``slow``: (sent at, latency) of the slower
        ones) spent at least half their wait beside a stalled flush (the probe's flushes
        follow one another, so their stalls do not overlap)."""
        flushes = [f for f in list(self.flushes) if f[0] >= since]
        stalls = [(t, t + d) for t, d in flushes if d >= self.STALL_S]
        cut = sorted(latencies)[int(0.99 * len(latencies))] if latencies else None
        tail = [] if cut is None else [(t, t + lat) for t, lat in slow if lat >= cut]
        return {"flushes": len(flushes), "flush": percentiles([d for _, d in flushes]),
                "stalls": len(stalls), "stall_s": self.STALL_S,
                "tail": len(tail),
                "tail_beside_a_stall": sum(
                    2 * sum(max(0.0, min(b, e) - max(a, s)) for s, e in stalls) >= b - a
                    for a, b in tail)}


def paced(gens: Generators, groups: dict[str, Any], args: argparse.Namespace, *,
          cyclic: bool, rate: float, seconds: float, one_per_pair: bool = True,
          dsn: str | None = None, settle: bool = False,
          disk: DiskProbe | None = None) -> dict[str, Any]:
    """Open loop at ``rate`` msg/s offered (split over the generators), for ``seconds``; CPU,
    Postgres counters and frames are measured over the window and its drain and divided by
    the messages delivered; with ``disk``, its flushes over the row are set beside the row's
    slowest sends."""
    with PgMeter(dsn, settle=settle) as pm:
        start_at = time.monotonic() + 1.0
        with CpuMeter(groups) as cm:
            res = gens.call("paced", seconds + 120, start_at=start_at, duration=seconds,
                            rate=rate / args.procs, window=args.window, cyclic=cyclic,
                            one_per_pair=one_per_pair)
    lat = [x for r in res for x in r["latencies"]]
    acc = [x for r in res for x in r["accept_latencies"]]
    beside_disk = None if disk is None else disk.beside(
        [(x[0], x[1]) for r in res for x in r["slow"]], lat, since=start_at)
    worst, worst_at = max((r["worst"] for r in res), key=lambda w: w[0])
    if os.environ.get("BENCH_DEBUG"):
        print([{k: v for k, v in r.items() if "bucket" not in k and "latencies" not in k}
               for r in res])
    sent = sum(r["sent"] for r in res)
    in_window = sum(n for r in res for b, n in r["del_buckets"].items()
                    if int(b) < seconds / load.BUCKET)
    refused: Counter[str] = Counter()
    for r in res:
        refused.update(r["refused"])
    return {
        "offered_per_s": rate, "seconds": seconds, "senders": sum(r["senders"] for r in res),
        "sent": sent, "achieved_send_rate": round(sent / seconds),
        "delivered_per_s_in_window": round(in_window / seconds),
        "accepted": sum(r["accepted"] for r in res),
        "delivered": sum(r["delivered"] for r in res),
        "skipped": sum(r["skipped"] for r in res), "refused": dict(refused),
        "max_generator_lateness_ms": round(1000 * max(r["max_late"] for r in res), 1),
        "p99_generator_lateness_ms": round(1000 * max(r["p99_late"] for r in res), 1),
        "latency": percentiles(lat), "accept_latency": percentiles(acc), "cpu": cm.shares(),
        "slowest": {"ms": round(1000 * worst, 2),
                    "sent_at_s": None if worst_at is None else round(worst_at, 3)},
        "per_message": per_message(cm, pm, res),
    } | ({} if beside_disk is None else {"disk": beside_disk})


# A paced row lasts long enough for its p99 to rest on at least 20 latencies above it: at 100
# msg/s a 6 s row would have 600 samples, and its p99 would be the 6th slowest, one stall.
MIN_PACED_SAMPLES = 2_000


# Postgres's log lines that can stall a commit, logged for the whole bench (log_checkpoints is
# on by default in PostgreSQL 16; autovacuum and autoanalyze runs are logged from the start).
_PG_EVENT = re.compile(rb"^(\S+ \S+) \S+ \[\d+\] LOG:  (automatic vacuum of table \S+|automatic "
                       rb"analyze of table \S+|checkpoint starting: [^\n]*|checkpoint complete)",
                       re.M)


def _gc_per_message(before: dict[str, float], after: dict[str, float],
                    run: dict[str, Any]) -> dict[str, float] | None:
    """The relay's garbage collections over a closed loop (every process's, from its
    ``lightbox_gc_pause_seconds``; server/gcwatch.py): how many, how many per 1,000 messages,
    the microseconds they paused per message, and how many paused a process 25 ms or more,
    over the same messages as the CPU per message (``per_message.messages``)."""
    n = run.get("per_message", {}).get("messages") or run.get("sent")
    if not before or not after or not n:
        return None
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    return {"collections": used["collections"],
            "per_1000_messages": round(1000 * used["collections"] / n, 2),
            "us_per_message": round(1e6 * used["seconds"] / n, 2),
            "over_25ms": used["over_25ms"]}


class RowWatch:
    """What happened beside a paced row that can explain a stall: the relay's garbage
    collections (every process's) and Postgres's autovacuum, autoanalyze and checkpoints, each
    with its log time, to set beside the row's slowest message (``slowest.sent_at_s``)."""

    def __init__(self, relay: RelayProcess, pgdata: Path) -> None:
        self.relay, self.log_file = relay, pgdata / "log"

    def __enter__(self) -> RowWatch:
        self.gc = self.relay.gc_pauses()
        self.offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.started = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        return self

    def __exit__(self, *exc: object) -> None:
        after = self.relay.gc_pauses()
        self.result: dict[str, Any] = {
            "wall_start": self.started,
            "gc": {k: round(after[k] - self.gc.get(k, 0.0), 4) for k in after}}
        events: list[str] = []
        if self.log_file.exists():
            with self.log_file.open("rb") as f:
                f.seek(self.offset)
                events = [f"{m.group(1).decode()} {m.group(2).decode()}"
                          for m in _PG_EVENT.finditer(f.read())]
        self.result["postgres_events"] = events


async def _settle(dsn: str) -> None:
    """The ciphertext of the raw ceiling's messages purged, and the relay's sweep past the
    set-up's messages, as a relay in service would have it (server/purge.py); what autovacuum
    would do about the set-up's rows, done now (``VACUUM ANALYZE``); then Postgres's dirty
    buffers written and synced (``CHECKPOINT``), and everything else the kernel holds dirty
    (``sync(2)``)."""
    await _execute(dsn, "UPDATE messages m SET sealed = NULL WHERE sealed IS NOT NULL AND "
                   "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_pk = m.message_pk)",
                   "UPDATE purge_progress SET swept_to = p.top, next_to = p.top FROM "
                   "(SELECT coalesce(max(message_pk), 0) AS top FROM messages) p",
                   "VACUUM ANALYZE", "CHECKPOINT")
    await asyncio.to_thread(os.sync)


async def _log_background(dsn: str) -> None:
    await _execute(dsn, "ALTER SYSTEM SET log_autovacuum_min_duration = 0",
                   "ALTER SYSTEM SET log_checkpoints = on", "SELECT pg_reload_conf()")


async def _execute(dsn: str, *statements: str) -> None:
    """``statements`` in order, on a connection of their own, each its own transaction (as
    ``VACUUM``, ``CHECKPOINT`` and ``ALTER SYSTEM`` must be)."""
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def row_seconds(rate: float, seconds: float) -> float:
    """How long a paced row at ``rate`` msg/s runs: ``seconds``, or longer at low rates so
    that it measures at least ``MIN_PACED_SAMPLES`` messages."""
    return max(seconds, MIN_PACED_SAMPLES / rate)


# A statement the relay ran, in Postgres's log with log_min_duration_statement = 0: one line per
# simple-protocol statement or extended-protocol execute (parse and bind have lines of their
# own, not counted).
COUNT_SECONDS = 3.0
_LOGGED_STATEMENT = re.compile(rb"LOG:  duration: [0-9.]+ ms  (?:statement|execute )")


def logged_statements(log: bytes) -> int:
    """Statements run, in a piece of Postgres's log written with log_min_duration_statement = 0."""
    return len(_LOGGED_STATEMENT.findall(log))


async def _log_statements(dsn: str, on: bool) -> None:
    await _execute(dsn, "ALTER SYSTEM SET log_min_duration_statement = 0" if on
                   else "ALTER SYSTEM RESET log_min_duration_statement", "SELECT pg_reload_conf()")


def count_statements(gens: Generators, groups: dict[str, Any], args: argparse.Namespace,
                     dsn: str, pgdata: Path, *, rate: float,
                     seconds: float = COUNT_SECONDS) -> dict[str, Any]:
    """Statements per delivered message at ``rate`` msg/s: a short paced pass with every
    statement logged (the embedded build has no pg_stat_statements), counted in the cluster's
    log. Separate from the timed rows, whose CPU and latency it would distort."""
    log_file = pgdata / "log"
    asyncio.run(_log_statements(dsn, True))
    time.sleep(0.5)  # the reload reaches every backend
    start = log_file.stat().st_size
    try:
        row = paced(gens, groups, args, cyclic=False, rate=rate, one_per_pair=True,
                    seconds=seconds)
    finally:
        asyncio.run(_log_statements(dsn, False))
    time.sleep(0.5)
    with log_file.open("rb") as f:
        f.seek(start)
        logged = logged_statements(f.read())
    delivered = row["delivered"]
    return {"delivered": delivered, "statements": logged,
            "per_message": round(logged / delivered, 2) if delivered else None}


def idle_cost(groups: dict[str, Any], dsn: str, seconds: float = 10.0) -> dict[str, Any]:
    """What the relay and Postgres use with every device connected and nothing sent (sweeps,
    timers): the floor under the per-message figures of the slowest paced rows."""
    with PgMeter(dsn, settle=True) as pm, CpuMeter(groups) as cm:
        time.sleep(seconds)
    return {"seconds": seconds, "cpu_percent_of_core": cm.shares(),
            "xacts_per_s": round((pm.used["xact_commit"] + pm.used["xact_rollback"])
                                 / (seconds + PG_SETTLE), 1)}


def _paced_line(row: dict[str, Any]) -> str:
    lat, pm = row["latency"], row["per_message"]
    return (f"p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms, delivered "
            f"{row['delivered_per_s_in_window']}/s, per message {pm.get('cpu_us')} µs CPU, "
            f"{pm.get('postgres', {})}, {pm.get('frames')} frames; slowest {row.get('slowest')}"
            + (f"; the disk {row['disk']}" if "disk" in row else "")
            + (f"; beside it {row['beside']}" if "beside" in row else ""))


def idle(dsn: str, data: Path, env: dict[str, str], args: argparse.Namespace, make: Any,
         pgdata: Path) -> dict[str, Any]:
    t = time.monotonic()
    world = asyncio.run(make(args.idle_max, "i", False))
    log(f"{args.idle_max} idle devices provisioned in {time.monotonic() - t:.1f} s")
    relay = RelayProcess(data, dsn, 1, env)
    result: dict[str, Any] = {"devices_target": args.idle_max}
    gens = Generators([world.devices[i::args.procs] for i in range(args.procs)], world.trusted)
    try:
        relay.start()
        proc = relay.relay_pids()[0]
        log(f"lightbox-server --workers 1 on port {relay.port} (pid {proc.pid})")
        warm = 50 // args.procs
        gens.call("connect", 120, url=relay.url, kind="relay", first=0, last=warm)
        time.sleep(2)
        rss0 = proc.memory_info().rss
        per_gen = args.idle // args.procs
        t = time.monotonic()
        r1 = gens.call("connect", 600, url=relay.url, kind="relay", first=warm,
                       last=warm + per_gen)
        took1 = time.monotonic() - t
        n1 = sum(r["connected"] for r in r1)
        time.sleep(3)
        rss1 = proc.memory_info().rss
        kib = (rss1 - rss0) / 1024 / max(1, n1)
        result["memory"] = {"devices": n1, "rss_before_mib": round(rss0 / 2**20, 1),
                            "rss_after_mib": round(rss1 / 2**20, 1),
                            "kib_per_device": round(kib, 1), "connect_seconds": round(took1, 1),
                            "failed": sum(r["failed"] for r in r1)}
        log(f"  memory: {n1} idle devices, {kib:.1f} KiB each (RSS {rss0 / 2**20:.0f} -> "
            f"{rss1 / 2**20:.0f} MiB)")
        if args.idle_max > args.idle:
            t = time.monotonic()
            deadline = t + args.idle_seconds
            r2 = gens.call("connect", args.idle_seconds + 60, url=relay.url, kind="relay",
                           first=warm + per_gen,
                           open_timeout=max(5.0, deadline - time.monotonic()))
            took2 = time.monotonic() - t + took1
            time.sleep(3)
            status = gens.call("status", 60)
            alive = sum(s["alive"] for s in status)
            codes: Counter[str] = Counter()
            for s in status:
                codes.update(s["close_codes"])
            errors: Counter[str] = Counter()
            for r in (*r1, *r2):
                errors.update(r["errors"])
            rss2 = proc.memory_info().rss
            result["max"] = {
                "connected_now": alive, "relay_gauge": relay.metric("lightbox_ws_connections"),
                "connect_seconds": round(took2, 1),
                "rate_per_s": round((n1 + sum(r["connected"] for r in r2)) / took2),
                "rss_mib": round(rss2 / 2**20, 1),
                "kib_per_device": round((rss2 - rss0) / 1024 / max(1, alive - warm * args.procs),
                                        1),
                "connect_errors": dict(errors), "closed_since": dict(codes),
                "relay_cpu_percent_idle": round(proc.cpu_percent(interval=2.0), 1)}
            log(f"  max: {alive}/{args.idle_max} connected in {took2:.1f} s, "
                f"RSS {rss2 / 2**20:.0f} MiB")
        gens.call("close", 300)
    finally:
        gens.stop()
        relay.stop()
    return result


# -- report --------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}"


def durable_met(d: dict[str, Any], b: dict[str, Any] | None) -> bool:
    """The closed-loop target: the rate, and the share of the bare relay when it was run."""
    rate = d["msgs_per_s"]
    return bool(rate >= TARGETS["durable_msgs_per_s"] and (
        b is None or rate >= TARGETS["durable_of_bare"] * b["msgs_per_s"]))


def table(out: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str, str]] = []
    d, b, raw = out.get("durable"), out.get("bare"), out.get("raw_asyncpg")
    if d and "msgs_per_s" in d:
        raw_rate = raw["set_based"]["msgs_per_s"] if raw else None
        rows.append(("durable msgs/s (accepted+delivered+acked)", f"{d['msgs_per_s']:,}",
                     f"bare {b['msgs_per_s']:,} -> {ratio(d['msgs_per_s'], b['msgs_per_s'])}"
                     if b else "-",
                     f"raw pg {raw_rate:,} -> {ratio(d['msgs_per_s'], raw_rate)}"
                     if raw_rate else "-",
                     f">= {TARGETS['durable_msgs_per_s']:,} and >= "
                     f"{TARGETS['durable_of_bare']} of bare "
                     f"{'MET' if durable_met(d, b) else 'NOT MET'}"))
    if raw:
        rows.append(("raw asyncpg, relay-shaped store calls",
                     f"{raw['relay_shaped']['msgs_per_s']:,}", "-",
                     f"set-based {raw['set_based']['msgs_per_s']:,} -> "
                     f"{ratio(raw['relay_shaped']['msgs_per_s'], raw['set_based']['msgs_per_s'])}",
                     "-"))
    if d and d.get("per_message"):
        pm = d["per_message"]
        cpu = pm["cpu_us"].get("relay", 0) + pm["cpu_us"].get("postgres", 0)
        bare_cpu = b["per_message"].get("cpu_us", {}).get("relay") if b else None
        rows.append(("closed loop, per message: relay + Postgres CPU",
                     f"{cpu} µs ({pm['cpu_us'].get('relay')} + {pm['cpu_us'].get('postgres')})",
                     f"bare relay {bare_cpu} µs" if bare_cpu else "-", "-",
                     f"<= 250 µs {'MET' if cpu <= 250 else 'NOT MET'}"))
        rows.append(("closed loop, per message: Postgres xacts, frames",
                     f"{pm.get('postgres', {}).get('xacts')} xacts, {pm['frames']} frames",
                     "-", "-", "-"))
        g = d.get("gc")
        if g:
            rows.append(("closed loop: relay's garbage collections",
                         f"{g['per_1000_messages']} per 1,000 msgs, {g['us_per_message']} µs/msg",
                         "-", "-", "-"))
    if "compressed_connections" in out:
        c = out["compressed_connections"]
        rows.append(("devices that got permessage-deflate (all offer it)", f"{c}", "-", "-",
                     f"0 {'MET' if c == 0 else 'NOT MET'}"))
    idle_r = out.get("idle")
    if idle_r:
        m = idle_r["memory"]
        rows.append((f"KiB per idle device ({m['devices']:,} on 1 process)",
                     f"{m['kib_per_device']}", "-", "-",
                     f"<= 50 {'MET' if m['kib_per_device'] <= 50 else 'NOT MET'}"))
        mx = idle_r.get("max")
        if mx:
            rows.append(("idle devices on 1 process", f"{mx['connected_now']:,} in "
                         f"{mx['connect_seconds']} s, {mx['rss_mib']} MiB", "-", "-",
                         f"10,000 {'MET' if mx['connected_now'] >= 10_000 else 'NOT MET'}"))
    if not rows:
        return ""
    head = ("figure", "measured", "ceiling (a) ratio", "ceiling (b) ratio", "target")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


PACED_TARGETS = {100: 10.0, 1000: 20.0, 2000: 50.0}  # offered msg/s -> p99 target, ms


def _wakeups(w: dict[str, float]) -> str:
    """The relay's and Postgres's processes' wake-ups per message, as ``relay + postgres``."""
    if "relay" not in w or "postgres" not in w:
        return "-"
    return f"{w['relay']:g} + {w['postgres']:g}"


def _disk_cells(disk: dict[str, Any] | None) -> tuple[str, str]:
    """A paced row's disk figures (DiskProbe): its flush p99 and slowest, in ms; and how many
    of the row's sends at or over its p99 spent half their wait or more beside a stall."""
    if not disk or not disk["flushes"]:
        return "-", "-"
    f = disk["flush"]
    return f"{f['p99_ms']} / {f['max_ms']}", f"{disk['tail_beside_a_stall']} of {disk['tail']}"


def paced_table(out: dict[str, Any]) -> str:
    """The paced rows: offered load, what was achieved, latency, and the cost per message."""
    bare = {r["offered_per_s"]: r for r in out.get("bare_paced", [])}
    head = ("offered/s", "sent/s", "delivered/s", "p50 ms", "p99 ms", "accepted p99",
            "relay µs/msg", "pg µs/msg", "pg xacts/msg", "statements/msg", "frames/msg",
            "wake-ups/msg", "bare p99", "disk flush p99/max", "p99 tail in a stall", "target")
    rows = []
    for r in out.get("paced", []):
        lat, pm = r["latency"], r["per_message"]
        cpu, pg = pm.get("cpu_us", {}), pm.get("postgres", {})
        goal = PACED_TARGETS.get(int(r["offered_per_s"]))
        p99 = lat.get("p99_ms")
        b = bare.get(r["offered_per_s"])
        rows.append((f"{r['offered_per_s']:,.0f}", f"{r['achieved_send_rate']:,}",
                     f"{r['delivered_per_s_in_window']:,}", str(lat.get("p50_ms")), str(p99),
                     str(r["accept_latency"].get("p99_ms")), str(cpu.get("relay")),
                     str(cpu.get("postgres")), str(pg.get("xacts")),
                     str(r.get("statements", {}).get("per_message", "-")), str(pm.get("frames")),
                     _wakeups(pm.get("wakeups", {})),
                     str(b["latency"].get("p99_ms")) if b else "-", *_disk_cells(r.get("disk")),
                     "-" if goal is None or p99 is None else
                     f"< {goal:g} ms {'MET' if p99 < goal else 'NOT MET'}"))
    if not rows:
        return ""
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(head, widths, strict=True)),
             "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) for c, w in zip(x, widths, strict=True)) for x in rows]
    first = out["paced"][0]
    idle = out.get("idle_cost")
    floor = "" if not idle else (
        f"\nIdle floor (every device connected, nothing sent, {idle['seconds']:g} s): CPU "
        f"{idle['cpu_percent_of_core']} % of a core, {idle['xacts_per_s']} Postgres "
        "transactions/s; it is included in the per-message figures above.")
    secs = ", ".join(f"{r['seconds']:g}" for r in out["paced"])
    return (f"Paced (open loop, {first['senders']} senders, rows of {secs} s: at least "
            f"{MIN_PACED_SAMPLES:,} messages each; "
            "latency send->deliver; CPU from /proc over the row and its drain; Postgres "
            "transactions from pg_stat_database; statements counted in Postgres's log in a "
            "separate 3 s pass per rate, every statement logged: no pg_stat_statements in "
            "the embedded build; the disk's own flush time beside each row, an 8 KiB "
            f"fdatasync every 20 ms in the cluster's folder, a flush of "
            f"{DiskProbe.STALL_S * 1000:g} ms or more a stall, and how many of the row's "
            "sends at or over its p99 spent half their wait or more beside one)\n"
            + "\n".join(lines) + floor)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=200, help="connected devices (even; pairs)")
    p.add_argument("--seconds", type=float, default=10.0, help="throughput window")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds not counted at start")
    p.add_argument("--messages", type=int, default=200_000,
                   help="pre-sealed messages for the durable window (it ends early if used up, "
                        "and says so: the window of 10 s at 8,000 msg/s needs 80,000, and "
                        "more, since each sender has its share and the fastest runs out "
                        "first: 100,000 ran out at 7,700 msg/s)")
    p.add_argument("--window", type=int, default=16, help="unanswered sends per device")
    p.add_argument("--relay-window", type=int, default=32, help="LIGHTBOX_WS_SEND_WINDOW")
    p.add_argument("--relay-env", action="append", default=[], metavar="NAME=VALUE",
                   type=lambda v: v if "=" in v else p.error(f"--relay-env {v}: NAME=VALUE"),
                   help="another setting for the relay under test (repeatable), e.g. "
                        "LIGHTBOX_ONCALL_SWEEP_INTERVAL=3600 to see what a timer costs")
    p.add_argument("--paced-rates", type=lambda v: [float(x) for x in v.split(",")],
                   default=[100.0, 500.0, 1000.0, 2000.0],
                   help="offered msg/s of the paced table's rows (comma-separated)")
    p.add_argument("--paced-seconds", type=float, default=10.0, help="seconds per paced row")
    p.add_argument("--paced-only", action="store_true",
                   help="just the paced table (relay, then bare unless --skip-bare), 6 s rows; "
                        "about a minute and a half")
    p.add_argument("--body", type=int, default=2000, help="plaintext body bytes")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--workers", type=int, default=2, help="relay processes")
    p.add_argument("--raw-seconds", type=float, default=5.0)
    p.add_argument("--raw-batch", type=int, default=128)
    p.add_argument("--idle", type=int, default=2000, help="idle devices for KiB/device")
    p.add_argument("--idle-max", type=int, default=10_000, help="idle devices to try for")
    p.add_argument("--idle-seconds", type=float, default=180.0,
                   help="time allowed to connect the idle devices")
    p.add_argument("--profile", action="store_true",
                   help="one more durable pass with py-spy on the relay workers")
    p.add_argument("--history", type=int, default=100_000,
                   help="delivered messages already in the database before anything is "
                        "measured (0: a fresh, empty database)")
    p.add_argument("--no-bundles", action="store_true",
                   help="the generator does not ask for the lightbox.bundle subprotocol: one "
                        "frame per websocket message, as the phone and desktop apps send")
    p.add_argument("--keep", action="store_true",
                   help="keep .data/bench-<pid> (relay logs, profiles) after the run")
    for phase in ("raw", "relay", "bare", "idle"):
        p.add_argument(f"--skip-{phase}", action="store_true")
    args = p.parse_args(argv)
    if args.paced_only and "--paced-seconds" not in " ".join(argv or sys.argv):
        args.paced_seconds = 6.0
    if args.devices < 2 or args.devices % 2:
        p.error("--devices must be even and at least 2")

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    out = run(args)
    out["total_seconds"] = round(time.monotonic() - started, 1)
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    if main_table := table(out):
        print()
        print(main_table)
    if out.get("paced"):
        print()
        print(paced_table(out))
    print(f"\n{out['machine']['cpus']} cores, load average "
          f"{out['machine']['load_average_at_start']} at start, "
          f"{out['load_average_at_end']} at end (other work on the machine counts)."
          f"\nFull results: {RESULTS / 'latest.json'} ({out['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
