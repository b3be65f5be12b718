"""What the desktop page is given: each message as JSON (its images, receipts, escalation steps,
filing and consent as the specialist sees them), the names of the people in a thread, and the
plan of a reply (who it goes to, under which consent).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from clients.desktop.web import Refused, http_url
from clients.sdk.acking import why_not_acknowledgeable
from clients.sdk.client import (
    LightboxClient,
    MessageView,
    SentMessage,
)
from clients.sdk.errors import SDKError
from clients.sdk.handover import Authorship
from clients.sdk.vault import VaultMessage
from protocol import api, certs
from protocol.body import Body, BodyKind, CaptureKind, FilingReceipt
from protocol.canonical import peek_compact
from protocol.consent import ConsentClaims, peek_consent_token_unverified
from protocol.errors import ProtocolError
from protocol.model import Priority, Purpose

__all__ = [
    "ACK_STATE",
    "ACK_UNANSWERED",
    "ACK_UNCONFIRMED",
    "KEPT_ACK",
    "ReplyPlan",
    "acknowledgement_note",
    "consent_claims",
    "known_name",
    "learn_names",
    "message_json",
    "message_times",
    "note",
    "one_acknowledgement",
    "reply_plan",
    "send_reply",
    "study_json",
    "thread_info",
]

# An "I'm on it" the relay could not take now: said when it is pressed, and under the consult
# until it has gone.
KEPT_ACK = ("Acknowledged on this computer, not sent yet: Lightbox cannot reach the relay, so "
            "the sender does not know yet. It is kept on this computer and goes by itself as "
            "soon as the relay can be reached while Lightbox is unlocked. If the consult "
            "cannot wait, phone the sender.")


# "I'm on it" sent, while the relay has not said whether it took it: its connection was taken by
# another program of this profile before it answered (clients/sdk/acking.py), so the desktop
# sends it again once it has the connection back; then, if still nothing, ACK_UNCONFIRMED.
ACK_UNANSWERED = ("Sent, but the relay has not said yet whether it took it: another Lightbox "
                  "program on this computer is using the connection. Lightbox sends it again "
                  "once it has the connection back and says here what the relay answered. "
                  "Until then the sender may not know you are on it: if the consult cannot "
                  "wait, phone the sender.")
ACK_UNCONFIRMED = ("Not confirmed: the relay did not say whether it took your acknowledgement, "
                   "so the sender may not know you are on it. Press I'm on it again, or phone "
                   "the sender if the consult cannot wait.")


def acknowledgement_note(view: MessageView) -> str:
    """What the page says under a message about this device's acknowledgement of it, beyond
    "You acknowledged this": not sent yet, or refused by the relay (and what to do)."""
    if view.acknowledgement_waiting:
        return KEPT_ACK
    if view.acknowledgement_refused:
        return (f"Not acknowledged: the relay refused it ({view.acknowledgement_refused}). "
                "The sender has not been told you are on it: reply to tell them, or phone "
                "them.")
    return ""


def study_json(receipt: FilingReceipt | None, message_id: str) -> dict[str, Any] | None:
    """Where the gateway filed this image of this message (its filing receipt): the study the
    photo went into and its retrieve URL, and, for a photo of a film or monitor, the
    ``originals`` the gateway found in PACS by patient and date (CLINICAL_SAFETY.md: a photo of
    an x-ray is not the study itself), in the receipt's order (newest first), and how its
    ``search`` for them went (found, none, failed; empty from an older gateway)."""
    if receipt is None or receipt.message_id != message_id:
        return None
    return {"study_uid": receipt.study_instance_uid,
            "retrieve_url": http_url(receipt.retrieve_url),
            "originals": [{"study_uid": o.study_instance_uid, "date": o.study_date,
                           "modalities": list(o.modalities), "description": o.description,
                           "url": http_url(o.url)} for o in receipt.original_studies],
            "search": receipt.original_search}


async def thread_info(client: LightboxClient, thread_id: str) -> api.ThreadInfo:
    """The thread from the client's list, fetched again once when it is not there yet (a
    consult that arrived since the inbox was last read); 404 when the relay has none."""
    for attempt in range(2):
        info = next((t for t in client.cached_threads() if t.thread_id == thread_id), None)
        if info is not None:
            return info
        if attempt == 0:
            with contextlib.suppress(SDKError):
                await client.threads()
    raise Refused(404, "no such thread")


def consent_claims(body: Body) -> ConsentClaims | None:
    """The claims of the consent token a body carries, decoded (not verified); None when it
    carries none or one that cannot be read."""
    if not body.consent_token:
        return None
    try:
        return peek_consent_token_unverified(body.consent_token)
    except ProtocolError:
        return None


async def learn_names(client: LightboxClient, views: Sequence[MessageView]) -> None:
    """Before a page names people: everyone these messages name (senders, receipts,
    escalation steps, consent recipients) from verified certificates, the vault's or the
    key directory's (offline, the vault's alone)."""
    wanted = []
    for v in views:
        wanted += [v.message.sender_user_id, *(r.user_id for r in v.receipts),
                   client.authorship(v.message, v.body).author_user_id,
                   *(e.user_id for e in v.escalations), *(t.user_id for t in v.not_received)]
        claims = consent_claims(v.body)
        if claims is not None:
            wanted += [claims.iss, *claims.recipients.users]
    with contextlib.suppress(SDKError):
        await client.ensure_names(wanted)


def known_name(client: LightboxClient, user_id: str) -> str | None:
    """A user's display name from a certificate this device verified; None when unknown (the
    SDK's fallback, a shortened id, is no name to print on the patient's form)."""
    if user_id == client.user_id:
        return peek_compact(client.state.user_certificate, certs.UserCertificate,
                            max_length=certs.MAX_CERTIFICATE_LENGTH).display_name
    return client.display_name(user_id) if client.knows_name(user_id) else None


@dataclasses.dataclass(frozen=True)
class ReplyPlan:
    """How a reply is sealed: ``purpose`` (what the text guard checks it for), the consent
    the relay needs for any purpose but direct care, and for an external consult the
    clinical-necessity statement it was asked with (CLINICAL_SAFETY.md: the reply goes back to
    the other organisation in the same consult)."""

    purpose: Purpose
    consent_id: str | None = None
    necessity: str | None = None


def reply_plan(views: Sequence[MessageView], reply_to: str | None) -> ReplyPlan:
    """A reply carries the purpose of the message it answers: ``reply_to`` when named (it
    must be in this thread, else 404), otherwise the thread's latest incoming clinician
    message (the gateway's receipts are not what a clinician answers), otherwise our own
    latest; direct care in a thread with none. The consent is that message's when it covers
    the purpose, else the newest in the thread that does; the statement likewise."""
    said = [v for v in views if v.body.kind is BodyKind.TEXT]
    if reply_to is not None:
        answered = next((v for v in views if v.message.message_id == reply_to), None)
        if answered is None:
            raise Refused(404, "no such message in this thread")
    else:
        incoming = [v for v in said if not v.message.outgoing]
        answered = (incoming or said)[-1] if said else None
    if answered is None or not answered.message.purpose:
        return ReplyPlan(Purpose.DIRECT_CARE)
    purpose = Purpose(answered.message.purpose)
    if purpose is Purpose.DIRECT_CARE:
        return ReplyPlan(purpose)
    candidates = [answered, *reversed(views)]
    consent_id = next((c.jti for v in candidates
                       if (c := consent_claims(v.body)) is not None and purpose in c.purposes),
                      None)
    necessity = None
    if purpose is Purpose.EXTERNAL_CONSULT:
        necessity = next((v.body.necessity for v in candidates if v.body.necessity), None)
    return ReplyPlan(purpose, consent_id, necessity)


async def send_reply(client: LightboxClient, thread_id: str, text: str, *,
                      reply_to: str | None, plan: ReplyPlan, priority: Priority
                      ) -> SentMessage:
    """Seal and send the reply under the plan's purpose, consent and necessity."""
    return await client.send_text(thread_id, text, priority=priority, purpose=plan.purpose,
                                  reply_to=reply_to, necessity=plan.necessity,
                                  consent_id=plan.consent_id, timeout=30.0)


def message_json(client: LightboxClient, view: MessageView,
                  receipts: Mapping[str, FilingReceipt] | None = None,
                  withdrawals: Mapping[str, int] | None = None,
                  gateways: Collection[str] = (),
                  thread: Sequence[MessageView] | None = None) -> dict[str, Any]:
    """One message as the page shows it; ``gateways``: the record gateway's user ids
    (:meth:`LightboxClient.record_gateways`), whose messages answer a consult and get no
    "I'm on it" (its receipt would go to the gateway, not to the consult's sender);
    ``thread``: the thread's messages (read from the vault when None), which say whether
    this one is the consult or a reply (``acknowledgeable``, clients/sdk/acking.py)."""
    receipts, withdrawals = receipts or {}, withdrawals or {}
    m, body = view.message, view.body
    # what the sender's text recognition found in each image (kinds only), told with it
    burned_in = {b.attachment_id: [k.value for k in b.kinds]
                 for b in body.burned_in_identifiers}
    consent = None
    c = consent_claims(body)
    if c is not None:
        consent = {
            "consent_id": c.jti, "decision": c.decision.value,
            "purposes": [p.value for p in c.purposes],
            "users": [client.display_name(u) for u in c.recipients.users],
            "roles": c.recipients.roles, "orgs": c.recipients.orgs,
            "external": c.recipients.external, "expires_at": c.exp,
            "form_version": c.form_version,
            # when the consent was withdrawn (the relay's time), or None
            "withdrawn_at": withdrawals.get(c.jti),
            # the patient's copy (CLINICAL_SAFETY.md), opened by the page in a new tab
            "pdf_url": f"/api/messages/{m.message_id}/consent.pdf",
        }
    record = None
    if body.record is not None:
        r = body.record
        record = {"patient_name": r.patient_name.replace("^", ", "), "patient_id": r.patient_id,
                  "issuer": r.issuer_of_patient_id, "birth_date": r.birth_date,
                  "sex": r.sex.value, "accession": r.accession_number,
                  "region": r.anatomic_region, "capture": r.capture.value,
                  # a photo of a film or monitor is not the study itself (CLINICAL_SAFETY.md)
                  "not_diagnostic": r.capture is CaptureKind.FILM}
    # A consult handed over at a shift change: shown as its author wrote it, when they did,
    # and told as handed over, by whose device (docs/PROTOCOL.md §16.4, clients/sdk/handover.py)
    author = client.authorship(m, body)
    sender = client.display_name(author.author_user_id)
    if not author.confirmed:
        sender += f" (as handed over by {client.display_name(author.resealed_by)})"
    handover = None if not author.handed_over else {
        "resealed_by": client.display_name(author.resealed_by),
        "resealed_at": author.resealed_at, "confirmed": author.confirmed,
        "contradicted": author.contradicted, "misclaimed": author.misclaimed,
        "altered": author.altered, "by_author": author.resealed_by == author.author_user_id}
    sent_at, written_at = message_times(m, author)
    return {
        # written by this user, on this computer or another device of theirs: never "I'm on it"
        "message_id": m.message_id, "mine": m.outgoing or m.sender_user_id == client.user_id,
        "sender": sender, "sent_at": sent_at, "written_at": written_at, "handover": handover,
        "priority": m.priority, "purpose": m.purpose, "read": m.read, "text": body.text,
        "subject": body.subject, "reply_to": body.reply_to, "kind": body.kind.value,
        "from_gateway": m.sender_user_id in gateways,
        "necessity": body.necessity, "quality_warnings": body.quality_warnings,
        # break-glass (docs/PROTOCOL.md §17): the signed header's category, the sealed reason
        "emergency": m.emergency, "emergency_reason": body.emergency_reason,
        "images": [{"attachment_id": i.attachment_id, "state": i.state, "reason": i.reason,
                    "burned_in_identifiers": burned_in.get(i.attachment_id, []),
                    "record_ref": i.record_ref, "width": i.width, "height": i.height,
                    "filed_at": i.filed_at, "expires_at": i.expires_at,
                    "never_here": False,  # expired before it reached this computer (app.py)
                    "study": study_json(receipts.get(i.attachment_id), m.message_id)}
                   for i in view.images],
        "consent": consent, "record": record,
        # The other participants' receipts only: the user's own other devices (their phone)
        # sign "delivered" and "read" of it too, but they are no recipient to tell of, as
        # `lightbox watch` leaves them out (clients/clinician/reading.py)
        "receipts": [{"name": client.display_name(r.user_id), "kind": r.kind, "at": r.at}
                     for r in view.receipts if r.user_id != client.user_id],
        # PROTOCOL.md §16: the consult's on-call escalation, as the sender and everyone reached see
        # it
        "escalations": [{"kind": e.kind, "step": e.step, "level": e.level,
                         "name": client.display_name(e.user_id), "at": e.at,
                         "next_shift_at": e.next_shift_at}
                        for e in view.escalations],
        # PROTOCOL.md §15 "Never received": to the sender, each person who never saw its image
        "not_received": [t.sentence(f'consult "{body.subject}"' if body.subject
                                    else "this consult") for t in view.not_received],
        # a consult for this user to say "I'm on it" to: the page's button, with
        # acknowledged_by_me (one rule with `lightbox ack` and its hint: clients/sdk/acking.py);
        # once per consult, under one message of it (:func:`one_acknowledgement`)
        "acknowledgeable": why_not_acknowledgeable(client, view, thread, gateways) is None,
        "acknowledged_by_me": view.acknowledged_by_me,
        "acknowledged_elsewhere": False,  # by another device of this user (app.py thread)
        "acknowledgement_waiting": view.acknowledgement_waiting,
        "acknowledgement_note": acknowledgement_note(view),
        "filing": None if body.filing is None else {
            "study": body.filing.study_instance_uid, "record_ref": body.filing.record_ref,
            "filed_at": body.filing.filed_at},
        "note": note(body),
    }


# What the page says of this user's "I'm on it" under a message (:func:`message_json`).
ACK_STATE = ("acknowledged_by_me", "acknowledged_elsewhere", "acknowledgement_waiting",
             "acknowledgement_note")


def one_acknowledgement(messages: list[dict[str, Any]], offered: str | None) -> None:
    """"I'm on it" is said to the consult, whichever message of its opening run it went to
    (clients/sdk/acking.py): of ``messages`` (:func:`message_json`, after the thread's own
    acknowledgement notes), the consult's button, and what became of it, go once, under
    ``offered`` (:func:`clients.sdk.acking.offered_under`), the only one left
    ``acknowledgeable``. Every message of the run takes the consult's state (its escalation
    lines say whether this user acknowledged it): acknowledged and answered by the relay,
    else sent and waiting, else refused, else not."""
    run = [m for m in messages if m["acknowledgeable"]]
    said = next((m for m in run if m["acknowledged_by_me"]
                 and not m["acknowledgement_waiting"]), None) \
        or next((m for m in run if m["acknowledged_by_me"]), None) \
        or next((m for m in run if m["acknowledgement_note"]), None)
    for m in run:
        if said is not None:
            m.update({k: said[k] for k in ACK_STATE})
        m["acknowledgeable"] = m["message_id"] == offered


# A reply kept while the relay was out of reach is sealed when it goes: its signed header's
# time is when it was sent. Written more than this many seconds earlier, the page says both.
WRITTEN_EARLIER = 60


def message_times(m: VaultMessage, author: Authorship) -> tuple[float, float | None]:
    """When a message was sent as every participant sees it, the time in its signed header
    (``lightbox watch`` on the other side prints it), and, for one this device sent more than
    :data:`WRITTEN_EARLIER` seconds after it was written (kept while the relay was out of
    reach), when it was written; None otherwise (docs/USER_GUIDE.md, "Times"). A consult
    handed over at a shift change keeps its author's time (docs/PROTOCOL.md §16.4)."""
    if author.handed_over:
        return author.written_at, None
    sent = m.header_sent_at
    return sent, (m.sent_at if m.signed_at is not None and sent - m.sent_at > WRITTEN_EARLIER
                  else None)


def note(body: Body) -> str:
    """What a body without a clinician's text says, in a line: a consent sent to the record
    or filed there (CLINICAL_SAFETY.md; the record thread), an image filed."""
    if body.kind is BodyKind.CONSENT_RECORD:
        return "Consent sent to the record gateway to be filed in the patient's record"
    if body.consent_filing is not None:
        c = body.consent_filing
        return (f"Consent {c.consent_id[:8]} ({c.decision}) filed in the patient's record, "
                f"study {c.study_instance_uid}")
    if body.filing is not None:
        return f"Image filed in the patient's record, study {body.filing.study_instance_uid}"
    return ""
