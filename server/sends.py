"""The send path: validate a sealed message, then store it with group commit.

Checks before anything is stored (each refusal has its code; nothing is written):

1. the header names the authenticated sender device and user (``sender_mismatch``), and the
   sender device's Ed25519 signature verifies (``sender_mismatch``: a forged sender);
2. sizes and counts are within the limits (``message_too_large``, ``field_too_large``), and
   every id the header names is a lowercase UUID (``malformed_frame``: PROTOCOL.md §1), so that
   no message can make the store's statement fail for the others of its batch;
3. the thread exists and the sender takes part in it (``thread_not_found``,
   ``not_thread_member``);
4. the named recipient devices are exactly the current participants' active devices, minus the
   sending device (``device_set_mismatch`` listing ``missing``, ``extra`` and ``stale``);
5. a retried (sender device, message id) returns the original acceptance; the same id with other
   bytes is refused (``duplicate_conflict``);
6. every attachment the header names was uploaded and finalised by the sending device, or was
   sent to it (forwarding) (``upload_not_found``, ``validation_failed``);
7. the consent policy (server/consents.py): a message with an attachment, a purpose other than
   direct care, or flagged external must name a registered consent that covers its purpose and
   every recipient (``consent_*``); a message declaring an emergency (break-glass) passes
   server/breakglass.py's checks instead (``break_glass_*``), before the external check, and is
   stored with its break-glass case.

Checks 6 and 7 run inside the batch transaction, before the message is stored; a message that
passes is stored with its attachment references, and every recipient device is granted access
to its attachments, in the same transaction.

Group commit: sends from every connection of this process queue up; each batch is stored in a
single transaction (one WAL flush for many messages) and each sender's future is resolved only
after COMMIT. Batches are pipelined: while one commits (its round trips and its WAL flush), the
next one collects and starts, up to ``pipeline`` batches in flight. A batch starts once every
batch in flight that shares a thread (or a sender's message id) with it holds its thread locks;
a batch of other threads starts at once, even while one before it waits for a lock. So a later
batch touching the same thread waits for the earlier one's COMMIT and messages keep their
submission order within a thread. A batch stored in one statement (below) holds its locks
only inside that statement: a later batch sharing one of its threads waits for it to end.
Recipients' processes are woken by a NOTIFY sent in the same transaction; recipients connected
to this process are left out of it and handed their deliveries after COMMIT instead, with a
takeover rule for one that connects elsewhere meanwhile (docs/ARCHITECTURE.md §3, "Local
delivery").

Threads already known: checks 3 to 7 read a thread's organisation, participants and their
devices, and that state rarely changes between two messages. The pipeline keeps what the last
read under a thread's lock found, with Postgres's digest of it (server/store/batches.py). A
batch whose threads are all known, whose checks pass on that state without asking the database
(no attachment, consent, emergency or on-call work, no refusal) and that repeats no message
is stored in one statement that confirms, under the thread locks, that every digest is still
current and that no message is a retry, and commits. If anything changed, nothing is stored
and the batch takes the path above, whose reads decide: a check never passes on state that is
not the database's at the moment of the store. The digests are recomputed only when the
directory epoch read with the state has moved since (alembic migration 0016: every change the
digests cover advances it), so a batch to threads nobody has touched costs no digest at all.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import hashlib
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

import msgspec

from protocol import envelope
from protocol.canonical import UUID_RE
from protocol.errors import ErrorCode, VerificationError
from protocol.model import MessageHeader, SealedMessage
from server import audit, events
from server.db import Database
from server.errors import Conflict, Forbidden, LimitError, RelayError
from server.metrics import Metrics
from server.store import attachments, batches, messages, threads

__all__ = ["Routing", "SendPipeline", "SendPolicy", "Sender", "new_message"]

log = logging.getLogger("lightbox.sends")
_REUSED = "this message id was already used with a different message"
# The header's ids, joined by commas: one match for all of them (RFC 9562 §4 textual form,
# lowercase as PROTOCOL.md §1 says).
_IDS = re.compile(f"{UUID_RE.pattern}(?:,{UUID_RE.pattern})*")


@dataclasses.dataclass(frozen=True)
class Sender:
    user_id: str
    device_id: str
    signing_key: bytes


class Routing(Protocol):
    """On-call routing (server/oncall.py): which moment decides who a role reaches, and what
    happens to a batch's messages once stored (held backup deliveries, escalation timers)."""

    def at(self) -> dt.datetime: ...

    async def after_store(self, conn: Any, stored: list[tuple[messages.NewMessage, int]],
                          at: dt.datetime) -> None: ...


class LocalDelivery(Protocol):
    """This process's websocket connections (server/hub.py), told after COMMIT about what a
    batch queued, so that a recipient connected here is written to without a read."""

    origin: str  # marks the wake-up events this process publishes (it skips its own)

    def takers(self, device_ids: Iterable[str]) -> list[str]: ...

    def deliver(self, new: Sequence[messages.NewDelivery]) -> None: ...

    def wake(self, device_ids: Iterable[str], *, notices: bool = True) -> None: ...

    def here(self, device_ids: Iterable[str]) -> list[str]: ...

    def silenced(self, device_ids: Iterable[str]) -> None: ...


class FilingHook(Protocol):
    async def admit(self, conn: Any, header: MessageHeader, org_id: str,
                    members: AbstractSet[str], device_set: threads.DeviceSet
                    ) -> frozenset[str]:
        """Record-gateway devices the message may involve beyond the participants (left out
        of checks 3 and 4); raises filing_gateway_missing (server/expiry.py, PROTOCOL.md §15)."""
        ...


class SendPolicy(Protocol):
    async def check_send(self, conn: Any, header: MessageHeader, now: dt.datetime) -> None:
        """Raise RelayError if policy (consent) refuses the message; runs in the send
        transaction, before anything is stored."""
        ...


def new_message(message: SealedMessage, encoded: bytes) -> messages.NewMessage:
    """What the store keeps of a sealed message: its header's ids and flags, and ``encoded``
    (the sealed message as the relay re-encoded it) with its SHA-256."""
    h = message.header
    return messages.NewMessage(
        message_id=h.message_id, thread_id=h.thread_id, sender_user_id=h.sender_user_id,
        sender_device_id=h.sender_device_id, priority=h.priority.value,
        purpose=h.purpose.value, consent_id=h.consent_id,
        body_hash=hashlib.sha256(encoded).digest(), sealed=encoded,
        recipients=list(h.recipient_devices))


@dataclasses.dataclass
class _Pending:
    sender: Sender
    message: SealedMessage
    encoded: bytes
    future: asyncio.Future[messages.Accepted]


@dataclasses.dataclass(frozen=True)
class _InFlight:
    """A batch being stored: its sends, its keys (``SendPipeline._keys``), and an event set
    once it holds its thread locks (or has ended)."""
    batch: list[_Pending]
    keys: frozenset[str]
    locked: asyncio.Event


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class BreakGlass(Protocol):
    """Emergency messages without a consent (server/breakglass.py)."""

    async def lock(self, conn: Any, headers: Sequence[MessageHeader]) -> None: ...

    async def check(self, conn: Any, header: MessageHeader, *, org_id: str,
                    gateways: frozenset[str], counted: dict[str, int],
                    now: dt.datetime) -> int: ...

    async def record(self, conn: Any, stored: Sequence[tuple[MessageHeader, str, int]],
                     now: dt.datetime) -> None: ...


@dataclasses.dataclass
class _Batch:
    """What one batch's checks share: emergency messages accepted so far per sender (the
    daily limit) and, per accepted emergency message, its header, organisation and recipient
    users (its break-glass case)."""

    counted: dict[str, int] = dataclasses.field(default_factory=dict)
    emergencies: dict[tuple[str, str], tuple[MessageHeader, str, int]] = dataclasses.field(
        default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Known:
    """A thread's state as the last read under its lock found it, Postgres's digest of it
    (alembic migration 0015) and the directory epoch at which it was last known current
    (migration 0016)."""

    org: str
    members: frozenset[str]
    device_set: threads.DeviceSet
    digest: bytes
    epoch: int | None


class _NeedsDatabase(Exception):
    """A check asked the database: the batch is checked on fresh reads instead."""


class _NoDatabase:
    """The connection given to the checks of a batch of known threads: any use of it means
    that the check needs the database, and the batch takes the path that reads."""

    def __getattr__(self, name: str) -> Any:
        raise _NeedsDatabase(name)


_NO_DATABASE: Any = _NoDatabase()
KNOWN_THREADS = 4096  # threads whose state a process keeps (least recently used dropped)
HANDOVER_BATCH = 16  # the largest batch whose deliveries are handed over (_connected_here)


class SendPipeline:
    filing: FilingHook | None = None  # set where the app is assembled (server/app.py)
    break_glass: BreakGlass | None = None  # likewise
    local: LocalDelivery | None = None  # likewise

    def __init__(self, db: Database, metrics: Metrics, *, policy: SendPolicy,
                 max_message_bytes: int, max_batch: int = 256, verify_signatures: bool = True,
                 now: Callable[[], dt.datetime] = _utcnow, routing: Routing | None = None,
                 pipeline: int = 2) -> None:
        self.db, self.metrics, self.policy, self.routing = db, metrics, policy, routing
        self.max_message_bytes = max_message_bytes
        self.max_batch = max_batch
        self.pipeline = max(1, pipeline)  # batches in flight at once
        self._batches: dict[asyncio.Task[None], _InFlight] = {}
        self._collecting: list[_Pending] = []  # the next batch, until it starts
        self.verify_signatures = verify_signatures
        self.now = now
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._known: collections.OrderedDict[str, _Known] = collections.OrderedDict()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="send-pipeline")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        unanswered = [*self._collecting, *(p for f in self._batches.values() for p in f.batch)]
        self._collecting = []
        for task in list(self._batches):  # a cancelled batch rolls back: nothing stored
            task.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)
        self._batches.clear()
        while not self._queue.empty():
            unanswered.append(self._queue.get_nowait())
        for p in unanswered:
            if not p.future.done():
                p.future.set_exception(RelayError(ErrorCode.NOT_READY, "relay shutting down"))

    # -- validation ------------------------------------------------------------------------

    def check(self, sender: Sender, message: SealedMessage, encoded: bytes) -> None:
        """Checks that need no database (1 and 2 above)."""
        h = message.header
        if h.sender_device_id != sender.device_id or h.sender_user_id != sender.user_id:
            raise Forbidden(ErrorCode.SENDER_MISMATCH,
                            "the header names another sender than this connection")
        if len(encoded) > self.max_message_bytes:
            raise LimitError(ErrorCode.MESSAGE_TOO_LARGE,
                             f"sealed message over {self.max_message_bytes} bytes")
        named = list(h.recipient_devices)
        # The sender's ids were compared with the connection's; the wrapped keys' device ids
        # with ``named`` below.
        ids = [h.message_id, h.thread_id, *named, *h.attachment_ids]
        if h.consent_id is not None:
            ids.append(h.consent_id)
        if _IDS.fullmatch(",".join(ids)) is None:
            raise RelayError(ErrorCode.MALFORMED_FRAME,
                             "an id in the message header is not a lowercase UUID")
        keyed = [k.device_id for k in message.keys]
        if len(set(named)) != len(named) or set(named) != set(keyed) or len(keyed) != len(named):
            raise RelayError(ErrorCode.DEVICE_SET_MISMATCH,
                             "recipient_devices and wrapped keys disagree or repeat")
        if sender.device_id in named:
            raise RelayError(ErrorCode.DEVICE_SET_MISMATCH, "a device cannot send to itself",
                             extra={"extra": [sender.device_id]})
        if self.verify_signatures:
            try:
                envelope.verify_sealed(message, sender.signing_key)
            except VerificationError as exc:
                raise Forbidden(ErrorCode.SENDER_MISMATCH,
                                "the sender device's signature does not verify") from exc

    def enqueue(self, sender: Sender, message: SealedMessage
                ) -> asyncio.Future[messages.Accepted]:
        """Validate and queue, synchronously, so that sends keep the order in which a
        connection received them; the future resolves after COMMIT (or with a RelayError)."""
        encoded = envelope.encode_sealed(message)
        self.check(sender, message, encoded)
        fut: asyncio.Future[messages.Accepted] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(sender, message, encoded, fut))
        return fut

    async def submit(self, sender: Sender, message: SealedMessage) -> messages.Accepted:
        """Validate and store; returns only after COMMIT. Raises RelayError with the code."""
        return await self.enqueue(sender, message)

    # -- group commit ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            batch = self._collecting = [await self._queue.get()]
            while True:
                # Sends keep arriving into the queue while the pipeline is full and while a
                # batch in flight that shares a thread with this one takes its locks: this
                # batch is collected from all of them.
                while len(self._batches) >= self.pipeline:
                    await asyncio.wait(list(self._batches), return_when=asyncio.FIRST_COMPLETED)
                while len(batch) < self.max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                keys = self._keys(batch)
                before = next((f.locked for f in self._batches.values()
                               if not f.locked.is_set() and f.keys & keys), None)
                if before is None:
                    break
                await before.wait()
            self._collecting = []
            locked = asyncio.Event()
            task = asyncio.create_task(self._run_batch(batch, locked), name="send-batch")
            self._batches[task] = _InFlight(batch, keys, locked)
            task.add_done_callback(self._forget)

    @staticmethod
    def _keys(batch: list[_Pending]) -> frozenset[str]:
        """What two batches in flight at once must not share: a thread (its order), or a
        message id of one sender device (a retry of a send still in flight, even to another
        thread, must meet the first one's outcome, not its uncommitted row)."""
        return frozenset(
            k for p in batch for k in (p.message.header.thread_id,
                                       f"{p.sender.device_id}/{p.message.header.message_id}"))

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._batches.pop(task, None)

    async def _run_batch(self, batch: list[_Pending], locked: asyncio.Event) -> None:
        try:
            await self._store(batch, locked)
        except Exception as exc:  # the batch failed as a whole: every sender may retry
            log.error("send batch failed", exc_info=exc, extra={"count": len(batch)})
            if self.local is not None:
                # It may have committed all the same (the answer to COMMIT lost): this
                # process skips its own wake-up events, so its recipients read their queues.
                recipients = {d for p in batch for d in p.message.header.recipient_devices}
                self.local.wake(recipients, notices=False)
                # Those of them it did not announce may have left this process meanwhile.
                self.local.silenced(recipients)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(
                        RelayError(ErrorCode.INTERNAL_ERROR, "not stored; retry"))
        finally:
            locked.set()  # also when the batch failed before it could lock anything

    async def _store(self, batch: list[_Pending], locked: asyncio.Event | None = None) -> None:
        """Store a batch and answer each send: in one statement when its threads are known
        and unchanged (:meth:`_store_known`), else in one transaction that reads first
        (:meth:`_store_read`)."""
        now = self.now()
        at = self.routing.at() if self.routing is not None else now
        prepared = [(p, new_message(p.message, p.encoded)) for p in batch]
        outcome = await self._store_known(prepared, now, at)
        if outcome is None:
            outcome = await self._store_read(prepared, now, at, locked)
        accepted = 0
        for i, (p, _) in enumerate(prepared):
            result = outcome[i]
            if isinstance(result, messages.Accepted) and not result.duplicate:
                accepted += 1
            if p.future.done():
                # The sender stopped waiting (its connection closed mid-send). The outcome
                # stands all the same: a stored message is answered as a duplicate when the
                # device sends it again.
                continue
            if isinstance(result, RelayError):
                p.future.set_exception(result)  # counted where it is answered
            else:
                p.future.set_result(result)
        if accepted:  # one update of the shared counter per batch, not one per message
            self.metrics.messages_accepted.inc(accepted)

    async def _store_known(self, prepared: list[tuple[_Pending, messages.NewMessage]],
                           now: dt.datetime, at: dt.datetime
                           ) -> dict[int, messages.Accepted | RelayError] | None:
        """Store the batch in one statement if every thread is known, every check passes on
        the known state without the database, no message repeats another of the batch, and
        Postgres confirms under the thread locks that each thread's state is unchanged and no
        message is stored yet (server/store/batches.py ``lock_and_store``). ``None``: nothing
        stored; the batch must be read and checked under the locks."""
        known: dict[str, _Known] = {}
        keys: set[tuple[str, str]] = set()
        for p, m in prepared:
            thread = self._known.get(m.thread_id)
            key = (m.sender_device_id, m.message_id)
            if thread is None or key in keys or p.message.header.emergency is not None:
                return None
            known[m.thread_id] = thread
            keys.add(key)
        orgs = {t: k.org for t, k in known.items()}
        members = {t: k.members for t, k in known.items()}
        device_sets = {t: k.device_set for t, k in known.items()}
        try:
            for p, _ in prepared:
                await self._check(_NO_DATABASE, p, orgs, members, device_sets, now, _Batch())
        except (RelayError, _NeedsDatabase):
            return None  # a refusal is decided, and audited, on the database's own reads
        msgs = [m for _, m in prepared]
        # One epoch for the batch: threads known at different epochs are confirmed by digest.
        epochs = {k.epoch for k in known.values()}
        epoch = epochs.pop() if len(epochs) == 1 else None
        here = self._here(msgs)
        try:
            async with self.db.hot_pool.acquire() as conn:
                result = await batches.lock_and_store(
                    conn, {t: k.digest for t, k in known.items()}, epoch, at, msgs, now,
                    channel=events.CHANNEL, notifications=self._wake(msgs, here),
                    local=self._connected_here(msgs, here))
        except BaseException:
            self._forget_threads(known)  # the senders' retries are read and checked afresh
            raise
        if result is None:
            self._forget_threads(known)
            self.metrics.send_batches.labels("rechecked").inc()
            return None
        stored = result.stored
        self._hand_over([(m, stored[(m.sender_device_id, m.message_id)]) for m in msgs], now,
                        here)
        for t, k in known.items():
            if self._known.get(t) is k:  # not replaced by a newer read meanwhile
                self._known[t] = dataclasses.replace(k, epoch=result.epoch)
                self._known.move_to_end(t)
        self.metrics.send_batches.labels("known").inc()
        self.metrics.known_batch_checks.labels("epoch" if result.by_epoch else "digest").inc()
        return {i: messages.Accepted(m.message_id, m.thread_id,
                                     stored[(m.sender_device_id, m.message_id)].thread_seq,
                                     now, duplicate=False)
                for i, (_, m) in enumerate(prepared)}

    def _forget_threads(self, thread_ids: Iterable[str]) -> None:
        for t in thread_ids:
            self._known.pop(t, None)

    def _remember(self, reads: batches.BatchReads) -> None:
        """Keep each thread's state as read under its lock (threads with on-call work are
        left out: storing their messages needs the database, server/oncall.py)."""
        for tid, org in reads.orgs.items():
            digest = reads.digests.get(tid)
            if tid in reads.routed or digest is None:
                self._known.pop(tid, None)
                continue
            self._known[tid] = _Known(org, frozenset(reads.members[tid]),
                                      reads.device_sets[tid], digest, reads.epoch)
            self._known.move_to_end(tid)
        while len(self._known) > KNOWN_THREADS:
            self._known.popitem(last=False)

    async def _store_read(self, prepared: list[tuple[_Pending, messages.NewMessage]],
                          now: dt.datetime, at: dt.datetime, locked: asyncio.Event | None
                          ) -> dict[int, messages.Accepted | RelayError]:
        """Store a batch in one transaction of two set-based statements whatever its size
        (server/store/batches.py): lock the threads in id order (no deadlock between relay
        processes), then read retries, participants and device sets, in one call; check each
        send; then number, insert and announce all accepted ones. Attachments, consents,
        emergencies and on-call threads add their own statements, only when a message has
        them."""
        outcome: dict[int, messages.Accepted | RelayError] = {}
        first_of: dict[tuple[str, str], int] = {}  # key -> index of its first send here
        twins: list[tuple[int, int]] = []  # (index, index of the same send earlier in batch)
        accepted: list[tuple[int, messages.NewMessage, list[str]]] = []
        stored: list[tuple[messages.NewMessage, batches.Stored]] = []
        async with self.db.hot_pool.acquire() as conn, conn.transaction():
            reads = await batches.lock_and_read(
                conn, (m.thread_id for _, m in prepared),
                [(m.sender_device_id, m.message_id) for _, m in prepared], at)
            self._remember(reads)
            orgs = reads.orgs
            batch_state = _Batch()
            if self.break_glass is not None:
                # After the thread locks, as every batch takes them (no crosswise wait); the
                # limit's count is read by a later statement, under this lock.
                await self.break_glass.lock(conn, [p.message.header for p, _ in prepared])
            if locked is not None:
                locked.set()  # the next batch may start: it waits here for a shared thread
            for i, (p, m) in enumerate(prepared):
                key = (m.sender_device_id, m.message_id)
                try:
                    if key in first_of:
                        j = first_of[key]
                        if prepared[j][1].body_hash != m.body_hash:
                            raise Conflict(ErrorCode.DUPLICATE_CONFLICT, _REUSED)
                        twins.append((i, j))
                        continue
                    old = reads.existing.get(key)
                    if old is not None:
                        if old.body_hash != m.body_hash or old.thread_id != m.thread_id:
                            raise Conflict(ErrorCode.DUPLICATE_CONFLICT, _REUSED)
                        outcome[i] = messages.Accepted(m.message_id, old.thread_id,
                                                       old.thread_seq, old.created_at,
                                                       duplicate=True)
                        continue
                    await self._check(conn, p, orgs, reads.members, reads.device_sets, now,
                                      batch_state)
                except RelayError as err:
                    outcome[i] = err
                    continue
                first_of[key] = i
                accepted.append((i, m, list(p.message.header.attachment_ids)))
            here = self._here([m for _, m, _ in accepted])
            stored = await self._insert(conn, accepted, outcome, now, at, reads.routed, here)
            if self.break_glass is not None:
                await self.break_glass.record(conn, [
                    batch_state.emergencies[(m.sender_device_id, m.message_id)]
                    for _, m, _ in accepted
                    if (m.sender_device_id, m.message_id) in batch_state.emergencies], now)
        # Committed. Messages of threads with on-call work may have had deliveries held
        # (server/oncall.py): their recipients read their queues.
        if self.local is not None:
            self.local.wake({d for m, _ in stored if m.thread_id in reads.routed
                             for d in m.recipients}, notices=False)
        self._hand_over([(m, st) for m, st in stored if m.thread_id not in reads.routed], now,
                        here)
        for i, j in twins:
            prev = outcome.get(j)
            outcome[i] = (msgspec.structs.replace(prev, duplicate=True)
                          if isinstance(prev, messages.Accepted) else
                          prev if prev is not None else RelayError(ErrorCode.INTERNAL_ERROR))
        self.metrics.send_batches.labels("read").inc()
        return outcome

    def _wake(self, msgs: Sequence[messages.NewMessage], here: Collection[str] = ()
              ) -> list[str]:
        """The notifications that wake the recipients' pumps (server/events.py), at most 180
        devices each (a NOTIFY payload is limited to 8,000 bytes); none for the devices
        ``here`` (connected to this process), which it tells itself after COMMIT
        (:meth:`_hand_over`), so a batch whose recipients are all here wakes no other
        process and no listening Postgres backend. The events carry this process's
        ``origin``: its own hub skips them (a rolling upgrade's older processes send theirs
        to every device)."""
        woken = sorted({d for m in msgs for d in m.recipients}.difference(here))
        origin = {} if self.local is None else {"origin": self.local.origin}
        return [events.notification("deliver", device_ids=woken[k:k + 180],
                                    notices=False, **origin)  # pumps skip notices
                for k in range(0, len(woken), 180)]

    def _here(self, msgs: Sequence[messages.NewMessage]) -> list[str]:
        """The recipient devices connected to this process: their wake-up is told here after
        COMMIT, not sent through Postgres (docs/ARCHITECTURE.md §3 "Local delivery", and its
        takeover rule for a device that connects elsewhere meanwhile: ``Hub.silenced``)."""
        if self.local is None:
            return []
        return self.local.here({d for m in msgs for d in m.recipients})

    def _connected_here(self, msgs: Sequence[messages.NewMessage], here: Collection[str]
                        ) -> list[str]:
        """Of ``here`` (:meth:`_here`: the batch's recipients connected to this process), the
        devices whose pumps could take a delivery
        handed over: the store lists what else each has queued for those only (alembic
        migration 0017). Listing it costs a scan of the device's queue, which a queue that
        many deliveries pass through keeps long with dead entries. So a device whose pump is
        busy, or has as many unacknowledged deliveries as the store would list, is not
        asked about (``Member.may_take``), nor any in a batch of more than ``HANDOVER_BATCH``
        messages: under that load the pumps' reads are shared, one statement for every pump
        that asks in an event-loop turn (server/reads.py), and the scans would cost more than
        they save (docs/BENCHMARKS.md, round 10)."""
        if self.local is None or len(msgs) > HANDOVER_BATCH:
            return []
        return self.local.takers(here)

    def _hand_over(self, stored: Sequence[tuple[messages.NewMessage, batches.Stored]],
                   now: dt.datetime, here: Collection[str]) -> None:
        """After COMMIT: every delivery just queued, to this process's hub, which hands those
        of devices connected here to their pumps (docs/ARCHITECTURE.md §3 "Local delivery").
        A device the store listed no queue for (``queued`` None: not asked, as in every batch
        of more than ``HANDOVER_BATCH``, or too long) could not take one (``Member.offer``
        would wake its pump): it is woken without the deliveries being built for it. Then
        the devices ``here``, which no wake-up event named, are told to the hub
        (``Hub.silenced``): one that has left this process since is woken by an event now."""
        if self.local is None:
            return
        try:
            self._offer(stored, now)
        finally:
            self.local.silenced(here)

    def _offer(self, stored: Sequence[tuple[messages.NewMessage, batches.Stored]],
               now: dt.datetime) -> None:
        assert self.local is not None
        woken = {d.device_id for _, st in stored for d in st.deliveries if d.queued is None}
        if woken:
            self.local.wake(woken, notices=False)
        offered = [
            messages.NewDelivery(d.device_id, m.thread_id, messages.Delivery(
                d.delivery_pk, d.delivery_id, st.thread_seq, m.priority, now, m.sealed),
                d.queued)
            for m, st in stored for d in st.deliveries if d.device_id not in woken]
        if offered:
            self.local.deliver(offered)

    async def _check(self, conn: Any, p: _Pending, orgs: dict[str, str],
                     members: Mapping[str, AbstractSet[str]],
                     device_sets: dict[str, threads.DeviceSet],
                     now: dt.datetime, batch: _Batch) -> None:
        """Checks 3 to 5 of the module docstring, plus attachments and consent (or
        break-glass)."""
        h = p.message.header
        if h.thread_id not in orgs:
            raise RelayError(ErrorCode.THREAD_NOT_FOUND, "no such thread")
        ds = device_sets[h.thread_id]
        gateways = frozenset[str]() if self.filing is None else await self.filing.admit(
            conn, h, orgs[h.thread_id], members[h.thread_id], ds)
        if h.sender_user_id not in members[h.thread_id] and h.sender_device_id not in gateways:
            raise Forbidden(ErrorCode.NOT_THREAD_MEMBER, "not a participant of this thread")
        named = set(h.recipient_devices) - gateways
        expected = ds.active - {h.sender_device_id}
        missing = sorted(expected - named)
        stale = sorted(named & ds.inactive)
        extra = sorted(named - expected - ds.inactive)
        if missing or stale or extra:
            raise RelayError(ErrorCode.DEVICE_SET_MISMATCH,
                             "the recipient devices do not match the thread's participants",
                             extra={"missing": missing, "extra": extra, "stale": stale})
        if h.emergency is not None:
            if self.break_glass is None:
                raise Forbidden(ErrorCode.BREAK_GLASS_NOT_ALLOWED,
                                "this relay does not accept emergency messages")
            if h.attachment_ids:
                await attachments.check_references(conn, h.attachment_ids, h.sender_device_id)
            users = await self.break_glass.check(
                conn, h, org_id=orgs[h.thread_id], gateways=gateways, counted=batch.counted,
                now=now)
            batch.emergencies[(h.sender_device_id, h.message_id)] = (
                h, orgs[h.thread_id], users)
            return
        sender_org = ds.orgs.get(h.sender_device_id)
        if not h.external and sender_org is not None and any(
                ds.orgs.get(d, sender_org) != sender_org for d in named):
            # A recipient in another organisation needs the clinical-necessity
            # statement (sealed in the body) and the header's external flag. Audited.
            await audit.append(conn, "message.external_necessity_missing", outcome="refused",
                               subject_kind="thread", subject_id=h.thread_id,
                               details={"sender_device_id": h.sender_device_id})
            raise Forbidden(ErrorCode.EXTERNAL_NECESSITY_MISSING,
                            "a recipient is in another organisation: state the clinical "
                            "necessity (sealed) and mark the message external")
        if h.attachment_ids:
            await attachments.check_references(conn, h.attachment_ids, h.sender_device_id)
        await self.policy.check_send(conn, h, now)

    async def _insert(self, conn: Any,
                      accepted: list[tuple[int, messages.NewMessage, list[str]]],
                      outcome: dict[int, messages.Accepted | RelayError],
                      now: dt.datetime, at: dt.datetime, routed: frozenset[str],
                      here: Collection[str]) -> list[tuple[messages.NewMessage, batches.Stored]]:
        """Store the accepted messages, their deliveries and the recipients' wake-up in one
        statement (server/store/batches.py), then their attachment grants and on-call work.
        Returns each message stored with what the store returned for it."""
        if not accepted:
            return []
        msgs = [m for _, m, _ in accepted]
        stored = await batches.store_messages(conn, msgs, now, channel=events.CHANNEL,
                                              notifications=self._wake(msgs, here),
                                              local=self._connected_here(msgs, here))
        for i, m, _ in accepted:
            outcome[i] = messages.Accepted(
                m.message_id, m.thread_id, stored[(m.sender_device_id, m.message_id)].thread_seq,
                now, duplicate=False)
        for _, m, attachment_ids in accepted:
            if attachment_ids:
                await attachments.record_references(
                    conn, sender_device_id=m.sender_device_id, message_id=m.message_id,
                    attachment_ids=attachment_ids, recipients=m.recipients, now=now)
        if self.routing is not None:
            rows = [(m, stored[(m.sender_device_id, m.message_id)].message_pk)
                    for _, m, _ in accepted if m.thread_id in routed]
            if rows:
                await self.routing.after_store(conn, rows, at)
        return [(m, stored[(m.sender_device_id, m.message_id)]) for _, m, _ in accepted]
