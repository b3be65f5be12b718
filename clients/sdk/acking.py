"""Which messages this user can say "I'm on it" to, and what the relay did with one just sent:
kept, or refused and why. One rule for ``lightbox inbox`` and ``watch`` (the hint under a
consult), ``lightbox ack`` (clients/clinician/reading.py) and the desktop's *I'm on it*
(clients/desktop/views.py ``acknowledgeable``, clients/desktop/app.py).

"I'm on it" answers a request for help: it tells the consult's sender that this reader is
handling it, and stops its on-call escalation (docs/PROTOCOL.md §16.3; docs/USER_GUIDE.md
"Specialists: answering a consult"). So it is offered only under the consult itself: the
messages that open a thread someone else made, written by its maker, to this user or a role
they hold, before anyone else wrote in it (:func:`why_not_acknowledgeable`). Never under the
user's own message, a reply to a consult they sent (the sender "acknowledging" the
specialist's answer tells the specialist nothing true), a reply or note in someone else's
consult, a note that answers an earlier message (``reply_to``: a break-glass follow-up,
docs/PROTOCOL.md §17; a corrected patient identity), nor the record gateway's messages (its
receipt would go to the gateway). And no longer once this user acknowledged it on any of their
devices (:func:`acknowledged_at`, from receipts those devices signed).

It acknowledges the consult, not one message: the relay stops the consult's escalation
whichever message of the thread it was said to (server/store/escalations.py). So once this user
said it to any message of the opening run, no reader offers it under any of them, and ``lightbox
ack`` of another says it was done; and a reader listing several messages of the opening run
offers it once, under the last of them it lists, nearest the newest information
(:func:`offered_under`; the desktop's ``a`` key takes the last button too). Offered under
every message of the run, acknowledging one left the others offering it, as if the consult
were half acknowledged.

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
from collections.abc import Collection, Sequence

from clients.sdk.client import LightboxClient
from clients.sdk.errors import RelayRequestError, RelayUnavailable
from clients.sdk.events import AcknowledgementEvent, ClientEvent, MessageView
from protocol.body import BodyKind

__all__ = ["AcknowledgementUnconfirmed", "acknowledged_at", "acknowledgement_answer",
           "connections_ended", "offered_under", "offers_acknowledgement", "opening_run",
           "why_not_acknowledgeable"]

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


def why_not_acknowledgeable(client: LightboxClient, view: MessageView,
                            thread: Sequence[MessageView] | None = None,
                            gateways: Collection[str] = ()) -> str | None:
    """None when ``view`` is a consult this user can say "I'm on it" to; else what it is, in
    the words that follow "message ID " (``is yours``, ``is the record gateway's answer, not
    a consult``, ``is NAME's reply in a consult you sent``, ...). ``thread``: the thread's messages
    as :meth:`LightboxClient.thread_messages` lists them (read from the vault when None);
    ``gateways``: the record gateway's user ids among their senders
    (:meth:`LightboxClient.record_gateways`). The relay sees none of this (the bodies are
    sealed), so the clients hold it; the relay checks only the on-call ladder."""
    me, m, body = client.user_id, view.message, view.body
    if m.outgoing or m.sender_user_id == me:
        return "is yours"
    if m.sender_user_id in gateways:
        return "is the record gateway's answer, not a consult"
    if body.kind is not BodyKind.TEXT:
        return "is a notice in the consult"
    views = client.thread_messages(m.thread_id) if thread is None else thread
    info = next((t for t in client.cached_threads() if t.thread_id == m.thread_id), None)
    # The consult's maker: the thread's creator as the relay lists it, else the author of the
    # first message held (a consult handed over at a shift change is its author's: §16.4).
    people = [v for v in views if v.message.sender_user_id not in gateways]
    maker = info.created_by if info is not None else (
        client.authorship(people[0].message, people[0].body).author_user_id if people
        else None)
    author = client.authorship(m, body).author_user_id
    if maker == me:
        return f"is {client.display_name(author)}'s reply in a consult you sent"
    if body.reply_to is not None:
        return ("is a note about an earlier message (a break-glass follow-up, a corrected "
                "patient identity)")
    if author != maker:
        return f"is {client.display_name(author)}'s reply in the consult"
    # The opening run: the maker's messages before anyone else wrote (the gateway's answers
    # are not anyone: they ask nothing and answer no one).
    ids = {m.message_id}
    for v in people:
        if {v.message.message_id, *(c.message_id for c in v.copies)} & ids:
            return None
        if client.authorship(v.message, v.body).author_user_id != maker:
            return "is a later message in the consult"
    return None


def opening_run(client: LightboxClient, thread: Sequence[MessageView],
                gateways: Collection[str] = ()) -> list[MessageView]:
    """The messages of ``thread`` (:meth:`LightboxClient.thread_messages`) this user can say
    "I'm on it" to (:func:`why_not_acknowledgeable`), in order: the consult's opening run, or
    nothing when it asks this user nothing. Saying it to one says it to the consult."""
    return [v for v in thread if why_not_acknowledgeable(client, v, thread, gateways) is None]


def offered_under(run: Sequence[MessageView], listed: Sequence[MessageView]) -> str | None:
    """The message id under which a reader that shows ``listed`` (in the order it shows them)
    puts the consult's "I'm on it", or what it says of it once said: the last message of its
    opening run (``run``: :func:`opening_run`) among them; None when it lists none of them."""
    ids = {i for v in run for i in _ids(v)}
    shown = [v for v in listed if _ids(v) & ids]
    return shown[-1].message.message_id if shown else None


def _ids(view: MessageView) -> set[str]:
    """A message's id and its copies' (a consult handed over by several devices, §16.4)."""
    return {view.message.message_id, *(c.message_id for c in view.copies)}


async def acknowledged_at(client: LightboxClient, run: Sequence[MessageView]) -> int | None:
    """When the relay took this user's ``acknowledged`` receipt of the consult whose opening
    run is ``run`` (:func:`opening_run`): of any of its messages or their copies, from any of
    their devices, signed by that device (:meth:`LightboxClient.verified_receipts`); None when
    it keeps none or cannot be asked now."""
    ids = {i for v in run for i in _ids(v)}
    if not ids:
        return None
    try:
        kept = await client.verified_receipts(run[0].message.thread_id)
    except (RelayRequestError, RelayUnavailable):
        return None
    at = [r.at for r in kept if r.message_id in ids and r.user_id == client.user_id
          and r.kind == "acknowledged"]
    return min(at) if at else None


async def offers_acknowledgement(client: LightboxClient, view: MessageView, *,
                                 ask_relay: bool = True,
                                 listed: Sequence[MessageView] = ()) -> bool:
    """Whether a reader shows "I'm on it" under ``view`` (``lightbox inbox``'s and ``watch``'s
    hint): a consult this user can acknowledge (:func:`why_not_acknowledgeable`) that they
    have not acknowledged, to any message of its opening run, on this device or another of
    theirs (:func:`acknowledged_at`; the relay out of reach, it is offered: ``lightbox ack``
    then says what the relay keeps); and ``view`` is the last message of that run among
    ``listed``, the messages the reader shows with it in the order it shows them
    (:func:`offered_under`; ``view`` alone when empty: ``watch`` showing one as it arrives).
    Without ``ask_relay`` (a reader that knows the relay is out of reach), from what this
    device knows alone: no sender is known as the record gateway (whose messages are never
    a consult's opening run anyway), and only an acknowledgement from this device counts."""
    thread = client.thread_messages(view.message.thread_id)
    gateways = await client.record_gateways({v.message.sender_user_id for v in thread}
                                            | {view.message.sender_user_id}) \
        if ask_relay else set()
    if why_not_acknowledgeable(client, view, thread, gateways) is not None:
        return False
    run = opening_run(client, thread, gateways)
    if offered_under(run, [*listed] or [view]) not in _ids(view):
        return False
    if view.acknowledged_by_me or any(v.acknowledged_by_me for v in run):
        return False
    return not ask_relay or await acknowledged_at(client, [view, *run]) is None
