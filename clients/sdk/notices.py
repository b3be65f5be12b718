"""The relay's notices other than deliveries (docs/PROTOCOL.md §8, §15, §16): receipts from
other devices, filing notices, expiry and wipe orders, images a recipient never received,
withdrawals, revocations, shift handovers, prekey top-ups; and what this device knows of
consent withdrawals.

Every notice is at-least-once; each handler is idempotent (a receipt or an escalation step is
told once, an expiry order applied twice confirms twice and destroys nothing more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from clients.sdk.errors import RelayRequestError, RelayUnavailable, SDKError
from clients.sdk.events import (
    EscalationEvent,
    ExpiredEvent,
    FiledEvent,
    NotReceivedEvent,
    ReceiptEvent,
    StatusEvent,
    WithdrawnEvent,
)
from clients.sdk.expiry import verify_wipe_order, wipe
from clients.sdk.handover import handover_of
from clients.sdk.http import RelayHTTP
from clients.sdk.hub import Hub
from clients.sdk.identity import replenish_one_time_prekeys
from clients.sdk.keystore import DeviceStore
from clients.sdk.memory import Memory, body_of
from clients.sdk.receiving import Receiver, without_images
from clients.sdk.sending import Sender
from clients.sdk.socket import SocketClosed
from clients.sdk.timefmt import format_time
from clients.sdk.trust import Trust
from clients.sdk.vault import ItemNotFound, Vault, VaultMessage
from clients.sdk.vaultrows import VaultLocked
from protocol import certs, statements
from protocol.consent import peek_consent_token_unverified
from protocol.errors import ProtocolError
from protocol.frames import (
    Error,
    EscalationNotice,
    ExpireOrder,
    ExpiryConfirm,
    ExpiryReason,
    FiledNotice,
    Frame,
    KeysLow,
    NotReceived,
    ReceiptNotice,
    ResealRequest,
    Revoked,
    WipeConfirm,
    WipeOrder,
    Withdrawn,
    WithdrawReason,
)
from protocol.model import Priority, Purpose

__all__ = ["Notices", "wiped_event"]

log = logging.getLogger("lightbox.sdk.client")

RESEAL_WAIT = (2.0, 5.0)
"""Seconds (a random moment between the two) a device that holds a consult it did not write
waits before sealing it again at a shift handover, so that the author's device, answering at
once, is the one that does when it is online (``_answer_reseal``)."""


def wiped_event(entry: certs.RevocationEntry) -> StatusEvent:
    """The "wiped" status a client emits once it has obeyed a wipe order and confirmed it
    (docs/PROTOCOL.md §15 "Wipe"): when the organisation revoked the device, and why. Also
    what a program says when it was told of the wipe but not by this event (the line must
    be the same whichever way it ends: clients/clinician/reading.py ``watch``)."""
    when = format_time(entry.revoked_at)
    return StatusEvent("wiped", f"this device was revoked by your organisation on {when} "
                                f"({entry.reason}); its data has been erased")


class Notices:
    """Handles every notice frame of one device."""

    def __init__(self, *, relay: RelayHTTP, store: DeviceStore, vault: Vault, trust: Trust,
                 memory: Memory, sender: Sender, receiver: Receiver, hub: Hub,
                 clock: Callable[[], float],
                 on_wiped: Callable[[certs.RevocationEntry], None],
                 close: Callable[[], Awaitable[None]]) -> None:
        self._relay, self._store, self._vault = relay, store, vault
        self._trust, self._memory, self._sender = trust, memory, sender
        self._receiver = receiver
        self._hub, self._clock, self._on_wiped, self._close = hub, clock, on_wiped, close
        self._consents_checked: dict[str, float] = {}  # consent id -> last asked the relay

    async def on_frame(self, frame: Frame) -> None:
        try:
            await self.handle(frame)
        except (SDKError, ProtocolError) as exc:
            log.warning("could not handle a relay notice", extra={"frame": type(frame).__name__})
            await self._hub.emit(StatusEvent("error", f"{type(frame).__name__}: {exc}"))

    async def handle(self, frame: Frame) -> None:
        if isinstance(frame, ReceiptNotice):
            await self._receipt_notice(frame)
        elif isinstance(frame, KeysLow):
            await self.replenish_prekeys(frame.target - frame.remaining)
        elif isinstance(frame, FiledNotice):
            # The relay does not know where the record keeps it: the receipt, when held, does.
            ref = frame.record_ref or self._receiver.record_reference(frame.thread_id,
                                                                      frame.attachment_id)
            filed = FiledEvent(frame.attachment_id, frame.message_id, frame.thread_id,
                               frame.filed_at, frame.expires_at, ref)
            self._memory.note_filed(filed)
            if ref:
                with contextlib.suppress(ItemNotFound):
                    self._vault.set_record_reference(frame.attachment_id, ref)
            await self._hub.emit(filed)
        elif isinstance(frame, ExpireOrder):
            if frame.reason is ExpiryReason.CONSENT_REVOKED:
                self._note_withdrawn(frame.thread_id, frame.issued_at,
                                     attachment_id=frame.attachment_id)
            await self._expire(frame)
        elif isinstance(frame, Withdrawn):
            if frame.reason is WithdrawReason.CONSENT_REVOKED:
                self._note_withdrawn(frame.thread_id, frame.at, message_id=frame.message_id)
            await self._hub.emit(WithdrawnEvent(frame.message_id, frame.thread_id,
                                                frame.reason.value))
        elif isinstance(frame, Revoked):
            self._trust.forget()
            await self._trust.revocations(force=True)
        elif isinstance(frame, ResealRequest):
            self._hub.spawn(self._answer_reseal(frame), "reseal")
        elif isinstance(frame, EscalationNotice):
            step = EscalationEvent(frame.thread_id, frame.message_id, frame.kind.value,
                                   frame.step, frame.level, frame.user_id, frame.at,
                                   frame.next_shift_at)
            if self._memory.note_step(step):  # at-least-once notices: each step told once
                await self._hub.emit(step)
        elif isinstance(frame, NotReceived):
            await self._not_received(frame)
        elif isinstance(frame, WipeOrder):
            await self._wipe(frame)
        elif isinstance(frame, Error):
            if not await self._receiver.refused(frame):  # an acknowledgement refused: told so
                await self._hub.emit(StatusEvent("error", f"{frame.code.value}: {frame.detail}"))

    async def _receipt_notice(self, frame: ReceiptNotice) -> None:
        chain = await self._trust.device_chain(frame.user_id, frame.device_id)
        try:
            body = statements.verify_receipt_statement(
                frame.statement, chain.verified.signing_key, device_id=frame.device_id)
        except ProtocolError:
            return  # a forged notice: ignore
        if body.message_id != frame.message_id:
            return
        receipt = ReceiptEvent(body.message_id, frame.user_id, frame.device_id,
                               body.kind.value, body.at, chain.verified.user.display_name)
        if self._memory.note_receipt(receipt):  # a redelivered receipt is not news
            await self._hub.emit(receipt)

    async def _not_received(self, frame: NotReceived) -> None:
        """A person never received an image of one of our messages before its copies expired
        (docs/PROTOCOL.md §15 "Never received"): kept and told once, with the record reference
        this device knows (the relay does not) and the person's name from their verified
        certificate (a shortened id when the key directory cannot say)."""
        aid = frame.attachment_id
        ref = self._memory.image_status(aid).record_ref or \
            self._receiver.record_reference(frame.thread_id, aid)
        with contextlib.suppress(SDKError):
            await self._trust.ensure_names([frame.user_id], self._memory.knows_name)
        event = NotReceivedEvent(frame.message_id, frame.thread_id, aid, frame.user_id,
                                 frame.reason.value, frame.at, ref,
                                 self._memory.display_name(frame.user_id))
        if self._memory.note_not_received(event):
            await self._hub.emit(event)

    async def replenish_prekeys(self, count: int) -> None:
        """Make ``count`` one-time prekeys, keep their secrets first, then upload them."""
        await replenish_one_time_prekeys(self._relay, self._store, count,
                                         now=int(self._clock()))

    async def _wipe(self, order: WipeOrder) -> None:
        """Obey a wipe order (docs/PROTOCOL.md §15 "Wipe"): verified against the
        organisation-signed list (a forged or replayed order raises FlowError and destroys
        nothing); the confirmation is signed while the device key still exists, the vault
        folder (vault, keys, outbox) is deleted, and only then is the confirmation sent; the
        client stops."""
        state = self._store.state
        verify_wipe_order(order, state)
        confirmation = statements.issue_wipe_confirmation(statements.WipeConfirmation(
            v=statements.STATEMENT_VERSION, device_id=state.device_id, order_id=order.order_id,
            wiped_at=int(self._clock())), state.device_keys().signing)
        entry = wipe(order, state, self._vault.directory, vault=self._vault)
        del state
        self._on_wiped(entry)
        connection = self._hub.connection
        if not self._vault.directory.exists() and connection is not None:
            with contextlib.suppress(SocketClosed, ConnectionError):
                await connection.send_frame(WipeConfirm(statement=confirmation))
        await self._hub.emit(wiped_event(entry))
        self._hub.spawn(self._close(), "close-after-wipe")

    async def _answer_reseal(self, request: ResealRequest) -> None:
        """Shift handover (docs/PROTOCOL.md §16): the relay is blind, so a device that holds
        the consult seals its content again for the thread's current participants (the
        incoming clinician included, verified like any recipient). The relay counts the new
        message as the answer. Nothing is sent when this device does not hold the message.
        The copy's header names this device and the moment of the reseal; its sealed body
        names the original's author and time (``handover_of``, docs/PROTOCOL.md §14), which
        this device verified when it received it, so readers are told who wrote it and when
        (clients/sdk/handover.py)."""
        try:
            stored = self._vault.message(request.message_id)
        except ItemNotFound:
            return
        body = body_of(stored)
        if body is None:
            return
        origin = handover_of(stored, body)
        if stored.sender_device_id != self._store.state.device_id:
            # Every device holding the consult is asked, so that one that is online answers;
            # the author's device answers at once, any other after a short random wait and
            # not at all when a copy of the same consult arrived meanwhile: the incoming
            # clinician gets one copy, not one per holder (docs/PROTOCOL.md §16.4).
            try:
                before = {m.message_id for m in self._vault.messages(request.thread_id)}
                await asyncio.sleep(random.uniform(*RESEAL_WAIT))
                if self._copy_arrived(request.thread_id, origin.message_id, before):
                    return
            except VaultLocked:
                return  # the request stays at the relay until answered: asked again later
        body = msgspec.structs.replace(body, handover_of=origin)
        consent_id = None
        if body.consent_token is not None:
            consent_id = peek_consent_token_unverified(body.consent_token).jti
        try:
            # Only the images still held: one filed and expired is in the record, not here
            # (the copy keeps its text and patient data, docs/PROTOCOL.md §14 "record").
            await self._sender.send_body(
                request.thread_id, body,
                purpose=Purpose(stored.purpose or Purpose.DIRECT_CARE.value),
                priority=Priority(stored.priority), consent_id=consent_id,
                attachment_ids=[a.attachment_id for a in body.attachments])
        except (SDKError, ProtocolError) as exc:  # said, never a stopped task
            await self._hub.emit(StatusEvent("error", f"handover of a consult failed: {exc}"))

    def _copy_arrived(self, thread_id: str, original_id: str, before: set[str]) -> bool:
        """Whether the thread holds a copy of ``original_id`` sealed again at a handover that
        arrived since ``before`` (the thread's message ids when the request came)."""
        for m in self._vault.messages(thread_id):
            if m.message_id in before:
                continue
            body = body_of(m)
            if (body is not None and not isinstance(body.handover_of, msgspec.UnsetType)
                    and body.handover_of.message_id == original_id):
                return True
        return False

    async def _expire(self, order: ExpireOrder) -> None:
        """Apply an expiry order before anything it covers (docs/PROTOCOL.md §15): shred the
        copy, or leave a tombstone when it was never fetched, so that no delivery or download
        arriving later stores it; drop the image key from every stored message carrying it;
        tell the application (the desktop drops what its page shows); then confirm with a
        signed statement."""
        aid = order.attachment_id
        holders: set[str] = set()
        with contextlib.suppress(ItemNotFound):
            info = self._vault.image_info(aid)
            if info.message_id:
                holders.add(info.message_id)
        # The tombstone keeps where the record has it: the order's reference, else the one the
        # copy was stored with (Vault.shred), else the gateway's receipt already held (a
        # receipt handled before the copy was stored); a receipt arriving later fills it in.
        reference = order.record_ref
        with contextlib.suppress(ItemNotFound):
            reference = reference or self._vault.image_info(aid).record_reference
        reference = reference or self._receiver.record_reference(order.thread_id, aid)
        self._vault.expire(aid, record_reference=reference)
        with contextlib.suppress(ItemNotFound, SDKError):
            holders.update(m.message_id for m in self._vault.messages(order.thread_id)
                           if aid in m.attachment_ids)
        for message_id in sorted(holders):
            self._drop_descriptor_key(message_id, aid)
        self._memory.image_state[aid] = ("shredded", order.reason.value)
        await self._hub.emit(ExpiredEvent(aid, order.thread_id, reference,
                                          order.reason.value))
        st = self._store.state
        confirmation = statements.issue_expiry_confirmation(statements.ExpiryConfirmation(
            v=statements.STATEMENT_VERSION, device_id=st.device_id, attachment_id=aid,
            order_id=order.order_id, shredded_at=int(self._clock())),
            st.device_keys().signing)
        self._hub.queue_frame(ExpiryConfirm(statement=confirmation))

    def _drop_descriptor_key(self, message_id: str, attachment_id: str) -> None:
        try:
            message = self._vault.message(message_id)
        except ItemNotFound:
            return
        body = body_of(message)
        if body is None:
            return
        stripped = without_images(body, {attachment_id})
        if stripped is body:
            return
        content = msgspec.msgpack.encode(stripped)
        self._vault.update_message(msgspec.structs.replace(message, content=content))

    # -- consent withdrawals (docs/PROTOCOL.md §13) --------------------------------------------

    @staticmethod
    def _consent_id(message: VaultMessage) -> str | None:
        body = body_of(message)
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
            for m in self._vault.messages(thread_id):
                if m.message_id == message_id or attachment_id in m.attachment_ids:
                    consent_id = self._consent_id(m)
                    if consent_id is not None:
                        self._vault.note_consent_withdrawn(consent_id, at)

    async def refresh_consents(self, consent_ids: Sequence[str]) -> dict[str, int]:
        """Ask the relay whether these consents were withdrawn (a recipient of text only is
        sent no order), remembering each withdrawal; at most once a minute per consent. An
        unreachable relay or an unknown consent changes nothing. Returns every withdrawal
        known."""
        known = self._vault.consent_withdrawals()
        now = self._clock()
        for consent_id in dict.fromkeys(consent_ids):
            if consent_id in known or now - self._consents_checked.get(consent_id, -1e9) < 60:
                continue
            self._consents_checked[consent_id] = now
            try:
                info = await self._relay.get_consent(consent_id)
            except (RelayRequestError, RelayUnavailable):
                continue
            if info.revoked_at is not None:
                self._vault.note_consent_withdrawn(consent_id, info.revoked_at)
                known[consent_id] = info.revoked_at
        return known
