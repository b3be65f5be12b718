"""Who wrote a consult and when, also of a copy handed over at a shift change
(docs/PROTOCOL.md §14 ``handover_of``, §16.4; docs/CLINICAL_SAFETY.md "On-call handover").

At a shift change the relay cannot encrypt for the incoming clinician, so a device that holds
the consult (the sender's, or an outgoing clinician's) seals it again: a new message, sent at
the moment of the reseal and signed by that device. Its sealed body names the original
(``handover_of``: message id, author's user and device, original time). What a device can
check of that claim:

* it holds the original (same message id): the claim must match that message's verified
  header, and the copy's content the original's, except for what a reseal changes (its
  ``handover_of``; images that expired on the resealing device, dropped with their
  burned-in-identifier flags while the patient ``record`` data stays: docs/PROTOCOL.md §14
  "record", HAZ-02 C19); else it is shown as a copy that does not match the original
  (``contradicted``; ``altered`` when its content differs: words its author never wrote);
* the resealing device is the claimed author's device: the author vouches for their own
  consult (``confirmed``);
* otherwise the claim is shown as the resealer's word ("as handed over by ...").

Two holders that are not the author can both answer one reseal request (docs/PROTOCOL.md
§16.4), so a reader may hold several copies of one consult, and the original too. Every copy
stays in the vault (each was delivered; receipts go to its sender's device), but a thread lists
the consult once (:func:`one_per_consult`).

Pure: no I/O; the caller passes what the vault holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import msgspec

from clients.sdk.vaultrows import VaultMessage
from protocol.body import Body, HandoverOf

__all__ = ["Authorship", "authorship", "authorship_line", "copies_line", "handover_of",
           "one_per_consult", "same_content"]


@dataclasses.dataclass(frozen=True)
class Authorship:
    """Who wrote a message and when, as a reader is told.

    ``author_user_id``/``written_at``: the original author and time when handed over (a claim
    unless ``confirmed``), else the signed header's sender and time. ``handed_over``: a copy
    sealed again at a shift change; ``resealed_by``/``resealed_at``: whose device sealed that
    copy and when. ``confirmed``: the author and time are the signed header's, or checked
    against the original this device holds, or the author's own device resealed it.
    ``contradicted``: this device holds the original and it says otherwise: of the author and
    time (``misclaimed``), of the content (``altered``), or both."""

    author_user_id: str
    written_at: float
    handed_over: bool = False
    resealed_by: str = ""
    resealed_at: float = 0.0
    confirmed: bool = True
    contradicted: bool = False
    misclaimed: bool = False
    altered: bool = False


def handover_of(message: VaultMessage, body: Body) -> HandoverOf:
    """What a reseal of ``message`` (held and verified by this device) says of its origin: the
    original's own ``handover_of`` when it is itself a handed-over copy (the consult handed
    over again at a later shift change keeps its author), else its header's."""
    if not isinstance(body.handover_of, msgspec.UnsetType):
        return body.handover_of
    return HandoverOf(message_id=message.message_id, sender_user_id=message.sender_user_id,
                      sender_device_id=message.sender_device_id,
                      sent_at=message.header_sent_at)


def same_content(original: VaultMessage, original_body: Body, copy: VaultMessage,
                 copy_body: Body) -> bool:
    """Whether a handed-over ``copy`` carries what ``original`` carries (both as this device
    holds them), but for what a legitimate reseal changes (clients/sdk/notices.py
    ``_answer_reseal``): the ``handover_of`` it adds, and images the resealing device no longer
    held (expired there: dropped with their burned-in-identifier flags, the patient ``record``
    data kept; docs/PROTOCOL.md §14 "record", HAZ-02 C19). Every other field (text, subject,
    record data, consent, reply, warnings...) and the header's priority and purpose must be the
    original's, and each image kept the original's, in its order."""
    if copy.priority != original.priority or original.purpose not in (None, copy.purpose):
        return False  # (a purpose None: a row kept before it was recorded, not compared)

    def rest(b: Body) -> Body:
        return msgspec.structs.replace(b, attachments=[], burned_in_identifiers=[],
                                       handover_of=msgspec.UNSET)

    def images(b: Body, kept: set[str]) -> list[tuple[object, object]]:
        flagged = {f.attachment_id: f for f in b.burned_in_identifiers}
        return [(a, flagged.get(a.attachment_id)) for a in b.attachments
                if a.attachment_id in kept]

    kept = {a.attachment_id for a in copy_body.attachments}
    return (rest(copy_body) == rest(original_body)
            and images(copy_body, kept) == images(original_body, kept))


def authorship(message: VaultMessage, body: Body,
               held: Callable[[str], tuple[VaultMessage, Body | None] | None]) -> Authorship:
    """Who wrote ``message`` and when; ``held`` finds a message of this device's vault by id,
    with its decoded body (None when it does not hold it; a body None when unreadable, which
    no copy matches)."""
    claim = body.handover_of
    if isinstance(claim, msgspec.UnsetType):
        return Authorship(message.sender_user_id, message.sent_at)
    found = held(claim.message_id) if claim.message_id != message.message_id else None
    misclaimed = altered = False
    if found is not None:
        original, original_body = found
        misclaimed = not (original.sender_user_id == claim.sender_user_id
                          and original.sender_device_id == claim.sender_device_id
                          and original.header_sent_at == claim.sent_at)
        altered = original_body is None or not same_content(original, original_body,
                                                            message, body)
        confirmed = not (misclaimed or altered)
    else:
        confirmed = (message.sender_device_id == claim.sender_device_id
                     and message.sender_user_id == claim.sender_user_id)
    return Authorship(claim.sender_user_id, claim.sent_at, handed_over=True,
                      resealed_by=message.sender_user_id, resealed_at=message.sent_at,
                      confirmed=confirmed, contradicted=found is not None and not confirmed,
                      misclaimed=misclaimed, altered=altered)


def authorship_line(author: Authorship, name: Callable[[str], str],
                    when: Callable[[float], str]) -> str:
    """The words a reader is told beside a handed-over consult ("" for any other message)."""
    if not author.handed_over:
        return ""
    by = name(author.resealed_by)
    if author.contradicted:
        warning = f"handed over at the shift change by {by}'s device on {when(author.resealed_at)}"
        if not author.misclaimed:  # the author's words changed: not what they wrote
            return f"{warning}; WARNING: its content does NOT match the original on this device"
        return (f"{warning}; WARNING: it says it was written by {name(author.author_user_id)} at "
                f"{when(author.written_at)}, which does NOT match the original on this device"
                + (", nor does its content" if author.altered else ""))
    if author.resealed_by == author.author_user_id and author.confirmed:
        return f"handed over at the shift change on {when(author.resealed_at)}"
    if author.confirmed:
        return (f"handed over at the shift change on {when(author.resealed_at)} "
                f"(resealed by {by}'s device)")
    return (f"as handed over by {by} at the shift change on {when(author.resealed_at)}: "
            "the author and time are their device's word")


def one_per_consult(messages: Sequence[VaultMessage], body: Callable[[VaultMessage], Body | None]
                    ) -> list[tuple[VaultMessage, tuple[VaultMessage, ...]]]:
    """A thread's ``messages`` (in the thread's order) with each consult once: (the message
    shown, the other copies of it held, hidden), at the place of its first copy. Messages are
    copies of one consult when they name the same original (``handover_of``, the original
    naming itself) with the same author and time, and carry the same body: a copy that differs
    from another, or that contradicts the original held, is shown on its own (with its own
    warning), never hidden behind it. Shown: the original itself when held, else the copy its
    author's own device sealed, else the first."""
    groups: dict[object, list[VaultMessage]] = {}
    order: list[object] = []
    for m in messages:
        b = body(m)
        key: object = m.message_id
        if b is not None:
            plain = msgspec.structs.replace(b, handover_of=msgspec.UNSET)
            key = (handover_of(m, b), msgspec.msgpack.encode(plain))
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(m)
    out = []
    for key in order:
        held = groups[key]
        claim = key[0] if isinstance(key, tuple) else None
        shown = held[0]
        if claim is not None:
            shown = min(held, key=lambda m: (m.message_id != claim.message_id,
                                             (m.sender_device_id, m.sender_user_id)
                                             != (claim.sender_device_id, claim.sender_user_id)))
        out.append((shown, tuple(m for m in held if m is not shown)))
    return out


def copies_line(copies: Sequence[VaultMessage], name: Callable[[str], str]) -> str:
    """The words a reader is told beside a consult of which other copies are held, hidden
    ("" for none): whose devices also handed it over."""
    by = [("your device" if who == "you" else f"{who}'s device")
          for who in dict.fromkeys(name(m.sender_user_id) for m in copies)]
    return f"also handed over by {' and '.join(by)}: the same consult, shown once" if by else ""
