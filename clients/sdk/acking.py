"""What the relay did with an "I'm on it" just sent: kept, or refused and why. One rule for
``lightbox ack`` (clients/clinician/reading.py) and the desktop's *I'm on it*
(clients/desktop/app.py).

The relay answers a refused acknowledgement receipt on the connection the receipt came on, and
a kept one with nothing (docs/PROTOCOL.md §3.5 "Receipts"); the device has one connection at a
time. When another program of the same profile (``lightbox watch``, a ``lightbox`` command, the
desktop) takes that connection before the relay has answered, a refusal goes nowhere and the
receipt is never kept. So the receipt is sent again on the connection the client gets back, and
asked about anew: the relay keeps one receipt per device and kind, and refuses the same one
alike.
"""

from __future__ import annotations

import asyncio

from clients.sdk.client import LightboxClient
from clients.sdk.events import AcknowledgementEvent, ClientEvent

__all__ = ["AcknowledgementUnconfirmed", "acknowledgement_answer", "connections_ended"]

# Seconds between two questions to the relay while it has not answered, growing to the most.
POLL_FIRST = 0.2
POLL_MOST = 1.0


class AcknowledgementUnconfirmed(Exception):
    """The relay neither kept nor refused the acknowledgement in the time given: it may not be
    acknowledged."""


def connections_ended(client: LightboxClient) -> int:
    """How many of the client's connections have ended so far: counted before a receipt goes,
    it tells :func:`acknowledgement_answer` whether the connection it went on was lost."""
    connection = client.connection
    return 0 if connection is None else connection.reconnects


async def acknowledgement_answer(client: LightboxClient, message_id: str, thread_id: str,
                                 answers: asyncio.Queue[ClientEvent], went_on: int, *,
                                 wait: float) -> str | None:
    """Whether the relay took the acknowledgement of ``message_id`` just sent: None once it
    keeps this device's ``acknowledged`` receipt (``GET /v1/threads/{id}/receipts``, signed by
    this device: :meth:`LightboxClient.verified_receipts`), else why it refused it (the
    :class:`AcknowledgementEvent` ``refused`` among ``answers``, subscribed before it went).
    ``went_on``: :func:`connections_ended` when it went; once that connection has ended and
    the client is connected again, the receipt is sent again there. AcknowledgementUnconfirmed
    when neither comes in ``wait`` seconds (counted anew from each sending);
    RelayRequestError or RelayUnavailable when the relay cannot be asked."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    pause = POLL_FIRST
    while loop.time() < deadline:
        while not answers.empty():
            event = answers.get_nowait()
            if isinstance(event, AcknowledgementEvent) and event.state == "refused" \
                    and event.message_id == message_id:
                return event.detail or "refused"
        kept = await client.verified_receipts(thread_id, message_id)
        if any(r.device_id == client.device_id and r.kind == "acknowledged" for r in kept):
            return None
        connection = client.connection
        if connections_ended(client) != went_on and connection is not None \
                and connection.connected.is_set():  # the answers it brought are read above
            went_on = connections_ended(client)
            if await client.acknowledge(message_id, wait=min(wait, 10.0)):
                deadline = loop.time() + wait
                pause = POLL_FIRST
            continue
        await asyncio.sleep(pause)
        pause = min(POLL_MOST, pause * 2)
    raise AcknowledgementUnconfirmed(message_id)
