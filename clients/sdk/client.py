"""The high-level async SDK: one object a clinician's program holds.

:class:`LightboxClient` owns the device state (a key store or the vault, through the
:class:`~clients.sdk.keystore.DeviceStore` protocol), the pinned organisation key and the
newest organisation-signed revocation list, a :class:`~clients.sdk.http.RelayHTTP` and a
:class:`~clients.sdk.connection.Connection` (reconnect with backoff, resume from the relay's
durable queue, outbox, de-duplication through the vault).

It is a thin front over parts of one concern each, assembled here and given what they need:
:class:`~clients.sdk.session.Session` (tokens, logging in again),
:class:`~clients.sdk.trust.Trust` (chains, revocations, claimed prekeys),
:class:`~clients.sdk.threads.ThreadBook`, :class:`~clients.sdk.sending.Sender` (the outbox),
:class:`~clients.sdk.receiving.Receiver` (deliveries, images, receipts),
:class:`~clients.sdk.notices.Notices` (orders and notices), :class:`~clients.sdk.memory.Memory`
(what the device learnt, and the views), sharing a :class:`~clients.sdk.hub.Hub` (connection,
events, tasks, outgoing frames).

Why every step is where it is (docs/ARCHITECTURE.md §2):

* **Sending**: the thread's recipients come from the relay, so every user and device
  certificate is verified against the pinned organisation key and the revocation list before
  anything is encrypted to it; claimed prekeys are verified under the device's key. A relay
  that inserted a device gets a refusal, not a copy. ``device_set_mismatch`` (someone joined or
  left meanwhile) refreshes the recipients and retries once.
* **Receiving**: the sender's chain is fetched and verified before opening; the body is stored
  in the vault, the one-time prekey secret used is then deleted from the device state (forward
  secrecy, PROTOCOL §5.5), and only then is the delivery acknowledged and a signed
  ``delivered`` receipt sent. Images are fetched, decrypted and checked against their consent
  (clients/sdk/attachments.py) in the background; the message is already safe in the vault.
* Sealing, opening and attachment crypto run in worker threads: the event loop that keeps the
  websocket alive never waits on a large payload.

Events for applications (:meth:`LightboxClient.events`, :meth:`LightboxClient.on_event`):
:class:`MessageEvent`, :class:`ImageEvent`, :class:`ReceiptEvent`, :class:`FiledEvent`,
:class:`ExpiredEvent`, :class:`WithdrawnEvent`, :class:`EscalationEvent`,
:class:`StatusEvent`, :class:`OutboxEvent`, :class:`AcknowledgementEvent`,
:class:`NotReceivedEvent` (defined in
clients/sdk/events.py, re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec

from clients.sdk import people
from clients.sdk.connection import REPLACED_WAIT, Connection
from clients.sdk.errors import (
    DeviceWiped,
    RelayRequestError,
    RelayUnavailable,
    SDKError,
    SessionEnded,
)
from clients.sdk.events import (
    AcknowledgementEvent,
    ClientEvent,
    EscalationEvent,
    ExpiredEvent,
    FiledEvent,
    ImageEvent,
    ImageStatus,
    MessageEvent,
    MessageView,
    NotReceivedEvent,
    OutboxEvent,
    ReceiptEvent,
    SentMessage,
    StatusEvent,
    WithdrawnEvent,
)
from clients.sdk.handover import Authorship, authorship, one_per_consult
from clients.sdk.http import RelayHTTP
from clients.sdk.hub import Hub
from clients.sdk.keystore import DeviceState, DeviceStore
from clients.sdk.memory import Memory, body_of
from clients.sdk.notices import Notices
from clients.sdk.prekeys import PrekeyPolicy, after_outage, rotate_signed_prekey
from clients.sdk.receiving import Receiver
from clients.sdk.sending import Sender
from clients.sdk.session import CUT_OFF, Session
from clients.sdk.sharedtokens import SharedTokens
from clients.sdk.threads import RECORD_THREAD_SUBJECT, ThreadBook
from clients.sdk.trust import Trust
from clients.sdk.vault import ItemNotFound, OutboxRecord, Vault, VaultLocked, VaultMessage
from protocol import api, certs, statements
from protocol.body import Body
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.model import Priority

# The events and views are defined in clients/sdk/events.py and re-exported here (a literal
# list: type checkers read re-exports only from one).
__all__ = [
    "RECORD_THREAD_SUBJECT",
    "AcknowledgementEvent",
    "ClientEvent",
    "EscalationEvent",
    "ExpiredEvent",
    "FiledEvent",
    "ImageEvent",
    "ImageStatus",
    "LightboxClient",
    "MessageEvent",
    "MessageView",
    "NotReceivedEvent",
    "OutboxEvent",
    "ReceiptEvent",
    "SentMessage",
    "StatusEvent",
    "WithdrawnEvent",
]


log = logging.getLogger("lightbox.sdk.client")
PREKEY_UPKEEP_INTERVAL = 3600.0  # seconds between checks whether the signed prekey is due


class LightboxClient:
    """A logged-in device: send, receive, receipts, images. ``async with`` starts and stops it.

    ``store`` holds the device state (an OpenKeyStore, or the vault itself); ``vault`` stores
    messages and images; ``password`` lets the client log in again when the refresh token has
    expired. ``ws_url`` defaults to the server URL with ``ws(s)://`` and ``/v1/ws``.
    ``replaced_wait``: how long the connection leaves the relay to a newer connection of this
    device that replaced it (clients/sdk/connection.py); 0 for a program that runs for a
    moment while the user waits (a ``lightbox`` command), the one others make way for.
    ``logged_out``: whether the user logged out on this device since the program opened its
    profile (clients/sdk/profile.py); from then on the session is used no more.
    """

    def __init__(
        self, store: DeviceStore, vault: Vault, *, password: str | None = None,
        relay: RelayHTTP | None = None, ws_url: str | None = None,
        clock: Callable[[], float] = time.time, backoff_base: float = 0.2,
        backoff_max: float = 10.0, fetch_images: bool = True,
        prekey_policy: PrekeyPolicy | None = None, replaced_wait: float = REPLACED_WAIT,
        logged_out: Callable[[], bool] | None = None,
    ) -> None:
        self.store, self.vault = store, vault
        self.prekey_policy = prekey_policy or PrekeyPolicy.from_env()
        self._clock = clock
        st = store.state
        self.session = Session(store, password=password, clock=clock, logged_out=logged_out)
        self.relay = relay or RelayHTTP(
            st.server_url, device=st.device_keys().signing, tokens=st.session,
            on_tokens=self.session.save_tokens,
            login_again=self.session.login_again if password is not None else None,
            sso=st.sso, shared=SharedTokens.of(store))
        self.session.relay = self.relay
        base = st.server_url.rstrip("/")
        self.ws_url = ws_url or ("ws" + base[len("http"):] + "/v1/ws")
        self._backoff = (backoff_base, backoff_max)
        self._replaced_wait = replaced_wait
        self.fetch_images = fetch_images
        self.hub = Hub()
        self.memory = Memory(vault, lambda: self.store.state.user_id)
        self.trust = Trust(self.relay, store, clock=clock, on_name=self.memory.remember_name)
        self.thread_book = ThreadBook(self.relay, store, self.trust, vault)
        # Whether a user is the record gateway, by user id, as :meth:`record_gateways` learnt it.
        self._gateway_of: dict[str, bool] = {}
        self.sender = Sender(relay=self.relay, store=store, vault=vault, trust=self.trust,
                             threads=self.thread_book, hub=self.hub, clock=clock)
        self.receiver = Receiver(relay=self.relay, store=store, vault=vault, trust=self.trust,
                                 memory=self.memory, threads=self.thread_book, hub=self.hub,
                                 clock=clock, fetch_images=lambda: self.fetch_images)
        self.notices = Notices(relay=self.relay, store=store, vault=vault, trust=self.trust,
                               memory=self.memory, sender=self.sender,
                               receiver=self.receiver, hub=self.hub, clock=clock,
                               on_wiped=self._wiped, close=self.close)
        # Sending is the Sender's: its methods are the client's (clients/sdk/sending.py).
        self.send_text = self.sender.send_text
        self.send_image = self.sender.send_image
        self.file_consent = self.sender.file_consent
        self.file_image = self.sender.file_image
        self.correct_patient = self.sender.correct_patient
        self.break_glass_pending = self.sender.break_glass_pending
        self.follow_up_break_glass = self.sender.follow_up_break_glass
        self.pending_sends = self.sender.pending_sends
        self._resend: asyncio.Task[None] | None = None
        self.wiped: certs.RevocationEntry | None = None  # set once a wipe order was obeyed

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> DeviceState:
        return self.store.state

    @property
    def device_id(self) -> str:
        return self.store.state.device_id

    @property
    def user_id(self) -> str:
        return self.store.state.user_id

    @property
    def connection(self) -> Connection | None:
        return self.hub.connection

    def _wiped(self, entry: certs.RevocationEntry) -> None:
        self.wiped = entry

    async def ensure_login(self) -> None:
        """Log in again (password + device signature) when there is no usable session."""
        await self.session.ensure_login()

    async def start(self, *, wait_connected: float | None = None,
                    offline: bool = False) -> None:
        """Log in if needed, fetch the revocation list, and connect (in the background).
        A device refused as revoked, or suspended, still connects, to hear a wipe order if one
        awaits it; the relay then closes the connection (4004, 4005) and the client stops.

        With ``offline``, a relay out of reach (:class:`RelayUnavailable`, never a refusal)
        does not stop the start: the client holds what the vault holds (messages, images, the
        threads as last listed) and connects, logs in and fetches the revocation list once the
        relay answers. Until then nothing arrives; the first delivery verifies its sender
        against a revocation list fetched then (clients/sdk/trust.py)."""
        unanswered = False
        try:
            await self.session.ensure_login()
        except RelayRequestError as exc:
            if exc.code != ErrorCode.DEVICE_REVOKED.value or self.store.state.session is None:
                raise
        except RelayUnavailable:
            if not offline:
                raise
            log.info("starting without the relay: it cannot be reached")
            unanswered = True
        try:
            await self.trust.revocations(force=True)
        except RelayRequestError as exc:
            if exc.code not in CUT_OFF:
                raise
        except RelayUnavailable:
            if not offline:
                raise
            unanswered = True
        self.hub.spawn(self._prekey_upkeep(unanswered), "client-prekeys")
        keys = self.store.state.device_keys()
        self.receiver.note_stored()  # what another program stores from now on is told too
        connection = self.hub.connection = Connection(
            self.ws_url, device_id=keys.device_id, access_token=self.session.socket_token,
            sign=keys.sign, on_message=self.receiver.on_deliver, on_event=self.notices.on_frame,
            dedupe=self.vault.dedupe, backoff_base=self._backoff[0],
            backoff_max=self._backoff[1], replaced_wait=self._replaced_wait,
            token_refused=self.session.token_refused)
        pending = self.vault.outbox()  # left by an earlier run: resent once connected
        await connection.start()
        self._resend = self.hub.spawn(self._resend_pending(pending), "client-resend")
        self.hub.spawn(self.hub.flush_outgoing(), "client-outgoing")
        self.hub.spawn(self._watch_connection(), "client-status")
        if wait_connected is not None:
            await self._until(connection.connected.wait(), wait_connected)

    async def _resend_pending(self, records: list[OutboxRecord]) -> None:
        with contextlib.suppress(VaultLocked):  # locked meanwhile: the next start resends them
            await self.sender.resend_pending(records)

    async def close(self, *, drain: float = 5.0) -> None:
        """Stop. Receipts and expiry confirmations still queued are sent first, for up to
        ``drain`` seconds while connected: a short run (``lightbox inbox``) that applied an
        expiry order must not exit before confirming it, or the audit would show the copy as
        not confirmed until the device's next connection (the order itself stays durable on
        the relay, so nothing is lost when the relay is out of reach)."""
        connection = self.hub.connection
        if (connection is not None and connection.connected.is_set()
                and not self.hub.outgoing_sent.is_set()):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain):
                    await self.hub.outgoing_sent.wait()
        await self.hub.cancel_tasks()
        if connection is not None:
            await connection.stop()
        await self.relay.aclose()

    async def __aenter__(self) -> LightboxClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_synced(self, timeout: float = 10.0, *, unreachable: bool = False) -> None:
        """Wait until connected, the offline backlog has been received and the sends an
        earlier run left in the outbox have been resent. Raises :class:`DeviceWiped` or
        :class:`ConnectionStopped` as soon as the relay ended this device's access (not a
        timeout later), TimeoutError if the relay stayed silent. ``unreachable``: raise
        :class:`RelayUnavailable` as soon as a try to connect fails before that (the relay
        went down after :meth:`start`, or its connection dropped before the backlog was in),
        rather than wait out ``timeout`` while the connection tries again (a command the user
        waits on; a long-running program keeps waiting)."""
        conn = self.hub.connected()

        async def synced() -> None:
            await conn.connected.wait()
            await conn.queue_empty.wait()
            if self._resend is not None:
                await asyncio.shield(self._resend)

        async def synced_or_unreachable() -> None:
            done = asyncio.ensure_future(synced())
            lost = asyncio.ensure_future(conn.unreachable.wait())
            try:
                await asyncio.wait({done, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                if not done.done():
                    done.cancel()
            if not done.done() or done.cancelled():
                raise RelayUnavailable("the relay stopped answering before this device was "
                                       "brought up to date", reason="it stopped answering")
            done.result()

        await self._until(synced_or_unreachable() if unreachable else synced(), timeout)

    async def _until(self, waiting: Awaitable[object], timeout: float) -> None:
        """Wait for ``waiting`` unless the connection stops first (then raise why)."""
        stopped = self.hub.connected().stopped
        task: asyncio.Future[Any] = asyncio.ensure_future(waiting)
        either: set[asyncio.Future[Any]] = {task, stopped}
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()
        if task.done() and not task.cancelled():
            task.result()
            return
        if stopped.done():
            if self.wiped is not None:
                raise DeviceWiped(self.wiped.revoked_at)
            raise stopped.result()
        raise TimeoutError

    async def _watch_connection(self) -> None:
        conn = self.hub.connected()
        while not conn.stopped.done():
            if not await conn.wait_or_stopped(conn.connected):  # connected again, or stopped
                break
            await self.hub.emit(StatusEvent("connected"))
            # What this run kept in the outbox while the relay was out of reach goes now, not
            # at the next start: a desktop or a record gateway runs for days
            # (docs/PROTOCOL.md §3.5 "Outbox"). Only this run's own (Sender.kept_sends).
            if self._resend is None or self._resend.done():
                with contextlib.suppress(VaultLocked):  # locked: the next start resends them
                    self._resend = self.hub.spawn(
                        self._resend_pending(self.sender.kept_sends()), "client-resend")
            # An "I'm on it" an earlier run kept in the vault (clients/sdk/memory.py) goes now.
            with contextlib.suppress(VaultLocked):
                self.receiver.resend_acknowledgements()
            with contextlib.suppress(VaultLocked):  # delivered and read receipts kept
                self.receiver.resend_receipts()
            if self.fetch_images:
                self.hub.spawn(self.receiver.fetch_missing_images(), "client-fetch-images")
            # While this client was not connected, another program of this device (a
            # `lightbox send` beside `lightbox watch`) may have held the connection and stored
            # what the relay had for the device: told now, once the backlog is in.
            self.hub.spawn(self._tell_stored_elsewhere(conn), "client-stored-elsewhere")
            # Connection exposes no "disconnected" event; a tenth of a second is fine for a UI.
            while conn.connected.is_set() and not conn.stopped.done():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            if not conn.stopped.done():
                code, _ = conn.last_close
                await self.hub.emit(StatusEvent(
                    "disconnected",
                    "another connection of this device has the relay connection for now"
                    if code == CloseCode.SESSION_REPLACED
                    else "reconnecting to the relay", close_code=code))
                if code == CloseCode.SESSION_REPLACED:
                    await self._tell_unreachable(conn)
        stopped = conn.stopped.result()
        await self.hub.emit(StatusEvent("stopped", str(stopped), close_code=stopped.code))

    async def _tell_unreachable(self, conn: Connection) -> None:
        """Made way for another program of this device (4003): when its first try to connect
        again fails (the relay out of reach meanwhile), the connection is told lost, at once,
        as one lost while connected is (``disconnected`` without a close code), rather than
        left to read as still paused until the relay is back."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(conn.connected.wait()),
                                            asyncio.ensure_future(conn.unreachable.wait())]
        try:
            await asyncio.wait([*waits, conn.stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if conn.unreachable.is_set() and not conn.connected.is_set() \
                and not conn.stopped.done():
            await self.hub.emit(StatusEvent("disconnected", "reconnecting to the relay"))

    async def _tell_stored_elsewhere(self, conn: Connection) -> None:
        """Once the relay's backlog is in (a delivery the other program stored but had not
        acknowledged comes again, and is recognised as stored), emit the messages another
        program of this device stored meanwhile (clients/sdk/receiving.py), and the escalation
        steps it noted. The relay drops an escalation notice once written to a connection, so
        one written to the other program as it closed (the step that says at once that nobody
        is on call, in the transaction of the consult it sent: docs/PROTOCOL.md §16.4) is
        asked of the relay for the threads it sent to."""
        await conn.wait_or_stopped(conn.queue_empty)
        if conn.connected.is_set():
            with contextlib.suppress(VaultLocked):
                sent_to = await self.receiver.tell_stored_elsewhere()
                for step in self.memory.steps_noted_elsewhere():  # escalation steps too
                    await self.hub.emit(step)
                for thread_id in sorted(sent_to):
                    await self._steps_of_sent(thread_id)

    async def _steps_of_sent(self, thread_id: str) -> None:
        """The relay's escalation steps of a thread this device sent to, each told once."""
        # None when out of reach, or the thread no longer ours: the next step comes anyway.
        for step in await self.thread_escalation_steps(thread_id):
            if self.memory.note_step(step):
                await self.hub.emit(step)

    # -- events ------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[ClientEvent]:
        return self.hub.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[ClientEvent]) -> None:
        self.hub.unsubscribe(queue)

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Every event from now on (``async for event in client.events()``)."""
        queue = self.hub.subscribe()
        try:
            while True:
                yield await queue.get()
        finally:
            self.hub.unsubscribe(queue)

    def on_event(self, callback: Callable[[ClientEvent], Awaitable[None] | None]) -> None:
        self.hub.on_event(callback)

    # -- people and trust --------------------------------------------------------------------

    async def revocations(self, *, force: bool = False) -> certs.RevocationSet:
        """The newest verified revocation list of our organisation (clients/sdk/trust.py)."""
        return await self.trust.revocations(force=force)

    async def person(self, user_id: str) -> certs.UserCertificate:
        """A colleague's user certificate from the key directory, verified against the pinned
        organisation key and the revocation list (their name, roles and specialty)."""
        return await self.trust.person(user_id)

    async def record_gateways(self, user_ids: Iterable[str]) -> set[str]:
        """Those of ``user_ids`` whose verified certificate is the organisation's record
        gateway's (a service account with the ``record_gateway`` role): its messages answer a
        consult, they are not one to say "I'm on it" to. One whose certificate cannot be had
        now is not counted (and asked again next time). Each sender's certificate is fetched
        once a run: ``inbox`` and ``watch`` ask for every message they print."""
        wanted = set(user_ids)
        for user_id in wanted - self._gateway_of.keys():
            with contextlib.suppress(SDKError, ProtocolError):
                self._gateway_of[user_id] = (await self.person(user_id)).is_record_gateway
        return {u for u in wanted if self._gateway_of.get(u)}

    def display_name(self, user_id: str) -> str:
        """The name on ``user_id``'s verified certificate (learnt in this run or an earlier
        one, from the vault); a shortened id only for someone never verified, see
        :meth:`ensure_names`."""
        return self.memory.display_name(user_id)

    def knows_name(self, user_id: str) -> bool:
        return self.memory.knows_name(user_id)

    async def ensure_names(self, user_ids: Iterable[str]) -> None:
        """Learn the display name of each user not yet known (clients/sdk/trust.py)."""
        self.memory.restore()
        await self.trust.ensure_names(user_ids, self.memory.knows_name)

    async def resolve_user(self, query: str) -> api.DirectoryEntry:
        """One colleague by login (exact match first), user id, or a search matching one
        person (clients/sdk/people.py)."""
        return await people.resolve_user(self.relay, query)

    # -- threads -----------------------------------------------------------------------------

    async def create_thread(self, users: Sequence[str] = (), roles: Sequence[str] = (),
                            priority: Priority = Priority.ROUTINE) -> api.ThreadInfo:
        """A new consult thread with these user ids and roles (we are always in it)."""
        return await self.thread_book.create(users, roles, priority)

    async def threads(self) -> list[api.ThreadInfo]:
        """My threads from the relay (urgent first, then newest activity)."""
        return await self.thread_book.fetch()

    def cached_threads(self) -> list[api.ThreadInfo]:
        return self.thread_book.cached()

    def unread_messages(self, thread_id: str) -> list[MessageView]:
        """The one definition of unread, for every client: messages from others that this
        device holds and has not marked read (``lightbox threads``, ``lightbox inbox`` and
        the desktop count these; the relay's own counter also counts our own messages). The
        user's own messages never count, whichever of their devices sent them."""
        me = self.user_id
        # A consult handed over in several copies (docs/PROTOCOL.md §16.4) counts once, and
        # not at all once any copy of it was read.
        return [v for v in self.thread_messages(thread_id)
                if not v.message.outgoing and v.message.sender_user_id != me
                and not any(m.read for m in (v.message, *v.copies))]

    def unread(self, thread_id: str) -> int:
        return len(self.unread_messages(thread_id))

    # -- sending (clients/sdk/sending.py) ----------------------------------------------------

    @staticmethod
    def pending_body(record: OutboxRecord) -> Body:
        """The body of a pending send, as the user wrote it (for listing it)."""
        return Sender.pending_body(record)

    # -- receiving (clients/sdk/receiving.py, clients/sdk/notices.py) -------------------------

    async def mark_read(self, thread_id: str) -> int:
        """Mark every unread message of a thread read: vault, signed ``read`` receipts to the
        senders, and the relay's unread counter. Returns how many were unread."""
        return await self.receiver.mark_read(thread_id)

    async def acknowledge(self, message_id: str, *, wait: float = 0.0) -> bool:
        """"I'm on it": a signed ``acknowledged`` receipt to the sender. True once it has gone
        to the relay, waiting up to ``wait`` seconds while connected; False when it waits on
        this device for the relay (sent as soon as this client is connected again, and shown
        meanwhile as ``acknowledgement_waiting``). The relay's refusal comes later, as an
        :class:`AcknowledgementEvent` ``refused``. The other copies of a consult handed over
        in several (:meth:`thread_messages`) are acknowledged with it: each copy's sender
        device is told."""
        sent = await self.receiver.acknowledge(message_id)
        for copy in self._copies_of(message_id):
            if not copy.outgoing and copy.sender_user_id != self.user_id:
                await self.receiver.acknowledge(copy.message_id)
        connection = self.hub.connection
        if wait > 0 and connection is not None and connection.connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await sent.wait()
        return sent.is_set()

    async def fetch_missing_images(self) -> None:
        """Fetch every image of a stored message that is not in the vault yet."""
        await self.receiver.fetch_missing_images()

    def image(self, attachment_id: str) -> bytes:
        """The decrypted image bytes, from the vault (ImageShredded after expiry)."""
        return self.vault.get_image(attachment_id).data

    async def maintain_prekeys(self) -> None:
        """Rotate the signed prekey when due and delete old ones (clients/sdk/prekeys.py)."""
        await rotate_signed_prekey(self.relay, self.store, self.prekey_policy,
                                   now=int(self._clock()))

    async def _prekey_upkeep(self, unanswered: bool) -> None:
        # The connection's reconnects when the relay last did not answer (-1: before it first
        # connected); None: it answered.
        missed = -1 if unanswered else None
        while True:
            if missed is not None and not await after_outage(self.hub.connected(), missed):
                return  # the connection ended: the application says why
            try:
                await self.maintain_prekeys()
                missed = None
            except RelayRequestError as exc:
                if exc.code in CUT_OFF:
                    # Not a failure of the upkeep: the relay has ended this device's or user's
                    # access (suspended, revoked), and the connection hears it too, as its
                    # close (4004, 4005: docs/PROTOCOL.md §3.4), which the application is
                    # told as the client's end (StatusEvent "stopped", ConnectionStopped):
                    # the CLI's one sentence, the desktop's page. Logged for the record only,
                    # and nothing more to keep up.
                    log.info("signed prekey upkeep stopped: the relay refused this device "
                             "(%s)", exc.code, extra={"code": exc.code})
                    return
                log.warning("signed prekey upkeep failed: %s", exc)
            except RelayUnavailable as exc:
                # An outage is the application's to say (watch's line, the desktop's bar): the
                # upkeep tries again once connected again, and warns if it still fails then.
                log.log(logging.INFO if missed is None else logging.WARNING,
                        "signed prekey upkeep failed: %s", exc)
                missed = self.hub.connected().reconnects
                continue
            except SessionEnded:  # only the user can sign in again; the connection says so
                return
            except VaultLocked:  # the device state is in the locked vault: the next start
                return
            await asyncio.sleep(PREKEY_UPKEEP_INTERVAL)

    async def replenish_prekeys(self, count: int) -> None:
        """Make ``count`` one-time prekeys, keep their secrets first, then upload them."""
        await self.notices.replenish_prekeys(count)

    def consent_withdrawn_at(self, consent_id: str) -> int | None:
        """When the consent was withdrawn, as this device knows (None: not that it knows)."""
        return self.vault.consent_withdrawals().get(consent_id)

    async def refresh_consents(self, consent_ids: Sequence[str]) -> dict[str, int]:
        """Ask the relay whether these consents were withdrawn (clients/sdk/notices.py)."""
        return await self.notices.refresh_consents(consent_ids)

    # -- views for applications --------------------------------------------------------------

    def body(self, message: VaultMessage) -> Body | None:
        """The decoded body of a stored message (None when unreadable or empty)."""
        return body_of(message)

    def image_status(self, attachment_id: str) -> ImageStatus:
        return self.memory.image_status(attachment_id)

    def authorship(self, message: VaultMessage, body: Body) -> Authorship:
        """Who wrote a message and when, a consult handed over at a shift change included
        (its original author and time, checked against the original when this device holds
        it, its content too: clients/sdk/handover.py, docs/PROTOCOL.md §16.4)."""
        def held(message_id: str) -> tuple[VaultMessage, Body | None] | None:
            try:
                original = self.vault.message(message_id)
            except ItemNotFound:
                return None
            return original, body_of(original)
        return authorship(message, body, held)

    def view(self, message: VaultMessage) -> MessageView:
        return self.memory.view(message)

    def escalation_steps(self, message_id: str) -> tuple[EscalationEvent, ...]:
        """The on-call escalation steps of a consult this device heard of, in order
        (docs/PROTOCOL.md §16), also of one it does not hold."""
        return self.memory.escalation_steps(message_id)

    async def verified_receipts(self, thread_id: str, message_id: str | None = None
                                ) -> list[api.ReceiptInfo]:
        """The receipts the relay keeps of a thread's messages (of ``message_id`` alone when
        given; ``GET
        /v1/threads/{id}/receipts``, docs/PROTOCOL.md §16.6), each only when its signed
        statement verifies against its device's certificate chain and says what the relay's
        row says (message, kind: PROTOCOL §8): the relay, which cannot sign as a device, cannot
        make a device look as if it acknowledged, nor turn its ``delivered`` into
        ``acknowledged``. RelayRequestError or RelayUnavailable when the relay cannot be
        asked."""
        kept = []
        for r in (await self.relay.thread_receipts(thread_id, message_id)).receipts:
            try:
                chain = await self.trust.device_chain(r.user_id, r.device_id)
                body = statements.verify_receipt_statement(
                    r.statement, chain.verified.signing_key, device_id=r.device_id)
            except (ProtocolError, SDKError):
                continue  # not that device's: left out
            if body.message_id == r.message_id and body.kind.value == r.kind:
                kept.append(r)
        return kept

    def never_here(self, view: MessageView, receipts: Sequence[api.ReceiptInfo]) -> set[str]:
        """The shredded images of a received message whose expiry this device applied before
        the message itself reached it (after a reconnect the relay sends orders before
        deliveries, docs/PROTOCOL.md §15), so never shown here: the tombstone is no newer than
        this device's ``delivered`` receipt of the message among ``receipts`` (the relay's,
        :meth:`verified_receipts`; both times are this device's clock); all of them when that
        receipt is not there yet (the message came in this run). ``lightbox inbox``, ``watch``
        and the desktop say them alike."""
        shredded = [i.attachment_id for i in view.images if i.state == "shredded"]
        if view.message.outgoing or not shredded:
            return set()
        arrived = [r.at for r in receipts if r.message_id == view.message.message_id
                   and r.device_id == self.device_id and r.kind == "delivered"]
        if not arrived:
            return set(shredded)
        return {aid for aid in shredded
                if (tomb := self.vault.tombstone(aid)) is not None
                and int(tomb.shredded_at) <= min(arrived)}

    async def thread_escalation_steps(self, thread_id: str) -> list[EscalationEvent]:
        """Every on-call escalation step of a thread's consults as the relay has them now
        (``GET /v1/threads/{id}/escalations``, docs/PROTOCOL.md §16.3), in the order they
        happened (by time, then step); [] when the relay cannot be asked (out of reach, or the
        thread no longer this user's). Unlike :meth:`escalation_steps` (what this device
        heard), it asks the relay and notes nothing."""
        try:
            answer = await self.relay.thread_escalations(thread_id)
        except (RelayRequestError, RelayUnavailable):
            return []
        return sorted((EscalationEvent(thread_id, e.message_id, s.kind, s.step, s.level,
                                       s.user_id, s.at, s.next_shift_at)
                       for e in answer.escalations for s in e.steps),
                      key=lambda s: (s.at, s.step))

    def thread_messages(self, thread_id: str) -> list[MessageView]:
        """The thread's messages in order, a consult handed over in several copies listed once
        (the original when held, else its author's device's copy, else the first), the other
        copies in its view's ``copies`` (clients/sdk/handover.py, docs/PROTOCOL.md §16.4)."""
        return [self._consult_view(shown, hidden)
                for shown, hidden in one_per_consult(self.vault.messages(thread_id), body_of)]

    def _consult_view(self, shown: VaultMessage, hidden: tuple[VaultMessage, ...]
                      ) -> MessageView:
        view = self.view(shown)
        if not hidden:
            return view
        # "I'm on it" given to any copy is given to the consult.
        acked = view.acknowledged_by_me or any(self.view(m).acknowledged_by_me for m in hidden)
        return dataclasses.replace(view, copies=hidden, acknowledged_by_me=acked)

    def hidden_copy(self, message: VaultMessage) -> bool:
        """Whether ``message`` is a copy of a consult that :meth:`thread_messages` lists as
        another message (handed over by several devices, docs/PROTOCOL.md §16.4). Only a
        handed-over copy can be: any other message is answered without reading its thread
        (``watch`` asks of every message it prints)."""
        body = body_of(message)
        if body is None or isinstance(body.handover_of, msgspec.UnsetType):
            return False
        return any(m.message_id == message.message_id
                   for view in self.thread_messages(message.thread_id) for m in view.copies)

    def _copies_of(self, message_id: str) -> tuple[VaultMessage, ...]:
        """The other copies held of the consult ``message_id`` is a copy of (or is)."""
        with contextlib.suppress(ItemNotFound):
            message = self.vault.message(message_id)
            for view in self.thread_messages(message.thread_id):
                held = (view.message, *view.copies)
                if any(m.message_id == message_id for m in held):
                    return tuple(m for m in held if m.message_id != message_id)
        return ()
