"""Client side of on-call (docs/PROTOCOL.md §16): answering a relay's ``reseal_request``.

At a shift handover the relay asks a device that holds a consult's content (the sender's, or
one it reached) to seal it for the incoming clinician's devices: the relay is blind and cannot
do it. A sealed message's recipients are part of its signed header, so the answer is a *new*
message in the same thread carrying the same body, sealed for the thread's current
participants (``GET /v1/threads/{id}/recipients``, whose certificates the caller verifies
first, as for any send). The relay treats any message a requested holder sends to the thread
afterwards as the answer and drops the request.

:func:`answer_reseal` is pure (no I/O); the SDK wires it to the socket (it must keep the
plaintext of its unacknowledged role consults, or read it back from its vault).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import msgspec

from protocol import envelope
from protocol.frames import ResealRequest
from protocol.keys import DeviceKeys
from protocol.model import MessageHeader, SealedMessage

__all__ = ["answer_reseal"]


def answer_reseal(request: ResealRequest, original: MessageHeader, body: bytes, *,
                  sender: DeviceKeys, recipients: Sequence[envelope.RecipientBundle],
                  sender_user_id: str | None = None, now: int | None = None,
                  message_id: str | None = None) -> SealedMessage:
    """The original consult's ``body`` sealed again by ``sender`` for ``recipients`` (every
    current participant's device but the sender's, which must include ``request.devices``).

    The header keeps the original's purpose, priority, consent and attachments (the new
    devices are granted the attachments by the relay as for any message); it gets a new
    message id and time, and names this device (and ``sender_user_id``, default the original
    sender: pass yours when you are a recipient answering) as the sender. Raises ValueError when the
    request is for another message or a requested device is missing from ``recipients``."""
    if request.message_id != original.message_id or request.thread_id != original.thread_id:
        raise ValueError("the reseal request is for another message")
    devices = [r.device.device_id for r in recipients]
    missing = set(request.devices) - set(devices)
    if missing:
        raise ValueError(f"{len(missing)} requested devices are not among the recipients")
    header = msgspec.structs.replace(
        original, message_id=message_id or str(uuid.uuid4()),
        sent_at=int(time.time()) if now is None else now,
        sender_device_id=sender.device_id,
        sender_user_id=sender_user_id or original.sender_user_id, recipient_devices=devices)
    return envelope.seal_message(header, body, sender=sender, recipients=recipients)
