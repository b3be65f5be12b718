"""The load generator: one process drives a slice of the simulated devices.

Each device is one websocket. Against the real relay it authenticates exactly as
:class:`clients.sdk.socket.RelaySocket` does (``hello``, the device's signature over the
challenge, ``ready``) through :class:`protocol.session.ClientSession`; after that the data path
is lean on purpose, so that the generator leaves the CPU to the relay: sealed messages are
sealed and encoded as ``send`` frames before the timed window, incoming frames are decoded with
the protocol codec, deliveries are acknowledged in batches of what arrived together, pings are
answered.

The orchestrator (bench/relay.py) sends commands over a pipe; every phase is bounded in count
and in time. Both devices of a pair live in the same process, so a delivery's latency is the
recipient's receive time minus the sender's send time on one monotonic clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench.world import DeviceSpec, Sealer
from protocol.frames import (
    BUNDLE_SUBPROTOCOL,
    DEFAULT_MAX_FRAME,
    Accepted,
    Ack,
    Bundle,
    Deliver,
    Error,
    Frame,
    Ping,
    Pong,
    Send,
    decode_frame,
    encode_frame,
    pack_bundles,
)
from protocol.session import ClientSession, SessionReady

__all__ = ["main"]

BUCKET = 0.25  # seconds per throughput bucket
SLOW_S = 0.005  # a paced delivery slower than this is kept with its send time (Stats.slow)


class Stats:
    def __init__(self) -> None:
        self.sent = 0
        self.accepted = 0
        self.delivered = 0
        self.refused: Counter[str] = Counter()
        self.acc_buckets: Counter[int] = Counter()
        self.del_buckets: Counter[int] = Counter()
        self.sent_at: dict[str, float] = {}
        self.accept_at: dict[str, float] = {}  # message id -> sent at, until ``accepted``
        self.latencies: list[float] = []
        self.accept_latencies: list[float] = []
        self.worst = (0.0, 0.0)  # the slowest delivery: (latency, sent at, monotonic)
        # Deliveries slower than SLOW_S: (sent at, monotonic, latency), to set beside the disk's
        # flushes over the same seconds (bench/relay.py DiskProbe; CLOCK_MONOTONIC is one
        # clock for every process of the machine).
        self.slow: list[tuple[float, float]] = []
        self.frames_in = 0  # websocket frames received by this generator's devices
        self.frames_out = 0  # and sent by them (sends, acks, pongs)
        self.t0 = time.monotonic()

    def bucket(self, now: float) -> int:
        return int((now - self.t0) / BUCKET)


class Device:
    def __init__(self, spec: DeviceSpec, gen: Generator) -> None:
        self.spec, self.gen = spec, gen
        self.ws: ClientConnection | None = None
        self.pool: list[tuple[str, bytes]] = []  # (message id, encoded send frame)
        self.next = 0
        self.inflight = 0
        self.acks: list[str] = []
        self.ack_task: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None
        self.bundles = False  # the relay selected lightbox.bundle (docs/PROTOCOL.md §3.6)
        self.compressed = False  # the relay accepted permessage-deflate (it should not)

    async def connect(self, url: str, kind: str, timeout: float) -> None:
        if kind == "bare":
            self.ws = await connect(f"{url}?me={self.spec.index}&peer={self.spec.peer}",
                                    max_size=DEFAULT_MAX_FRAME, ping_interval=None,
                                    open_timeout=timeout, compression=None, close_timeout=2)
        else:
            keys = self.spec.keys()
            session = ClientSession(access_token=self.spec.token, device_id=self.spec.device_id,
                                    client="lightbox-bench", client_version="0.1.0",
                                    sign=keys.sign)
            # Offered as every browser offers it (the phone app is a web page): the relay
            # declines it (server/runner.py), and the bench counts any connection that
            # negotiated it, since deflating ciphertext nearly doubles the relay's CPU.
            ws = await connect(url, max_size=DEFAULT_MAX_FRAME, ping_interval=None,
                               open_timeout=timeout, compression="deflate", close_timeout=2,
                               subprotocols=([Subprotocol(BUNDLE_SUBPROTOCOL)]
                                             if self.gen.bundles else None))
            if ws.subprotocol == BUNDLE_SUBPROTOCOL:
                session.use_bundles()
                self.bundles = True
            self.compressed = bool(ws.protocol.extensions)
            try:
                async with asyncio.timeout(timeout):
                    ready = False
                    while not ready:
                        for data in session.data_to_send():
                            await ws.send(data)
                        raw = await ws.recv(decode=False)
                        for ev in session.receive_data(raw):
                            ready = ready or isinstance(ev, SessionReady)
                        if session.close_code is not None:
                            raise ConnectionError(f"handshake refused: {session.close_code}")
                    for data in session.data_to_send():
                        await ws.send(data)
            except BaseException:
                await ws.close()
                raise
            self.ws = ws
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for data in self.ws:
                if isinstance(data, str):
                    continue
                await self._on_message(data)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code

    async def _on_message(self, data: bytes) -> None:
        """One websocket message: a frame, or a bundle of them; what they call for (the next
        sends of the closed loop, pongs) goes out together, in one bundle when the relay
        selected bundles."""
        self.gen.stats.frames_in += 1
        frame = decode_frame(data)
        out: list[bytes] = []
        if isinstance(frame, Bundle):
            for inner in frame.frames:
                self._on_frame(decode_frame(inner), out)
        else:
            self._on_frame(frame, out)
        if out:
            await self._write(out)

    def _on_frame(self, frame: Frame, out: list[bytes]) -> None:
        st = self.gen.stats
        if isinstance(frame, Accepted):
            now = time.monotonic()
            self.inflight -= 1
            st.accepted += 1
            st.acc_buckets[st.bucket(now)] += 1
            sent = st.accept_at.pop(frame.message_id, None)
            if sent is not None and self.gen.record_latency:
                st.accept_latencies.append(now - sent)
            if self.gen.closed_loop and now < self.gen.stop_at:
                self._take_next(out)
        elif isinstance(frame, Deliver):
            now = time.monotonic()
            st.delivered += 1
            st.del_buckets[st.bucket(now)] += 1
            sent = st.sent_at.pop(frame.message.header.message_id, None)
            if sent is not None and self.gen.record_latency:
                st.latencies.append(now - sent)
                if now - sent > SLOW_S:
                    st.slow.append((sent, now - sent))
                if now - sent > st.worst[0]:
                    st.worst = (now - sent, sent)
            self.acks.append(frame.delivery_id)
            if self.ack_task is None:
                # Acknowledge together whatever arrives before the loop comes round again.
                self.ack_task = asyncio.create_task(self._ack())
        elif isinstance(frame, Ping):
            out.append(encode_frame(Pong(nonce=frame.nonce)))
        elif isinstance(frame, Error):
            st.refused[frame.code.value] += 1
            if frame.req_id is not None:
                self.inflight -= 1

    async def _ack(self) -> None:
        await asyncio.sleep(0)
        ids, self.acks = self.acks, []
        self.ack_task = None
        assert self.ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            for i in range(0, len(ids), 256):
                self.gen.stats.frames_out += 1
                await self.ws.send(encode_frame(Ack(delivery_ids=ids[i:i + 256])))

    def _take_next(self, out: list[bytes]) -> bool:
        """Queue the next pre-sealed message on ``out``; False when the pool is used up."""
        if self.next >= len(self.pool):
            if not self.gen.cyclic or not self.pool:
                self.gen.exhausted_at = min(self.gen.exhausted_at, time.monotonic())
                return False
            self.next = 0
        mid, data = self.pool[self.next]
        self.next += 1
        st = self.gen.stats
        st.sent_at[mid] = st.accept_at[mid] = time.monotonic()
        st.sent += 1
        self.inflight += 1
        out.append(data)
        return True

    async def _write(self, out: list[bytes]) -> bool:
        """Write frames (bundled when the relay selected bundles); False when the connection
        closed, and then the sends among them count as refused."""
        assert self.ws is not None
        st = self.gen.stats
        messages = pack_bundles(out, DEFAULT_MAX_FRAME) if self.bundles else out
        try:
            for data in messages:
                st.frames_out += 1
                await self.ws.send(data)
        except websockets.ConnectionClosed:
            lost = sum(1 for data in out if decode_frame(data).__class__ is Send)
            self.inflight -= lost
            st.refused["connection_closed"] += lost
            return False
        return True

    async def send_next(self) -> bool:
        """Send the next pre-sealed message; False when the pool is used up."""
        out: list[bytes] = []
        return self._take_next(out) and await self._write(out)

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader


class Generator:
    def __init__(self, specs: list[DeviceSpec], trusted: dict[str, bytes]) -> None:
        self.trusted = trusted
        self.devices = [Device(s, self) for s in specs]
        self.by_index = {d.spec.index: d for d in self.devices}
        self.stats = Stats()
        self.closed_loop = False
        self.record_latency = False
        self.cyclic = False
        self.stop_at = 0.0
        self.exhausted_at = float("inf")
        self.bundles = True  # ask the relay for lightbox.bundle (bench/relay.py --no-bundles)

    def senders(self) -> list[Device]:
        return [d for d in self.devices if d.spec.peer != d.spec.index and d.spec.thread_id]

    # -- commands ----------------------------------------------------------------------------

    async def cmd_connect(self, url: str, kind: str, concurrency: int = 64,
                          open_timeout: float = 30.0, first: int = 0,
                          last: int | None = None, bundles: bool | None = None
                          ) -> dict[str, Any]:
        if bundles is not None:
            self.bundles = bundles
        sem = asyncio.Semaphore(concurrency)
        errors: Counter[str] = Counter()
        todo = self.devices[first:last]
        started = time.monotonic()

        async def one(d: Device) -> bool:
            async with sem:
                try:
                    await d.connect(url, kind, open_timeout)
                    return True
                except Exception as exc:  # reported, not raised: the bench counts failures
                    errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
                    return False

        ok = sum(await asyncio.gather(*(one(d) for d in todo)))
        return {"connected": ok, "failed": len(todo) - ok, "errors": dict(errors),
                "compressed": sum(d.compressed for d in todo),
                "seconds": time.monotonic() - started}

    async def cmd_seal(self, per_device: int, body_bytes: int, extra_even: int = 0
                       ) -> dict[str, Any]:
        """Seal ``per_device`` messages for every sender, ``extra_even`` more for the even
        device of each pair (the senders of the paced table)."""
        started = time.monotonic()
        cpu = _cpu()
        body = os.urandom(body_bytes)
        n = size = 0
        for d in self.senders():
            peer = self.by_index[d.spec.peer].spec
            sealer = Sealer(d.spec, peer, self.trusted)
            for _ in range(per_device + (extra_even if d.spec.index % 2 == 0 else 0)):
                m = sealer.seal(body)
                mid = m.header.message_id
                d.pool.append((mid, encode_frame(Send(req_id=mid.replace("-", ""), message=m))))
                n += 1
                size = len(d.pool[-1][1])
        return {"sealed": n, "seconds": time.monotonic() - started, "cpu": _cpu() - cpu,
                "frame_bytes": size}

    async def _drain(self, until: float) -> None:
        """Wait (bounded) until every send is answered and every acceptance delivered."""
        st = self.stats
        # Polling counters every 50 ms, bounded by ``until``: simpler than an event per count.
        while time.monotonic() < until and (  # noqa: ASYNC110
                st.accepted + sum(st.refused.values()) < st.sent or st.delivered < st.accepted):
            await asyncio.sleep(0.05)

    def _reset(self, *, closed_loop: bool, latency: bool, cyclic: bool) -> None:
        self.stats = Stats()
        self.closed_loop, self.record_latency, self.cyclic = closed_loop, latency, cyclic
        self.exhausted_at = float("inf")
        for d in self.devices:
            d.inflight = 0
            if cyclic:
                d.next = 0

    async def cmd_throughput(self, start_at: float, duration: float, window: int,
                             cyclic: bool, drain: float = 20.0) -> dict[str, Any]:
        """Closed loop: every sender keeps ``window`` sends unanswered until ``duration``."""
        self._reset(closed_loop=True, latency=False, cyclic=cyclic)
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        st = self.stats
        st.t0 = start_at
        self.stop_at = start_at + duration
        cpu = _cpu()
        senders = [d for d in self.senders() if d.ws is not None]
        for _k in range(window):
            for d in senders:
                if not await d.send_next():
                    break
            await asyncio.sleep(0)
        await asyncio.sleep(max(0.0, self.stop_at - time.monotonic()))
        cpu_window = _cpu() - cpu
        end = time.monotonic()
        drain_until = end + drain
        await self._drain(drain_until)
        return self._report(start_at, end, cpu_window) | {"drained": time.monotonic() - end}

    async def cmd_paced(self, start_at: float, duration: float, rate: float, window: int,
                        cyclic: bool, drain: float = 20.0, one_per_pair: bool = False
                        ) -> dict[str, Any]:
        """Open loop at ``rate`` messages/s over this process's senders, round robin: each
        send goes out when it is due, whatever happened to the earlier ones (a late generator
        sends at once and records how late). With ``one_per_pair`` only the even device of
        each pair sends (100 senders for 200 devices); the other only receives."""
        self._reset(closed_loop=False, latency=True, cyclic=cyclic)
        st = self.stats
        st.t0 = start_at
        senders = [d for d in self.senders() if d.ws is not None
                   and (not one_per_pair or d.spec.index % 2 == 0)]
        total = int(rate * duration)
        skipped = 0
        late = 0.0
        lateness: list[float] = []
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        cpu = _cpu()
        for k in range(total):
            due = start_at + k / rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                lateness.append(max(0.0, time.monotonic() - due))
            else:
                late = max(late, now - due)
                lateness.append(now - due)
            d = senders[k % len(senders)]
            if d.inflight >= window:
                skipped += 1
                continue
            if not await d.send_next():
                skipped += 1
        end = time.monotonic()
        cpu_window = _cpu() - cpu
        drain_until = end + drain
        await self._drain(drain_until)
        lateness.sort()
        return self._report(start_at, end, cpu_window) | {
            "skipped": skipped, "max_late": max([late, *lateness[-1:]]),
            "p99_late": lateness[int(0.99 * len(lateness))] if lateness else 0.0,
            "senders": len(senders), "latencies": st.latencies,
            "accept_latencies": st.accept_latencies, "slow": st.slow,
            # when the slowest message was sent, in seconds from the row's start
            "worst": [st.worst[0], st.worst[1] - start_at if st.worst[1] else None]}

    def _report(self, start: float, end: float, cpu: float) -> dict[str, Any]:
        st = self.stats
        return {"sent": st.sent, "accepted": st.accepted, "delivered": st.delivered,
                "refused": dict(st.refused), "acc_buckets": dict(st.acc_buckets),
                "del_buckets": dict(st.del_buckets), "start": start, "end": end,
                "exhausted_at": self.exhausted_at, "cpu": cpu,
                "frames_in": st.frames_in, "frames_out": st.frames_out,
                "closed": sum(1 for d in self.devices
                              if d.ws is not None and d.reader is not None
                              and d.reader.done())}

    async def cmd_status(self) -> dict[str, Any]:
        alive = sum(1 for d in self.devices
                    if d.reader is not None and not d.reader.done())
        codes = Counter(str(d.close_code) for d in self.devices
                        if d.reader is not None and d.reader.done())
        return {"alive": alive, "close_codes": dict(codes)}

    async def cmd_close(self) -> dict[str, Any]:
        sem = asyncio.Semaphore(256)

        async def one(d: Device) -> None:
            async with sem:
                await d.close()

        await asyncio.gather(*(one(d) for d in self.devices))
        for d in self.devices:
            d.ws, d.reader = None, None
        return {"closed": len(self.devices)}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _serve(pipe: Connection, specs: list[DeviceSpec], trusted: dict[str, bytes]) -> None:
    gen = Generator(specs, trusted)
    loop = asyncio.get_running_loop()
    while True:
        cmd, kw = await loop.run_in_executor(None, pipe.recv)
        if cmd == "exit":
            await gen.cmd_close()
            pipe.send({"ok": True})
            return
        try:
            result = await getattr(gen, f"cmd_{cmd}")(**kw)
        except Exception as exc:  # the orchestrator reports it and stops the run
            result = {"error": f"{type(exc).__name__}: {exc}"}
        pipe.send(result)


def main(pipe: Connection, specs: list[DeviceSpec], trusted: dict[str, bytes]) -> None:
    """Process entry point (multiprocessing, spawn)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # installed with uvicorn[standard]; the relay runs on it too

        uvloop.install()
    except ImportError:
        pass
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(pipe, specs, trusted))
