"""What the SDK client tells an application, and what it returns: the events of
:meth:`clients.sdk.client.LightboxClient.events` (and ``on_event``), a sent message, and a
stored message as a view (its body, image states, receipts and escalation steps).

Plain frozen data, no I/O. A message event or view holds the decrypted message: an
application must not log it (STYLE.md: no PHI in logs).
"""

from __future__ import annotations

import dataclasses

from clients.sdk.vault import VaultMessage
from protocol.body import Body
from protocol.errors import CloseCode
from protocol.frames import Deliver

__all__ = [
    "AcknowledgementEvent",
    "ClientEvent",
    "EscalationEvent",
    "ExpiredEvent",
    "FiledEvent",
    "ImageEvent",
    "ImageStatus",
    "MessageEvent",
    "MessageView",
    "NotReceivedEvent",
    "OutboxEvent",
    "ReceiptEvent",
    "SentMessage",
    "StatusEvent",
    "WithdrawnEvent",
]


@dataclasses.dataclass(frozen=True)
class MessageEvent:
    """A message arrived and is stored in the vault."""

    message: VaultMessage
    body: Body


@dataclasses.dataclass(frozen=True)
class ImageEvent:
    """An image of a message changed state: ``stored``, ``refused`` (consent check failed:
    never shown), ``failed`` (will be retried), ``shredded``."""

    attachment_id: str
    message_id: str
    thread_id: str
    status: str
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class ReceiptEvent:
    """A recipient's signed receipt of one of our messages (verified)."""

    message_id: str
    user_id: str
    device_id: str
    kind: str
    at: int
    display_name: str = ""


@dataclasses.dataclass(frozen=True)
class FiledEvent:
    attachment_id: str
    message_id: str
    thread_id: str
    filed_at: int
    expires_at: int
    record_ref: str | None


@dataclasses.dataclass(frozen=True)
class ExpiredEvent:
    attachment_id: str
    thread_id: str
    record_ref: str | None
    reason: str


@dataclasses.dataclass(frozen=True)
class NotReceivedEvent:
    """A person one of our images was sent to never received it on any of their devices
    before its copies expired, and never will (docs/PROTOCOL.md §15 "Never received"):
    ``reason`` ``filed`` (it is in the patient's record, ``record_ref`` when this device knows
    it) or ``hard_limit`` (never filed). ``display_name`` from their verified certificate."""

    message_id: str
    thread_id: str
    attachment_id: str
    user_id: str
    reason: str
    at: int
    record_ref: str | None = None
    display_name: str = ""

    def sentence(self, consult: str) -> str:
        """What the sender is told, the same on every client (the phone's worker.ts says it
        too): ``consult`` names the consult as the reader knows it (``consult "Wrist"``)."""
        who = self.display_name or self.user_id[:8]
        where = (f"it was filed to the patient's record"
                 f"{f' ({self.record_ref})' if self.record_ref else ''}"
                 if self.reason == "filed" else "it was NOT filed to the patient's record")
        return (f"{who} never received the image of {consult} on any device before its "
                f"copies expired: {where}. Phone or page them.")


@dataclasses.dataclass(frozen=True)
class WithdrawnEvent:
    message_id: str
    thread_id: str
    reason: str


@dataclasses.dataclass(frozen=True)
class StatusEvent:
    """Connection state (``connected``, ``disconnected``, ``stopped``) or a problem to show
    (``error`` with ``detail``, and ``code``: the protocol error code that explains it, where
    a client's wording depends on it).

    ``close_code``, for ``disconnected`` and ``stopped``: the websocket close code that ended
    the connection (docs/PROTOCOL.md §3.4), None when there was none (the network dropped, the
    relay was out of reach, the client stopped). :attr:`replaced` tells the one that is no
    loss: another connection of this same device (another program on its profile) has the
    relay for now, and the client connects again after it (clients/sdk/connection.py)."""

    state: str
    detail: str = ""
    code: str = ""
    close_code: int | None = None
    # For an ``error`` about a delivery the client dropped (its sender's device revoked, or
    # their account suspended: docs/HAZARD_LOG.md HAZ-10): the delivery, so that an
    # application can mark its consult; None for every other event.
    dropped: Deliver | None = None

    @property
    def replaced(self) -> bool:
        """Closed because a newer connection of this device opened (4003 SESSION_REPLACED)."""
        return self.close_code == CloseCode.SESSION_REPLACED


@dataclasses.dataclass(frozen=True)
class EscalationEvent:
    """An on-call escalation step of a consult (PROTOCOL.md §16): ``renotify``, ``released`` (to the
    next on the ladder, ``user_id``), ``handover`` at a shift change, or ``no_shift``: nobody
    is on call for the role, and the consult waits for its next shift (``next_shift_at``, None
    when the rota has none yet; §16.4)."""

    thread_id: str
    message_id: str
    kind: str
    step: int
    level: int
    user_id: str
    at: int
    next_shift_at: int | None = None


@dataclasses.dataclass(frozen=True)
class OutboxEvent:
    """A send kept in the outbox (by an earlier run, or by this one while the relay was out of
    reach) was resent, at start or on reconnection (docs/PROTOCOL.md §3.5 "Outbox"): ``sent``
    (stored by the relay as ``thread_seq``; answered as a duplicate if it had been stored
    before), ``refused`` (refused for good and removed from the outbox: ``detail`` says why),
    ``pending`` (the relay is unreachable again: kept for the next connection) or
    ``unreadable`` (it cannot be read or sealed: kept, never sent, for the user to remove;
    ``detail`` names the invalid field, never its value)."""

    message_id: str
    thread_id: str
    state: str
    detail: str = ""
    thread_seq: int = 0


@dataclasses.dataclass(frozen=True)
class AcknowledgementEvent:
    """What became of this device's "I'm on it" (docs/PROTOCOL.md §8, §16): ``sent`` (its
    signed receipt went to the relay; kept on the device until it could) or ``refused`` (the
    relay refused it, ``detail`` says why: ``not_on_ladder`` for someone not on the consult's
    on-call ladder). A refused acknowledgement is not one: the message can be acknowledged
    again."""

    message_id: str
    thread_id: str
    state: str
    detail: str = ""


ClientEvent = (MessageEvent | ImageEvent | ReceiptEvent | FiledEvent | ExpiredEvent
               | WithdrawnEvent | EscalationEvent | StatusEvent | OutboxEvent
               | AcknowledgementEvent | NotReceivedEvent)


@dataclasses.dataclass(frozen=True)
class SentMessage:
    message_id: str
    thread_id: str
    thread_seq: int
    attachment_ids: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ImageStatus:
    """What a client can show for one attachment of a message."""

    attachment_id: str
    state: str  # stored | pending | refused | failed | shredded
    reason: str = ""
    record_ref: str | None = None
    width: int | None = None
    height: int | None = None
    filed_at: int | None = None
    expires_at: int | None = None


@dataclasses.dataclass(frozen=True)
class MessageView:
    """A stored message with its decoded body, image states, the receipts seen and the
    on-call escalation steps heard of (PROTOCOL.md §16), in order.

    ``acknowledged_by_me``: this device said "I'm on it" and the relay has not refused it;
    ``acknowledgement_waiting``: that receipt is still on this device, not yet sent (the relay
    out of reach); ``acknowledgement_refused``: why the relay refused this device's last
    acknowledgement of it ("" if it did not). ``copies``: the other copies of the same consult
    this device holds, handed over again by other devices at a shift change and not listed
    (clients/sdk/handover.py ``one_per_consult``)."""

    message: VaultMessage
    body: Body
    images: tuple[ImageStatus, ...]
    receipts: tuple[ReceiptEvent, ...]
    acknowledged_by_me: bool
    escalations: tuple[EscalationEvent, ...] = ()
    acknowledgement_waiting: bool = False
    acknowledgement_refused: str = ""
    not_received: tuple[NotReceivedEvent, ...] = ()  # people who never received its image
    copies: tuple[VaultMessage, ...] = ()
