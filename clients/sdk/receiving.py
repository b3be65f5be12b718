"""Receiving: each delivery is opened, stored and only then acknowledged; images follow in the
background (docs/ARCHITECTURE.md §2).

The sender's chain is fetched and verified before opening; the body is stored in the vault,
the one-time prekey secret used is then deleted from the device state (forward secrecy,
docs/PROTOCOL.md §5.5), and a signed ``delivered`` receipt is queued. The vault's record of
the deliveries it holds is the one replay memory: the connection acknowledges a redelivery
without handing it on, and :func:`protocol.envelope.open_message` checks the same record
(:class:`clients.sdk.vault.SenderSeenSet`). Images are fetched, decrypted and checked against
their consent (clients/sdk/attachments.py); the message is already safe in the vault.

Each message is told to the application once (a :class:`MessageEvent`), also one that another
program of the device stored: the relay keeps one connection per device (docs/PROTOCOL.md
§3.5), so while a ``lightbox send`` has it, what arrives for the device is stored by that
program, in the same vault; a running ``lightbox watch`` or desktop hears of it from the vault
once it is connected again (:meth:`Receiver.tell_stored_elsewhere`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

import msgspec

from clients.sdk import attachments as sdk_attachments
from clients.sdk.connection import DeferDelivery
from clients.sdk.errors import (
    ConsentImageMismatch,
    FlowError,
    RelayRequestError,
    RelayUnavailable,
    SDKError,
)
from clients.sdk.events import AcknowledgementEvent, ImageEvent, MessageEvent, StatusEvent
from clients.sdk.http import RelayHTTP
from clients.sdk.hub import Hub
from clients.sdk.identity import forget_one_time_prekey
from clients.sdk.keystore import DeviceStore
from clients.sdk.memory import Memory, body_of
from clients.sdk.threads import ThreadBook
from clients.sdk.timefmt import format_time
from clients.sdk.trust import Trust
from clients.sdk.vault import ImageShredded, ItemNotFound, Vault, VaultLocked, VaultMessage
from protocol import statements
from protocol.attachments import AttachmentDescriptor
from protocol.body import Body, BodyKind, decode_body, encode_body
from protocol.consent import peek_consent_token_unverified
from protocol.envelope import open_message
from protocol.errors import ErrorCode, ProtocolError, ReplayError
from protocol.frames import Deliver, Error, Receipt
from protocol.model import DeviceKind, Priority

__all__ = ["Receiver", "without_images"]

log = logging.getLogger("lightbox.sdk.client")


def without_images(body: Body, attachment_ids: set[str]) -> Body:
    """The body without the descriptors (each with its image key) of ``attachment_ids``, and
    without their burned-in-identifier flags (a flag names an image of the body: one left
    naming a gone image makes the body invalid, and a handover of it could not be sealed,
    docs/PROTOCOL.md §14); the text and the record data stay: a reader must still see which
    patient the consult was about beside the image's record reference
    (docs/CLINICAL_SAFETY.md "Delete the device copy once it is in the record"). ``body``
    itself if none goes."""
    kept = [a for a in body.attachments if a.attachment_id not in attachment_ids]
    if len(kept) == len(body.attachments):
        return body
    flags = [f for f in body.burned_in_identifiers if f.attachment_id not in attachment_ids]
    return msgspec.structs.replace(body, attachments=kept, burned_in_identifiers=flags)


class Receiver:
    """Deliveries, images and the receipts this device signs."""

    def __init__(self, *, relay: RelayHTTP, store: DeviceStore, vault: Vault, trust: Trust,
                 memory: Memory, threads: ThreadBook, hub: Hub, clock: Callable[[], float],
                 fetch_images: Callable[[], bool]) -> None:
        self._relay, self._store, self._vault = relay, store, vault
        self._trust, self._memory, self._threads = trust, memory, threads
        self._hub, self._clock, self._fetch_images_on = hub, clock, fetch_images
        self._fetch_lock = asyncio.Lock()
        # The acknowledgements this run sent, by the request id the relay answers a refusal
        # with (it answers nothing when it takes one).
        self._acks_asked: dict[str, VaultMessage] = {}
        self._acks_queued: set[str] = set()  # message ids whose acknowledgement is queued
        self._receipts_queued: set[tuple[str, str]] = set()  # (message id, kind) queued
        self._told: set[str] = set()  # message ids told to the application in this run
        self._stored_mark = 0  # the vault's messages up to here are not another program's news

    # -- messages another program of this device stored --------------------------------------

    def note_stored(self) -> None:
        """From now on, a message stored in the vault by another program is news (at start)."""
        self._stored_mark = self._vault.last_message_seq()

    async def tell_stored_elsewhere(self) -> set[str]:
        """Emit the messages that arrived in the vault since the last look and were not told
        yet: those another program of this device stored while it held the connection (this
        run stores nothing without it). Its own outgoing messages are not news; the threads
        they went to are returned (the relay's escalation steps of them may have gone to that
        program: docs/PROTOCOL.md §16.4)."""
        sent_to: set[str] = set()
        for seq, message_id in self._vault.message_ids_after(self._stored_mark):
            if message_id not in self._told:
                try:
                    message = self._vault.message(message_id)
                except ItemNotFound:  # gone meanwhile (a wipe)
                    continue
                body = body_of(message)
                if message.outgoing:
                    sent_to.add(message.thread_id)
                elif body is not None:
                    await self._tell(message, body)
            self._stored_mark = max(self._stored_mark, seq)
        return sent_to

    async def _tell(self, message: VaultMessage, body: Body) -> None:
        if message.message_id in self._told:
            return
        self._told.add(message.message_id)
        await self._hub.emit(MessageEvent(message, body))

    # -- deliveries --------------------------------------------------------------------------

    async def _dropped(self, frame: Deliver, code: str) -> str:
        """What the client says of a delivery it dropped because its sender no longer
        verifies. One from a device our organisation revoked, or from a colleague it suspended,
        says who sent it when their name is known (a revoked device's user certificate, from
        the directory, still names them; a suspended colleague's is no longer served, so only a
        name this device already holds), whether it was urgent and when it reached the relay
        (the relay's time, not the sender's claim), so the reader can ask the sender what it
        said (docs/HAZARD_LOG.md HAZ-10)."""
        revoked = code == ErrorCode.CERTIFICATE_REVOKED.value
        if not revoked and code != ErrorCode.USER_SUSPENDED.value:
            return f"a message whose sender does not verify was dropped ({code})"
        sender = frame.message.header.sender_user_id
        if revoked:
            await self._trust.ensure_names([sender], self._memory.knows_name)
        what = "an urgent message" if frame.priority is Priority.URGENT else "a message"
        when = format_time(frame.received_at)
        known = self._memory.knows_name(sender)
        if revoked:
            if not known:
                return (f"{what} sent {when} from a device your organisation revoked was "
                        f"dropped ({code})")
            return (f"{what} from {self._memory.display_name(sender)}, sent {when} from a "
                    f"device your organisation revoked, was dropped: ask them what it said "
                    f"({code})")
        if not known:
            return (f"{what} sent {when} was dropped: your organisation has suspended its "
                    f"sender's account ({code})")
        return (f"{what} from {self._memory.display_name(sender)}, sent {when}, was dropped: "
                f"your organisation has suspended their account ({code})")

    async def on_deliver(self, frame: Deliver) -> None:
        sealed = frame.message
        h = sealed.header
        try:
            chain = await self._trust.device_chain(h.sender_user_id, h.sender_device_id)
        except (RelayUnavailable, RelayRequestError) as exc:
            if isinstance(exc, RelayRequestError) and exc.status < 500:
                # The directory refused to name the sender: a suspended colleague, or a user
                # it does not know.
                suspended = exc.code == ErrorCode.USER_SUSPENDED.value
                detail = (await self._dropped(frame, exc.code) if suspended else
                          f"a message from an unknown or revoked device was dropped "
                          f"({exc.code})")
                await self._hub.emit(StatusEvent("error", detail, exc.code,
                                                 dropped=frame if suspended else None))
                return
            raise DeferDelivery from exc
        except FlowError as exc:
            await self._hub.emit(StatusEvent("error", await self._dropped(frame, exc.code),
                                             exc.code, dropped=frame))
            return
        st = self._store.state
        try:
            plain = await asyncio.to_thread(
                open_message, sealed, me=st.device_keys(), prekeys=st.prekey_store(),
                sender=chain.verified, seen=self._vault.dedupe.for_sender(h.sender_device_id))
            body = decode_body(plain)
        except ReplayError:
            return  # stored already (before a crash, or a replay): acknowledged, not again
        except ProtocolError as exc:
            log.warning("undecryptable message", extra={"code": exc.code.value})
            await self._hub.emit(StatusEvent("error", f"a message could not be opened and "
                                                      f"was dropped ({exc.code.value})"))
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
            await self._hub.emit(StatusEvent("error", "a filing receipt from a device that "
                                                      "is not a record gateway was ignored"))
        attachment_ids = tuple(a.attachment_id for a in body.attachments)
        expired = {a for a in attachment_ids if self._vault.tombstone(a) is not None}
        if expired:
            # Its expiry order came first (after a reconnect the relay sends orders before
            # deliveries): the message is kept, without the key of an image it never fetches.
            body = without_images(body, expired)
            plain = msgspec.msgpack.encode(body)
        message = VaultMessage(
            message_id=h.message_id, thread_id=h.thread_id, sender_user_id=h.sender_user_id,
            sender_device_id=h.sender_device_id, sent_at=float(h.sent_at), body=body.text,
            attachment_ids=attachment_ids,
            priority=h.priority.value, purpose=h.purpose.value, content=plain,
            thread_seq=frame.thread_seq,
            emergency=None if h.emergency is None else h.emergency.value,
            # the user's own message, sent from another of their devices: never unread
            read=h.sender_user_id == st.user_id)
        self._vault.put_message(message)
        forget_one_time_prekey(self._store, sealed)
        self.receipt(message, statements.ReceiptKind.DELIVERED)
        if body.kind is BodyKind.FILING_RECEIPT and body.filing is not None:
            ref = body.filing.record_ref or body.filing.study_instance_uid
            with contextlib.suppress(ItemNotFound):
                self._vault.set_record_reference(body.filing.attachment_id, ref)
        await self._tell(message, body)
        if body.attachments and self._fetch_images_on():
            self._hub.spawn(self.fetch_images(message, body), f"fetch-{h.message_id[:8]}")

    def record_reference(self, thread_id: str, attachment_id: str) -> str | None:
        """Where the record keeps an image, from the gateway's filing receipt this device
        already holds (docs/PROTOCOL.md §15: ``record_ref``, else the Study Instance UID); None
        before it arrived. The relay is blind and never knows it: its filed notices and expiry
        orders carry none, so whichever of receipt, image and order comes first, the tombstone
        keeps the reference (a receipt handled before the image was stored is found here)."""
        try:
            messages = self._vault.messages(thread_id)
        except ItemNotFound:
            return None
        for m in reversed(messages):
            body = body_of(m)
            if body is None or body.kind is not BodyKind.FILING_RECEIPT or body.filing is None:
                continue
            # stored with its filing only from a verified record gateway (on_deliver)
            if body.filing.attachment_id == attachment_id:
                return body.filing.record_ref or body.filing.study_instance_uid
        return None

    # -- images ------------------------------------------------------------------------------

    async def fetch_missing_images(self) -> None:
        """Fetch every image of a stored message that is not in the vault yet (after a
        reconnect, or a download that failed). The vault locked meanwhile ends it: the next
        start fetches them."""
        with contextlib.suppress(VaultLocked):
            for thread in self._threads.ids():
                with contextlib.suppress(SDKError, OSError):
                    for m in self._vault.messages(thread):
                        body = body_of(m)
                        if body is not None and body.attachments and not m.outgoing:
                            await self.fetch_images(m, body)

    async def fetch_images(self, message: VaultMessage, body: Body) -> None:
        """Fetch the message's images not in the vault yet; the vault locked meanwhile ends it
        (a background task: nothing to raise to, and the next start fetches them)."""
        async with self._fetch_lock:
            with contextlib.suppress(VaultLocked):
                for descriptor in body.attachments:
                    await self._fetch_one(message, body, descriptor)

    async def _fetch_one(self, message: VaultMessage, body: Body,
                         descriptor: AttachmentDescriptor) -> None:
        aid = descriptor.attachment_id
        if self._vault.tombstone(aid) is not None:
            return
        with contextlib.suppress(ItemNotFound):
            self._vault.image_info(aid)
            return
        states = self._memory.image_state
        if states.get(aid, ("", ""))[0] == "refused":
            return

        async def status(state: str, reason: str = "") -> None:
            states[aid] = (state, reason)
            await self._hub.emit(ImageEvent(aid, message.message_id, message.thread_id, state,
                                            reason))

        try:
            chain = await self._trust.device_chain(message.sender_user_id,
                                                   message.sender_device_id)
            if body.consent_token is None and message.emergency is not None:
                # Break-glass (PROTOCOL §17): the signed header declares the emergency, the
                # relay admitted it to colleagues of the sender's organisation only; this
                # device checks that much itself before it keeps the image.
                if chain.verified.user.org_id != self._store.state.org_id:
                    raise ConsentImageMismatch("an emergency image without consent came from "
                                               "another organisation")
                data = await sdk_attachments.decrypt(
                    await sdk_attachments.download(self._relay, aid), descriptor)
            elif body.consent_token is None:
                raise ConsentImageMismatch("the image came without a consent")
            else:
                data = await sdk_attachments.receive_image(
                    self._relay, descriptor,
                    consent_id=peek_consent_token_unverified(body.consent_token).jti,
                    message_id=message.message_id, sender_user_id=message.sender_user_id,
                    sender_certificate=chain.user_certificate,
                    trusted_orgs=self._store.state.trusted_orgs())
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
        filed = self._memory.filed.get(aid)
        try:
            self._vault.put_image(aid, data, media_type=descriptor.media_type,
                                  width=descriptor.width, height=descriptor.height,
                                  thread_id=message.thread_id, message_id=message.message_id,
                                  record_reference=(filed.record_ref if filed else None)
                                  or self.record_reference(message.thread_id, aid))
        except ImageShredded:  # its expiry order came while it was downloading
            states[aid] = ("shredded", "")
            return
        await status("stored")

    # -- receipts this device signs ----------------------------------------------------------

    def receipt(self, message: VaultMessage, kind: statements.ReceiptKind) -> None:
        """Sign a ``delivered`` or ``read`` receipt and send it: kept in the vault until it
        has gone to the relay, and sent by a later run if this one stops first
        (:meth:`resend_receipts`; the relay keeps one per device and kind, so one sent twice
        is harmless, docs/PROTOCOL.md §3.5 "Receipts")."""
        statement = self._statement(message, kind)
        self._memory.receipt_waiting(message.message_id, kind.value, statement)
        self._send_receipt((message.message_id, kind.value), statement)

    def resend_receipts(self) -> None:
        """Queue the delivered and read receipts kept in the vault and not yet sent (an
        earlier run stopped, or the vault was locked, before the relay could be reached)."""
        for key, statement in self._memory.waiting_receipts().items():
            if key not in self._receipts_queued:
                self._send_receipt(key, statement)

    def _send_receipt(self, key: tuple[str, str], statement: str) -> None:
        self._receipts_queued.add(key)

        def gone() -> None:
            self._receipts_queued.discard(key)
            # Locked since: the note stays and a later connection sends it again.
            with contextlib.suppress(VaultLocked):
                self._memory.receipt_sent(*key)

        self._hub.queue_frame(Receipt(statement=statement), gone)

    def _statement(self, message: VaultMessage, kind: statements.ReceiptKind) -> str:
        st = self._store.state
        return statements.issue_receipt_statement(statements.ReceiptStatement(
            v=statements.STATEMENT_VERSION, device_id=st.device_id,
            message_id=message.message_id, thread_id=message.thread_id, kind=kind,
            at=int(self._clock())), st.device_keys().signing)

    async def mark_read(self, thread_id: str) -> int:
        """Mark every unread message of a thread read: vault, signed ``read`` receipts to the
        senders, and the relay's unread counter. Returns how many were unread."""
        unread = self._vault.messages(thread_id, unread_only=True)
        me = self._store.state.user_id
        for m in unread:
            self._vault.mark_read(m.message_id)
            if not m.outgoing and m.sender_user_id != me:
                self.receipt(m, statements.ReceiptKind.READ)
        seqs = [m.thread_seq for m in self._vault.messages(thread_id) if m.thread_seq]
        if seqs:
            with contextlib.suppress(RelayRequestError, RelayUnavailable):
                await self._relay.mark_thread_read(thread_id, max(seqs))
        return len(unread)

    async def acknowledge(self, message_id: str) -> asyncio.Event:
        """"I'm on it": a signed ``acknowledged`` receipt to the sender (and the escalation
        ladder, docs/PROTOCOL.md §16). Returns an event set once the receipt has gone to the
        relay: it waits on this device while the relay is out of reach (shown acknowledged,
        ``acknowledgement_waiting``), kept in the vault with its signed receipt (a later run
        sends it if this one stops first, :meth:`resend_acknowledgements`), and goes as soon
        as this client is connected again. The relay's refusal (``not_on_ladder``) undoes it
        and is told as an :class:`AcknowledgementEvent` ``refused``."""
        message = self._vault.message(message_id)
        if message.outgoing:
            raise FlowError("you cannot acknowledge your own message",
                            code=ErrorCode.VALIDATION_FAILED.value)
        if not message.read:
            self._vault.mark_read(message_id)
            self.receipt(message, statements.ReceiptKind.READ)
        statement = self._statement(message, statements.ReceiptKind.ACKNOWLEDGED)
        self._memory.acknowledging(message_id, statement)
        return self._send_acknowledgement(message, statement)

    def resend_acknowledgements(self) -> None:
        """Queue the acknowledgements an earlier run of this device kept in the vault, not yet
        sent (the vault locked or the program stopped before the relay was back): each goes
        with the statement signed when it was made. This run's own are queued already."""
        for message_id, statement in self._memory.waiting_acknowledgements().items():
            if message_id in self._acks_queued:
                continue
            try:
                message = self._vault.message(message_id)
            except ItemNotFound:  # the message is no longer in the vault: nothing to send
                continue
            self._send_acknowledgement(message, statement)

    def _send_acknowledgement(self, message: VaultMessage, statement: str) -> asyncio.Event:
        sent = asyncio.Event()
        req_id = uuid.uuid4().hex
        self._acks_asked[req_id] = message
        self._acks_queued.add(message.message_id)

        def gone() -> None:
            sent.set()
            self._acks_queued.discard(message.message_id)
            if req_id not in self._acks_asked:
                return  # refused already: the relay answered before this ran
            self._memory.note_acknowledged(message.message_id)
            self._hub.spawn(self._hub.emit(AcknowledgementEvent(
                message.message_id, message.thread_id, "sent")), "acknowledgement-sent")

        self._hub.queue_frame(Receipt(req_id=req_id, statement=statement), gone)
        return sent

    async def refused(self, frame: Error) -> bool:
        """The relay's refusal of an acknowledgement this run sent: noted (the message is not
        acknowledged) and told. False for an error frame that answers anything else."""
        message = self._acks_asked.pop(frame.req_id, None) if frame.req_id else None
        if message is None:
            return False
        reason = f"{frame.code.value}: {frame.detail}" if frame.detail else frame.code.value
        self._memory.note_acknowledgement_refused(message.message_id, reason)
        await self._hub.emit(AcknowledgementEvent(message.message_id, message.thread_id,
                                                  "refused", reason))
        return True
