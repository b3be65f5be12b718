"""The high-level async SDK: one object a clinician's program holds (issue 8 item 1).

:class:`LightboxClient` owns the device state (a key store or the vault, through the
:class:`~clients.sdk.keystore.DeviceStore` protocol), the pinned organisation key and the
newest organisation-signed revocation list, a :class:`~clients.sdk.http.RelayHTTP` and a
:class:`~clients.sdk.connection.Connection` (reconnect with backoff, resume from the relay's
durable queue, outbox, de-duplication through the vault).

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
:class:`StatusEvent` (defined in clients/sdk/events.py, re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import msgspec

from clients.sdk import attachments as sdk_attachments
from clients.sdk import imaging, people
from clients.sdk.connection import Connection, ConnectionStopped, DeferDelivery
from clients.sdk.errors import (
    ConsentImageMismatch,
    DeviceWiped,
    FlowError,
    RelayRequestError,
    RelayUnavailable,
    SDKError,
)
from clients.sdk.events import (
    ClientEvent,
    EscalationEvent,
    ExpiredEvent,
    FiledEvent,
    ImageEvent,
    ImageStatus,
    MessageEvent,
    MessageView,
    OutboxEvent,
    ReceiptEvent,
    SentMessage,
    StatusEvent,
    WithdrawnEvent,
)
from clients.sdk.expiry import verify_wipe_order, wipe
from clients.sdk.filing import gateway_bundles, needs_gateway
from clients.sdk.http import RelayHTTP, SingleFlight
from clients.sdk.identity import (
    forget_one_time_prekey,
    login,
    refresh_revocations,
    replenish_one_time_prekeys,
)
from clients.sdk.keystore import DeviceState, DeviceStore
from clients.sdk.socket import SendRefused, SocketClosed
from clients.sdk.timefmt import format_time
from clients.sdk.vault import (
    ImageShredded,
    ItemNotFound,
    OutboxImage,
    OutboxRecord,
    Vault,
    VaultLocked,
    VaultMessage,
)
from protocol import api, certs, statements
from protocol.attachments import AttachmentDescriptor
from protocol.body import (
    Body,
    BodyKind,
    BurnedInIdentifiers,
    ConsentFiling,
    IdentifierKind,
    RecordData,
    decode_body,
    encode_body,
)
from protocol.consent import peek_consent_token_unverified
from protocol.envelope import (
    MemorySeenSet,
    RecipientBundle,
    decode_sealed,
    encode_sealed,
    open_message,
    seal_message,
)
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.frames import (
    Accepted,
    Deliver,
    Error,
    EscalationNotice,
    ExpireOrder,
    ExpiryConfirm,
    ExpiryReason,
    FiledNotice,
    Frame,
    KeysLow,
    Receipt,
    ReceiptNotice,
    ResealRequest,
    Revoked,
    WipeConfirm,
    WipeOrder,
    Withdrawn,
    WithdrawReason,
)
from protocol.model import DeviceKind, MessageHeader, Priority, Purpose, SealedMessage

# The events and views are defined in clients/sdk/events.py and re-exported here (a literal
# list: type checkers read re-exports only from one).
__all__ = [
    "RECORD_THREAD_SUBJECT",
    "ClientEvent",
    "EscalationEvent",
    "ExpiredEvent",
    "FiledEvent",
    "ImageEvent",
    "ImageStatus",
    "LightboxClient",
    "MessageEvent",
    "MessageView",
    "OutboxEvent",
    "ReceiptEvent",
    "SentMessage",
    "StatusEvent",
    "WithdrawnEvent",
]

log = logging.getLogger("lightbox.sdk.client")

CHAIN_CACHE_SECONDS = 60.0  # a verified chain is re-fetched after this, or on a revocation
REVOCATIONS_MAX_AGE = 30.0  # seconds before the revocation list is fetched again
MAX_CLAIM = api.MAX_CLAIM_DEVICES
Progress = Callable[[int, int], None]
RECORD_THREAD_SUBJECT = "Filed to the patient's record"  # the record thread's subject line
# Kinds of the vault's notes (clients/sdk/vault.py) this client keeps across restarts.
_NOTE_ACK, _NOTE_RECEIPT, _NOTE_ESCALATION = "acknowledged", "receipt", "escalation"
_NOTE_FILED, _NOTE_NAME = "filed", "name"
_NOTE_KINDS = (_NOTE_ACK, _NOTE_RECEIPT, _NOTE_ESCALATION, _NOTE_FILED, _NOTE_NAME)
_RECEIPT_ORDER = {"delivered": 0, "read": 1, "acknowledged": 2}
RESEND_TIMEOUT = 60.0  # seconds a pending send waits for "accepted" when resent at start
# Refusals that mean the relay has cut this device or user off (not a passing failure).
_CUT_OFF = frozenset({ErrorCode.DEVICE_REVOKED.value, ErrorCode.USER_SUSPENDED.value,
                      ErrorCode.TOKEN_INVALID.value, ErrorCode.REFRESH_REUSED.value})
# Failures a pending send outlives (it stays in the outbox): the session must be renewed,
# the relay is busy or timed out. Anything else below 500 is a refusal of this message.
_PASSING_STATUS = frozenset({401, 408, 429})
_PASSING_FLOW = frozenset({ErrorCode.UNAUTHENTICATED.value, ErrorCode.NOT_READY.value})
WILL_RESEND = ("it is kept on this device and sent again the next time this device connects "
               "(lightbox inbox, watch or send; the desktop when it starts)")


@dataclasses.dataclass
class _Chain:
    verified: certs.VerifiedDevice
    user_certificate: str
    at: float


def _flow(exc: ProtocolError, message: str) -> FlowError:
    reason = getattr(exc, "reason", "") or str(exc)
    return FlowError(f"{message} ({exc.code.value}: {reason})", code=exc.code.value)


# --- the client --------------------------------------------------------------------------------


class LightboxClient:
    """A logged-in device: send, receive, receipts, images. ``async with`` starts and stops it.

    ``store`` holds the device state (an OpenKeyStore, or the vault itself); ``vault`` stores
    messages and images; ``password`` lets the client log in again when the refresh token has
    expired. ``ws_url`` defaults to the server URL with ``ws(s)://`` and ``/v1/ws``.
    """

    def __init__(
        self, store: DeviceStore, vault: Vault, *, password: str | None = None,
        relay: RelayHTTP | None = None, ws_url: str | None = None,
        clock: Callable[[], float] = time.time, backoff_base: float = 0.2,
        backoff_max: float = 10.0, fetch_images: bool = True,
    ) -> None:
        self.store, self.vault = store, vault
        self._password = password
        self._clock = clock
        st = store.state
        self.relay = relay or RelayHTTP(
            st.server_url, device=st.device_keys().signing, tokens=st.session,
            on_tokens=self._save_tokens,
            login_again=self._login_again if password is not None else None)
        base = st.server_url.rstrip("/")
        self.ws_url = ws_url or ("ws" + base[len("http"):] + "/v1/ws")
        self._backoff = (backoff_base, backoff_max)
        self.fetch_images = fetch_images
        self.connection: Connection | None = None
        self._revocations = certs.RevocationSet()
        self._revocations_at = -1e9
        self._chains: dict[str, _Chain] = {}
        self._names: dict[str, str] = {}  # from verified certificates (kept in the vault)
        self._unnamed: dict[str, float] = {}  # users ensure_names could not name, and when
        self._subscribers: list[asyncio.Queue[ClientEvent]] = []
        self._callbacks: list[Callable[[ClientEvent], Awaitable[None] | None]] = []
        self._outgoing: list[Frame] = []
        self._outgoing_changed = asyncio.Event()
        self._outgoing_sent = asyncio.Event()  # set whenever the queue has been emptied
        self._outgoing_sent.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._image_state: dict[str, tuple[str, str]] = {}
        self._filed: dict[str, FiledEvent] = {}
        self._receipts: dict[str, list[ReceiptEvent]] = {}
        self._escalations: dict[str, list[EscalationEvent]] = {}  # steps seen, per message
        self._consents_checked: dict[str, float] = {}  # consent id -> last asked the relay
        self._acked: set[str] = set()
        self._threads: dict[str, api.ThreadInfo] = {}
        self._fetch_lock = asyncio.Lock()
        self._logging_in: SingleFlight[None] = SingleFlight()
        self._restored = False  # the notes above, read back from the vault (_restore)
        self._in_flight: set[str] = set()  # outbox records being sent by this process
        self._resend: asyncio.Task[None] | None = None
        self.wiped: certs.RevocationEntry | None = None  # set once a wipe order was obeyed
        self._last_tokens: api.TokenPair | None = None  # presented once after a cut-off

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

    def _save_tokens(self, tokens: api.TokenPair) -> None:
        self.store.save(msgspec.structs.replace(self.store.state, session=tokens))

    def _session_usable(self) -> bool:
        tokens = self.relay.tokens
        return tokens is not None and tokens.refresh_expires_at > self._clock() + 60

    async def ensure_login(self) -> None:
        """Log in again (password + device signature) when there is no usable session; one
        login for all concurrent callers (clients/sdk/http.py SingleFlight)."""
        if self._session_usable():
            return
        if self._password is None:
            raise FlowError("the session has expired: log in again with your password",
                            code=ErrorCode.UNAUTHENTICATED.value)
        await self._logging_in.run(self._login)

    async def _login_again(self) -> api.TokenPair:
        """Password and device signature, when the relay ended the session (RelayHTTP calls
        it in place of a refused refresh)."""
        assert self._password is not None
        return await login(self.relay, self.store.state, self._password)

    async def _login(self) -> None:
        if self._session_usable():  # a login that finished just before this one started
            return
        assert self._password is not None
        self.relay.tokens = None
        await login(self.relay, self.store.state, self._password)

    async def _access_token(self) -> str:
        """A fresh access token (the websocket connection asks for one on each connect); a
        stale one is refreshed through the relay client's single flight, shared with the HTTP
        calls, so the same refresh token is never presented twice.

        A revoked device can neither refresh nor log in, but the relay lets it in with its
        last token, expired or not, to hear a wipe order (server/ws.py): that token is
        offered then, and the relay either orders the wipe or closes with device_revoked."""
        try:
            return await self._fresh_access_token()
        except RelayRequestError as exc:
            last = self.store.state.session
            if exc.code != ErrorCode.DEVICE_REVOKED.value or last is None:
                raise
            return last.access_token

    async def _fresh_access_token(self) -> str:
        await self.ensure_login()
        tokens = self.relay.tokens
        assert tokens is not None
        if self._clock() >= tokens.expires_at - 60:
            try:
                tokens = await self.relay.refresh_if_stale(tokens)
            except RelayRequestError as exc:  # the session ended: log in again
                if exc.code == ErrorCode.DEVICE_REVOKED.value:
                    raise  # a login would be refused the same way
                if self.relay.tokens is tokens:
                    self.relay.tokens = None
                await self.ensure_login()
                tokens = self.relay.tokens
        assert tokens is not None
        return tokens.access_token

    async def _socket_token(self) -> str:
        """The access token for the websocket. When the relay refuses this device a new one
        (revoked), the last token it was issued is presented all the same, expired or not:
        with the device key's answer to the challenge, that is how a revoked device hears its
        wipe order (docs/PROTOCOL.md §15 "Wipe"); any other revoked device is refused."""
        held = self.relay.tokens or self._last_tokens
        try:
            return await self._access_token()
        except (RelayRequestError, FlowError) as exc:
            if exc.code in _CUT_OFF and held is not None and self._last_tokens is None:
                self._last_tokens = held  # presented once
                return held.access_token
            if isinstance(exc, RelayRequestError) and exc.status >= 500:
                raise  # the connection tries again later
            # Logging in again cannot help (revoked, suspended, no password): stop.
            raise ConnectionStopped(CloseCode.DEVICE_REVOKED if exc.code in _CUT_OFF else None,
                                    exc.code) from exc

    async def start(self, *, wait_connected: float | None = None) -> None:
        """Log in if needed, fetch the revocation list, and connect (in the background).
        A device refused as revoked, or suspended, still connects, to hear a wipe order if one
        awaits it; the relay then closes the connection (4004, 4005) and the client stops."""
        try:
            await self.ensure_login()
        except RelayRequestError as exc:
            if exc.code != ErrorCode.DEVICE_REVOKED.value or self.store.state.session is None:
                raise
        try:
            await self.revocations(force=True)
        except RelayRequestError as exc:
            if exc.code not in _CUT_OFF:
                raise
        keys = self.store.state.device_keys()
        self.connection = Connection(
            self.ws_url, device_id=keys.device_id, access_token=self._socket_token,
            sign=keys.sign, on_message=self._on_deliver, on_event=self._on_frame,
            dedupe=self.vault.dedupe, backoff_base=self._backoff[0],
            backoff_max=self._backoff[1])
        pending = self.vault.outbox()  # left by an earlier run: resent once connected
        await self.connection.start()
        self._resend = self._spawn(self._resend_pending(pending), "client-resend")
        self._spawn(self._flush_outgoing(), "client-outgoing")
        self._spawn(self._watch_connection(), "client-status")
        if wait_connected is not None:
            await self._until(self.connection.connected.wait(), wait_connected)

    async def close(self, *, drain: float = 5.0) -> None:
        """Stop. Receipts and expiry confirmations still queued are sent first, for up to
        ``drain`` seconds while connected: a short run (``lightbox inbox``) that applied an
        expiry order must not exit before confirming it, or the audit would show the copy as
        not confirmed until the device's next connection (the order itself stays durable on
        the relay, so nothing is lost when the relay is out of reach)."""
        if (self.connection is not None and self.connection.connected.is_set()
                and not self._outgoing_sent.is_set()):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain):
                    await self._outgoing_sent.wait()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.connection is not None:
            await self.connection.stop()
        await self.relay.aclose()

    async def __aenter__(self) -> LightboxClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_synced(self, timeout: float = 10.0) -> None:
        """Wait until connected, the offline backlog has been received and the sends an
        earlier run left in the outbox have been resent. Raises :class:`DeviceWiped` or
        :class:`ConnectionStopped` as soon as the relay ended this device's access (not a
        timeout later), TimeoutError if the relay stayed silent."""
        assert self.connection is not None
        conn = self.connection

        async def synced() -> None:
            await conn.connected.wait()
            await conn.queue_empty.wait()
            if self._resend is not None:
                await asyncio.shield(self._resend)

        await self._until(synced(), timeout)

    async def _until(self, waiting: Awaitable[object], timeout: float) -> None:
        """Wait for ``waiting`` unless the connection stops first (then raise why)."""
        assert self.connection is not None
        stopped = self.connection.stopped
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


    # -- events ------------------------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[ClientEvent]:
        queue: asyncio.Queue[ClientEvent] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[ClientEvent]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(queue)

    async def events(self) -> AsyncIterator[ClientEvent]:
        """Every event from now on (``async for event in client.events()``)."""
        queue = self.subscribe()
        try:
            while True:
                yield await queue.get()
        finally:
            self.unsubscribe(queue)

    def on_event(self, callback: Callable[[ClientEvent], Awaitable[None] | None]) -> None:
        self._callbacks.append(callback)

    async def _emit(self, event: ClientEvent) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)
        for callback in self._callbacks:
            try:
                result = callback(event)
                if result is not None:
                    await result
            except Exception:  # an application callback must not stop the client
                log.exception("event callback failed")

    async def _watch_connection(self) -> None:
        assert self.connection is not None
        conn = self.connection
        while not conn.stopped.done():
            await conn.connected.wait()
            await self._emit(StatusEvent("connected"))
            if self.fetch_images:
                self._spawn(self.fetch_missing_images(), "client-fetch-images")
            # Connection exposes no "disconnected" event; a tenth of a second is fine for a UI.
            while conn.connected.is_set() and not conn.stopped.done():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            if not conn.stopped.done():
                await self._emit(StatusEvent("disconnected", "reconnecting to the relay"))
        stopped = conn.stopped.result()
        await self._emit(StatusEvent("stopped", str(stopped)))

    # -- trust: revocations and certificate chains --------------------------------------------

    async def revocations(self, *, force: bool = False) -> certs.RevocationSet:
        """The newest verified revocation list of our organisation (rollback-checked against
        the one kept in the device state, which is updated)."""
        if not force and self._clock() - self._revocations_at < REVOCATIONS_MAX_AGE:
            return self._revocations
        before = self.store.state.revocation_lists
        held = await refresh_revocations(self.relay, self.store)
        if self.store.state.revocation_lists != before:
            self._chains.clear()  # chains verified under the older list may now be revoked
        self._revocations, self._revocations_at = held, self._clock()
        return held

    def _verify(self, user_cert: str, device_cert: str,
                revocations: certs.RevocationSet) -> certs.VerifiedDevice:
        st = self.store.state
        try:
            return certs.verify_chain(user_cert, device_cert, trusted_orgs=st.trusted_orgs(),
                                      at=int(self._clock()), revocations=revocations)
        except ProtocolError as exc:
            raise _flow(exc, "a certificate from the relay does not verify") from exc

    async def _device_chain(self, user_id: str, device_id: str) -> _Chain:
        """A device's verified chain, from the key directory (cached briefly)."""
        cached = self._chains.get(device_id)
        if cached is not None and self._clock() - cached.at < CHAIN_CACHE_SECONDS:
            return cached
        revocations = await self.revocations()
        answer = await self.relay.user_devices(user_id)
        for bundle in answer.devices:
            verified = self._verify(answer.user_certificate, bundle.device_certificate,
                                    revocations)
            if verified.user_id != user_id:
                raise FlowError("the directory answered for another user",
                                code=ErrorCode.CERTIFICATE_INVALID.value)
            self._remember_name(user_id, verified.user.display_name)
            self._chains[verified.device_id] = _Chain(verified, answer.user_certificate,
                                                      self._clock())
        found = self._chains.get(device_id)
        if found is None or found.verified.user_id != user_id:
            raise FlowError(f"device {device_id} is not a current device of {user_id}",
                            code=ErrorCode.CERTIFICATE_INVALID.value)
        return found

    async def person(self, user_id: str) -> certs.UserCertificate:
        """A colleague's user certificate from the key directory, verified against the pinned
        organisation key and the revocation list (their name, roles and specialty)."""
        answer = await self.relay.user_devices(user_id)
        st = self.store.state
        try:
            user = certs.verify_user_certificate(
                answer.user_certificate, trusted_orgs=st.trusted_orgs(), at=int(self._clock()),
                revocations=await self.revocations())
        except ProtocolError as exc:
            raise _flow(exc, "a certificate from the relay does not verify") from exc
        if user.user_id != user_id:
            raise FlowError("the directory answered for another user",
                            code=ErrorCode.CERTIFICATE_INVALID.value)
        self._names[user_id] = user.display_name
        return user

    def display_name(self, user_id: str) -> str:
        """The name on ``user_id``'s verified certificate (learnt in this run or an earlier
        one, from the vault); a shortened id only for someone never verified, see
        :meth:`ensure_names`."""
        if user_id == self.user_id:
            return "you"
        self._restore()
        return self._names.get(user_id, user_id[:8])

    def knows_name(self, user_id: str) -> bool:
        self._restore()
        return user_id == self.user_id or user_id in self._names

    async def ensure_names(self, user_ids: Iterable[str]) -> None:
        """Learn the display name of each user not yet known, from their user certificate in
        the key directory, verified against the pinned organisation key and valid now (the
        revocation list is not consulted: a colleague revoked since still wrote what they
        wrote). Best effort: a user whose certificate cannot be fetched or verified is not
        asked for again for a while, and an unreachable relay ends the attempt."""
        self._restore()
        now = self._clock()
        for user_id in dict.fromkeys(user_ids):
            if self.knows_name(user_id) or now - self._unnamed.get(user_id, -1e9) \
                    < CHAIN_CACHE_SECONDS:
                continue
            try:
                answer = await self.relay.user_devices(user_id)
                user = certs.verify_user_certificate(
                    answer.user_certificate, trusted_orgs=self.store.state.trusted_orgs(),
                    at=int(now))
            except RelayUnavailable:
                return
            except (SDKError, ProtocolError):
                self._unnamed[user_id] = now
                continue
            if user.user_id == user_id:
                self._remember_name(user_id, user.display_name)
            else:
                self._unnamed[user_id] = now

    def _remember_name(self, user_id: str, name: str) -> None:
        """A name from a verified certificate: kept in memory and in the vault."""
        if self._names.get(user_id) != name:
            self._names[user_id] = name
            self.vault.put_note(_NOTE_NAME, user_id, name.encode())

    def _restore(self) -> None:
        """Read back what an earlier run of this device learnt (acknowledgements, receipts,
        escalation steps, filing notices, names), once the vault is open."""
        if self._restored:
            return
        try:
            notes = {kind: self.vault.notes(kind) for kind in _NOTE_KINDS}
        except VaultLocked:
            return
        self._restored = True
        self._acked |= set(notes[_NOTE_ACK])
        for raw in notes[_NOTE_RECEIPT].values():
            receipt = msgspec.msgpack.decode(raw, type=ReceiptEvent)
            seen = self._receipts.setdefault(receipt.message_id, [])
            if not any((r.device_id, r.kind) == (receipt.device_id, receipt.kind)
                       for r in seen):
                seen.append(receipt)
        for raw in notes[_NOTE_ESCALATION].values():
            step = msgspec.msgpack.decode(raw, type=EscalationEvent)
            steps = self._escalations.setdefault(step.message_id, [])
            if step not in steps:
                steps.append(step)
        for key, raw in notes[_NOTE_FILED].items():
            self._filed.setdefault(key, msgspec.msgpack.decode(raw, type=FiledEvent))
        for user_id, raw in notes[_NOTE_NAME].items():
            self._names.setdefault(user_id, raw.decode())

    def unread_messages(self, thread_id: str) -> list[MessageView]:
        """The one definition of unread, for every client: messages from others that this
        device holds and has not marked read (``lightbox threads``, ``lightbox inbox`` and
        the desktop count these; the relay's own counter also counts our own messages)."""
        return [self.view(m) for m in self.vault.messages(thread_id, unread_only=True)
                if not m.outgoing]

    def unread(self, thread_id: str) -> int:
        return len(self.unread_messages(thread_id))

    # -- threads -----------------------------------------------------------------------------

    async def resolve_user(self, query: str) -> api.DirectoryEntry:
        """One colleague by login (exact match first), user id, or a search matching one
        person (clients/sdk/people.py)."""
        return await people.resolve_user(self.relay, query)

    async def create_thread(self, users: Sequence[str] = (), roles: Sequence[str] = (),
                            priority: Priority = Priority.ROUTINE) -> api.ThreadInfo:
        """A new consult thread with these user ids and roles (we are always in it)."""
        info = await self.relay.create_thread(api.ThreadCreate(
            thread_id=str(uuid.uuid4()), users=list(users), roles=list(roles),
            priority=priority.value))
        self._threads[info.thread_id] = info
        return info

    async def threads(self) -> list[api.ThreadInfo]:
        """My threads from the relay (urgent first, then newest activity)."""
        found = (await self.relay.threads()).threads
        for t in found:
            self._threads[t.thread_id] = t
        return sorted(found, key=lambda t: (t.priority != "urgent", -t.last_seq, -t.created_at))

    def cached_threads(self) -> list[api.ThreadInfo]:
        return list(self._threads.values())

    # -- sending -----------------------------------------------------------------------------

    async def _recipients(self, thread_id: str) -> list[RecipientBundle]:
        """Every current participant device but ours, each chain and prekey verified."""
        answer = await self.relay.thread_recipients(thread_id)
        revocations = await self.revocations()
        devices: dict[str, certs.VerifiedDevice] = {}
        for user in answer.users:
            for bundle in user.devices:
                verified = self._verify(user.user_certificate, bundle.device_certificate,
                                        revocations)
                self._remember_name(verified.user_id, verified.user.display_name)
                self._chains[verified.device_id] = _Chain(verified, user.user_certificate,
                                                          self._clock())
                if verified.device_id != self.device_id:
                    devices[verified.device_id] = verified
        if not devices:
            raise FlowError("nobody else in this thread has a device that can receive it",
                            code=ErrorCode.DEVICE_SET_MISMATCH.value)
        wanted = sorted(devices)
        bundles: dict[str, RecipientBundle] = {}
        for i in range(0, len(wanted), MAX_CLAIM):
            claimed = await self.relay.claim_keys(wanted[i:i + MAX_CLAIM])
            for key in claimed.keys:
                known = devices.get(key.device_id)
                if known is None:
                    raise FlowError("the relay answered for a device we did not ask for",
                                    code=ErrorCode.CERTIFICATE_INVALID.value)
                verified = self._verify(key.user_certificate, key.device_certificate,
                                        revocations)
                if verified.device != known.device:
                    raise FlowError("the relay served two different certificates for one "
                                    "device", code=ErrorCode.CERTIFICATE_INVALID.value)
                try:
                    bundles[key.device_id] = RecipientBundle.from_tokens(
                        verified, key.signed_prekey, key.one_time_prekey)
                except ProtocolError as exc:
                    raise _flow(exc, "a claimed prekey does not verify") from exc
        missing = set(wanted) - set(bundles)
        if missing:
            raise FlowError(f"no prekeys for {len(missing)} recipient devices",
                            code=ErrorCode.DEVICE_SET_MISMATCH.value)
        return [bundles[d] for d in wanted]

    # -- the outbox: every send is kept in the vault until the relay stored it ----------------

    def _new_send(self, thread_id: str, body: Body, *, purpose: Purpose, priority: Priority,
                  consent_id: str | None = None, attachment_ids: Sequence[str] = (),
                  necessity: str | None = None, image: OutboxImage | None = None
                  ) -> OutboxRecord:
        """Write a new send to the vault's outbox, before anything of it leaves the device."""
        if self.connection is None:
            raise FlowError("the client is not started", code=ErrorCode.NOT_READY.value)
        record = OutboxRecord(
            message_id=str(uuid.uuid4()), thread_id=thread_id, created_at=self._clock(),
            purpose=purpose.value, priority=priority.value, body=msgspec.msgpack.encode(body),
            consent_id=consent_id, necessity=necessity, attachment_ids=tuple(attachment_ids),
            image=image, stage="upload" if image is not None else "seal")
        self.vault.put_outbox(record)
        return record

    async def _send_body(
        self, thread_id: str, body: Body, *, purpose: Purpose, priority: Priority,
        consent_id: str | None = None, attachment_ids: Sequence[str] = (),
        necessity: str | None = None, timeout: float | None = 60.0,
    ) -> tuple[SentMessage, MessageHeader]:
        encode_body(body)  # an invalid body fails before anything is kept or sent
        record = self._new_send(thread_id, body, purpose=purpose, priority=priority,
                                consent_id=consent_id, attachment_ids=attachment_ids,
                                necessity=necessity)
        return await self._deliver(record, timeout=timeout)

    @staticmethod
    def pending_body(record: OutboxRecord) -> Body:
        """The body of a pending send, as the user wrote it (for listing it)."""
        try:
            return msgspec.msgpack.decode(record.body, type=Body)
        except msgspec.DecodeError:
            return Body(text="(unreadable message)")

    def pending_sends(self) -> list[OutboxRecord]:
        """Sends this device has not yet seen stored by the relay (oldest first): resent on
        the next start (docs/PROTOCOL.md §3.5 "Outbox")."""
        return self.vault.outbox()

    async def _deliver(self, record: OutboxRecord, *, timeout: float | None,
                       progress: Progress | None = None) -> tuple[SentMessage, MessageHeader]:
        """Upload (if an image), seal and send a pending send until the relay stores it.

        Kept in the outbox (and RelayUnavailable raised) when the relay cannot be reached,
        does not answer in time, or the session must be renewed first; removed (and the error
        raised) when it is refused for good: a refusal that will not change on a resend, or a
        check on this device that failed (a certificate that does not verify)."""
        self._in_flight.add(record.message_id)
        try:
            try:
                record = await self._upload_pending(record, progress)
                accepted, record = await self._seal_and_send(record, timeout)
            except RelayRequestError as exc:
                if exc.status >= 500 or exc.status in _PASSING_STATUS:
                    raise RelayUnavailable(f"the relay did not take it now ({exc.code}): "
                                           f"{WILL_RESEND}") from exc
                self.vault.drop_outbox(record.message_id)
                raise
            except RelayUnavailable as exc:
                raise RelayUnavailable(f"{exc}: {WILL_RESEND}") from exc
            except FlowError as exc:
                if exc.code in _PASSING_FLOW:  # log in again / start the client: then sent
                    raise RelayUnavailable(f"{exc}: {WILL_RESEND}") from exc
                self.vault.drop_outbox(record.message_id)
                raise
            except (SDKError, ProtocolError):
                self.vault.drop_outbox(record.message_id)
                raise
            return self._stored(record, accepted), decode_sealed(record.sealed).header
        finally:
            self._in_flight.discard(record.message_id)

    async def _upload_pending(self, record: OutboxRecord,
                              progress: Progress | None) -> OutboxRecord:
        """Upload the image of a pending send (resuming an upload the relay still holds,
        else starting again) and put its descriptor in the body."""
        img = record.image
        if img is None or img.uploaded:
            return record
        relay = self.relay if progress is None else cast(
            RelayHTTP, _ProgressRelay(self.relay, len(img.ciphertext), progress))
        attachment_id = img.attachment_id
        if attachment_id is not None:
            try:
                await self.relay.upload_status(attachment_id)
            except RelayRequestError as exc:
                if exc.status >= 500:
                    raise
                attachment_id = None  # gone (expired, or never finished): start again
        if attachment_id is None:
            attachment_id = (await self.relay.create_upload(len(img.ciphertext))).attachment_id
            img = msgspec.structs.replace(img, attachment_id=attachment_id)
            record = msgspec.structs.replace(record, image=img)
            self.vault.put_outbox(record)
        await sdk_attachments.upload(relay, img.ciphertext, attachment_id=attachment_id)
        descriptor = AttachmentDescriptor(
            attachment_id=attachment_id, key=img.key, sha256=img.sha256, size=img.size,
            media_type=img.media_type, width=img.width, height=img.height)
        flagged = [BurnedInIdentifiers(attachment_id=attachment_id,
                                       kinds=[IdentifierKind(k) for k in img.burned_in])
                   ] if img.burned_in else []
        body = msgspec.structs.replace(msgspec.msgpack.decode(record.body, type=Body),
                                       attachments=[descriptor], burned_in_identifiers=flagged)
        record = msgspec.structs.replace(
            record, body=encode_body(body), attachment_ids=(attachment_id,), stage="seal",
            image=msgspec.structs.replace(img, uploaded=True, ciphertext=b""))
        self.vault.put_outbox(record)
        return record

    async def _seal(self, record: OutboxRecord) -> tuple[OutboxRecord, SealedMessage]:
        """Seal the pending send for the thread's current devices (verified), same id."""
        from clients.sdk.external import apply_external

        body = msgspec.msgpack.decode(record.body, type=Body)
        purpose, priority = Purpose(record.purpose), Priority(record.priority)
        recipients = await self._recipients(record.thread_id)
        if needs_gateway(purpose, len(record.attachment_ids)):
            # Issue 7: images for direct care are also sealed to the organisation's record
            # gateway(s), verified like any recipient (clients/sdk/filing.py).
            known = {r.device.device_id for r in recipients}
            gateways = await gateway_bundles(
                self.relay, trusted_orgs=self.store.state.trusted_orgs(),
                revocations=await self.revocations())
            recipients += [g for g in gateways if g.device.device_id not in known]
        # Issue 10 item 3: recipients in another organisation (from their verified
        # certificates) need the sealed clinical-necessity statement and the header flag.
        body, external = apply_external(
            body, sender_org=self.store.state.org_id, necessity=record.necessity,
            purpose=purpose, recipient_orgs=[r.device.user.org_id for r in recipients])
        plain = encode_body(body)
        header = MessageHeader(
            v=1, message_id=record.message_id, thread_id=record.thread_id,
            sender_user_id=self.user_id, sender_device_id=self.device_id,
            sent_at=int(self._clock()), purpose=purpose, priority=priority,
            consent_id=record.consent_id, attachment_ids=list(record.attachment_ids),
            recipient_devices=[r.device.device_id for r in recipients], external=external)
        sealed: SealedMessage = await asyncio.to_thread(
            seal_message, header, plain, sender=self.store.state.device_keys(),
            recipients=recipients)
        record = msgspec.structs.replace(record, stage="send", sealed=encode_sealed(sealed),
                                         content=plain, attempts=record.attempts + 1)
        return record, sealed

    async def _seal_and_send(self, record: OutboxRecord,
                             timeout: float | None) -> tuple[Accepted, OutboxRecord]:
        if record.sealed:
            # A resend: the very bytes that may already be on the relay go first, so a
            # message it stored is answered as a duplicate (docs/PROTOCOL.md "Send").
            try:
                return await self._send_sealed(decode_sealed(record.sealed), timeout), record
            except SendRefused as refused:
                if refused.code != ErrorCode.DEVICE_SET_MISMATCH.value:
                    raise FlowError(f"the relay refused the message: {refused.detail}",
                                    code=refused.code) from refused
                # Not stored (a stored one is answered first): seal again, same message id.
        for attempt in range(2):
            record, sealed = await self._seal(record)
            self.vault.put_outbox(record)  # the bytes are kept before they go on the wire
            try:
                return await self._send_sealed(sealed, timeout), record
            except SendRefused as refused:
                if refused.code == ErrorCode.DEVICE_SET_MISMATCH.value and attempt == 0:
                    continue  # someone joined or left: fetch the recipients again, once
                raise FlowError(f"the relay refused the message: {refused.detail}",
                                code=refused.code) from refused
        raise AssertionError("unreachable")

    async def _send_sealed(self, sealed: SealedMessage, timeout: float | None) -> Accepted:
        assert self.connection is not None
        try:
            async with asyncio.timeout(timeout):
                return await self.connection.send(sealed)
        except TimeoutError as exc:
            raise RelayUnavailable("the relay did not confirm the message in time") from exc
        except ConnectionStopped as exc:
            raise FlowError(f"this device can no longer send: {exc}",
                            code=ErrorCode.DEVICE_REVOKED.value) from exc

    def _stored(self, record: OutboxRecord, accepted: Accepted) -> SentMessage:
        """The relay stored it: keep the sent message (and image) and empty the slot."""
        body = decode_body(record.content)
        self.vault.put_message(VaultMessage(
            message_id=record.message_id, thread_id=record.thread_id,
            sender_user_id=self.user_id, sender_device_id=self.device_id,
            sent_at=float(record.created_at), body=body.text,
            attachment_ids=record.attachment_ids, priority=record.priority,
            purpose=record.purpose, read=True, content=record.content, outgoing=True,
            thread_seq=accepted.thread_seq))
        img = record.image
        if img is not None and img.attachment_id is not None:
            with contextlib.suppress(ImageShredded):
                self.vault.put_image(img.attachment_id, img.data, media_type=img.media_type,
                                     width=img.width, height=img.height,
                                     thread_id=record.thread_id, message_id=record.message_id)
        self.vault.drop_outbox(record.message_id)
        return SentMessage(record.message_id, record.thread_id, accepted.thread_seq,
                           record.attachment_ids, tuple(body.quality_warnings))

    async def _resend_pending(self, records: list[OutboxRecord]) -> None:
        """Resend what an earlier run left in the outbox, oldest first, once connected."""
        assert self.connection is not None
        if not records:
            return
        await self.connection.connected.wait()
        for record in records:
            if record.message_id in self._in_flight:
                continue
            try:
                sent, _ = await self._deliver(record, timeout=RESEND_TIMEOUT)
            except RelayUnavailable as exc:
                await self._emit(OutboxEvent(record.message_id, record.thread_id, "pending",
                                             str(exc)))
                return  # the relay is gone again: the next start tries again
            except (SDKError, ProtocolError) as exc:
                code = exc.code.value if isinstance(exc, ProtocolError) else getattr(
                    exc, "code", "")
                detail = f"{code}: {exc}" if code and not str(exc).startswith(code) else \
                    str(exc)
                await self._emit(OutboxEvent(record.message_id, record.thread_id, "refused",
                                             detail))
                continue
            await self._emit(OutboxEvent(record.message_id, record.thread_id, "sent",
                                         thread_seq=sent.thread_seq))

    async def send_text(
        self, thread_id: str, text: str, *, priority: Priority | None = None,
        purpose: Purpose = Purpose.DIRECT_CARE, reply_to: str | None = None,
        subject: str | None = None, necessity: str | None = None,
        consent_id: str | None = None, timeout: float | None = 60.0,
    ) -> SentMessage:
        """Seal ``text`` for every current participant device and send it; returns once the
        relay has stored it durably. ``necessity``: the clinical-necessity statement, required
        when a recipient is in another organisation (clients/sdk/external.py). ``consent_id``: the
        registered consent a text outside direct care is sent under (the relay refuses such a
        message without one: ``consent_missing``, PROTOCOL §13)."""
        prio = priority or self._thread_priority(thread_id)
        sent, _ = await self._send_body(
            thread_id, Body(text=text, reply_to=reply_to, subject=subject), purpose=purpose,
            priority=prio, necessity=necessity, consent_id=consent_id, timeout=timeout)
        return sent

    def _thread_priority(self, thread_id: str) -> Priority:
        info = self._threads.get(thread_id)
        return Priority(info.priority) if info is not None else Priority.ROUTINE

    async def send_image(
        self, thread_id: str, image: imaging.SanitisedImage, *, consent_token: str,
        text: str = "", record: RecordData | None = None,
        purpose: Purpose = Purpose.DIRECT_CARE, priority: Priority | None = None,
        warnings: Sequence[str] = (), subject: str | None = None,
        progress: Progress | None = None, necessity: str | None = None,
        timeout: float | None = 120.0, burned_in: Sequence[IdentifierKind] = (),
    ) -> SentMessage:
        """Send a sanitised image (:func:`clients.sdk.imaging.prepare_image`) under a registered
        consent token that names it: encrypt (worker thread), upload resumably, seal the
        descriptor (with its key) in the body. ``burned_in``: the kinds of patient identifier
        the image still shows (``phi.identifier_kinds``), told to the recipient
        in the sealed body. The sender keeps a copy in the vault."""
        from clients.sdk.consent import DEIDENTIFIED_PURPOSES, ensure_sendable, image_hash

        if record is not None and purpose in DEIDENTIFIED_PURPOSES:
            # Issue 10 item 4: a de-identified share never carries the patient's identity;
            # the record gets the identified original through file_image.
            raise FlowError(f"patient data never goes with an image shared for {purpose}: "
                            "file the original in the record instead",
                            code=ErrorCode.VALIDATION_FAILED.value)
        try:
            claims = peek_consent_token_unverified(consent_token)
        except ProtocolError as exc:
            raise _flow(exc, "the consent token is malformed") from exc
        ensure_sendable(claims, purpose, [image_hash(image.data)])
        encrypted = await sdk_attachments.encrypt(image.data)
        # The descriptor (with the key) goes into the body once the upload is finished, with
        # the identifiers flagged for that attachment.
        body = Body(text=text, consent_token=consent_token, record=record,
                    quality_warnings=list(warnings), subject=subject)
        pending = self._new_send(
            thread_id, body, purpose=purpose,
            priority=priority or self._thread_priority(thread_id), consent_id=claims.jti,
            necessity=necessity, image=OutboxImage(
                data=image.data, media_type=image.media_type, width=image.width,
                height=image.height, key=encrypted.key, sha256=encrypted.sha256,
                size=encrypted.size, ciphertext=encrypted.ciphertext,
                burned_in=[k.value for k in dict.fromkeys(burned_in)]))
        sent, _ = await self._deliver(pending, timeout=timeout, progress=progress)
        return sent

    async def file_consent(self, consent_token: str, record: RecordData, *,
                           wait: float | None = None) -> tuple[SentMessage, ConsentFiling | None]:
        """File a consent that goes with no image (issue 10 item 1: "a refusal is filed as
        well, without images") in the patient's record: seal the token with the patient's
        record data to the organisation's record gateway(s), in this user's record thread
        (a thread whose only other members are the gateways, found or made once). With
        ``wait``, also wait that many seconds for the gateway's ``consent_filed`` receipt
        (None when it has not answered by then; it files later and the receipt arrives in
        the thread)."""
        try:
            claims = peek_consent_token_unverified(consent_token)
        except ProtocolError as exc:
            raise _flow(exc, "the consent token is malformed") from exc
        thread_id, subject = await self._record_thread()
        queue = self.subscribe()
        try:
            sent, _ = await self._send_body(
                thread_id, Body(kind=BodyKind.CONSENT_RECORD, consent_token=consent_token,
                                record=record, subject=subject),
                purpose=Purpose.DIRECT_CARE, priority=Priority.ROUTINE)
            if not wait:
                return sent, None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    while True:
                        event = await queue.get()
                        if isinstance(event, MessageEvent) and event.body.consent_filing is \
                                not None and event.body.consent_filing.message_id == \
                                sent.message_id and event.body.consent_filing.consent_id == \
                                claims.jti:
                            return sent, event.body.consent_filing
            return sent, None
        finally:
            self.unsubscribe(queue)

    async def file_image(self, image: imaging.SanitisedImage, *, consent_token: str,
                         record: RecordData, warnings: Sequence[str] = (),
                         progress: Progress | None = None) -> SentMessage:
        """File an image in the patient's record and nowhere else: the identified original of
        a de-identified share (issue 10 item 4: "the redacted copy is what is shared, while
        the identified original is what the gateway files for direct care"). It goes, for
        direct care, into this user's record thread, so only the record gateway(s) and the
        user's own devices receive it; like any filed image, its copies expire once filed.
        The consent must cover direct care and name this image."""
        thread_id, subject = await self._record_thread()
        return await self.send_image(
            thread_id, image, consent_token=consent_token, record=record,
            purpose=Purpose.DIRECT_CARE, warnings=warnings, progress=progress, subject=subject)

    async def _record_thread(self) -> tuple[str, str | None]:
        """This user's record thread: its only other members are the organisation's record
        gateway accounts (verified); found among the user's threads, or made once. Returns
        its id and, when it was just made, the subject its first message gives it."""
        gateways = await gateway_bundles(self.relay, trusted_orgs=self.store.state.trusted_orgs(),
                                         revocations=await self.revocations())
        if not gateways:
            raise FlowError("this organisation has no record gateway to file with",
                            code=ErrorCode.FILING_GATEWAY_MISSING.value)
        members = {self.user_id, *(g.device.user_id for g in gateways)}
        thread = next((t for t in await self.threads()
                       if set(t.members) == members and not t.roles), None)
        if thread is None:
            thread = await self.create_thread(sorted(members - {self.user_id}))
            return thread.thread_id, RECORD_THREAD_SUBJECT
        return thread.thread_id, None

    # -- receipts ----------------------------------------------------------------------------

    def _queue_frame(self, frame: Frame) -> None:
        self._outgoing.append(frame)
        self._outgoing_sent.clear()
        self._outgoing_changed.set()

    async def _flush_outgoing(self) -> None:
        """Send queued receipts and confirmations whenever connected (kept until sent)."""
        assert self.connection is not None
        while True:
            if not self._outgoing:
                self._outgoing_changed.clear()
                await self._outgoing_changed.wait()
                continue
            await self.connection.connected.wait()
            frame = self._outgoing[0]
            try:
                await self.connection.send_frame(frame)
            except (SocketClosed, ConnectionError):
                await asyncio.sleep(0.2)
                continue
            self._outgoing.pop(0)
            if not self._outgoing:
                self._outgoing_sent.set()

    def _receipt(self, message: VaultMessage, kind: statements.ReceiptKind) -> None:
        statement = statements.issue_receipt_statement(statements.ReceiptStatement(
            v=statements.STATEMENT_VERSION, device_id=self.device_id,
            message_id=message.message_id, thread_id=message.thread_id, kind=kind,
            at=int(self._clock())), self.store.state.device_keys().signing)
        self._queue_frame(Receipt(statement=statement))

    async def mark_read(self, thread_id: str) -> int:
        """Mark every unread message of a thread read: vault, signed ``read`` receipts to the
        senders, and the relay's unread counter. Returns how many were unread."""
        unread = self.vault.messages(thread_id, unread_only=True)
        for m in unread:
            self.vault.mark_read(m.message_id)
            if not m.outgoing:
                self._receipt(m, statements.ReceiptKind.READ)
        seqs = [m.thread_seq for m in self.vault.messages(thread_id) if m.thread_seq]
        if seqs:
            with contextlib.suppress(RelayRequestError, RelayUnavailable):
                await self.relay.mark_thread_read(thread_id, max(seqs))
        return len(unread)

    async def acknowledge(self, message_id: str) -> None:
        """"I'm on it": a signed ``acknowledged`` receipt to the sender (and the escalation
        ladder, issue 9)."""
        message = self.vault.message(message_id)
        if message.outgoing:
            raise FlowError("you cannot acknowledge your own message",
                            code=ErrorCode.VALIDATION_FAILED.value)
        if not message.read:
            self.vault.mark_read(message_id)
            self._receipt(message, statements.ReceiptKind.READ)
        self._receipt(message, statements.ReceiptKind.ACKNOWLEDGED)
        self._acked.add(message_id)
        self.vault.put_note(_NOTE_ACK, message_id, b"")

    # -- receiving ---------------------------------------------------------------------------

    def _has_message(self, message_id: str) -> bool:
        try:
            self.vault.message(message_id)
        except ItemNotFound:
            return False
        return True

    async def _on_deliver(self, frame: Deliver) -> None:
        sealed = frame.message
        h = sealed.header
        if self._has_message(h.message_id):
            return  # stored before a crash, not yet acknowledged: acknowledge it now
        try:
            chain = await self._device_chain(h.sender_user_id, h.sender_device_id)
        except (RelayUnavailable, RelayRequestError) as exc:
            if isinstance(exc, RelayRequestError) and exc.status < 500:
                await self._emit(StatusEvent("error", f"a message from an unknown or revoked "
                                                      f"device was dropped ({exc.code})"))
                return
            raise DeferDelivery from exc
        except FlowError as exc:
            await self._emit(StatusEvent("error", f"a message whose sender does not verify "
                                                  f"was dropped ({exc.code})"))
            return
        st = self.store.state
        try:
            plain = await asyncio.to_thread(
                open_message, sealed, me=st.device_keys(), prekeys=st.prekey_store(),
                sender=chain.verified, seen=MemorySeenSet())
            body = decode_body(plain)
        except ProtocolError as exc:
            log.warning("undecryptable message", extra={"code": exc.code.value})
            await self._emit(StatusEvent("error", f"a message could not be opened and was "
                                                  f"dropped ({exc.code.value})"))
            return
        if (body.filing or body.consent_filing) is not None and not (
                chain.verified.user.is_record_gateway
                and chain.verified.device.kind is DeviceKind.GATEWAY):
            # Only the organisation's record gateway may say where an image or a consent is
            # filed: a "receipt" from anyone else is kept as an ordinary message, without it.
            body = msgspec.structs.replace(
                body, filing=None, consent_filing=None, kind=BodyKind.TEXT,
                text=body.text or "(an unverified claim that something was filed was removed)")
            plain = encode_body(body)
            await self._emit(StatusEvent("error", "a filing receipt from a device that is not "
                                                  "a record gateway was ignored"))
        attachment_ids = tuple(a.attachment_id for a in body.attachments)
        expired = {a for a in attachment_ids if self.vault.tombstone(a) is not None}
        if expired:
            # Its expiry order came first (after a reconnect the relay sends orders before
            # deliveries): the message is kept, without the key of an image it never fetches.
            body = _without_images(body, expired)
            plain = msgspec.msgpack.encode(body)
        message = VaultMessage(
            message_id=h.message_id, thread_id=h.thread_id, sender_user_id=h.sender_user_id,
            sender_device_id=h.sender_device_id, sent_at=float(h.sent_at), body=body.text,
            attachment_ids=attachment_ids,
            priority=h.priority.value, purpose=h.purpose.value, content=plain,
            thread_seq=frame.thread_seq)
        self.vault.put_message(message)
        forget_one_time_prekey(self.store, sealed)
        self._receipt(message, statements.ReceiptKind.DELIVERED)
        if body.kind is BodyKind.FILING_RECEIPT and body.filing is not None:
            ref = body.filing.record_ref or body.filing.study_instance_uid
            with contextlib.suppress(ItemNotFound):
                self.vault.set_record_reference(body.filing.attachment_id, ref)
        await self._emit(MessageEvent(message, body))
        if body.attachments and self.fetch_images:
            self._spawn(self._fetch_images(message, body), f"fetch-{h.message_id[:8]}")

    # -- images ------------------------------------------------------------------------------

    async def fetch_missing_images(self) -> None:
        """Fetch every image of a stored message that is not in the vault yet (after a
        reconnect, or a download that failed)."""
        for thread in list(self._threads):
            with contextlib.suppress(SDKError, OSError):
                for m in self.vault.messages(thread):
                    body = self._body(m)
                    if body is not None and body.attachments and not m.outgoing:
                        await self._fetch_images(m, body)

    async def _fetch_images(self, message: VaultMessage, body: Body) -> None:
        async with self._fetch_lock:
            for descriptor in body.attachments:
                await self._fetch_one(message, body, descriptor)

    async def _fetch_one(self, message: VaultMessage, body: Body,
                         descriptor: AttachmentDescriptor) -> None:
        aid = descriptor.attachment_id
        if self.vault.tombstone(aid) is not None:
            return
        with contextlib.suppress(ItemNotFound):
            self.vault.image_info(aid)
            return
        if self._image_state.get(aid, ("", ""))[0] == "refused":
            return

        async def status(state: str, reason: str = "") -> None:
            self._image_state[aid] = (state, reason)
            await self._emit(ImageEvent(aid, message.message_id, message.thread_id, state,
                                        reason))

        try:
            if body.consent_token is None:
                raise ConsentImageMismatch("the image came without a consent")
            consent_id = peek_consent_token_unverified(body.consent_token).jti
            chain = await self._device_chain(message.sender_user_id, message.sender_device_id)
            data = await sdk_attachments.receive_image(
                self.relay, descriptor, consent_id=consent_id, message_id=message.message_id,
                sender_user_id=message.sender_user_id,
                sender_certificate=chain.user_certificate,
                trusted_orgs=self.store.state.trusted_orgs())
        except ConsentImageMismatch as exc:
            await status("refused", str(exc))
            return
        except ProtocolError as exc:
            await status("refused", f"the image does not decrypt or match its description "
                                    f"({exc.code.value})")
            return
        except RelayRequestError as exc:
            if exc.code == ErrorCode.ATTACHMENT_EXPIRED.value:
                # The relay issued this device's expiry order (it arrives as a notice).
                await status("expired", "this copy has expired and was never downloaded")
            else:
                await status("failed", f"could not download the image yet: {exc}")
            return
        except (RelayUnavailable, FlowError) as exc:
            await status("failed", f"could not download the image yet: {exc}")
            return
        filed = self._filed.get(aid)
        try:
            self.vault.put_image(aid, data, media_type=descriptor.media_type,
                                 width=descriptor.width, height=descriptor.height,
                                 thread_id=message.thread_id, message_id=message.message_id,
                                 record_reference=filed.record_ref if filed else None)
        except ImageShredded:  # its expiry order came while it was downloading
            self._image_state[aid] = ("shredded", "")
            return
        await status("stored")

    def image(self, attachment_id: str) -> bytes:
        """The decrypted image bytes, from the vault (ImageShredded after expiry)."""
        return self.vault.get_image(attachment_id).data

    # -- frames other than deliveries --------------------------------------------------------

    async def _on_frame(self, frame: Frame) -> None:
        try:
            await self._handle_frame(frame)
        except (SDKError, ProtocolError) as exc:
            log.warning("could not handle a relay notice", extra={"frame": type(frame).__name__})
            await self._emit(StatusEvent("error", f"{type(frame).__name__}: {exc}"))

    async def _handle_frame(self, frame: Frame) -> None:
        if isinstance(frame, ReceiptNotice):
            chain = await self._device_chain(frame.user_id, frame.device_id)
            try:
                body = statements.verify_receipt_statement(
                    frame.statement, chain.verified.signing_key, device_id=frame.device_id)
            except ProtocolError:
                return  # a forged notice: ignore (logged by the caller's level)
            if body.message_id != frame.message_id:
                return
            receipt = ReceiptEvent(body.message_id, frame.user_id, frame.device_id,
                                   body.kind.value, body.at, chain.verified.user.display_name)
            self._restore()
            seen = self._receipts.setdefault(body.message_id, [])
            if any((r.device_id, r.kind) == (receipt.device_id, receipt.kind) for r in seen):
                return  # notices are at-least-once: a redelivered receipt is not news
            seen.append(receipt)
            self.vault.put_note(_NOTE_RECEIPT,
                                f"{receipt.message_id}/{receipt.device_id}/{receipt.kind}",
                                msgspec.msgpack.encode(receipt))
            await self._emit(receipt)
        elif isinstance(frame, KeysLow):
            await self.replenish_prekeys(frame.target - frame.remaining)
        elif isinstance(frame, FiledNotice):
            filed = FiledEvent(frame.attachment_id, frame.message_id, frame.thread_id,
                               frame.filed_at, frame.expires_at, frame.record_ref)
            self._restore()
            self._filed[frame.attachment_id] = filed
            self.vault.put_note(_NOTE_FILED, frame.attachment_id, msgspec.msgpack.encode(filed))
            if frame.record_ref:
                with contextlib.suppress(ItemNotFound):
                    self.vault.set_record_reference(frame.attachment_id, frame.record_ref)
            await self._emit(filed)
        elif isinstance(frame, ExpireOrder):
            if frame.reason is ExpiryReason.CONSENT_REVOKED:
                self._note_withdrawn(frame.thread_id, frame.issued_at,
                                     attachment_id=frame.attachment_id)
            await self._expire(frame)
        elif isinstance(frame, Withdrawn):
            if frame.reason is WithdrawReason.CONSENT_REVOKED:
                self._note_withdrawn(frame.thread_id, frame.at, message_id=frame.message_id)
            await self._emit(WithdrawnEvent(frame.message_id, frame.thread_id,
                                            frame.reason.value))
        elif isinstance(frame, Revoked):
            self._chains.clear()
            await self.revocations(force=True)
        elif isinstance(frame, ResealRequest):
            self._spawn(self._answer_reseal(frame), "reseal")
        elif isinstance(frame, EscalationNotice):
            step = EscalationEvent(frame.thread_id, frame.message_id, frame.kind.value,
                                   frame.step, frame.level, frame.user_id, frame.at)
            self._restore()
            steps = self._escalations.setdefault(frame.message_id, [])
            if step not in steps:  # at-least-once notices: each step is told once
                steps.append(step)
                self.vault.put_note(_NOTE_ESCALATION,
                                    f"{step.message_id}/{step.step}/{step.kind}/{step.user_id}",
                                    msgspec.msgpack.encode(step))
                await self._emit(step)
        elif isinstance(frame, WipeOrder):
            await self._wipe(frame)
        elif isinstance(frame, Error):
            await self._emit(StatusEvent("error", f"{frame.code.value}: {frame.detail}"))

    async def _wipe(self, order: WipeOrder) -> None:
        """Obey a wipe order (docs/PROTOCOL.md §15 "Wipe"): verified against the organisation-signed
        list (a forged or replayed order raises FlowError and destroys nothing); the
        confirmation is signed while the device key still exists, the vault folder (vault,
        keys, outbox) is deleted, and only then is the confirmation sent; the client stops."""
        state = self.store.state
        verify_wipe_order(order, state)
        confirmation = statements.issue_wipe_confirmation(statements.WipeConfirmation(
            v=statements.STATEMENT_VERSION, device_id=state.device_id, order_id=order.order_id,
            wiped_at=int(self._clock())), state.device_keys().signing)
        entry = wipe(order, state, self.vault.directory, vault=self.vault)
        del state
        self.wiped = entry
        if not self.vault.directory.exists() and self.connection is not None:
            with contextlib.suppress(SocketClosed, ConnectionError):
                await self.connection.send_frame(WipeConfirm(statement=confirmation))
        when = format_time(entry.revoked_at)
        await self._emit(StatusEvent("wiped", f"this device was revoked by your organisation "
                                              f"on {when} ({entry.reason}); its data has been "
                                              "erased"))
        self._spawn(self.close(), "close-after-wipe")

    async def _answer_reseal(self, request: ResealRequest) -> None:
        """Shift handover (issue 9): the relay is blind, so a device that holds the consult
        seals its content again for the thread's current participants (the incoming clinician
        included, verified like any recipient). The relay counts the new message as the
        answer. Nothing is sent when this device does not hold the message in its vault."""
        try:
            stored = self.vault.message(request.message_id)
        except ItemNotFound:
            return
        body = self._body(stored)
        if body is None:
            return
        consent_id = None
        if body.consent_token is not None:
            consent_id = peek_consent_token_unverified(body.consent_token).jti
        try:
            await self._send_body(request.thread_id, body,
                                  purpose=Purpose(stored.purpose or Purpose.DIRECT_CARE.value),
                                  priority=Priority(stored.priority), consent_id=consent_id,
                                  attachment_ids=stored.attachment_ids)
        except SDKError as exc:
            await self._emit(StatusEvent("error", f"handover of a consult failed: {exc}"))

    async def replenish_prekeys(self, count: int) -> None:
        """Make ``count`` one-time prekeys, keep their secrets first, then upload them."""
        await replenish_one_time_prekeys(self.relay, self.store, count, now=int(self._clock()))

    async def _expire(self, order: ExpireOrder) -> None:
        """Apply an expiry order before anything it covers (docs/PROTOCOL.md §15): shred the
        copy, or leave a tombstone when it was never fetched, so that no delivery or download
        arriving later stores it; drop the image key from every stored message carrying it;
        tell the application (the desktop drops what its page shows); then confirm with a
        signed statement."""
        aid = order.attachment_id
        holders: set[str] = set()
        with contextlib.suppress(ItemNotFound):
            info = self.vault.image_info(aid)
            if info.message_id:
                holders.add(info.message_id)
        self.vault.expire(aid, record_reference=order.record_ref)
        with contextlib.suppress(ItemNotFound, SDKError):
            holders.update(m.message_id for m in self.vault.messages(order.thread_id)
                           if aid in m.attachment_ids)
        for message_id in sorted(holders):
            self._drop_descriptor_key(message_id, aid)
        self._image_state[aid] = ("shredded", order.reason.value)
        await self._emit(ExpiredEvent(aid, order.thread_id, order.record_ref,
                                      order.reason.value))
        confirmation = statements.issue_expiry_confirmation(statements.ExpiryConfirmation(
            v=statements.STATEMENT_VERSION, device_id=self.device_id, attachment_id=aid,
            order_id=order.order_id, shredded_at=int(self._clock())),
            self.store.state.device_keys().signing)
        self._queue_frame(ExpiryConfirm(statement=confirmation))

    def _drop_descriptor_key(self, message_id: str, attachment_id: str) -> None:
        try:
            message = self.vault.message(message_id)
        except ItemNotFound:
            return
        body = self._body(message)
        if body is None:
            return
        stripped = _without_images(body, {attachment_id})
        if stripped is body:
            return
        content = msgspec.msgpack.encode(stripped)
        self.vault.update_message(msgspec.structs.replace(message, content=content))

    # -- consent withdrawals (docs/PROTOCOL.md §13) ----------------------------------------------

    def _consent_id(self, message: VaultMessage) -> str | None:
        body = self._body(message)
        if body is None or not body.consent_token:
            return None
        try:
            return peek_consent_token_unverified(body.consent_token).jti
        except ProtocolError:
            return None

    def _note_withdrawn(self, thread_id: str, at: int, *, message_id: str | None = None,
                        attachment_id: str | None = None) -> None:
        """A withdrawal the relay told us of (a withdrawn message, or an expiry order for a
        withdrawn consent): remember the consent as withdrawn at the relay's time."""
        with contextlib.suppress(ItemNotFound):
            for m in self.vault.messages(thread_id):
                if m.message_id == message_id or attachment_id in m.attachment_ids:
                    consent_id = self._consent_id(m)
                    if consent_id is not None:
                        self.vault.note_consent_withdrawn(consent_id, at)

    def consent_withdrawn_at(self, consent_id: str) -> int | None:
        """When the consent was withdrawn, as this device knows (None: not that it knows)."""
        return self.vault.consent_withdrawals().get(consent_id)

    async def refresh_consents(self, consent_ids: Sequence[str]) -> dict[str, int]:
        """Ask the relay whether these consents were withdrawn (a recipient of text only is
        sent no order), remembering each withdrawal; at most once a minute per consent. An
        unreachable relay or an unknown consent changes nothing. Returns every withdrawal
        known."""
        known = self.vault.consent_withdrawals()
        now = self._clock()
        for consent_id in dict.fromkeys(consent_ids):
            if consent_id in known or now - self._consents_checked.get(consent_id, -1e9) < 60:
                continue
            self._consents_checked[consent_id] = now
            try:
                info = await self.relay.get_consent(consent_id)
            except (RelayRequestError, RelayUnavailable):
                continue
            if info.revoked_at is not None:
                self.vault.note_consent_withdrawn(consent_id, info.revoked_at)
                known[consent_id] = info.revoked_at
        return known

    # -- views for applications --------------------------------------------------------------

    def _body(self, message: VaultMessage) -> Body | None:
        if not message.content:
            return Body(text=message.body) if message.body.strip() else None
        try:
            return msgspec.msgpack.decode(message.content, type=Body)
        except msgspec.DecodeError:
            return None

    def image_status(self, attachment_id: str) -> ImageStatus:
        filed = self._filed.get(attachment_id)
        times = {"filed_at": filed.filed_at if filed else None,
                 "expires_at": filed.expires_at if filed else None}
        tomb = self.vault.tombstone(attachment_id)
        if tomb is not None:
            return ImageStatus(attachment_id, "shredded", "", tomb.record_reference, **times)
        try:
            info = self.vault.image_info(attachment_id)
        except ItemNotFound:
            state, reason = self._image_state.get(attachment_id, ("pending", ""))
            return ImageStatus(attachment_id, state, reason,
                               filed.record_ref if filed else None, **times)
        return ImageStatus(attachment_id, "stored", "", info.record_reference,
                           info.width, info.height, **times)

    def view(self, message: VaultMessage) -> MessageView:
        self._restore()
        body = self._body(message) or Body(text="(unreadable message)")
        ids = list(dict.fromkeys([*message.attachment_ids,
                                  *(a.attachment_id for a in body.attachments)]))
        # In the order they happened, whatever order the notices arrived (or were read back
        # from the vault) in: by time, then delivered before read before acknowledged.
        receipts = sorted(self._receipts.get(message.message_id, ()),
                          key=lambda r: (r.at, _RECEIPT_ORDER.get(r.kind, 9), r.device_id))
        steps = sorted(self._escalations.get(message.message_id, ()),
                       key=lambda e: (e.step, e.at))
        return MessageView(message, body, tuple(self.image_status(a) for a in ids),
                           tuple(receipts), message.message_id in self._acked, tuple(steps))

    def thread_messages(self, thread_id: str) -> list[MessageView]:
        return [self.view(m) for m in self.vault.messages(thread_id)]


class _ProgressRelay:
    """A RelayHTTP stand-in that reports upload progress (bytes sent, total)."""

    def __init__(self, relay: RelayHTTP, total: int, progress: Progress) -> None:
        self._relay, self._total, self._progress = relay, total, progress

    def __getattr__(self, name: str) -> Any:
        return getattr(self._relay, name)

    async def put_chunk(self, attachment_id: str, offset: int, data: bytes) -> api.UploadStatus:
        status = await self._relay.put_chunk(attachment_id, offset, data)
        self._progress(status.committed, self._total)
        return status


def _without_images(body: Body, attachment_ids: set[str]) -> Body:
    """The body without the descriptors (each with its image key) of ``attachment_ids``; the
    text stays, the record data only while an image remains. ``body`` itself if none goes."""
    kept = [a for a in body.attachments if a.attachment_id not in attachment_ids]
    if len(kept) == len(body.attachments):
        return body
    return msgspec.structs.replace(body, attachments=kept, record=body.record if kept else None)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
