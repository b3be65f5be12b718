"""Reading consults on the command line: ``lightbox threads`` (urgent first, unread counts,
break-glass reminders), ``lightbox inbox``, ``lightbox outbox`` and ``lightbox watch``; each message
with its kind, images, receipts and escalation steps, from the vault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import getpass
import os
import ssl
import sys
import time
import uuid
from collections.abc import Sequence

import httpx
import msgspec

from clients.clinician.device import password_prompt
from clients.clinician.shell import (
    command_client,
    consent_of,
    print_problems,
    problem_line,
    unlock_profile,
    when,
)
from clients.sdk.acking import (
    AcknowledgementUnconfirmed,
    acknowledged_at,
    acknowledgement_answer,
    connections_ended,
    offers_acknowledgement,
    opening_run,
    why_not_acknowledgeable,
)
from clients.sdk.client import (
    ClientEvent,
    EscalationEvent,
    ExpiredEvent,
    FiledEvent,
    ImageEvent,
    ImageStatus,
    LightboxClient,
    MessageEvent,
    MessageView,
    NotReceivedEvent,
    OutboxEvent,
    ReceiptEvent,
    StatusEvent,
    WithdrawnEvent,
)
from clients.sdk.connection import ConnectionStopped
from clients.sdk.errors import (
    FlowError,
    LoggedOut,
    RelayRequestError,
    RelayUnavailable,
    SDKError,
    causes,
)
from clients.sdk.failures import run_async
from clients.sdk.handover import authorship_line, copies_line
from clients.sdk.notices import wiped_event
from clients.sdk.profile import ProfileDevice
from clients.sdk.sending import UnreadableSend, check_readable
from clients.sdk.threads import listing_order
from clients.sdk.timefmt import format_time
from clients.sdk.transport import certificate_refusal
from clients.sdk.vault import (
    ItemNotFound,
    OutboxRecord,
    VaultError,
    VaultLocked,
    VaultMessage,
    VaultPassphraseError,
)
from clients.sdk.wording import counted
from protocol import api
from protocol.body import Body, BodyKind
from protocol.errors import ErrorCode

__all__ = [
    "ACK_WAIT",
    "OFFLINE_LINE",
    "REPLACED_LINE",
    "UNREACHABLE_LINE",
    "WAITING_LINE",
    "about_a_consult_here",
    "ack_command",
    "ack_hint",
    "describe",
    "describe_escalation",
    "describe_outbox",
    "drop_pending",
    "held_threads",
    "inbox_command",
    "kind_line",
    "learn_escalation_names",
    "learn_message_names",
    "outbox_command",
    "pending_line",
    "print_message",
    "print_outbox_event",
    "print_pending_count",
    "receipt_line",
    "subject",
    "thread_people",
    "threads_command",
    "unreadable_sentence",
    "watch_command",
]


def subject(client: LightboxClient, thread_id: str) -> str:
    views = client.thread_messages(thread_id)
    if not views:  # its first message still on its way, or dropped (said when it was)
        return "(no message on this device yet)"
    for view in views:
        if view.body.subject:
            return view.body.subject
    return "(no subject yet)"


def threads_command(args: argparse.Namespace) -> int:
    """``lightbox threads``: the consults, urgent first, with their unread counts. With the
    relay out of reach, those this device holds, under :data:`OFFLINE_LINE` (exit status 1:
    :func:`_start_or_offline`)."""
    device = unlock_profile(args)

    async def go() -> int:
        client = command_client(device)
        try:
            # Synced first, as `inbox` is: unread is what this device holds and has not read
            # (LightboxClient.unread_messages), the one definition both commands count.
            events = client.subscribe()
            if (down := await _start_or_offline(client, args.timeout)) is not None:
                print(OFFLINE_LINE.format(reason=down.reason, command="threads"),
                      file=sys.stderr, flush=True)
                _print_threads(client, held_threads(client))
                return 1
            print_problems(events, outbox=print_outbox_event)
            threads = await client.threads()
            with contextlib.suppress(SDKError):  # names from verified certificates
                await client.ensure_names({u for t in threads for u in t.members})
            _print_threads(client, threads)
        finally:
            await client.close()
        return 0

    return run_async(go)


def _print_threads(client: LightboxClient, threads: list[api.ThreadInfo]) -> None:
    """``threads``' lines, from what this device holds (names as it learnt them)."""
    for t in threads:
        flag = "URGENT " if t.priority == "urgent" else "       "
        print(f"{flag}{t.thread_id}  {subject(client, t.thread_id)}  "
              f"[{thread_people(client, t)}]  "
              f"{client.unread(t.thread_id)} unread")
        for line in not_received_lines(client, t.thread_id):
            print(f"        {line}")
        if t.break_glass_pending:
            print(f"        BREAK-GLASS: {t.break_glass_pending} emergency message(s) "
                  "sent without consent: seek the patient's consent, or file why "
                  "none was possible (lightbox break-glass)")
    print(counted(len(threads), "thread"))
    print_pending_count(client)


# What `inbox` and `threads` say first, on stderr, when the relay cannot be reached: what
# follows on stdout is this device's own copies (the desktop and the phone app show them in an
# outage too), and what only the relay can tell may have changed (docs/USER_GUIDE.md "Follow
# it"). On stderr as every command says why it ends with a failure status, and the listing
# on stdout is the same as when connected.
OFFLINE_LINE = ("error: cannot reach the relay ({reason}): what follows is what this device "
                "holds now; delivery states, acknowledgements by colleagues, consent changes "
                "and expiry orders may be newer at the relay (run `lightbox {command}` again "
                "once it answers)")


async def _start_or_offline(client: LightboxClient, timeout: float) -> RelayUnavailable | None:
    """Start ``client`` and wait until it has synced; or, when the relay cannot be reached
    to start (a login or the revocation list could not be fetched: clients/sdk/client.py
    ``start``), or stops answering before the device is up to date, why: the command then
    shows what the device holds without asking the relay for any more of it, and ends with
    exit status 1, as every command
    that could not do all it does because the relay was out of reach (``logout``, ``ack``).
    Nothing is changed on the device for it: an image is deleted only on the relay's expiry
    order (docs/PROTOCOL.md §15), which comes at the next connection. A refusal (revoked,
    suspended, a session ended) raises as before."""
    try:
        await client.start()
        # The relay may go down between the start and the backlog: said at once, not a
        # ``timeout`` later.
        await client.wait_synced(timeout, unreachable=True)
    except RelayUnavailable as exc:
        return exc
    return None


def held_threads(client: LightboxClient) -> list[api.ThreadInfo]:
    """The threads this device knows without the relay, in the relay's listing order
    (clients/sdk/threads.py ``listing_order``): as the relay last listed them (kept in the
    vault), and each other thread it holds messages of, as its messages tell it (a consult
    that came while only ``watch`` ran, never listed yet: its roles unknown, its members
    those who wrote in it)."""
    known = {t.thread_id: t for t in client.cached_threads()}
    held: dict[str, list[VaultMessage]] = {}
    for _, message_id in client.vault.message_ids_after(0):
        with contextlib.suppress(ItemNotFound):
            message = client.vault.message(message_id)
            held.setdefault(message.thread_id, []).append(message)
    for thread_id, messages in held.items():
        last = max(m.thread_seq for m in messages)
        info = known.get(thread_id)
        if info is not None:
            known[thread_id] = msgspec.structs.replace(info, last_seq=max(info.last_seq, last))
            continue
        first = min(messages, key=lambda m: m.sent_at)
        known[thread_id] = api.ThreadInfo(
            thread_id=thread_id, priority="urgent" if any(
                m.priority == "urgent" for m in messages) else "routine",
            created_by=first.sender_user_id, created_at=int(first.sent_at), last_seq=last,
            unread=0, members=list(dict.fromkeys([client.user_id,
                                                  *(m.sender_user_id for m in messages)])),
            roles=[])
    return sorted(known.values(), key=listing_order)


# How many of the people in a thread ``threads`` names; the rest are counted.
NAMED_PEOPLE = 3


def thread_people(client: LightboxClient, thread: api.ThreadInfo) -> str:
    """Whom a thread reaches besides the user, as ``threads`` lists it: its roles (which
    reach whoever is on call for them, or holds them: docs/PROTOCOL.md §16.2), then the
    people in it by name (those named when it was made, those who joined, such as an
    acknowledger on a rota's ladder, and those reached through a role who wrote in it), the
    rest counted."""
    wrote = [v.message.sender_user_id for v in client.thread_messages(thread.thread_id)
             if not v.message.outgoing and v.body.kind is BodyKind.TEXT]
    others = [u for u in dict.fromkeys([*thread.members, *wrote]) if u != client.user_id]
    names = [client.display_name(u) for u in others[:NAMED_PEOPLE]]
    if len(others) > NAMED_PEOPLE:
        names.append(counted(len(others) - NAMED_PEOPLE, "more person", "more people"))
    reach = [*(f"role:{r}" for r in thread.roles), *names]
    return f"with {', '.join(reach)}" if reach else "only you"


def print_message(client: LightboxClient, event: MessageEvent) -> None:
    m, body = event.message, event.body
    flag = "URGENT " if m.priority == "urgent" else ""
    # A consult handed over at a shift change is shown as its author wrote it, when they did
    # (docs/PROTOCOL.md §16.4), not as the device that sealed it again (clients/sdk/handover.py).
    author = client.authorship(m, body)
    sender = client.display_name(author.author_user_id)
    if not author.confirmed:
        sender += f" (as handed over by {client.display_name(author.resealed_by)})"
    print(f"{flag}[{when(author.written_at)}] {sender} in {m.thread_id[:8]}: "
          f"{(body.subject + ' - ') if body.subject else ''}{body.text or kind_line(body)}",
          flush=True)
    handed = authorship_line(author, client.display_name, when)
    if handed:
        print(f"    {handed}", flush=True)
    if m.emergency is not None:
        print(f"    BREAK-GLASS ({m.emergency.replace('_', ' ')}): sent without consent in an "
              f"emergency: {body.emergency_reason or '(no reason given)'}", flush=True)
    flagged = {b.attachment_id: b.kinds for b in body.burned_in_identifiers}
    for a in body.attachments:
        print(f"    image {a.attachment_id} ({a.width}x{a.height}, {a.size} bytes)", flush=True)
        if a.attachment_id in flagged:
            kinds = ", ".join(k.value.replace("_", " ") for k in flagged[a.attachment_id])
            print(f"    this image shows patient identifiers: {kinds}", flush=True)


# A photo of a film or monitor filed with no original study to link (the gateway's
# ``original_search``, protocol/body.py FilingReceipt): what the reader does instead, as the
# desktop says it (CLINICAL_SAFETY.md, "A photo of an x-ray is not the study itself").
ORIGINAL_SEARCH_LINES = {
    "none": "original study: none found in PACS for this patient around this date; look in "
            "the PACS by the patient's ID and the date, and tell the record gateway's operator "
            "if the study is there",
    "failed": "original study: the record gateway could not search PACS for it (its operator "
              "can see why in its log); look in the PACS by the patient's ID and the date",
}


def kind_line(body: Body) -> str:
    """What a body without text says: filing receipts, consents sent for filing."""
    if body.filing is not None:
        f = body.filing
        line = f"image {f.attachment_id[:8]} filed in the record (study {f.study_instance_uid})"
        for o in f.original_studies:
            line += (f"\n    original study: {'/'.join(o.modalities) or '?'} "
                     f"{o.study_date or ''} {o.url or o.study_instance_uid}")
        if f.original_search in ORIGINAL_SEARCH_LINES:  # a photo of a film: none to link
            line += f"\n    {ORIGINAL_SEARCH_LINES[f.original_search]}"
        return line
    if body.consent_filing is not None:
        c = body.consent_filing
        return (f"consent {c.consent_id[:8]} ({c.decision}) filed in the record "
                f"(study {c.study_instance_uid})")
    if body.kind is BodyKind.CONSENT_RECORD:
        return "a consent sent to the record gateway for filing"
    return ""


def pending_line(client: LightboxClient, record: OutboxRecord) -> str:
    body = client.pending_body(record)
    what = (body.subject + " - ") if body.subject else ""
    what += body.text or ("an image" if record.image or record.attachment_ids else "")
    image = "" if record.image is None or record.image.uploaded else " (image upload not finished)"
    try:
        check_readable(record)
    except UnreadableSend as exc:
        image += f" (cannot be read or sealed: {exc.reason}; lightbox outbox --drop ID removes it)"
    return (f"waiting since [{when(record.created_at)}] in {record.thread_id[:8]}: "
            f"{what[:60]}{image}  (message {record.message_id})")


def print_pending_count(client: LightboxClient) -> None:
    pending = client.pending_sends()
    if pending:
        print(f"{counted(len(pending), 'message')} not yet stored by the relay: they are sent "
              "again the next time this device connects (lightbox outbox lists them)")


def outbox_command(args: argparse.Namespace) -> int:
    """The sends the relay has not stored yet (kept in the vault; resent on the next start)."""
    device = unlock_profile(args)
    client = command_client(device)
    if args.drop:
        return drop_pending(client, args.drop)
    pending = client.pending_sends()
    for record in pending:
        print(pending_line(client, record))
    print(f"{counted(len(pending), 'message')} waiting to be sent"
          + (": they are sent again the next time this device connects (lightbox inbox, "
             "watch or send)" if pending else ""))
    return 0


def drop_pending(client: LightboxClient, message_id: str) -> int:
    """``lightbox outbox --drop ID``: forget one send kept in the outbox (never sent, or one
    that cannot be read), saying what it was."""
    record = next((r for r in client.pending_sends() if r.message_id == message_id), None)
    if record is None or not client.vault.drop_outbox(message_id):
        raise FlowError(f"no message {message_id} is waiting in the outbox (lightbox outbox "
                        "lists them)", code=ErrorCode.NOT_FOUND.value)
    what = "with an image" if record.image or record.attachment_ids else "a text"
    print(f"removed message {message_id} ({what}, kept since {when(record.created_at)} for "
          f"thread {record.thread_id}) from the outbox: it was not sent and will not be")
    return 0


def print_outbox_event(event: OutboxEvent) -> None:
    line = describe_outbox(event)
    print(line, file=sys.stderr if event.state in {"refused", "unreadable"} else sys.stdout,
          flush=True)


def describe_outbox(event: OutboxEvent) -> str:
    if event.state == "sent":
        return (f"-- message {event.message_id} (sent earlier from this device) is now stored "
                f"by the relay in thread {event.thread_id} (#{event.thread_seq})")
    if event.state == "refused":
        return (f"-- message {event.message_id} (sent earlier from this device) was NOT sent: "
                f"{event.detail}; it was removed from the outbox")
    if event.state == "unreadable":
        return unreadable_sentence(event.message_id, event.detail)
    return (f"-- message {event.message_id} is still waiting to be sent: {event.detail}")


def unreadable_sentence(message_id: str, reason: str) -> str:
    """An outbox entry that cannot be read or sealed (SDK ``UnreadableSend``): kept, never
    sent, never in the way of the rest; the user removes it."""
    return (f"-- message {message_id} in the outbox cannot be read or sealed ({reason}), so "
            f"it is not sent: remove it with `lightbox outbox --drop {message_id}` and send "
            "it again")


def inbox_command(args: argparse.Namespace) -> int:
    """``lightbox inbox``: the unread messages, urgent first, then oldest first. With the relay
    out of reach, those this device holds, under :data:`OFFLINE_LINE` (exit status 1:
    :func:`_start_or_offline`)."""
    device = unlock_profile(args)

    async def go() -> tuple[int, int]:
        client = command_client(device)
        shown = 0
        try:
            events = client.subscribe()
            if (down := await _start_or_offline(client, args.timeout)) is not None:
                print(OFFLINE_LINE.format(reason=down.reason, command="inbox"), file=sys.stderr,
                      flush=True)
                threads = held_threads(client)
                unread = {t.thread_id: client.unread_messages(t.thread_id) for t in threads}
                # names as this device last learnt them; withdrawals the relay told it
                withdrawn = client.vault.consent_withdrawals()
            else:
                print_problems(events, outbox=print_outbox_event)
                threads = await client.threads()
                await client.fetch_missing_images()  # waits for downloads already under way
                unread = {t.thread_id: client.unread_messages(t.thread_id) for t in threads}
                # names from verified certificates, not only of senders heard from in this run
                await client.ensure_names(u for views in unread.values() for v in views
                                          for u in message_names(client, v.message, v.body))
                withdrawn = await client.refresh_consents(
                    [c for views in unread.values() for v in views
                     if (c := consent_of(v.body)) is not None])
            # Urgent first (docs/USER_GUIDE.md: "--urgent puts the consult at the top of the
            # specialist's inbox"), then in the order written, across threads.
            arrived = {mid: n for n, mid in client.vault.message_ids_after(0)}
            listed = sorted((v for views in unread.values() for v in views),
                            key=functools.partial(_reading_order, client, arrived))
            for view in listed:
                await print_view(client, view, withdrawn, offline=down is not None,
                                 listed=listed)
                shown += 1
            if args.mark_read:  # offline too: the read receipts go at the next connection
                for t in threads:
                    await client.mark_read(t.thread_id)
            print_pending_count(client)
        finally:
            await client.close()
        return shown, 0 if down is None else 1

    count, status = run_async(go)
    print(counted(count, "unread message"))
    return status


async def print_view(client: LightboxClient, view: MessageView,
                     withdrawn: dict[str, int], *, offline: bool = False,
                     listed: Sequence[MessageView] = ()) -> None:
    """One held message as ``inbox`` shows it, and ``watch`` the ones held when it starts:
    its header and text, its other copies, each image's state, whom its image never reached,
    its consent withdrawn (``withdrawn``: :meth:`LightboxClient.refresh_consents`), and the
    command that acknowledges it. ``offline``: the relay is out of reach, so it is not asked
    (what this device knows alone: an image deleted is said so, not whether it ever reached
    the device; "I'm on it" is offered unless acknowledged here). ``listed``: every message
    printed with it, in order: a consult's "I'm on it" goes once, under the last message of
    its opening run printed (clients/sdk/acking.py)."""
    print_message(client, MessageEvent(view.message, view.body))
    if view.copies:  # handed over by several devices: listed once (§16.4)
        print(f"    {copies_line(view.copies, client.display_name)}", flush=True)
    never_here = set() if offline else await _expired_before_arrival(client, view)
    for img in view.images:
        print(f"    {image_line(img, never_here=img.attachment_id in never_here)}", flush=True)
    for told in view.not_received:
        consult, _ = _consult_of(client, view.message.thread_id, told.message_id)
        print(f"    {told.sentence(consult)}", flush=True)
    consent_id = consent_of(view.body)
    if consent_id in withdrawn:
        print(f"    consent withdrawn {format_time(withdrawn[consent_id])}: the patient's "
              "consent no longer covers this message", flush=True)
    if await offers_acknowledgement(client, view, ask_relay=not offline, listed=listed):
        print(ack_hint(view.message.message_id), flush=True)  # not once acknowledged anywhere


def _reading_order(client: LightboxClient, arrived: dict[str, int],
                   view: MessageView) -> tuple[bool, float, int]:
    """Where an unread message comes in ``inbox``: urgent first, then by the time its line
    shows (when its author wrote it), oldest first; within one second (a header's time is in
    whole seconds), in the order the device received them (``arrived``: the vault's arrival
    numbers, clients/sdk/vault.py)."""
    m = view.message
    return (m.priority != "urgent", client.authorship(m, view.body).written_at,
            arrived.get(m.message_id, 0))


def image_line(img: ImageStatus, *, never_here: bool = False) -> str:
    """One image's state; a shredded copy names where the record keeps it, as the desktop
    does (clients/desktop/static/app.js ``imageBlock``). ``never_here``: its expiry came
    before the image reached this device (:func:`_expired_before_arrival`), so it was never
    shown here: said so, not "shredded"."""
    if img.state == "shredded" and never_here:
        if img.record_ref:
            return (f"image {img.attachment_id[:8]}: filed to the patient's record before it "
                    f"reached this device, so never shown here - in the record: "
                    f"{img.record_ref}")
        return (f"image {img.attachment_id[:8]}: expired before it reached this device, so "
                "never shown here")
    line = f"image {img.attachment_id[:8]}: {img.state} {img.reason}".rstrip()
    if img.state == "shredded" and img.record_ref:
        line += f" - in the record: {img.record_ref}"
    return line


async def _expired_before_arrival(client: LightboxClient, view: MessageView) -> set[str]:
    """:meth:`LightboxClient.never_here` of ``view``, over the receipts the relay keeps of it
    (``GET /v1/threads/{id}/receipts``, verified); empty when the relay cannot say."""
    m = view.message
    if m.outgoing or not any(i.state == "shredded" for i in view.images):
        return set()  # nothing to ask the relay
    try:
        kept = await client.verified_receipts(m.thread_id, m.message_id)
    except (RelayRequestError, RelayUnavailable):
        return set()
    return client.never_here(view, kept)


async def _images_gone_before(client: LightboxClient, progress: _Progress,
                              event: MessageEvent) -> list[str]:
    """``watch``: the lines of a message's images deleted before it was shown, as ``inbox``
    says them (:func:`image_line`), each once (``progress.gone``). :func:`print_message` lists
    the images its body carries, and an image whose expiry order came before the message
    (after a reconnect the relay sends orders before deliveries, docs/PROTOCOL.md §15) is left
    out of the body stored (clients/sdk/receiving.py), and never fetched: without its line the
    consult would read as text only (docs/HAZARD_LOG.md HAZ-02 C21). One listed but deleted
    before the message was shown is said too: its filing and expiry, held back until now
    (:func:`_image_news`), are said here, under the consult."""
    view = client.view(event.message)
    gone = dataclasses.replace(view, images=tuple(
        i for i in view.images if i.state == "shredded" and i.attachment_id not in progress.gone))
    progress.gone.update(i.attachment_id for i in gone.images)
    never_here = await _expired_before_arrival(client, gone)
    return [f"    {image_line(i, never_here=i.attachment_id in never_here)}"
            for i in gone.images]


async def _image_news(client: LightboxClient, progress: _Progress,
                      event: FiledEvent | ExpiredEvent) -> str | None:
    """``watch``: an image's filing or expiry as one true account, whenever it is told (as it
    runs, or all at once when it catches up after the device was off: the relay then sends
    the filing notice and the expiry order together, docs/PROTOCOL.md §15, and the SDK has
    applied the order before watch says either). An image that watch said is gone from the
    device (its line under its consult, or its deletion: ``progress.gone``) is not said again;
    one of a consult still to be shown is said under it (:func:`_images_gone_before`); one
    already deleted here is said in one line, that it was deleted and where the record keeps
    it (or, never having reached the device, :func:`image_line`'s "never shown here"), never
    its copies' expiry as still to come."""
    aid = event.attachment_id
    if aid in progress.gone:
        return None
    status = client.image_status(aid)
    if status.state != "shredded":  # with the record's reference when the receipt came first
        return describe(client, dataclasses.replace(
            event, record_ref=event.record_ref or status.record_ref))
    holder = _holder(client, event.thread_id, aid)
    if holder is not None and _still_to_show(client, progress, holder):
        return None
    progress.gone.add(aid)
    if holder is not None:
        never_here = await _expired_before_arrival(client, dataclasses.replace(
            client.view(holder), images=(status,)))
        if aid in never_here:
            return f"    {image_line(status, never_here=True)}"
    reason = (event.reason if isinstance(event, ExpiredEvent)
              else client.memory.image_state.get(aid, ("", "filed"))[1] or "filed")
    return deleted_line(aid, reason, status.record_ref or event.record_ref)


def deleted_line(attachment_id: str, reason: str, record_ref: str | None) -> str:
    """An image deleted from this device: why (an expiry order's reason, docs/PROTOCOL.md
    §15), and where the record keeps it when it was filed, as :func:`image_line` says it."""
    why = "the patient's consent was withdrawn" if reason == "consent_revoked" else reason
    line = f"    image {attachment_id[:8]} deleted from this device ({why})"
    return line + (f" - in the record: {record_ref}" if record_ref else "")


def _holder(client: LightboxClient, thread_id: str, attachment_id: str) -> VaultMessage | None:
    """The message this device holds that carries the image (None: none)."""
    with contextlib.suppress(ItemNotFound):
        return next((m for m in client.vault.messages(thread_id)
                     if attachment_id in m.attachment_ids), None)
    return None


def _still_to_show(client: LightboxClient, progress: _Progress, message: VaultMessage) -> bool:
    """Whether watch is still to show ``message``: received since it started, not shown yet
    (its delivery event is on its way behind the notices the relay sent before it)."""
    if message.outgoing or message.message_id in progress.shown:
        return False
    later = {m for _, m in client.vault.message_ids_after(progress.start_mark or 0)}
    return message.message_id in later


def not_received_lines(client: LightboxClient, thread_id: str) -> list[str]:
    """For the sender: each person who never received an image of their consults in the
    thread before its copies expired (docs/PROTOCOL.md §15 "Never received")."""
    return [told.sentence(_consult_of(client, thread_id, told.message_id)[0])
            for view in client.thread_messages(thread_id) for told in view.not_received]


def describe(client: LightboxClient, event: ClientEvent) -> str | None:
    if isinstance(event, ImageEvent):
        if event.status == "shredded":
            return f"    {image_line(client.image_status(event.attachment_id))}"
        return f"    image {event.attachment_id[:8]}: {event.status} {event.reason}".rstrip()
    if isinstance(event, NotReceivedEvent):
        told = _not_received_now(client, event)
        return f"    {told.sentence(_consult_of(client, event.thread_id, event.message_id)[0])}"
    if isinstance(event, EscalationEvent):
        return describe_escalation(client, event)
    if isinstance(event, ReceiptEvent):  # watch says more where it knows (receipt_line)
        return f"    {event.display_name or event.user_id[:8]}: {event.kind} " \
               f"({event.message_id[:8]})"
    if isinstance(event, FiledEvent):
        line = (f"    image {event.attachment_id[:8]} filed in the record"
                f"{' as ' + event.record_ref if event.record_ref else ''}; ")
        if event.expires_at > time.time():
            return line + f"copies expire {when(event.expires_at)}"
        # a device off until after the expiry, its order still to come: never "to come"
        return (line + f"copies expired {when(event.expires_at)}: deleted from this device "
                "as soon as the relay orders it")
    if isinstance(event, ExpiredEvent):
        return deleted_line(event.attachment_id, event.reason, event.record_ref)
    if isinstance(event, WithdrawnEvent):
        why = ("the patient's consent was withdrawn" if event.reason == "consent_revoked"
               else "the sending device was revoked")
        return f"    message {event.message_id[:8]} withdrawn before delivery ({why})"
    if isinstance(event, OutboxEvent):
        return describe_outbox(event)
    if isinstance(event, StatusEvent):
        if event.state == "connected":
            return "-- connected to the relay"
        if event.state == "disconnected" and event.replaced:
            return REPLACED_LINE
        if event.state == "disconnected":
            return "-- relay connection lost: reconnecting (nothing is lost)"
        return problem_line(event)
    return None


def _not_received_now(client: LightboxClient, event: NotReceivedEvent) -> NotReceivedEvent:
    """``event`` with the record reference as this device knows it now: the relay's notice
    carries none, and the gateway's filing receipt may reach the device after it (as the
    phone and ``inbox`` say it, clients/sdk/memory.py ``not_received``)."""
    with contextlib.suppress(ItemNotFound):
        view = client.view(client.vault.message(event.message_id))
        for told in view.not_received:
            if told.user_id == event.user_id and told.attachment_id == event.attachment_id:
                return told
    return event


def about_a_consult_here(client: LightboxClient, event: ClientEvent) -> bool:
    """Whether ``watch`` says an image's filing or expiry: only on a device that holds a
    message of its consult. An on-call backup whose copy was held, or a device that never got
    the consult, is sent both too (the expiry leaves a tombstone that keeps a late copy out),
    but "deleted from this device" would be untrue there, and the line about nothing."""
    if isinstance(event, (FiledEvent, ExpiredEvent)):
        return bool(client.vault.messages(event.thread_id))
    return True


def receipt_line(client: LightboxClient, event: ReceiptEvent) -> str:
    """A recipient's receipt as ``watch`` says it (:func:`describe`'s line, indented). A
    person told of as never having received the message's image (docs/PROTOCOL.md §15 "Never
    received") whose device comes back later signs a ``delivered`` (or ``read``) of the
    message alone, its expired image left out: said so, lest it read as the image reaching
    them after all."""
    line = describe(client, event) or ""
    try:
        view = client.view(client.vault.message(event.message_id))
    except ItemNotFound:
        return line
    if event.kind != "acknowledged" and any(t.user_id == event.user_id
                                            for t in view.not_received):
        line += ", the message only: its image had expired before it reached them"
    return line


def _consult_of(client: LightboxClient, thread_id: str,
                message_id: str) -> tuple[str, str | None]:
    """How the reader knows an escalated consult, from this device's vault alone: its thread's
    subject, else who sent it and when; and who sent it (None when the device does not hold
    it: a handed-over consult's copy is a new message, docs/PROTOCOL.md §16.4)."""
    views = client.thread_messages(thread_id)
    held = next((v for v in views if message_id in {m.message_id for m in (v.message,
                                                                         *v.copies)}), None)
    # a handed-over copy held: its author and time (clients/sdk/handover.py)
    author = None if held is None else client.authorship(held.message, held.body)
    sender = None if author is None else author.author_user_id
    for view in views:
        if view.body.subject:
            return f'consult "{view.body.subject}"', sender
    if author is not None:
        return (f"the consult from {client.display_name(author.author_user_id)} at "
                f"{when(author.written_at)}", sender)
    return f"a consult not yet on this device (thread {thread_id[:8]})", sender


def message_names(client: LightboxClient, message: VaultMessage, body: Body) -> list[str]:
    """The people a message's lines name: its sender and, for a consult handed over at a
    shift change, its author (docs/PROTOCOL.md §16.4)."""
    author = client.authorship(message, body)
    return list(dict.fromkeys([message.sender_user_id, author.author_user_id]))


async def learn_message_names(client: LightboxClient, event: MessageEvent) -> None:
    """Before :func:`print_message`: the names it prints, from verified certificates (the
    author of a handed-over consult may never have sent this device anything); best effort."""
    with contextlib.suppress(SDKError):
        await client.ensure_names(message_names(client, event.message, event.body))


async def learn_escalation_names(client: LightboxClient, event: EscalationEvent) -> None:
    """Before :func:`describe_escalation`: the names it prints (the person concerned, the
    consult's sender), from verified certificates in the key directory, as ``inbox`` learns
    senders' names; best effort (a shortened id when the relay cannot say)."""
    _, sender = _consult_of(client, event.thread_id, event.message_id)
    with contextlib.suppress(SDKError):
        await client.ensure_names([event.user_id, *([sender] if sender else [])])


def describe_escalation(client: LightboxClient, event: EscalationEvent) -> str:
    """One on-call escalation step (docs/PROTOCOL.md §16.3, §16.4) as a doctor reads it: the
    consult by its subject (or sender and time) and the person concerned by name, with their
    place on the ladder. A reminder right after one at the same level (the ladder used up,
    docs/PROTOCOL.md §16.3; or reminded again while its handover waits, §16.4) says that
    everyone on it was reminded again. ``no_shift``: nobody is on call for the role (a gap in
    the rota, §16.4), said at once and at each reminder, with when the next shift starts."""
    consult, _ = _consult_of(client, event.thread_id, event.message_id)
    if event.kind == "no_shift":
        nxt = ("no later shift is on the rota yet: it goes to the next shift IT adds"
               if event.next_shift_at is None else
               f"it goes to the next shift when that starts at {when(event.next_shift_at)}")
        # A reminder of the wait: the step before it said the same. The first of a wait (a
        # consult sent in a gap, or a handover deferred after other steps) says it anew.
        if any(s.kind == "no_shift" and s.step == event.step - 1
               for s in client.escalation_steps(event.message_id)):
            return f"    {consult}: still no one on call for the role: reminded; {nxt}"
        return f"    {consult}: no one is on call for the role now; {nxt}"
    who = client.display_name(event.user_id)
    who += " (on call)" if event.level == 0 else f" (backup {event.level})"
    if event.kind == "renotify" and any(
            s.kind == "renotify" and s.level == event.level and s.step == event.step - 1
            for s in client.escalation_steps(event.message_id)):
        return f"    {consult}: still no answer: everyone on call reminded again"
    what = {"renotify": f"no answer yet: reminded {who}",
            "released": f"no answer in time: passed to {who}",
            "handover": f"shift change: handed over to {who}"}.get(
        event.kind, f"{event.kind}: {who}")
    return f"    {consult}: {what}"


PASSWORD_ENV = "LIGHTBOX_PASSWORD"  # noqa: S105 (a variable's name: unlock_profile reads it)

# What `watch` says when another command of the same profile connects: the relay keeps one
# connection per device and gives it to the newer one (docs/PROTOCOL.md §3.5), and watch makes
# way for it (clients/sdk/connection.py), then tells what arrived meanwhile.
REPLACED_LINE = ("-- another lightbox command of this device is using the relay connection: "
                 "watching resumes when it finishes (nothing is missed)")

# What `watch` says when it starts and the relay is out of reach (clients/sdk/connection.py
# backs off up to ``every`` between tries); then as when the connection is lost.
WAITING_LINE = ("-- waiting for the relay at {address} (cannot reach it now: {reason}): watch "
                "keeps trying, at least every {every}, and shows the consults as soon as it "
                "answers (nothing is lost: the relay keeps everything for this device)")

# What `watch` says, once until it is connected again, when it cannot start its connection
# again after unlocking the vault because the relay is out of reach.
UNREACHABLE_LINE = ("-- cannot reach the relay ({reason}): watch keeps trying and shows the "
                    "consults as soon as it answers (nothing is lost: the relay keeps "
                    "everything for this device)")

# How often `watch` looks whether the user logged out on this device in another terminal
# (clients/sdk/profile.py), besides before each reconnect (clients/sdk/session.py) and before
# it shows anything.
LOGOUT_CHECK = 1.0


def watch_command(args: argparse.Namespace) -> int:
    """Print consults as they arrive, until ``--count`` messages, ``--timeout`` or Ctrl-C.

    The vault locks itself after its idle timeout (clients/sdk/vault.py "Locking"): then the
    connection stops cleanly (what was not handled stays queued at the relay) and watch says
    so; it unlocks again with ``LIGHTBOX_PASSWORD`` when the password came from there, asks for
    it again on a terminal, or else stops with a sentence saying how to start it again (exit
    status 1). After unlocking it carries on, and the orders queued meanwhile (expiry of a
    filed image) are applied first.

    A relay out of reach never ends it, also at start-up (IT restarting the relay, a network
    blip: the specialist who started it before going to the ward is still watched for) and
    when it unlocks again during an outage: it says so once and connects when the relay
    answers. What waiting cannot mend ends it with one sentence and exit status 1: a refusal
    (revoked, suspended, wiped, a session ended), an address that is not a relay's URL, a TLS
    certificate that does not verify (:func:`_raise_unmendable`).

    A logout on this device (``lightbox logout`` in another terminal) ends it with one sentence
    and exit status 1, as a session the relay ended does, whether the logout reached the relay
    or not: nothing more is shown after it (clients/sdk/profile.py)."""
    unattended = bool(os.environ.get(PASSWORD_ENV))
    device = unlock_profile(args)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    progress = _Progress()
    print("watching for consults (Ctrl-C to stop)", flush=True)
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return 0
        try:
            locked = run_async(functools.partial(_watch_until_locked, device, args, progress,
                                                 left))
        except (SDKError, ConnectionStopped):
            if not device.logged_out():
                raise
            return _logged_out()
        if not locked:
            return 0
        if device.logged_out():  # while the vault locked itself: not unlocked again for it
            return _logged_out()
        print(f"-- the vault locked itself after {_seconds(device.vault.idle_timeout)} without "
              "use: stopped listening (nothing is lost: the relay keeps everything for this "
              "device)", flush=True)
        if not _unlock_again(device, args, unattended=unattended):
            print("-- watch stopped: run `lightbox watch` again to unlock the vault and carry "
                  f"on (or set {PASSWORD_ENV} to keep watching unattended)", flush=True)
            return 1
        print("-- vault unlocked again: listening for consults", flush=True)


def _logged_out() -> int:
    """Watch ends on a logout in another terminal: one sentence, and exit status 1 as for a
    session the relay ended."""
    print(f"error: watch stopped: {LoggedOut()}", file=sys.stderr, flush=True)
    return 1


@dataclasses.dataclass
class _Progress:
    """What one run of ``watch`` carries from one connected stretch to the next."""

    seen: int = 0  # messages shown (``--count``)
    started: bool = False  # the first stretch started: watch runs, a relay outage waits
    # The relay could not be reached and watch said so: not said again (the vault may lock
    # and unlock many times in a long outage) until it has been connected again.
    told_unreachable: bool = False
    # Receipts said: (message, person, kind). Each device of a person that holds a message
    # signs its own receipt of it; the reader is told once per person.
    receipts: set[tuple[str, str, str]] = dataclasses.field(default_factory=set)
    # Escalation steps of a thread this device holds no message of yet, by thread, with when
    # they are said all the same (:func:`_hold_back`).
    held_back: dict[str, list[tuple[float, EscalationEvent]]] = dataclasses.field(
        default_factory=dict)
    # The backlog was shown (:func:`_catch_up`), and the messages it showed: not again.
    caught_up: bool = False
    shown: set[str] = dataclasses.field(default_factory=set)
    # The vault's last arrival when watch started (a later one is shown as it is told), and
    # the "never received" sentences said, (message, person): each under its consult, once.
    start_mark: int | None = None
    not_received: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    # The images said to be gone from this device (deleted, or never shown here): their
    # filing and expiry are not said again (:func:`_image_news`).
    gone: set[str] = dataclasses.field(default_factory=set)
    # Another command of the profile took the connection: when watch last said so
    # (REPLACED_LINE), and whether the hand-over under way is one it kept quiet.
    replaced_said_at: float | None = None
    quiet_handover: bool = False

    def first_receipt(self, event: ReceiptEvent) -> bool:
        """True the first time this person's receipt of this kind of this message comes."""
        key = (event.message_id, event.user_id, event.kind)
        if key in self.receipts:
            return False
        self.receipts.add(key)
        return True


# A loop of `lightbox send` beside watch takes the connection and gives it back every few
# seconds. Watch says the first hand-over (REPLACED_LINE, then "connected" once back), and a
# later one only when REPLACED_QUIET seconds have passed since it last said one; what arrived
# meanwhile is shown either way. (How long watch stays away is its own doubling wait,
# clients/sdk/connection.py, not how long the other command holds the connection.)
REPLACED_QUIET = 600.0


def _handed_over(progress: _Progress) -> None:
    """Another command took the connection: said now, or kept quiet (:data:`REPLACED_QUIET`)."""
    now = time.monotonic()
    if progress.replaced_said_at is None or now - progress.replaced_said_at >= REPLACED_QUIET:
        print(REPLACED_LINE, flush=True)
        progress.replaced_said_at = now
    else:
        progress.quiet_handover = True


# How long ``watch`` holds back an escalation step of a consult not yet on this device.
HOLD_BACK = 10.0


def _hold_back(client: LightboxClient, progress: _Progress, event: EscalationEvent) -> bool:
    """Hold back a step of a consult this device holds nothing of yet: the relay may write the
    step before the consult (a holder of the role in a gap in the rota gets both at once,
    docs/PROTOCOL.md §16.4), and the line reads best after it, naming it by its subject. Said
    when a message of its thread arrives, else after :data:`HOLD_BACK` seconds as it is."""
    held = progress.held_back.get(event.thread_id)
    if held is None and client.thread_messages(event.thread_id):
        return False
    progress.held_back.setdefault(event.thread_id, []).append(
        (time.monotonic() + HOLD_BACK, event))
    return True


def _held_back_due(progress: _Progress) -> float | None:
    """Seconds until the next held-back step is due (None: none held back)."""
    due = [at for held in progress.held_back.values() for at, _ in held]
    return None if not due else max(0.0, min(due) - time.monotonic())


async def _say_held_back(client: LightboxClient, progress: _Progress, *,
                         thread_id: str | None = None, everything: bool = False) -> None:
    """Say the held-back steps of ``thread_id`` (a message of it arrived), or those due, or
    (``everything``, as watch stops) all of them."""
    now = time.monotonic()
    for tid in list(progress.held_back):
        held = progress.held_back[tid]
        if not (everything or tid == thread_id or min(at for at, _ in held) <= now):
            continue
        del progress.held_back[tid]
        for _, event in held:
            await learn_escalation_names(client, event)
            print(describe_escalation(client, event), flush=True)


# How long ``watch``, connected at its start, waits for the relay to send what it kept for the
# device while no lightbox program was connected (the backlog) before showing it.
SYNC_WAIT = 10.0
# How long watch waits, once the vault was wiped, for the client to confirm the wipe to the
# relay and say so (:func:`_say_wiped`).
WIPED_WAIT = 10.0


def _drain(queue: asyncio.Queue[ClientEvent]) -> list[ClientEvent]:
    events = []
    while not queue.empty():
        events.append(queue.get_nowait())
    return events


async def _catch_up(client: LightboxClient, progress: _Progress,
                    queue: asyncio.Queue[ClientEvent]) -> None:
    """The first time ``watch`` is connected: once the relay has sent the backlog, every
    consult the device holds unread, as ``inbox`` shows it (:func:`print_view`: its images,
    also one expired before it reached the device, and whom it never reached), in ``inbox``'s
    order, each followed by the latest of the escalation steps that came in the backlog (one
    line: where the consult stands, not the steps the device missed), then the latest step of
    each other consult; then what else came, in its order (an image's filing and expiry once,
    never again after its line: :func:`_image_news`). Before, watch showed only what
    arrived as it ran: a consult an earlier command stored unread, or one whose copy came
    hidden behind it, was never shown (docs/HAZARD_LOG.md HAZ-02 C21)."""
    progress.caught_up = True
    with contextlib.suppress(TimeoutError, SDKError, ConnectionStopped):
        await client.wait_synced(SYNC_WAIT)
    backlog = _drain(queue)
    try:
        await _show_backlog(client, progress, backlog)
    except VaultLocked:  # locked meanwhile: the next connected stretch shows it
        progress.caught_up = False
    for e in [*backlog, *_drain(queue)]:  # the rest in its order, before what comes next
        shown = (e.message.message_id if isinstance(e, MessageEvent) else
                 e.message_id if isinstance(e, NotReceivedEvent) else None)
        if not isinstance(e, EscalationEvent) and shown not in progress.shown:
            queue.put_nowait(e)


async def _show_backlog(client: LightboxClient, progress: _Progress,
                        backlog: list[ClientEvent]) -> None:
    """:func:`_catch_up`'s lines: the unread consults, each with its latest step."""
    thread_ids = list(dict.fromkeys(e.message.thread_id for e in backlog
                                    if isinstance(e, MessageEvent)))
    with contextlib.suppress(SDKError):
        thread_ids = list(dict.fromkeys([*(t.thread_id for t in await client.threads()),
                                         *thread_ids]))
    views = [v for t in thread_ids for v in client.unread_messages(t)]
    with contextlib.suppress(SDKError):
        await client.ensure_names(u for v in views
                                  for u in message_names(client, v.message, v.body))
    withdrawn: dict[str, int] = {}
    with contextlib.suppress(SDKError):
        withdrawn = await client.refresh_consents(
            [c for v in views if (c := consent_of(v.body)) is not None])
    latest: dict[str, EscalationEvent] = {}  # by consult, in the order they came
    for e in backlog:
        if isinstance(e, EscalationEvent):
            was = latest.pop(e.message_id, None)
            latest[e.message_id] = e if was is None or (e.step, e.at) >= (was.step, was.at) \
                else was
    arrived = {mid: n for n, mid in client.vault.message_ids_after(0)}
    listed = sorted(views, key=functools.partial(_reading_order, client, arrived))
    for view in listed:
        await print_view(client, view, withdrawn, listed=listed)
        progress.gone.update(i.attachment_id for i in view.images if i.state == "shredded")
        progress.not_received.update((t.message_id, t.user_id) for t in view.not_received)
        ids = [view.message.message_id, *(c.message_id for c in view.copies)]
        progress.shown.update(ids)
        progress.seen += 1
        for step in [latest.pop(i) for i in ids if i in latest][-1:]:
            await learn_escalation_names(client, step)
            print(describe_escalation(client, step), flush=True)
    for step in latest.values():
        await learn_escalation_names(client, step)
        print(describe_escalation(client, step), flush=True)


def _not_received_under(client: LightboxClient, progress: _Progress,
                        message: VaultMessage) -> list[str]:
    """The "never received" sentences of a message ``watch`` just showed, not said yet: under
    it, as ``inbox`` says them, with the record reference when known."""
    lines = []
    for told in client.view(message).not_received:
        if (told.message_id, told.user_id) not in progress.not_received:
            progress.not_received.add((told.message_id, told.user_id))
            consult, _ = _consult_of(client, message.thread_id, told.message_id)
            lines.append(told.sentence(consult))
    return lines


def _under_its_consult(client: LightboxClient, progress: _Progress,
                       event: NotReceivedEvent) -> bool:
    """Whether a "never received" notice is said under its consult rather than now: said
    already, or its message came since watch started and is still to be shown (the relay
    sends notices before deliveries, docs/PROTOCOL.md §15), when :func:`_not_received_under`
    says it."""
    key = (event.message_id, event.user_id)
    if key in progress.not_received:
        return True
    if event.message_id in progress.shown:
        progress.not_received.add(key)
        return False
    try:
        message = client.vault.message(event.message_id)
    except ItemNotFound:
        return False
    later = {m for _, m in client.vault.message_ids_after(progress.start_mark or 0)}
    if message.outgoing or event.message_id not in later:
        progress.not_received.add(key)
        return False
    return True


def _seconds(value: float) -> str:
    return f"{value:.0f} s"


def _unlock_again(device: ProfileDevice, args: argparse.Namespace, *, unattended: bool) -> bool:
    """Unlock the vault again: with the environment's password when it came from there, else
    by asking on the terminal (three tries); False when neither can be done."""
    if unattended:
        password = os.environ.get(PASSWORD_ENV) or device.password
        try:
            device.vault.unlock(password)
        except VaultPassphraseError:
            print(f"-- {PASSWORD_ENV} no longer opens the vault", flush=True)
            return False
        device.password = password
        return True
    for _ in range(3):
        if not sys.stdin.isatty():
            return False
        try:
            password = getpass.getpass(f"{password_prompt(args.profile)}, to keep watching: ")
        except EOFError:
            return False
        if not password:
            return False
        try:
            device.vault.unlock(password)
        except VaultPassphraseError:
            print("-- wrong password", flush=True)
            continue
        device.password = password
        return True
    return False


def _raise_if_ended(client: LightboxClient) -> None:
    """The relay ended this device's access (revoked, the user suspended) or no session can be
    had: watch ends as every command does, with one sentence and a failure status
    (clients/sdk/failures.py), not a line and "success"."""
    connection = client.connection
    if connection is not None and connection.stopped.done():
        stopped = connection.stopped.result()
        if not stopped.stopped_here:
            raise stopped


async def _start(client: LightboxClient, progress: _Progress) -> None:
    """Start the client's connection. A relay out of reach (RelayUnavailable: the revocation
    list, or a login, could not be fetched) does not stop watch, which is the backup doctor's
    only line to an escalated consult: it says so once, then starts without the relay, and the
    connection logs in, fetches the list and connects by itself, with backoff, once the relay
    answers (clients/sdk/client.py ``start(offline=True)``). A refusal (revoked, suspended,
    a session ended) still raises as before, and so does what waiting cannot mend
    (:func:`_raise_unmendable`). At start-up the line names the relay's address and how often
    watch tries (:data:`WAITING_LINE`): whoever started it may have walked away, and the
    address is the profile's, from enrolment, so an outage is far likelier than a typo. Tried
    with the relay first, so that the outage is said when it happens; the failed try started
    nothing, so starting again is safe."""
    first = not progress.started
    progress.started = True
    try:
        await client.start()
        return
    except RelayUnavailable as exc:
        _raise_unmendable(exc)
        await client.start(offline=True)
        if progress.told_unreachable:
            return
        progress.told_unreachable = True
        if first:
            connection = client.connection
            every = connection.backoff_max if connection is not None else 0.0
            print(WAITING_LINE.format(address=client.store.state.server_url,
                                      reason=exc.reason, every=_seconds(every)), flush=True)
        else:
            print(UNREACHABLE_LINE.format(reason=exc.reason), flush=True)


def _raise_unmendable(exc: RelayUnavailable) -> None:
    """Raise what waiting for the relay cannot mend, behind a relay out of reach: a TLS
    certificate that does not verify (its path, RFC 5280 §6, or its name, RFC 6125 §6: refused
    again on every try until the certificate or the address changes), an address httpx
    cannot use as a URL. A name not found is not among them: a network without DNS for a while
    says the same."""
    for cause in causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise RelayUnavailable(str(exc), reason=certificate_refusal(cause)) from exc
        if isinstance(cause, httpx.UnsupportedProtocol | httpx.InvalidURL):
            raise RelayUnavailable(str(exc), reason="its address is not a relay's URL") from exc


async def _watch_until_locked(device: ProfileDevice, args: argparse.Namespace,
                              progress: _Progress, timeout: float | None) -> bool:
    """One connected stretch of ``watch``: True when the vault locked itself, else False at
    the count, the timeout, or the client's end (``progress.seen`` counts what was shown)."""
    client = device.client()  # makes way for the other commands (REPLACED_WAIT)
    vault = device.vault
    locked = asyncio.Event()

    async def idle_lock() -> None:  # as the desktop does (clients/desktop/app.py _watch_idle)
        while not vault.lock_if_idle():  # noqa: ASYNC110 (nothing to wait on: a clock)
            await asyncio.sleep(min(1.0, vault.idle_timeout / 4))
        locked.set()

    watcher = asyncio.create_task(idle_lock())
    if progress.start_mark is None:
        progress.start_mark = vault.last_message_seq()
    started = False  # a wipe order that ends the start is said as every refusal is
    try:
        queue = client.subscribe()
        async with asyncio.timeout(timeout):  # the whole run, its start too
            await _start(client, progress)
            started = True
            while args.count is None or progress.seen < args.count:
                get = asyncio.ensure_future(queue.get())
                lock = asyncio.ensure_future(locked.wait())
                due = _held_back_due(progress)
                try:
                    done, _ = await asyncio.wait(
                        {get, lock}, timeout=LOGOUT_CHECK if due is None else min(due,
                                                                                  LOGOUT_CHECK),
                        return_when=asyncio.FIRST_COMPLETED)
                finally:
                    lock.cancel()
                    if not get.done():
                        get.cancel()
                if client.wiped is not None:  # the order locked the vault: not idleness,
                    await _say_wiped(client, queue,  # nor a logout (its mark erased)
                                     get.result() if get.done() and not get.cancelled()
                                     else None)
                    return False
                if device.logged_out():  # in another terminal: nothing more is shown
                    raise LoggedOut
                if not done:  # a step held back is due: said as it is
                    await _say_held_back(client, progress)
                    continue
                if not get.done() or get.cancelled():
                    return True
                event = get.result()
                if isinstance(event, StatusEvent) and event.state == "stopped" \
                        and not vault.is_unlocked:
                    return True  # locked while a frame was handled
                if isinstance(event, StatusEvent) and event.state == "stopped":
                    _raise_if_ended(client)
                if isinstance(event, StatusEvent) and event.state == "disconnected" \
                        and event.replaced:
                    _handed_over(progress)
                    continue
                if isinstance(event, StatusEvent) and event.state != "connected":
                    progress.quiet_handover = False  # said below: "connected" follows
                if isinstance(event, StatusEvent) and event.state == "connected":
                    progress.told_unreachable = False  # a later outage is said again
                    quiet, progress.quiet_handover = progress.quiet_handover, False
                    if not progress.caught_up:
                        print(describe(client, event), flush=True)
                        await _catch_up(client, progress, queue)
                        continue
                    if not quiet:  # back from what was said
                        print(describe(client, event), flush=True)
                    for receipt in client.memory.receipts_kept_since():
                        await queue.put(receipt)  # said below, as if the relay had sent it
                    continue
                if isinstance(event, MessageEvent) and event.message.message_id in progress.shown:
                    continue  # shown with the backlog
                if isinstance(event, MessageEvent) and client.hidden_copy(event.message):
                    # another copy of a consult shown already, handed over by another device
                    # too (docs/PROTOCOL.md §16.4): said in one line, not shown again
                    await learn_message_names(client, event)
                    consult, _ = _consult_of(client, event.message.thread_id,
                                             event.message.message_id)
                    print(f"    {consult}: {copies_line([event.message], client.display_name)}",
                          flush=True)
                    continue
                if isinstance(event, MessageEvent):
                    await learn_message_names(client, event)
                    print_message(client, event)
                    progress.shown.add(event.message.message_id)
                    for gone in await _images_gone_before(client, progress, event):
                        print(gone, flush=True)
                    for told in _not_received_under(client, progress, event.message):
                        print(f"    {told}", flush=True)
                    if await offers_acknowledgement(client, client.view(event.message)):
                        print(ack_hint(event.message.message_id), flush=True)
                    progress.seen += 1
                    await _say_held_back(client, progress, thread_id=event.message.thread_id)
                    continue
                if isinstance(event, NotReceivedEvent) and _under_its_consult(
                        client, progress, event):
                    continue
                if isinstance(event, EscalationEvent):
                    if _hold_back(client, progress, event):
                        continue
                    await learn_escalation_names(client, event)
                if not about_a_consult_here(client, event):
                    continue
                if isinstance(event, ReceiptEvent) and not progress.first_receipt(event):
                    continue  # another device of the same person: said already
                if isinstance(event, ReceiptEvent) and event.user_id == client.user_id:
                    continue  # the user's own other device: no recipient (as on the desktop)
                if isinstance(event, FiledEvent | ExpiredEvent):
                    if news := await _image_news(client, progress, event):
                        print(news, flush=True)
                    continue
                line = (receipt_line(client, event) if isinstance(event, ReceiptEvent)
                        else describe(client, event))
                if line:
                    print(line, flush=True)
                if isinstance(event, StatusEvent) and event.state == "stopped":
                    return False  # ("wiped" ends it above: _say_wiped)
    except TimeoutError:
        pass
    except (SDKError, VaultError, ConnectionStopped):
        # What the erased vault can no longer answer (a consult that came just before the
        # order, shown after it) ends watch as the wipe does, not with a failure.
        if client.wiped is None or not started:
            raise
        await _say_wiped(client, queue, None)
    finally:
        logged_out = device.logged_out()  # then nothing more is said, nor sent
        if vault.is_unlocked and not logged_out:
            # watch stops: nothing heard goes unsaid (else kept for later)
            with contextlib.suppress(SDKError, VaultLocked):
                await _say_held_back(client, progress, everything=True)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        # Nothing more to confirm once the vault is locked: an order not confirmed comes
        # again on the next connection, and is applied again (docs/PROTOCOL.md §15).
        await client.close(drain=5.0 if vault.is_unlocked and not logged_out else 0.0)
    return False


async def _say_wiped(client: LightboxClient, queue: asyncio.Queue[ClientEvent],
                     got: ClientEvent | None) -> None:
    """Watch ends on a wipe order in one way, whatever it was doing when the order came: the
    client's "wiped" line on stdout, exit status 0 (docs/USER_GUIDE.md "A lost phone"). The
    order locks the vault before the client confirms it to the relay and says so
    (clients/sdk/notices.py ``_wipe``): watch's idle check would see a locked vault, and the
    consult it was showing an erased one. So it waits here for the client's line (``got``,
    the event watch had just taken, or the queue), which comes once the confirmation is sent
    (docs/PROTOCOL.md §15 "Wipe"): closing the connection before would leave the wipe
    unconfirmed. What came before the line is not shown: the vault holding it is gone. Said
    from the order itself if the line does not come within :data:`WIPED_WAIT`."""
    assert client.wiped is not None
    line = wiped_event(client.wiped)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(WIPED_WAIT):
            while True:
                event, got = got or await queue.get(), None
                if isinstance(event, StatusEvent) and event.state == "wiped":
                    line = event
                    break
    print(describe(client, line), flush=True)


# --- "I'm on it" -------------------------------------------------------------------------------

# How long ``ack`` waits for the relay to take or refuse the acknowledgement (it answers a
# refusal with an error frame and a kept receipt with nothing: docs/PROTOCOL.md §3.5 "Receipts").
ACK_WAIT = 10.0


def ack_hint(message_id: str) -> str:
    """The line under a consult in ``inbox`` and ``watch`` that shows its message id, with the
    command that acknowledges it (``lightbox ack``)."""
    return f"    I'm on it: lightbox ack {message_id}"


def _message_id(value: str) -> str:
    """The MESSAGE_ID of ``ack``, checked before the password is asked for."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise FlowError(f"{value!r} is not a message id: copy the one after \"lightbox ack\" "
                        "under the consult in `lightbox inbox` or `lightbox watch`",
                        code=ErrorCode.VALIDATION_FAILED.value) from None


class _NotAcknowledged(Exception):
    """``ack`` could not reach the relay: the sentence printed, exit status 1."""


def ack_command(args: argparse.Namespace) -> int:
    """``lightbox ack MESSAGE_ID``: "I'm on it" (SDK ``acknowledge``), a signed
    ``acknowledged`` receipt to the sender that also stops the consult's on-call escalation
    when it has one (docs/PROTOCOL.md §16.3). Said only once the relay took it: the relay
    answers a refusal (``not_on_ladder``) and keeps a receipt it takes, which ``ack`` asks for.
    With the relay out of reach at the start nothing is acknowledged (the escalation goes on):
    the specialist is told at once, to try again or phone, rather than have it go unseen
    later; one the connection lost on its way is kept and goes at the next connection
    (clients/sdk/receiving.py), and that is said."""
    message_id = _message_id(args.message)
    device = unlock_profile(args)

    async def go() -> str:
        client = command_client(device)
        events = client.subscribe()
        try:
            try:
                await client.start()
                await client.wait_synced(args.timeout)
            except RelayUnavailable as exc:
                raise _NotAcknowledged(_unreachable(client, message_id, exc.reason)) from None
            return await _acknowledge(client, message_id)
        finally:
            await client.close()
            print_problems(events)  # what it dropped as it synced

    try:
        print(run_async(go))
    except _NotAcknowledged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _unreachable(client: LightboxClient, message_id: str, reason: str) -> str:
    try:
        message = client.vault.message(message_id)
        consult = _consult_of(client, message.thread_id, message_id)[0]
    except (ItemNotFound, VaultLocked):
        consult = f"message {message_id}"
    return (f"cannot reach the relay ({reason}), so {consult} is NOT acknowledged: the sender "
            "is not told and its on-call escalation goes on; run `lightbox ack "
            f"{message_id}` again when the relay answers, or phone the sender if it cannot wait")


async def _escalations(client: LightboxClient, thread_id: str) -> list[api.EscalationInfo]:
    """The thread's escalations as the relay has them now ([] when it cannot say)."""
    try:
        return (await client.relay.thread_escalations(thread_id)).escalations
    except (RelayRequestError, RelayUnavailable):
        return []


async def _acknowledge(client: LightboxClient, message_id: str) -> str:
    """Acknowledge one held message; the sentence to print, or FlowError saying why not."""
    try:
        message = client.vault.message(message_id)
    except ItemNotFound:
        raise FlowError(f"no message {message_id} on this device: copy the id after "
                        "\"lightbox ack\" under the consult in `lightbox inbox` or "
                        "`lightbox watch`", code=ErrorCode.NOT_FOUND.value) from None
    view = client.view(message)
    consult, _ = _consult_of(client, message.thread_id, message_id)
    thread = client.thread_messages(message.thread_id)
    gateways = await client.record_gateways({v.message.sender_user_id for v in thread}
                                            | {message.sender_user_id})
    author = client.authorship(message, view.body).author_user_id
    await client.ensure_names([author])  # named in a refusal
    # One rule with the hint under a consult and the desktop's button (clients/sdk/acking.py)
    what = why_not_acknowledgeable(client, view, thread, gateways)
    if what in ("is yours", "is the record gateway's answer, not a consult"):
        raise FlowError(f"message {message_id} {what} ({consult}): only a consult a colleague "
                        f"sent you can be acknowledged{await _the_consults(client, message)}",
                        code=ErrorCode.VALIDATION_FAILED.value)
    if what is not None:  # a reply, a note: nothing is sent
        instead = await _the_consults(client, message) or (
            f"; to tell {client.display_name(author)} anything, reply (lightbox send "
            f"--thread {message.thread_id} TEXT)")
        raise FlowError(f"message {message_id} {what} ({consult}): not a consult for you to "
                        f"acknowledge, so nothing is sent{instead}",
                        code=ErrorCode.VALIDATION_FAILED.value)
    me = client.user_id
    before = [e for e in await _escalations(client, message.thread_id)
              if e.state == "acknowledged" and e.acknowledged_by is not None]
    # The receipt goes to the device that sent this copy: for a consult handed over at a
    # shift change, the one that sealed it again (docs/PROTOCOL.md §16.4), not its author.
    await client.ensure_names([message.sender_user_id,
                               *(e.acknowledged_by for e in before if e.acknowledged_by)])
    who = client.display_name(message.sender_user_id)
    # Already only when the relay keeps this user's receipt of the consult, of this or
    # another message of its opening run (said to one, it is said to the consult:
    # clients/sdk/acking.py): this device's own record says what it sent, not what the relay
    # took (a refusal undoes it, an answer lost in a timeout does not), and the escalation
    # may have been stopped by someone else.
    kept = await acknowledged_at(client, [view, *opening_run(client, thread, gateways)])
    if kept is not None:
        return (f"you already acknowledged {consult} at {when(kept)}: {who} was told then; "
                "nothing sent again")
    answers = client.subscribe()
    try:
        went_on = connections_ended(client)  # counted before it goes: see _ack_answer
        if not await client.acknowledge(message_id, wait=ACK_WAIT):
            raise _NotAcknowledged(
                f"the relay connection was lost, so {consult} is not acknowledged yet: it is "
                "kept on this device and goes the next time lightbox connects to the relay "
                "(run `lightbox inbox`); until then the sender is not told and its on-call "
                "escalation goes on: phone the sender if it cannot wait")
        refused = await _ack_answer(client, message, answers, went_on)
    finally:
        client.unsubscribe(answers)
    if refused is not None:
        if refused.startswith(ErrorCode.NOT_ON_LADDER.value):
            stopped_by = next((e.acknowledged_by for e in await _escalations(
                client, message.thread_id) if e.state == "acknowledged" and e.acknowledged_by),
                None)
            if stopped_by is not None:
                await client.ensure_names([stopped_by])
            state = ("so its escalation goes on" if stopped_by is None else
                     f"and its escalation stopped already: {client.display_name(stopped_by)} "
                     "acknowledged it")
            raise FlowError(f"{consult} is not acknowledged: only someone on its on-call "
                            f"ladder can acknowledge it, and you are not on it, {state}; to "
                            f"tell {who} anything, reply (lightbox send --thread "
                            f"{message.thread_id} TEXT)", code=ErrorCode.NOT_ON_LADDER.value)
        raise FlowError(f"{consult} is not acknowledged: the relay refused it ({refused})",
                        code=refused.partition(":")[0])
    stopped = any(e.state == "acknowledged" and e.acknowledged_by == me
                  for e in await _escalations(client, message.thread_id))
    earlier = next((e for e in before if e.acknowledged_by != me), None)
    if earlier is not None and earlier.acknowledged_by:
        return (f"acknowledged {consult}: {who} is told you are on it too "
                f"({client.display_name(earlier.acknowledged_by)} had acknowledged it "
                "already, which stopped its on-call escalation)")
    return (f"acknowledged {consult}: {who} is told you are on it"
            + (", and its on-call escalation stops" if stopped else ""))


async def _the_consults(client: LightboxClient, message: VaultMessage) -> str:
    """``: acknowledge the consult itself: lightbox ack ID``, naming the latest message of
    the thread that can be acknowledged, or nothing when there is none."""
    thread = client.thread_messages(message.thread_id)
    views = [v for v in thread if v.message.message_id != message.message_id]
    gateways = await client.record_gateways([v.message.sender_user_id for v in thread])
    ids = [v.message.message_id for v in views
           if why_not_acknowledgeable(client, v, thread, gateways) is None]
    return f"; acknowledge the consult itself: lightbox ack {ids[-1]}" if ids else ""


async def _ack_answer(client: LightboxClient, message: VaultMessage,
                      answers: asyncio.Queue[ClientEvent], went_on: int) -> str | None:
    """Whether the relay took the acknowledgement just sent: None once it keeps this device's
    receipt, else why it refused it (:func:`clients.sdk.acking.acknowledgement_answer`, which
    sends it again when a ``lightbox watch`` or the desktop of the same profile took the
    connection before the relay answered). When it does neither in :data:`ACK_WAIT` seconds,
    that is said as it is (exit 1): it may not be acknowledged, and a later ``ack`` asks the
    relay again rather than trust it."""
    try:
        return await acknowledgement_answer(client, message.message_id, message.thread_id,
                                            answers, went_on, wait=ACK_WAIT)
    except AcknowledgementUnconfirmed:
        pass
    consult, _ = _consult_of(client, message.thread_id, message.message_id)
    raise _NotAcknowledged(
        f"the relay did not confirm in {ACK_WAIT:.0f} s that it took the acknowledgement of "
        f"{consult}: it may not be acknowledged, so the sender may not be told and its "
        f"on-call escalation may go on; run `lightbox ack {message.message_id}` again, or "
        "phone the sender if it cannot wait")
