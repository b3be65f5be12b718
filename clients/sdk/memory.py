"""What a device learnt besides its messages, kept in the vault's notes so a restart forgets
nothing (clients/sdk/vault.py "notes"): acknowledgements, receipts, escalation steps, filing
notices and the names on verified certificates; and the views an application shows, built
from them and the stored messages.

An acknowledgement is noted with its signed receipt while it waits to go to the relay (so a
lock or a restart does not lose it: the next run sends it, clients/sdk/receiving.py), as sent
once it has gone, and replaced by the relay's refusal when there is one, so that a restart
never shows as acknowledged what the relay refused.

Notices are at-least-once: each ``note_*`` method tells whether the fact is new, so a
redelivered notice is not told to the application twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import msgspec

from clients.sdk.events import (
    EscalationEvent,
    FiledEvent,
    ImageStatus,
    MessageView,
    NotReceivedEvent,
    ReceiptEvent,
)
from clients.sdk.vault import ItemNotFound, Vault, VaultLocked, VaultMessage
from protocol.body import Body

__all__ = ["Memory", "body_of"]

_E = TypeVar("_E", ReceiptEvent, EscalationEvent, NotReceivedEvent)

# Kinds of the vault's notes this client keeps across restarts.
_NOTE_ACK, _NOTE_RECEIPT, _NOTE_ESCALATION = "acknowledged", "receipt", "escalation"
# An acknowledgement note's value while its receipt waits to go (then the signed statement); a
# refusal's value is its reason, which never starts with a NUL byte.
_WAITING = b"\x00waiting\x00"
_NOTE_FILED, _NOTE_NAME = "filed", "name"
# People who never received an image of one of our messages (docs/PROTOCOL.md §15).
_NOTE_NOT_RECEIVED = "not-received"
# Delivered and read receipts this device signed, kept until written to the relay (not read
# back by restore: the client asks for them when it connects, Receiver.resend_receipts).
_NOTE_RECEIPT_OUT = "receipt-out"
_NOTE_KINDS = (_NOTE_ACK, _NOTE_RECEIPT, _NOTE_ESCALATION, _NOTE_FILED, _NOTE_NAME,
               _NOTE_NOT_RECEIVED)
_RECEIPT_ORDER = {"delivered": 0, "read": 1, "acknowledged": 2}


def body_of(message: VaultMessage) -> Body | None:
    """The decoded body of a stored message (None when unreadable or empty)."""
    if not message.content:
        return Body(text=message.body) if message.body.strip() else None
    try:
        return msgspec.msgpack.decode(message.content, type=Body)
    except msgspec.DecodeError:
        return None


class Memory:
    """The notes of one device, read back from the vault once it is open."""

    def __init__(self, vault: Vault, user_id: Callable[[], str]) -> None:
        self._vault, self._user_id = vault, user_id
        self.names: dict[str, str] = {}  # from verified certificates
        self.image_state: dict[str, tuple[str, str]] = {}  # not kept: this run's downloads
        self.filed: dict[str, FiledEvent] = {}
        self._receipts: dict[str, list[ReceiptEvent]] = {}
        self._escalations: dict[str, list[EscalationEvent]] = {}  # steps seen, per message
        self._not_received: dict[str, list[NotReceivedEvent]] = {}  # per message
        self._acked: set[str] = set()  # acknowledgements sent to the relay
        self._ack_waiting: dict[str, str] = {}  # not yet sent: the signed receipt statement
        self._ack_refused: dict[str, str] = {}  # refused by the relay: why
        self._restored = False

    def restore(self) -> None:
        """Read back what an earlier run of this device learnt, once the vault is open."""
        if self._restored:
            return
        try:
            notes = {kind: self._vault.notes(kind) for kind in _NOTE_KINDS}
        except VaultLocked:
            return
        self._restored = True
        for message_id, value in notes[_NOTE_ACK].items():  # b"": sent; else waiting, refused
            if value.startswith(_WAITING):
                self._ack_waiting.setdefault(message_id, value[len(_WAITING):].decode())
            elif value:
                self._ack_refused.setdefault(message_id, value.decode())
            else:
                self._acked.add(message_id)
        for raw in notes[_NOTE_RECEIPT].values():
            self._add_receipt(msgspec.msgpack.decode(raw, type=ReceiptEvent))
        for raw in notes[_NOTE_ESCALATION].values():
            self._add_step(msgspec.msgpack.decode(raw, type=EscalationEvent))
        for key, raw in notes[_NOTE_FILED].items():
            self.filed.setdefault(key, msgspec.msgpack.decode(raw, type=FiledEvent))
        for raw in notes[_NOTE_NOT_RECEIVED].values():
            self._add_not_received(msgspec.msgpack.decode(raw, type=NotReceivedEvent))
        for user_id, raw in notes[_NOTE_NAME].items():
            self.names.setdefault(user_id, raw.decode())

    # -- names -------------------------------------------------------------------------------

    def display_name(self, user_id: str) -> str:
        if user_id == self._user_id():
            return "you"
        self.restore()
        return self.names.get(user_id, user_id[:8])

    def knows_name(self, user_id: str) -> bool:
        self.restore()
        return user_id == self._user_id() or user_id in self.names

    def remember_name(self, user_id: str, name: str) -> None:
        """A name from a verified certificate: kept in memory and in the vault."""
        if self.names.get(user_id) != name:
            self.names[user_id] = name
            self._vault.put_note(_NOTE_NAME, user_id, name.encode())

    # -- facts from notices ------------------------------------------------------------------

    def _add_receipt(self, receipt: ReceiptEvent) -> bool:
        seen = self._receipts.setdefault(receipt.message_id, [])
        if any((r.device_id, r.kind) == (receipt.device_id, receipt.kind) for r in seen):
            return False
        seen.append(receipt)
        return True

    def receipts_kept_since(self) -> list[ReceiptEvent]:
        """The receipts another program of this profile kept in the vault since this one read
        them (it held the device's relay connection meanwhile, so the relay gave them to it:
        clients/sdk/connection.py, "replaced"), in the order they were signed; each is this
        program's from now on."""
        try:
            raw = self._vault.notes(_NOTE_RECEIPT)
        except VaultLocked:
            return []
        self.restore()  # what earlier runs kept, first: not new
        new = [r for r in (msgspec.msgpack.decode(v, type=ReceiptEvent) for v in raw.values())
               if self._add_receipt(r)]
        return sorted(new, key=lambda r: r.at)

    def _add_step(self, step: EscalationEvent) -> bool:
        steps = self._escalations.setdefault(step.message_id, [])
        if step in steps:
            return False
        steps.append(step)
        return True

    def escalation_steps(self, message_id: str) -> tuple[EscalationEvent, ...]:
        """The escalation steps of a consult heard of, in order (also of one not held)."""
        self.restore()
        return tuple(sorted(self._escalations.get(message_id, ()),
                            key=lambda e: (e.step, e.at)))

    def steps_noted_elsewhere(self) -> list[EscalationEvent]:
        """Escalation steps another program of this device noted in the vault while it held
        the relay connection (``lightbox send``, told at once that nobody is on call:
        docs/PROTOCOL.md §16.4), not known to this run yet: each returned once, in order."""
        self.restore()
        try:
            raws = self._vault.notes(_NOTE_ESCALATION).values()
        except VaultLocked:
            return []
        new = [step for step in (msgspec.msgpack.decode(r, type=EscalationEvent) for r in raws)
               if self._add_step(step)]
        return sorted(new, key=lambda e: (e.at, e.step))

    def _note(self, kind: str, key: str, event: _E, add: Callable[[_E], bool]) -> bool:
        """Keep a fact a notice told: False when known already (``add`` says so), else added
        to memory and written to the vault's notes of ``kind`` under ``key``."""
        self.restore()
        if not add(event):
            return False
        self._vault.put_note(kind, key, msgspec.msgpack.encode(event))
        return True

    def note_receipt(self, receipt: ReceiptEvent) -> bool:
        return self._note(_NOTE_RECEIPT,
                          f"{receipt.message_id}/{receipt.device_id}/{receipt.kind}",
                          receipt, self._add_receipt)

    def note_step(self, step: EscalationEvent) -> bool:
        return self._note(_NOTE_ESCALATION,
                          f"{step.message_id}/{step.step}/{step.kind}/{step.user_id}",
                          step, self._add_step)

    def _add_not_received(self, event: NotReceivedEvent) -> bool:
        told = self._not_received.setdefault(event.message_id, [])
        if any((t.attachment_id, t.user_id) == (event.attachment_id, event.user_id)
               for t in told):
            return False
        told.append(event)
        return True

    def note_not_received(self, event: NotReceivedEvent) -> bool:
        """A person never received an image of one of our messages: kept; False when told
        before (the relay's notice is at-least-once)."""
        return self._note(_NOTE_NOT_RECEIVED,
                          f"{event.message_id}/{event.attachment_id}/{event.user_id}",
                          event, self._add_not_received)

    def not_received(self, message_id: str) -> tuple[NotReceivedEvent, ...]:
        """The people who never received an image of this message, each with the record
        reference as now known and their name, in the order told."""
        self.restore()
        told = sorted(self._not_received.get(message_id, ()), key=lambda t: (t.at, t.user_id))
        return tuple(dataclasses.replace(
            t, record_ref=t.record_ref or self.image_status(t.attachment_id).record_ref,
            display_name=self.names.get(t.user_id, t.display_name)) for t in told)

    def note_filed(self, filed: FiledEvent) -> None:
        self.restore()
        self.filed[filed.attachment_id] = filed
        self._vault.put_note(_NOTE_FILED, filed.attachment_id, msgspec.msgpack.encode(filed))

    # -- delivered and read receipts this device signed, until sent -------------------------

    def receipt_waiting(self, message_id: str, kind: str, statement: str) -> None:
        """A receipt this device signed, to go to the relay: kept in the vault until it has
        (:meth:`receipt_sent`), so a lock, a restart or a relay out of reach does not lose it."""
        self._vault.put_note(_NOTE_RECEIPT_OUT, f"{message_id}/{kind}", statement.encode())

    def receipt_sent(self, message_id: str, kind: str) -> None:
        self._vault.drop_note(_NOTE_RECEIPT_OUT, f"{message_id}/{kind}")

    def waiting_receipts(self) -> dict[tuple[str, str], str]:
        """The receipts not yet sent, this run's and earlier runs': (message id, kind) ->
        the signed statement."""
        waiting = {}
        for key, statement in self._vault.notes(_NOTE_RECEIPT_OUT).items():
            message_id, _, kind = key.rpartition("/")
            waiting[(message_id, kind)] = statement.decode()
        return waiting

    def acknowledging(self, message_id: str, statement: str) -> None:
        """This device acknowledged the message; its signed receipt (``statement``) waits to go
        to the relay, kept in the vault until it has."""
        self.restore()
        self._vault.put_note(_NOTE_ACK, message_id, _WAITING + statement.encode())
        self._ack_waiting[message_id] = statement
        self._ack_refused.pop(message_id, None)

    def waiting_acknowledgements(self) -> dict[str, str]:
        """The acknowledgements not yet sent, this run's and earlier runs': their statements."""
        self.restore()
        return dict(self._ack_waiting)

    def note_acknowledged(self, message_id: str) -> None:
        """The acknowledgement went to the relay: kept across restarts."""
        self.restore()
        self._vault.put_note(_NOTE_ACK, message_id, b"")
        self._ack_waiting.pop(message_id, None)
        self._ack_refused.pop(message_id, None)
        self._acked.add(message_id)

    def note_acknowledgement_refused(self, message_id: str, reason: str) -> None:
        """The relay refused the acknowledgement: the message is not acknowledged."""
        self.restore()
        self._vault.put_note(_NOTE_ACK, message_id, reason.encode() or b"refused")
        self._ack_waiting.pop(message_id, None)
        self._acked.discard(message_id)
        self._ack_refused[message_id] = reason or "refused"

    # -- views -------------------------------------------------------------------------------

    def image_status(self, attachment_id: str) -> ImageStatus:
        filed = self.filed.get(attachment_id)
        times = {"filed_at": filed.filed_at if filed else None,
                 "expires_at": filed.expires_at if filed else None}
        tomb = self._vault.tombstone(attachment_id)
        if tomb is not None:
            return ImageStatus(attachment_id, "shredded", "", tomb.record_reference, **times)
        try:
            info = self._vault.image_info(attachment_id)
        except ItemNotFound:
            state, reason = self.image_state.get(attachment_id, ("pending", ""))
            return ImageStatus(attachment_id, state, reason,
                               filed.record_ref if filed else None, **times)
        return ImageStatus(attachment_id, "stored", "", info.record_reference,
                           info.width, info.height, **times)

    def view(self, message: VaultMessage) -> MessageView:
        self.restore()
        body = body_of(message) or Body(text="(unreadable message)")
        ids = list(dict.fromkeys([*message.attachment_ids,
                                  *(a.attachment_id for a in body.attachments)]))
        # In the order they happened, whatever order the notices arrived (or were read back
        # from the vault) in: by time, then delivered before read before acknowledged.
        receipts = sorted(self._receipts.get(message.message_id, ()),
                          key=lambda r: (r.at, _RECEIPT_ORDER.get(r.kind, 9), r.device_id))
        steps = sorted(self._escalations.get(message.message_id, ()),
                       key=lambda e: (e.step, e.at))
        mid = message.message_id
        return MessageView(message, body, tuple(self.image_status(a) for a in ids),
                           tuple(receipts), mid in self._acked or mid in self._ack_waiting,
                           tuple(steps), acknowledgement_waiting=mid in self._ack_waiting,
                           acknowledgement_refused=self._ack_refused.get(mid, ""),
                           not_received=self.not_received(mid))
