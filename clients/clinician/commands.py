"""The clinician's messaging commands of ``lightbox`` (issue 8 item 3), on the SDK client:

    lightbox threads                                   my consult threads, urgent first
    lightbox send --to role:orthopaedics_oncall [--to user:LOGIN] [--urgent] "text"
                  [--image FILE [--send-anyway]] [--purpose P] [--thread ID]
                  [--patient-name 'Doe^Jane' --patient-id MRN ...]   (sealed body only)
                  [--consent-token FILE | --patient-agreed --statements-shown]
                  [--necessity TEXT] [--redact identifiers|all-text] [--redact-box X,Y,W,H]
                  [--text-checked]                   (issue 10: see docs/CLINICAL_SAFETY.md)
    lightbox inbox [--mark-read]                       what arrived (stored in the vault)
    lightbox outbox                                    sends not yet stored by the relay
    lightbox watch [--count N] [--timeout S]           print consults as they arrive
    lightbox desktop                                   the specialist's desktop client

A profile holds the key store (``keystore.lbx``) and the vault (``vault.db``, messages and
images) side by side, both unlocked with the account password. Patient data flags go only
into the sealed body (protocol/body.py), never into anything the relay can read.

Every failure a user can cause ends with one plain sentence and a non-zero exit status, and
nothing the relay accepted is lost: a message counts as sent only once the relay stored it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from clients.sdk import imaging
from clients.sdk.client import (
    ClientEvent,
    EscalationEvent,
    ExpiredEvent,
    FiledEvent,
    ImageEvent,
    LightboxClient,
    MessageEvent,
    OutboxEvent,
    ReceiptEvent,
    StatusEvent,
    WithdrawnEvent,
)
from clients.sdk.errors import FlowError, KeyStoreError
from clients.sdk.keystore import KeyStore
from clients.sdk.profile import ProfileDevice, open_profile
from clients.sdk.prompts import read_secret
from clients.sdk.timefmt import format_time
from clients.sdk.vault import OutboxRecord
from protocol.body import Body, BodyKind, IdentifierKind, RecordData, Sex
from protocol.consent import (
    ConsentBasis,
    ConsentClaims,
    ConsentDecision,
    peek_consent_token_unverified,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.model import Priority, Purpose

__all__ = ["register", "unlock_profile"]

T = TypeVar("T")
MAX_IMAGE_FILE = 40 * 1024 * 1024  # imaging.DEFAULT_LIMITS.max_bytes


def _profile_dir(args: argparse.Namespace) -> Path:
    return KeyStore.for_profile(args.profile).directory


def unlock_profile(args: argparse.Namespace) -> ProfileDevice:
    directory = _profile_dir(args)
    if not (directory / "keystore.lbx").exists() and not (directory / "vault.db").exists():
        raise KeyStoreError(f"profile {args.profile!r} has no device: run `lightbox enroll` "
                            "or `lightbox link` first")
    return open_profile(directory, read_secret("LIGHTBOX_PASSWORD", f"Password ({args.profile})"))


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    async def runner() -> T:
        return await factory()
    return asyncio.run(runner())


def _when(ts: float) -> str:
    return format_time(ts)


def _consent_of(body: Body) -> str | None:
    """The id of the consent a message was sent under, if it carries a readable one."""
    if not body.consent_token:
        return None
    try:
        return peek_consent_token_unverified(body.consent_token).jti
    except ProtocolError:
        return None


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Say what is wrong with a rejected image; every other failure becomes one sentence in
    cli.main (clients/sdk/failures.py), which also knows a profile its organisation wiped."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except imaging.ImageRejected as exc:
            print(f"error: the image cannot be sent: {exc.reason}", file=sys.stderr)
        return 1

    return run


# --- threads and inbox -------------------------------------------------------------------------


def _subject(client: LightboxClient, thread_id: str) -> str:
    for view in client.thread_messages(thread_id):
        if view.body.subject:
            return view.body.subject
    return "(no subject yet)"


def _threads(args: argparse.Namespace) -> int:
    device = unlock_profile(args)

    async def go() -> None:
        client = device.client()
        try:
            # Synced first, as `inbox` is: unread is what this device holds and has not read
            # (LightboxClient.unread_messages), the one definition both commands count.
            await client.start()
            await client.wait_synced(args.timeout)
            threads = await client.threads()
            for t in threads:
                flag = "URGENT " if t.priority == "urgent" else "       "
                who = ", ".join([*(f"role:{r}" for r in t.roles),
                                 f"{len(t.members)} people"])
                print(f"{flag}{t.thread_id}  {_subject(client, t.thread_id)}  [{who}]  "
                      f"{client.unread(t.thread_id)} unread")
            print(f"{len(threads)} threads")
            _print_pending_count(client)
        finally:
            await client.close()

    _run(go)
    return 0


def _print_message(client: LightboxClient, event: MessageEvent) -> None:
    m, body = event.message, event.body
    flag = "URGENT " if m.priority == "urgent" else ""
    sender = client.display_name(m.sender_user_id)
    print(f"{flag}[{_when(m.sent_at)}] {sender} in {m.thread_id[:8]}: "
          f"{(body.subject + ' - ') if body.subject else ''}{body.text or _kind_line(body)}",
          flush=True)
    flagged = {b.attachment_id: b.kinds for b in body.burned_in_identifiers}
    for a in body.attachments:
        print(f"    image {a.attachment_id} ({a.width}x{a.height}, {a.size} bytes)", flush=True)
        if a.attachment_id in flagged:
            kinds = ", ".join(k.value.replace("_", " ") for k in flagged[a.attachment_id])
            print(f"    this image shows patient identifiers: {kinds}", flush=True)


def _kind_line(body: Body) -> str:
    """What a body without text says: filing receipts, consents sent for filing."""
    if body.filing is not None:
        f = body.filing
        line = f"image {f.attachment_id[:8]} filed in the record (study {f.study_instance_uid})"
        for o in f.original_studies:
            line += (f"\n    original study: {'/'.join(o.modalities) or '?'} "
                     f"{o.study_date or ''} {o.url or o.study_instance_uid}")
        return line
    if body.consent_filing is not None:
        c = body.consent_filing
        return (f"consent {c.consent_id[:8]} ({c.decision}) filed in the record "
                f"(study {c.study_instance_uid})")
    if body.kind is BodyKind.CONSENT_RECORD:
        return "a consent sent to the record gateway for filing"
    return ""


def _pending_line(client: LightboxClient, record: OutboxRecord) -> str:
    body = client.pending_body(record)
    what = (body.subject + " - ") if body.subject else ""
    what += body.text or ("an image" if record.image or record.attachment_ids else "")
    image = "" if record.image is None or record.image.uploaded else " (image upload not finished)"
    return (f"waiting since [{_when(record.created_at)}] in {record.thread_id[:8]}: "
            f"{what[:60]}{image}  (message {record.message_id})")


def _print_pending_count(client: LightboxClient) -> None:
    pending = client.pending_sends()
    if pending:
        print(f"{len(pending)} messages not yet stored by the relay: they are sent again the "
              "next time this device connects (lightbox outbox lists them)")


def _outbox(args: argparse.Namespace) -> int:
    """The sends the relay has not stored yet (kept in the vault; resent on the next start)."""
    device = unlock_profile(args)
    client = device.client()
    pending = client.pending_sends()
    for record in pending:
        print(_pending_line(client, record))
    print(f"{len(pending)} messages waiting to be sent"
          + (": they are sent again the next time this device connects (lightbox inbox, "
             "watch or send)" if pending else ""))
    return 0


def _print_outbox_event(event: OutboxEvent) -> None:
    line = _describe_outbox(event)
    print(line, file=sys.stderr if event.state == "refused" else sys.stdout, flush=True)


def _describe_outbox(event: OutboxEvent) -> str:
    if event.state == "sent":
        return (f"-- message {event.message_id} (sent earlier from this device) is now stored "
                f"by the relay in thread {event.thread_id} (#{event.thread_seq})")
    if event.state == "refused":
        return (f"-- message {event.message_id} (sent earlier from this device) was NOT sent: "
                f"{event.detail}; it was removed from the outbox")
    return (f"-- message {event.message_id} is still waiting to be sent: {event.detail}")


def _inbox(args: argparse.Namespace) -> int:
    device = unlock_profile(args)

    async def go() -> int:
        client = device.client()
        shown = 0
        try:
            events = client.subscribe()
            await client.start()
            await client.wait_synced(args.timeout)
            while not events.empty():
                event = events.get_nowait()
                if isinstance(event, OutboxEvent):
                    _print_outbox_event(event)
            threads = await client.threads()
            await client.fetch_missing_images()  # waits for downloads already under way
            unread = {t.thread_id: client.unread_messages(t.thread_id) for t in threads}
            # names from verified certificates, not only of senders heard from in this run
            await client.ensure_names(v.message.sender_user_id
                                      for views in unread.values() for v in views)
            withdrawn = await client.refresh_consents(
                [c for views in unread.values() for v in views
                 if (c := _consent_of(v.body)) is not None])
            for t in threads:
                for view in unread[t.thread_id]:
                    _print_message(client, MessageEvent(view.message, view.body))
                    for img in view.images:
                        print(f"    image {img.attachment_id[:8]}: {img.state} {img.reason}")
                    consent_id = _consent_of(view.body)
                    if consent_id in withdrawn:
                        print(f"    consent withdrawn {format_time(withdrawn[consent_id])}: the "
                              "patient's consent no longer covers this message")
                    shown += 1
                if args.mark_read:
                    await client.mark_read(t.thread_id)
            _print_pending_count(client)
        finally:
            await client.close()
        return shown

    count = _run(go)
    print(f"{count} unread messages")
    return 0


def _describe(client: LightboxClient, event: ClientEvent) -> str | None:
    if isinstance(event, ImageEvent):
        return f"    image {event.attachment_id[:8]}: {event.status} {event.reason}".rstrip()
    if isinstance(event, EscalationEvent):
        what = {"renotify": "reminded", "released": "passed to the next on call",
                "handover": "handed over to the incoming shift"}.get(event.kind, event.kind)
        return f"    consult {event.message_id[:8]} {what} (step {event.step})"
    if isinstance(event, ReceiptEvent):
        return f"    {event.display_name or event.user_id[:8]}: {event.kind} " \
               f"({event.message_id[:8]})"
    if isinstance(event, FiledEvent):
        return (f"    image {event.attachment_id[:8]} filed in the record"
                f"{' as ' + event.record_ref if event.record_ref else ''}; copies expire "
                f"{_when(event.expires_at)}")
    if isinstance(event, ExpiredEvent):
        why = ("the patient's consent was withdrawn" if event.reason == "consent_revoked"
               else event.reason)
        return f"    image {event.attachment_id[:8]} deleted from this device ({why})"
    if isinstance(event, WithdrawnEvent):
        why = ("the patient's consent was withdrawn" if event.reason == "consent_revoked"
               else "the sending device was revoked")
        return f"    message {event.message_id[:8]} withdrawn before delivery ({why})"
    if isinstance(event, OutboxEvent):
        return _describe_outbox(event)
    if isinstance(event, StatusEvent):
        if event.state == "connected":
            return "-- connected to the relay"
        if event.state == "disconnected":
            return "-- relay connection lost: reconnecting (nothing is lost)"
        return f"-- {event.state}: {event.detail}"
    return None


def _watch(args: argparse.Namespace) -> int:
    device = unlock_profile(args)

    async def go() -> None:
        client = device.client()
        seen = 0
        try:
            queue = client.subscribe()
            await client.start()
            print("watching for consults (Ctrl-C to stop)", flush=True)
            async with asyncio.timeout(args.timeout):
                while args.count is None or seen < args.count:
                    event = await queue.get()
                    if isinstance(event, MessageEvent):
                        _print_message(client, event)
                        seen += 1
                        continue
                    line = _describe(client, event)
                    if line:
                        print(line, flush=True)
                    if isinstance(event, StatusEvent) and event.state in ("stopped", "wiped"):
                        return
        except TimeoutError:
            pass
        finally:
            await client.close()

    _run(go)
    return 0


# --- send --------------------------------------------------------------------------------------


def _targets(values: list[str]) -> tuple[list[str], list[str]]:
    users, roles = [], []
    for value in values:
        kind, _, name = value.partition(":")
        if kind == "user" and name:
            users.append(name)
        elif kind == "role" and name:
            roles.append(name)
        else:
            raise FlowError(f"--to {value!r}: write user:LOGIN or role:ROLE",
                            code=ErrorCode.VALIDATION_FAILED.value)
    return users, roles


def _read_image(path: str) -> bytes:
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_IMAGE_FILE:
            raise imaging.ImageRejected(imaging.RejectCode.TOO_LARGE,
                                        f"{p.name} is {size / 2**20:.1f} MB, over the "
                                        f"{MAX_IMAGE_FILE // 2**20} MB limit")
        return p.read_bytes()
    except OSError as exc:
        raise FlowError(f"cannot read {path}: {exc.strerror}",
                        code=ErrorCode.VALIDATION_FAILED.value) from exc


def _prepare(args: argparse.Namespace) -> imaging.PreparedImage | None:
    if not args.image:
        return None
    prepared = imaging.prepare_image(_read_image(args.image))
    for w in prepared.warnings:
        print(f"warning: {w.message}", file=sys.stderr)
    if prepared.warnings and not args.send_anyway:
        if not sys.stdin.isatty():
            raise FlowError("the photo may be hard to read (see the warnings): retake it, or "
                            "pass --send-anyway", code="quality_warning")
        answer = input("Retake the photo, or send anyway? [retake/send] ").strip().lower()
        if answer not in {"s", "send", "send anyway"}:
            raise FlowError("not sent: retake the photo and send it again",
                            code="quality_warning")
    return prepared


def _guard_text(args: argparse.Namespace, text: str, purpose: Purpose) -> None:
    """The free-text guard (clients/sdk/textguard.py) on the text and the necessity statement:
    for purposes that leave direct care, warn about exact ages, dates of birth, MRNs and
    dates of service, and ask (or require --text-checked) before sealing."""
    from clients.sdk.textguard import TextGuardWarning, guard_text

    for label, value in (("text", text), ("necessity statement", args.necessity or "")):
        try:
            guard_text(value, purpose, confirmed=args.text_checked)
        except TextGuardWarning as warning:
            for f in warning.findings:
                print(f"warning: the {label} holds {f.kind.value.replace('_', ' ')} "
                      f"{f.text!r}: {f.suggestion}", file=sys.stderr)
            if warning.suggestion != value:
                print(f"suggested: {warning.suggestion}", file=sys.stderr)
            if not sys.stdin.isatty():
                raise
            answer = input("Send it as written? [edit/send] ").strip().lower()
            if answer not in {"s", "send"}:
                raise FlowError("not sent: reword the text and send it again",
                                code=warning.code) from None


def _box(value: str) -> tuple[int, int, int, int]:
    try:
        left, top, width, height = (int(v) for v in value.split(","))
    except ValueError:
        raise FlowError(f"--redact-box {value!r}: write X,Y,WIDTH,HEIGHT in pixels",
                        code=ErrorCode.VALIDATION_FAILED.value) from None
    if min(left, top) < 0 or min(width, height) <= 0:
        raise FlowError(f"--redact-box {value!r}: the box is empty or off the image",
                        code=ErrorCode.VALIDATION_FAILED.value)
    return left, top, width, height


def _shared_image(args: argparse.Namespace, prepared: imaging.PreparedImage, purpose: Purpose
                  ) -> tuple[imaging.SanitisedImage, tuple[IdentifierKind, ...]]:
    """PHI in the pixels (clinician/phi.py): OCR, show what was found, black out per --redact
    and --redact-box, and refuse a de-identified purpose whose copy still shows text. Also
    the kinds of identifier the copy sent still shows, for the recipient to be told."""
    from clients.clinician import phi

    try:
        shared = phi.prepare_for_purpose(
            prepared.image, purpose, mode=phi.RedactMode(args.redact),
            boxes=[_box(b) for b in args.redact_box or []], rules=phi.rules_from_env())
    except phi.PhiRefused as refused:
        for line in phi.describe(refused.scan) if refused.scan else []:
            print(f"text in the image: {line}", file=sys.stderr)
        if refused.code == "phi_unredacted":
            print("black it all out with --redact all-text (and --redact-box X,Y,W,H for "
                  "anything OCR missed), then check the copy", file=sys.stderr)
        raise
    for line in phi.describe(shared.original_scan):
        print(f"text in the image: {line}", file=sys.stderr)
    for warning in shared.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if shared.redacted:
        print("the copy sent has the text blacked out", file=sys.stderr)
    kinds = phi.identifier_kinds(shared.shared_scan)
    if kinds:
        print("the recipient is told that the image shows "
              f"{', '.join(k.value.replace('_', ' ') for k in kinds)}", file=sys.stderr)
    return shared.image, kinds


def record_from_args(args: argparse.Namespace) -> RecordData | None:
    if not (args.patient_name or args.patient_id):
        return None
    if not args.patient_id:
        raise FlowError("--patient-id (the MRN) is needed with patient data",
                        code=ErrorCode.VALIDATION_FAILED.value)
    return RecordData(patient_name=args.patient_name or "", patient_id=args.patient_id,
                      issuer_of_patient_id=args.issuer or "", birth_date=args.birth_date,
                      sex=Sex(args.sex or ""), accession_number=args.accession or "",
                      anatomic_region=args.region or "")


def _token_file(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise FlowError(f"cannot read {path}: {exc.strerror}",
                        code=ErrorCode.VALIDATION_FAILED.value) from exc


def _text_consent_id(args: argparse.Namespace) -> str | None:
    """The consent a text-only message is sent under (``--consent-token``): needed outside
    direct care, where the relay refuses a message that names none (``consent_missing``)."""
    if not args.consent_token:
        return None
    try:
        return peek_consent_token_unverified(_token_file(args.consent_token)).jti
    except ProtocolError as exc:
        raise FlowError(f"{args.consent_token} does not hold a consent token",
                        code=ErrorCode.CONSENT_INVALID.value) from exc


def _consent_token(args: argparse.Namespace, device: ProfileDevice, image: bytes,
                   users: list[str], roles: list[str], purpose: Purpose) -> str:
    """A token from --consent-token FILE, or captured now over exactly the sanitised bytes."""
    from clients.sdk.consent import ConsentCapture, capture_consent, image_hash

    if args.consent_token:
        return _token_file(args.consent_token)
    agreed, shown = args.patient_agreed, args.statements_shown
    if not (agreed and shown) and sys.stdin.isatty():
        from clients.sdk.consent import NO_EFFECT_ON_CARE_STATEMENT, PERMANENCE_STATEMENT

        print("Show the patient this photo and read:")
        print("  1. " + PERMANENCE_STATEMENT)
        print("  2. " + NO_EFFECT_ON_CARE_STATEMENT)
        shown = input("Were both statements shown and understood? (yes/no) ").lower() \
            in {"y", "yes"}
        agreed = input("Does the patient agree? (yes/no) ").lower() in {"y", "yes"}
    if not shown or (not agreed and not sys.stdin.isatty()):
        raise FlowError("no consent: pass --patient-agreed --statements-shown once the patient "
                        "has seen the photo and agreed (or --consent-token FILE)",
                        code=ErrorCode.CONSENT_MISSING.value)
    # A patient who answered "no" at the prompt: the refusal is signed too (and filed).
    decision = ConsentDecision.AGREED if agreed else ConsentDecision.REFUSED
    token, _claims = capture_consent(device.store.state, ConsentCapture(
        purposes=[purpose], images=[image_hash(image)], decision=decision,
        basis=ConsentBasis.TREATMENT_ATTESTATION, recipient_users=users,
        recipient_roles=roles, permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True))
    return token


async def _file_refusal(client: LightboxClient, token: str, record: RecordData | None) -> None:
    """The patient said no at the prompt: the refusal is registered (above) and filed in the
    record when there is patient data (issue 10 item 1); nothing is sent to anyone else."""
    where = "registered, but NOT filed in the record (no --patient-id)"
    if record is not None:
        _, filed = await client.file_consent(token, record, wait=30.0)
        where = ("registered and filed in the record" if filed else
                 "registered and sent to the record gateway for filing")
    raise FlowError(f"the patient refused: nothing was sent; the refusal was {where}",
                    code=ErrorCode.CONSENT_REFUSED.value)


class _ProgressBar:
    """``[#####.....]  42%`` on stderr, for uploads over a few chunks."""

    def __init__(self) -> None:
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if pct == self.last:
            return
        self.last = pct
        bar = "#" * (pct // 5) + "." * (20 - pct // 5)
        end = "\n" if done >= total else ""
        print(f"\ruploading [{bar}] {pct:3d}%", end=end, file=sys.stderr, flush=True)


def _send(args: argparse.Namespace) -> int:
    text = " ".join(args.text or []).strip()
    if not text and not args.image:
        raise FlowError("nothing to send: give a text and/or --image FILE",
                        code=ErrorCode.VALIDATION_FAILED.value)
    if not args.thread and not args.to:
        raise FlowError("say who it is for: --to role:ROLE or --to user:LOGIN (or --thread ID)",
                        code=ErrorCode.VALIDATION_FAILED.value)
    logins, roles = _targets(args.to or [])
    purpose = Purpose(args.purpose)
    priority = Priority.URGENT if args.urgent else Priority.ROUTINE
    record = record_from_args(args)
    prepared = _prepare(args)  # before the password: a bad image fails fast
    if record is not None and prepared is None:
        raise FlowError("patient data goes with an image (--image FILE)",
                        code=ErrorCode.VALIDATION_FAILED.value)
    _guard_text(args, text, purpose)
    original = prepared
    burned_in: tuple[IdentifierKind, ...] = ()
    if prepared is not None:
        shared_copy, burned_in = _shared_image(args, prepared, purpose)
        prepared = imaging.PreparedImage(shared_copy, prepared.warnings)
    # A de-identified share never carries the patient's data: with it, the identified
    # original is filed in the record instead (issue 10 item 4; SDK file_image).
    deidentified = _is_deidentified(purpose)
    file_original = original if deidentified and record is not None else None
    device = unlock_profile(args)

    async def go() -> tuple[str, str, int]:
        client = device.client()
        try:
            await client.start()
            users = [(await client.resolve_user(login)).user_id for login in logins]
            if args.thread:
                thread_id = args.thread
                await client.threads()
            else:
                thread_id = (await client.create_thread(users, roles, priority)).thread_id
            if prepared is None:
                sent = await client.send_text(thread_id, text, priority=priority,
                                              purpose=purpose, subject=args.subject,
                                              necessity=args.necessity,
                                              consent_id=_text_consent_id(args))
            else:
                from clients.sdk.consent import register_consent

                token = _consent_token(args, device, prepared.image.data, users, roles,
                                       purpose)
                await register_consent(client.relay, token)
                claims = peek_consent_token_unverified(token)
                if claims.decision is ConsentDecision.REFUSED:
                    await _file_refusal(client, token, record)
                if file_original is not None:
                    _check_covers_original(claims, file_original.image)
                sent = await client.send_image(
                    thread_id, prepared.image, consent_token=token, text=text,
                    record=None if deidentified else record, purpose=purpose,
                    priority=priority, subject=args.subject,
                    warnings=[w.issue.value for w in prepared.warnings],
                    progress=_ProgressBar(), necessity=args.necessity, burned_in=burned_in)
                if file_original is not None and record is not None:
                    filed = await client.file_image(
                        file_original.image, consent_token=token, record=record,
                        warnings=[w.issue.value for w in file_original.warnings])
                    print(f"the identified original went to the record gateway to be filed "
                          f"in the patient's record (message {filed.message_id})")
            return sent.message_id, thread_id, sent.thread_seq
        finally:
            await client.close()

    try:
        message_id, thread_id, seq = _run(go)
    except KeyboardInterrupt:
        print("stopped before the relay confirmed the message: it is kept on this device and "
              "sent again the next time this device connects (lightbox outbox lists it)",
              file=sys.stderr)
        return 130
    print(f"sent: message {message_id} stored by the relay in thread {thread_id} (#{seq})")
    return 0


def _is_deidentified(purpose: Purpose) -> bool:
    from clients.sdk.consent import DEIDENTIFIED_PURPOSES

    return purpose in DEIDENTIFIED_PURPOSES


def _check_covers_original(claims: ConsentClaims, original: imaging.SanitisedImage) -> None:
    """Before anything is sent: filing the identified original needs a consent for direct
    care that names it (``consent capture`` with both purposes names both copies)."""
    from clients.sdk.consent import image_hash

    if Purpose.DIRECT_CARE not in claims.purposes or \
            image_hash(original.data) not in claims.images:
        raise FlowError("to file the identified original in the patient's record, the consent "
                        "must also cover direct care and name the original: capture it with "
                        "--purpose direct_care as well (it then names both copies), or send "
                        "without patient data", code=ErrorCode.CONSENT_PURPOSE.value)


def _desktop(args: argparse.Namespace) -> int:
    from clients.desktop.app import run_desktop

    return run_desktop(_profile_dir(args), open_browser=not args.no_browser)


# --- registration ------------------------------------------------------------------------------


def add_patient_options(g: Any) -> None:
    """The patient data options read by :func:`record_from_args` (``send``, ``consent
    capture``)."""
    g.add_argument("--patient-name", metavar="FAMILY^GIVEN")
    g.add_argument("--patient-id", metavar="MRN")
    g.add_argument("--issuer", metavar="ISSUER", help="who assigned the patient id")
    g.add_argument("--birth-date", metavar="YYYY-MM-DD")
    g.add_argument("--sex", choices=["M", "F", "O"])
    g.add_argument("--accession", metavar="NUMBER")
    g.add_argument("--region", metavar="REGION", help="anatomic region, e.g. wrist")


def register(sub: Any) -> None:
    """Add the commands to ``lightbox``'s subparsers (called once from clients/clinician/cli.py)."""
    t = sub.add_parser("threads", help="your consult threads, urgent first")
    t.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    t.set_defaults(func=_guarded(_threads))
    s = sub.add_parser("send", help="send a consult: text and/or an image, to a user or a role")
    s.add_argument("text", nargs="*", help="the message")
    s.add_argument("--to", action="append", metavar="user:LOGIN|role:ROLE")
    s.add_argument("--thread", metavar="ID", help="an existing thread instead of a new one")
    s.add_argument("--subject", help="the thread's subject line")
    s.add_argument("--image", metavar="FILE", help="a photo (metadata is stripped first)")
    s.add_argument("--send-anyway", action="store_true",
                   help="send even if the quality checks warn")
    s.add_argument("--purpose", choices=[p.value for p in Purpose],
                   default=Purpose.DIRECT_CARE.value)
    s.add_argument("--urgent", action="store_true")
    add_patient_options(s.add_argument_group(
        "patient data for the record (sealed; only with --image)"))
    c = s.add_argument_group("consent")
    c.add_argument("--consent-token", metavar="FILE", help="from `lightbox consent capture` "
                   "(also names the consent a text outside direct care is sent under)")
    c.add_argument("--patient-agreed", action="store_true")
    c.add_argument("--statements-shown", action="store_true")
    x = s.add_argument_group("clinical safety (issue 10; docs/CLINICAL_SAFETY.md)")
    x.add_argument("--necessity", metavar="TEXT", help="the clinical necessity of consulting "
                   "outside your organisation (sealed; required for external recipients)")
    x.add_argument("--redact", choices=["none", "identifiers", "all-text"], default="none",
                   help="black out text found in the image (all-text is required for "
                        "teaching, publication and research when the image shows text)")
    x.add_argument("--redact-box", action="append", metavar="X,Y,W,H",
                   help="also black out this box (pixels of the upright image)")
    x.add_argument("--text-checked", action="store_true",
                   help="send the text as written despite the identifier warnings")
    s.set_defaults(func=_guarded(_send))
    i = sub.add_parser("inbox", help="messages that arrived (stored in your vault)")
    i.add_argument("--mark-read", action="store_true")
    i.add_argument("--timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    i.set_defaults(func=_guarded(_inbox))
    sub.add_parser("outbox", help="messages not yet stored by the relay (sent again on the "
                   "next start)").set_defaults(func=_guarded(_outbox))
    w = sub.add_parser("watch", help="print consults as they arrive")
    w.add_argument("--count", type=int, help="stop after this many messages")
    w.add_argument("--timeout", type=float, help="stop after this many seconds")
    w.set_defaults(func=_guarded(_watch))
    d = sub.add_parser("desktop", help="the specialist's desktop client, in your browser")
    d.add_argument("--no-browser", action="store_true", help="print the address only")
    d.set_defaults(func=_guarded(_desktop))

