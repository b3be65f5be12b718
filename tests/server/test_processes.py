"""Several relay processes on one Postgres, and durability across a SIGKILL.

Two real ``lightbox-server`` processes share the test database: a message sent through one is
announced with LISTEN/NOTIFY and delivered by the other. Then a relay is killed with SIGKILL
in the middle of a stream of sends and deliveries and restarted: every message the sender saw
``accepted`` reaches the recipient's application exactly once (the SDK de-duplicates), and every
send that was not accepted is retried by the SDK until it is: none lost, none duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients.sdk.connection import Connection
from clients.sdk.socket import RelaySocket
from protocol.frames import Deliver, QueueEmpty
from server.gcwatch import YOUNG_THRESHOLD
from tests.helpers import ROOT, eventually, seconds, session_dir
from tests.identity_world import World, identity_world
from tests.relay_world import Peer, connect, opened, peer, seal, thread


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RelayProcess:
    """A real relay process on the test database, with the world's keys and trust."""

    def __init__(self, world: World, port: int | None = None, *, workers: int = 1) -> None:
        s = world.relay.relay.settings
        self.port = port or _free_port()
        self.workers = workers
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LIGHTBOX_")},
            "DATABASE_URL": world.dsn, "PORT": str(self.port), "LOG_LEVEL": "warning",
            "LIGHTBOX_TRUSTED_ORGS_FILE": str(s.trusted_orgs_path),
            "LIGHTBOX_TOKEN_KEY_FILE": str(s.token_key_path),
            "LIGHTBOX_ARGON2_PROFILE": "cheap", "LIGHTBOX_RATE_MESSAGES_PER_MINUTE": "100000",
            "WORKERS": str(workers),
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    async def socket(self, p: Peer) -> RelaySocket:
        """``p``'s device connected and authenticated to this process."""
        return await RelaySocket.connect(self.ws_url, access_token=p.token,
                                         device_id=p.device_id, sign=p.device.keys.sign)

    async def start(self) -> None:
        log = session_dir() / f"relay-{self.port}.log"
        with log.open("ab") as err:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT,
                                         env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + seconds(30)
        async with httpx.AsyncClient() as c:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, log.read_text()[-2000:]
                with contextlib.suppress(httpx.TransportError):
                    if (await c.get(f"http://127.0.0.1:{self.port}/readyz")).status_code == 200 \
                            and len(self.serving()) == self.workers:
                        return
                await asyncio.sleep(0.1)
        raise TimeoutError("relay process not ready")

    def serving(self) -> list[psutil.Process]:
        """The processes that serve requests: the relay itself, or its workers."""
        assert self.proc is not None
        parent = psutil.Process(self.proc.pid)
        if self.workers == 1:
            return [parent]
        return [p for p in parent.children() if "resource_tracker" not in " ".join(p.cmdline())]

    def holder(self, client_port: int) -> int | None:
        """The pid of the process that accepted the TCP connection from ``client_port``."""
        for p in self.serving():
            for c in p.net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == client_port and c.laddr.port == self.port:
                    return int(p.pid)
        return None

    async def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """One /metrics answer, on a connection of its own (any process may answer it)."""
        async with httpx.AsyncClient() as c:
            text = (await c.get(f"http://127.0.0.1:{self.port}/metrics")).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(seconds(15))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def processes(*procs: RelayProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, rate_messages_per_minute=100_000) as w:
        yield w


async def test_message_sent_through_one_process_is_delivered_by_another(world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    one, two = RelayProcess(world), RelayProcess(world)
    with processes(one, two):
        await asyncio.gather(one.start(), two.start())
        b = await two.socket(bob)
        a = await one.socket(alice)
        try:
            for i in range(5):
                sealed = seal(alice, tid, [bob], f"across processes {i}".encode())
                await a.send(sealed)
                start = time.monotonic()
                while True:
                    frame = await b.next_event(seconds(10))
                    if isinstance(frame, Deliver):
                        break
                assert time.monotonic() - start < seconds(5)
                assert opened(bob, alice, frame.message) == f"across processes {i}".encode()
                await b.ack([frame.delivery_id])
        finally:
            await a.close()
            await b.close()


async def test_second_connection_on_another_process_replaces_the_first(world: World) -> None:
    alice = await peer(world, "alice")
    one, two = RelayProcess(world), RelayProcess(world)
    with processes(one, two):
        await asyncio.gather(one.start(), two.start())
        first = await one.socket(alice)
        second = await two.socket(alice)
        try:
            code, _ = await asyncio.wait_for(first.closed, seconds(10))
            assert code == 4003
        finally:
            await second.close()


async def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(world: World) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    relay = RelayProcess(world)
    received: list[str] = []

    async def store(d: Deliver) -> None:  # the recipient application's durable store
        received.append(opened(bob, alice, d.message).decode())

    def token_of(p: Peer):  # type: ignore[no-untyped-def]
        async def token() -> str:
            return p.token
        return token

    with processes(relay):
        await relay.start()
        sender = Connection(relay.ws_url, device_id=alice.device_id, access_token=token_of(alice),
                            sign=alice.device.keys.sign, on_message=store, backoff_base=0.05,
                            backoff_max=0.5, send_timeout=seconds(5))
        recipient = Connection(relay.ws_url, device_id=bob.device_id,
                               access_token=token_of(bob), sign=bob.device.keys.sign,
                               on_message=store, backoff_base=0.05, backoff_max=0.5)
        await sender.start()
        await recipient.start()
        total = 120
        accepted: list[str] = []

        async def stream() -> None:
            for i in range(total):
                await sender.send(seal(alice, tid, [bob], f"msg-{i:03d}".encode()))
                accepted.append(f"msg-{i:03d}")

        streaming = asyncio.create_task(stream())
        try:
            while len(accepted) < total // 3:
                await asyncio.sleep(0.01)
            seen = sender.reconnects, recipient.reconnects
            relay.kill()  # SIGKILL: no shutdown, no flush, nothing graceful

            async def both_lost_it() -> bool:  # each connection saw its socket die
                return sender.reconnects > seen[0] and recipient.reconnects > seen[1]
            await eventually(both_lost_it)
            await relay.start()
            await asyncio.wait_for(streaming, seconds(60))
            deadline = time.monotonic() + seconds(30)
            while len(received) < total and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            streaming.cancel()
            await sender.stop()
            await recipient.stop()
    assert accepted == [f"msg-{i:03d}" for i in range(total)]
    assert sorted(received) == accepted, "lost or duplicated messages"
    assert received == accepted, "thread order not kept"
    assert sender.reconnects >= 1 and recipient.reconnects >= 1


async def test_concurrent_sends_both_ways_across_processes_never_deadlock(world: World) -> None:
    """Batches on two processes touching the same threads lock them in one order: no batch
    fails (a deadlock would surface as internal_error after Postgres's deadlock timeout)."""
    pairs = [(await peer(world, f"a{i}"), await peer(world, f"b{i}")) for i in range(6)]
    tids = [await thread(world, a, b) for a, b in pairs]
    one, two = RelayProcess(world), RelayProcess(world)
    with processes(one, two):
        await asyncio.gather(one.start(), two.start())
        socks: dict[str, RelaySocket] = {}
        for a, b in pairs:
            socks[a.device_id] = await one.socket(a)
            socks[b.device_id] = await two.socket(b)
        try:
            # one process sees the threads in one order, the other in the reverse order
            forward = [socks[a.device_id].send(seal(a, tid, [b]))
                       for _ in range(8) for (a, b), tid in zip(pairs, tids, strict=True)]
            backward = [socks[b.device_id].send(seal(b, tid, [a]))
                        for _ in range(8)
                        for (a, b), tid in reversed(list(zip(pairs, tids, strict=True)))]
            results = await asyncio.gather(*(x for fb in zip(forward, backward, strict=True)
                                             for x in fb), return_exceptions=True)
        finally:
            for s in socks.values():
                await s.close()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    accepted = [r for r in results if not isinstance(r, BaseException)]
    per_thread = {tid: sorted(r.thread_seq for r in accepted if r.thread_id == tid)
                  for tid in tids}
    assert all(seqs == list(range(1, 17)) for seqs in per_thread.values())


async def test_a_relay_process_freezes_its_start_up_objects_and_times_each_collection(
        world: World) -> None:
    """server/gcwatch.py in a real relay process: what start-up made (over 100,000 objects
    here) is frozen, so that full collections no longer walk it, and the start-up's own full
    collection is already among the pauses /metrics reports; its young generation is collected
    every YOUNG_THRESHOLD allocations, not Python's 700."""
    one = RelayProcess(world)
    with processes(one):
        await one.start()
        async with httpx.AsyncClient() as c:
            text = (await c.get(f"http://127.0.0.1:{one.port}/metrics")).text
    samples = {(s.name, s.labels.get("generation"), s.labels.get("le")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("lightbox_gc_frozen_objects", None, None)] >= 10_000
    assert samples[("lightbox_gc_young_threshold", None, None)] == YOUNG_THRESHOLD
    assert samples[("lightbox_gc_pause_seconds_count", "2", None)] >= 1
    assert samples[("lightbox_gc_pause_seconds_bucket", "0", "+Inf")] == \
        samples[("lightbox_gc_pause_seconds_count", "0", None)]


async def test_metrics_of_a_relay_of_two_processes_count_both_whichever_answers(
        world: World) -> None:
    """``--workers 2``: a scrape reaches one of the processes, and reports the whole relay
    (server/metrics.py): the connections of both, the messages both accepted, the deliveries
    both wrote (a histogram each process keeps in memory), the garbage collections both ran.
    Each process alone would report its own, and Prometheus would read every switch between
    them as a counter reset."""
    relay = RelayProcess(world, workers=2)
    peers = [await peer(world, f"clinician{i}") for i in range(6)]
    tid = await thread(world, peers[0], *peers[1:])
    held: dict[int, list[RelaySocket]] = {}
    socks: list[RelaySocket] = []
    with processes(relay):
        await relay.start()
        try:
            # Which process accepts a connection is the kernel's choice: each process in turn
            # is stopped (SIGSTOP) while a share of the devices connect, so the other takes them.
            workers = relay.serving()
            for paused, share in zip(workers, (peers[:2], peers[2:]), strict=True):
                paused.suspend()
                try:
                    socks_now = [await relay.socket(p) for p in share]
                finally:
                    paused.resume()
                socks += socks_now
                for sock in socks_now:
                    port = sock._ws.local_address[1]

                    async def holder(port: int = port) -> int:
                        return relay.holder(port) or 0
                    held.setdefault(await eventually(holder), []).append(sock)
            assert sorted(len(v) for v in held.values()) == [2, 4]
            for sock in socks:  # one message each: accepted by the process holding it
                members = [q for q in peers if q.device_id != sock.device_id]
                sender = next(q for q in peers if q.device_id == sock.device_id)
                await sock.send(seal(sender, tid, members, b"counted"))

            async def whole_relay_in_every_scrape() -> bool:
                for _ in range(8):
                    got = await relay.scrape()
                    if (got[("lightbox_ws_connections", ())] != len(socks)
                            or got[("lightbox_messages_accepted_total", ())] != len(socks)):
                        return False
                return True
            assert await eventually(whole_relay_in_every_scrape)

            async def every_delivery_timed() -> bool:
                # Each message reaches the five other devices, held by both processes; each
                # process publishes its own latency counts within a second.
                got = await relay.scrape()
                return got[("lightbox_delivery_latency_seconds_count", ())] == 5 * len(socks)
            assert await eventually(every_delivery_timed)
            got = await relay.scrape()
            assert got[("lightbox_delivery_latency_seconds_bucket", (("le", "+Inf"),))] == 30
            assert got[("lightbox_delivery_latency_seconds_sum", ())] > 0

            async def both_full_collections() -> dict[Any, float]:
                # Each process's start-up collected in full once before freezing; a process
                # that does not answer the scrape published its count within the last second.
                got = await relay.scrape()
                n = got[("lightbox_gc_pause_seconds_count", (("generation", "2"),))]
                return got if n >= 2 else {}
            got = await eventually(both_full_collections)
            assert got[("lightbox_gc_frozen_objects", ())] >= 10_000
            assert got[("lightbox_gc_young_threshold", ())] == YOUNG_THRESHOLD  # the least
            # The gauges the processes publish through are folded away, never exposed.
            assert not any("_shared_" in name for name, _ in got)
        finally:
            for sock in socks:
                await sock.close()


async def test_a_device_that_moved_to_another_process_while_its_message_committed_gets_it(
        world: World) -> None:
    """The takeover rule of local delivery (docs/ARCHITECTURE.md §3): the process that stores a
    message for a device connected to it sends no wake-up event for that device. If the device
    connects to another process meanwhile, whose pump reads its queue before the COMMIT, the
    storing process finds it gone after the COMMIT and wakes it by an event wherever it is."""
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    other = RelayProcess(world)
    with processes(other):
        await other.start()
        a = await connect(world, alice)
        b = await connect(world, bob)
        holder, observer = await world.db(), await world.db()
        moved: RelaySocket | None = None
        try:
            for sock in (a, b):
                while not isinstance(await sock.next_event(seconds(10)), QueueEmpty):
                    pass
            await a.send(seal(alice, tid, [bob], b"warm up"))  # the thread is known here now
            while not isinstance(first := await b.next_event(seconds(10)), Deliver):
                pass
            await b.ack([first.delivery_id])
            tx = holder.transaction()
            await tx.start()
            await holder.execute("SELECT 1 FROM threads WHERE thread_id = $1 FOR UPDATE", tid)
            sending = asyncio.ensure_future(a.send(seal(alice, tid, [bob], b"while moving")))

            async def store_waits() -> bool:  # Bob was connected here when it began
                return bool(await observer.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%lock_and_store_batch_delivering%'"))

            assert await eventually(store_waits)
            moved = await other.socket(bob)  # Bob's device, now on the other process
            while not isinstance(await moved.next_event(seconds(10)), QueueEmpty):
                pass  # its queue read before the COMMIT: nothing there yet
            code, _ = await asyncio.wait_for(b.closed, seconds(10))
            assert code == 4003  # replaced: gone from the storing process
            await tx.rollback()
            await sending
            while not isinstance(d := await moved.next_event(seconds(10)), Deliver):
                pass
            assert opened(bob, alice, d.message) == b"while moving"
        finally:
            await holder.close()
            await observer.close()
            for s in (a, b, moved):
                if s is not None:
                    await s.close()
