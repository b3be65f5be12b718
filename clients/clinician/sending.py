"""``lightbox send`` and its relatives: the image read, sanitised and checked (quality, the PHI
burned into its pixels, the patient typed against the film), consent captured or named, the
free text guarded, the upload shown; ``lightbox break-glass`` and
``lightbox correct-patient``. Patient data goes only into the sealed body.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import difflib
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import msgspec

from clients.clinician.reading import describe_escalation, learn_escalation_names
from clients.clinician.shell import (
    MAX_IMAGE_FILE,
    command_client,
    print_problems,
    unlock_profile,
    when,
)
from clients.sdk import imaging
from clients.sdk.breakglass import Emergency, check_emergency
from clients.sdk.client import LightboxClient
from clients.sdk.errors import FlowError, RelayRequestError, RelayUnavailable, SDKError
from clients.sdk.failures import run_async
from clients.sdk.filing import needs_gateway
from clients.sdk.memory import body_of
from clients.sdk.patients import patient_label, patient_labels, same_patient
from clients.sdk.profile import ProfileDevice
from clients.sdk.prompts import yes
from clients.sdk.threads import THREAD_NOTE
from clients.sdk.vault import ItemNotFound
from clients.sdk.vaultrows import VaultMessage
from clients.sdk.wording import counted, for_count
from protocol import api
from protocol.body import Body, IdentifierKind, RecordData, Sex
from protocol.consent import (
    ConsentBasis,
    ConsentClaims,
    ConsentDecision,
    peek_consent_token_unverified,
)
from protocol.errors import ErrorCode, ProtocolError
from protocol.model import EmergencyCategory, Priority, Purpose
from protocol.oncall import normalise_role

__all__ = [
    "ProgressBar",
    "box",
    "break_glass_command",
    "check_covers_original",
    "check_devices",
    "check_identity",
    "check_patient_fields",
    "check_roles",
    "check_subject",
    "consent_token",
    "correct_patient_command",
    "emergency_of",
    "file_refusal",
    "guard_text",
    "is_deidentified",
    "kept_sentence",
    "nothing_to_send",
    "prepare",
    "read_consent_token",
    "read_image",
    "record_from_args",
    "role_name",
    "send_command",
    "shared_image",
    "targets",
    "text_consent_id",
    "token_file",
    "withdraw_thread",
]

MAX_TOKEN_FILE = 64 * 1024  # a consent token is a few kilobytes of text


def targets(values: list[str]) -> tuple[list[str], list[str]]:
    users, roles = [], []
    for value in values:
        kind, _, name = value.partition(":")
        if kind == "user" and name:
            users.append(name)
        elif kind == "role" and name:
            roles.append(role_name(name, f"--to {value!r}"))
        elif value.strip() and ":" not in value:
            # A colleague's name or login, or a role, written bare: say which form to write.
            raise FlowError(f"--to {value!r}: write a colleague as --to "
                            f"{shlex.quote('user:' + value.strip())} (a login or a whole name) "
                            "and a role as --to role:ROLE",
                            code=ErrorCode.VALIDATION_FAILED.value)
        else:
            raise FlowError(f"--to {value!r}: write user:LOGIN or role:ROLE",
                            code=ErrorCode.VALIDATION_FAILED.value)
    return users, roles


def role_name(name: str, option: str) -> str:
    """A role as the relay names it (protocol/oncall.py), or FlowError naming ``option``."""
    try:
        return normalise_role(name)
    except ValueError as exc:
        raise FlowError(f"{option}: {exc}", code=ErrorCode.VALIDATION_FAILED.value) from None


def decimal_mb(size: int, *, up: bool = False) -> str:
    """``size`` bytes in decimal megabytes (10^6 bytes), as file managers show them, to 0.1
    MB: a file's rounded up and the limit's down, so that a file over the limit never reads as
    within it (40 MiB is "41.9 MB")."""
    tenths = math.ceil(size / 100_000) if up else size // 100_000
    return f"{tenths / 10:.1f} MB"


def read_image(path: str, *, outcome: str = "Nothing was sent.") -> bytes:
    """The bytes of an image FILE, or ImageRejected (``too_large``) before a file over the
    limit is read, saying what to send instead and ``outcome``. The advice names what
    clients/sdk/imaging.py takes: a photo at a phone's normal size is a few megabytes, and
    one view exported as JPEG or PNG is far below the limit."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_IMAGE_FILE:
            raise imaging.ImageRejected(
                imaging.RejectCode.TOO_LARGE,
                f"{p.name} is {decimal_mb(size, up=True)} and Lightbox takes an image of up "
                f"to {decimal_mb(MAX_IMAGE_FILE)}: take the photo again at the phone's normal "
                f"size, or export just the one view as JPEG or PNG. {outcome}")
        return p.read_bytes()
    except OSError as exc:
        raise FlowError(f"cannot read {path}: {exc.strerror}",
                        code=ErrorCode.VALIDATION_FAILED.value) from exc


def prepare(args: argparse.Namespace) -> imaging.PreparedImage | None:
    if not args.image:
        return None
    prepared = imaging.prepare_image(read_image(args.image))
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


def guard_text(args: argparse.Namespace, text: str, purpose: Purpose) -> None:
    """The free-text guard (clients/sdk/textguard.py) on the text, the subject line (it goes
    to the same audience) and the necessity statement: for purposes that leave direct care,
    warn about exact ages, dates of birth, MRNs and dates of service, and ask (or require
    --text-checked) before sealing."""
    from clients.sdk.textguard import TextGuardWarning, guard_text

    for label, value in (("text", text), ("subject", args.subject or ""),
                         ("necessity statement", args.necessity or "")):
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


def box(value: str) -> tuple[int, int, int, int]:
    try:
        left, top, width, height = (int(v) for v in value.split(","))
    except ValueError:
        raise FlowError(f"--redact-box {value!r}: write X,Y,WIDTH,HEIGHT in pixels",
                        code=ErrorCode.VALIDATION_FAILED.value) from None
    if min(left, top) < 0 or min(width, height) <= 0:
        raise FlowError(f"--redact-box {value!r}: the box is empty or off the image",
                        code=ErrorCode.VALIDATION_FAILED.value)
    return left, top, width, height


def shared_image(args: argparse.Namespace, prepared: imaging.PreparedImage, purpose: Purpose,
                  record: RecordData | None = None
                  ) -> tuple[imaging.SanitisedImage, tuple[IdentifierKind, ...]]:
    """PHI in the pixels (clinician/phi.py): OCR, show what was found, black out per --redact
    and --redact-box, and refuse a de-identified purpose whose copy still shows text. Also
    the kinds of identifier the copy sent still shows, for the recipient to be told."""
    from clients.clinician import phi

    try:
        shared = phi.prepare_for_purpose(
            prepared.image, purpose, mode=phi.RedactMode(args.redact),
            boxes=[box(b) for b in args.redact_box or []], rules=phi.rules_from_env())
    except phi.PhiRefused as refused:
        for line in phi.describe(refused.scan) if refused.scan else []:
            print(f"text in the image: {line}", file=sys.stderr)
        if refused.code == "phi_unredacted":
            print("black it all out with --redact all-text (and --redact-box X,Y,W,H for "
                  "anything OCR missed), then check the copy", file=sys.stderr)
        raise
    for line in phi.describe(shared.original_scan):
        print(f"text in the image: {line}", file=sys.stderr)
    if record is not None:
        check_identity(args, record, shared.original_scan)
    for warning in shared.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if shared.redacted:
        print("the copy sent has the text blacked out", file=sys.stderr)
    kinds = phi.identifier_kinds(shared.shared_scan)
    if kinds:
        print("the recipient is told that the image shows "
              f"{', '.join(k.value.replace('_', ' ') for k in kinds)}", file=sys.stderr)
    return shared.image, kinds


# What the sealed body's record accepts (protocol/body.py ``RecordData``): checked here, before
# anything is uploaded or kept in the outbox, so a mistyped field is one sentence and never a
# send that cannot be sealed (docs/USER_GUIDE.md "Interns: sending a consult", §3).
_BIRTH_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_ONE_LINE = re.compile(r"[\x00-\x1f\x7f]")
_PATIENT_FIELDS = (("birth_date", "--birth-date"), ("issuer", "--issuer"), ("sex", "--sex"),
                   ("accession", "--accession"), ("region", "--region"))


def check_patient_fields(patient_id: str | None, patient_name: str | None,
                         birth_date: str | None) -> None:
    """The patient fields typed on the command line, in the form the sealed record requires
    (protocol/body.py ``RecordData``); FlowError ``validation_failed`` naming the field."""
    def bad(sentence: str) -> FlowError:
        return FlowError(f"{sentence}; nothing was sent", code=ErrorCode.VALIDATION_FAILED.value)

    if birth_date is not None:
        try:
            born = dt.date.fromisoformat(birth_date) if _BIRTH_DATE.match(birth_date) else None
        except ValueError:
            born = None
        if born is None or born > dt.date.today():
            raise bad("--birth-date must be a date written YYYY-MM-DD (for example 1957-03-14)")
    if patient_id is not None and (not patient_id.strip() or len(patient_id) > 64
                                   or _ONE_LINE.search(patient_id)
                                   or any(c in patient_id for c in "*?\\^")):
        raise bad("--patient-id must be the record number (MRN): at most 64 characters, "
                  "without * ? \\ or ^")
    if patient_name is not None and (not patient_name.strip() or len(patient_name) > 200
                                     or _ONE_LINE.search(patient_name) or "\\" in patient_name
                                     or patient_name.count("^") > 4):
        raise bad("--patient-name must be the patient's name written FAMILY^GIVEN (for "
                  "example Doe^Jane): one line, at most 200 characters, without \\")


def record_from_args(args: argparse.Namespace) -> RecordData | None:
    """The sealed record from the patient options, every field checked first
    (:func:`check_patient_fields`). Patient data needs the patient's id and name: a birth date
    (or another field) without them is refused, never dropped."""
    check_patient_fields(args.patient_id, args.patient_name, args.birth_date)
    given = [flag for attr, flag in _PATIENT_FIELDS if getattr(args, attr, None)]
    if not (args.patient_name or args.patient_id or given):
        return None
    missing = [flag for flag, value in (("--patient-id", args.patient_id),
                                        ("--patient-name", args.patient_name)) if not value]
    if missing:
        raise FlowError(f"patient data needs the patient's {' and '.join(missing)} (the MRN "
                        "and FAMILY^GIVEN) as well, to be filed under the right patient; "
                        "nothing was sent", code=ErrorCode.VALIDATION_FAILED.value)
    return RecordData(patient_name=args.patient_name, patient_id=args.patient_id,
                      issuer_of_patient_id=args.issuer or "", birth_date=args.birth_date,
                      sex=Sex(args.sex or ""), accession_number=args.accession or "",
                      anatomic_region=args.region or "")


def check_subject(subject: str | None, record: RecordData | None) -> None:
    """Refuse a subject holding the patient's hospital number or any of their names typed in
    --patient-id and --patient-name (the rule: clients/clinician/phi.py
    ``subject_names_patient``): the subject travels sealed, but it is shown wherever the
    consult is listed (the specialist's inbox, a phone's lock-screen notice), where the record
    data is never shown (docs/USER_GUIDE.md "Interns: sending a consult", §3). The same rule as
    the phone's, whatever the purpose."""
    if not subject or record is None:
        return
    from clients.clinician.phi import subject_names_patient

    if subject_names_patient(subject, record.patient_id, record.patient_name):
        raise FlowError("keep the patient's name and hospital number out of the subject: it "
                        "is shown wherever the consult is listed (they go in --patient-name "
                        "and --patient-id); nothing was sent", code="subject_identifies")


def check_identity(args: argparse.Namespace, record: RecordData, scan: Any) -> None:
    """The typed identity against the text on the image (clients/clinician/identity.py): a
    contradiction is shown side by side and must be confirmed or corrected."""
    from clients.clinician.identity import compare, side_by_side

    differs = compare(record, scan)
    if not differs:
        return
    print("the patient typed and the text on the image disagree:", file=sys.stderr)
    for line in side_by_side(differs):
        print(line, file=sys.stderr)
    if args.identity_checked:
        print("sent as typed: you confirmed the identity (--identity-checked)", file=sys.stderr)
        return
    if sys.stdin.isatty():
        answer = input("Is this the right patient? Type 'send' to send as typed, anything "
                       "else to stop and correct it: ").strip().lower()
        if answer == "send":
            return
    raise FlowError("the patient typed is not the one the image shows: correct --patient-id, "
                    "--patient-name or --birth-date, or confirm with --identity-checked",
                    code="identity_mismatch")


def read_consent_token(path: str) -> tuple[str, ConsentClaims]:
    """The token in a ``--consent-token`` FILE and its claims (decoded, not verified: the relay
    verifies it when it is registered). A file that is not one (a photo given by mistake, an
    empty file) is refused with a sentence naming it, before anything is sent."""
    not_a_token = FlowError(
        f"{path} is not a consent token: give the file `lightbox consent capture --token-out "
        "FILE` wrote when the patient consented (one line of text starting with eyJ), or "
        "capture the consent with this send (--patient-agreed --statements-shown)",
        code=ErrorCode.CONSENT_INVALID.value)
    p = Path(path)
    try:
        if p.stat().st_size > MAX_TOKEN_FILE:
            raise not_a_token
        raw = p.read_bytes()
    except OSError as exc:
        raise FlowError(f"cannot read the consent token {path}: "
                        f"{(exc.strerror or 'unreadable').lower()}",
                        code=ErrorCode.VALIDATION_FAILED.value) from None
    try:
        token = raw.decode("utf-8").strip()
        return token, peek_consent_token_unverified(token)
    except (UnicodeDecodeError, ProtocolError):
        raise not_a_token from None


def token_file(path: str) -> str:
    """The consent token in ``path`` (:func:`read_consent_token`)."""
    return read_consent_token(path)[0]


def text_consent_id(args: argparse.Namespace) -> str | None:
    """The consent a text-only message is sent under (``--consent-token``): needed outside
    direct care, where the relay refuses a message that names none (``consent_missing``)."""
    if not args.consent_token:
        return None
    return read_consent_token(args.consent_token)[1].jti


# `lightbox send` at a terminal, when the consent prompt's first answer is no.
NOT_SHOWN = ("nothing was sent or registered: consent is asked only once the patient has seen "
             "the photo and both statements were read and understood; run the command again "
             "then")


def consent_token(args: argparse.Namespace, device: ProfileDevice, image: bytes,
                   users: list[str], roles: list[str], purpose: Purpose) -> str:
    """A token from --consent-token FILE, or captured now over exactly the sanitised bytes."""
    from clients.sdk.consent import ConsentCapture, capture_consent, image_hash

    if args.consent_token:
        return token_file(args.consent_token)
    agreed, shown = args.patient_agreed, args.statements_shown
    if not (agreed and shown) and sys.stdin.isatty():
        from clients.sdk.consent import NO_EFFECT_ON_CARE_STATEMENT, PERMANENCE_STATEMENT

        print("Show the patient this photo and read:")
        print("  1. " + PERMANENCE_STATEMENT)
        print("  2. " + NO_EFFECT_ON_CARE_STATEMENT)
        shown = yes("Were both statements shown and understood?")
        if not shown:  # consent is asked only of a patient who saw and understood both
            raise FlowError(NOT_SHOWN, code=ErrorCode.CONSENT_MISSING.value)
        agreed = yes("Does the patient agree?")
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


async def file_refusal(client: LightboxClient, token: str, record: RecordData | None, *,
                       wait: float = 30.0) -> None:
    """The patient said no at the prompt: the refusal is registered (above) and filed in the
    record when there is patient data (CLINICAL_SAFETY.md), waiting up to ``wait`` seconds
    (``--file-wait``) for the gateway's receipt; nothing is sent to anyone else."""
    where = "registered, but NOT filed in the record (no --patient-id)"
    if record is not None:
        _, filed = await client.file_consent(token, record, wait=wait)
        where = ("registered and filed in the record" if filed else
                 "registered, but not filed yet: the record gateway did not confirm it within "
                 f"{wait:g} s; its receipt will arrive in your record thread (`lightbox inbox`)")
    raise FlowError(f"the patient refused: nothing was sent; the refusal was {where}",
                    code=ErrorCode.CONSENT_REFUSED.value)


class ProgressBar:
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


def nothing_to_send(args: argparse.Namespace) -> str:
    """What ``send`` without a message or an image says: the command the user wants, with
    whom they named (``--to``, ``--thread``) or a placeholder for it."""
    named = [*(f"--to {shlex.quote(to)}" for to in args.to or []),
             *([f"--thread {shlex.quote(args.thread)}"] if args.thread else [])]
    usage = " ".join(["lightbox send", *(named or ["--to role:ROLE"]), '"your message"'])
    if named:
        return f"nothing to send: write the message, as in `{usage}` (--image FILE sends a photo)"
    return (f"nothing to send: write the message and who it is for, as in `{usage}` "
            "(--to user:LOGIN for one colleague, --image FILE sends a photo)")


def send_command(args: argparse.Namespace) -> int:
    """``lightbox send``; a ``--thread`` id the relay knows as none of the user's consults is
    said in words (the relay's ``thread_not_found`` comes at the consult's first use, before
    any message is sent)."""
    try:
        return _send(args)
    except RelayRequestError as exc:
        if not args.thread or exc.code != ErrorCode.THREAD_NOT_FOUND.value:
            raise
        raise FlowError(f"no consult of yours has the id {args.thread.strip()!r}: `lightbox "
                        "threads` lists yours with their ids; nothing was sent",
                        code=exc.code) from None


def _send(args: argparse.Namespace) -> int:
    text = " ".join(args.text or []).strip()
    if not text and not args.image:
        raise FlowError(nothing_to_send(args), code=ErrorCode.VALIDATION_FAILED.value)
    if not args.thread and not args.to:
        raise FlowError("say who it is for: --to role:ROLE or --to user:LOGIN (or --thread ID)",
                        code=ErrorCode.VALIDATION_FAILED.value)
    logins, roles = targets(args.to or [])
    purpose = Purpose(args.purpose)
    priority = Priority.URGENT if args.urgent else Priority.ROUTINE
    emergency = emergency_of(args, purpose)
    record = record_from_args(args)
    check_subject(args.subject, record)
    # A --consent-token FILE that is not a token fails here, before the password.
    given = read_consent_token(args.consent_token) if args.consent_token else None
    prepared = prepare(args)  # before the password: a bad image fails fast
    device: ProfileDevice | None = None
    thread_id: str | None = None
    patient_note = ""
    if args.thread and prepared is not None:
        # A photo into a consult is of the consult's patient: known from the vault, so the
        # password comes before the checks that use the patient (docs/CLINICAL_SAFETY.md).
        device = unlock_profile(args)
        thread_id = thread_of(device, args.thread)
        record, patient_note = consult_patient(device, thread_id, record,
                                               infer=needs_gateway(purpose, 1))
        check_subject(args.subject, record)
    if prepared is not None and record is None and needs_gateway(purpose, 1):
        # The record gateway files an image for this purpose under the patient it names: one
        # without the patient's identity could only be sent, never filed
        # (docs/USER_GUIDE.md "Interns: sending a consult", §3).
        raise FlowError(f"an image for {purpose.value} is filed in the patient's record: give "
                        "the patient's --patient-id MRN and --patient-name FAMILY^GIVEN; "
                        "nothing was sent", code=ErrorCode.VALIDATION_FAILED.value)
    if record is not None and prepared is None:
        raise FlowError("patient data goes with an image (--image FILE); nothing was sent",
                        code=ErrorCode.VALIDATION_FAILED.value)
    guard_text(args, text, purpose)
    original = prepared
    burned_in: tuple[IdentifierKind, ...] = ()
    if prepared is not None:
        shared_copy, burned_in = shared_image(args, prepared, purpose, record)
        prepared = imaging.PreparedImage(shared_copy, prepared.warnings)
    # A de-identified share never carries the patient's data: with it, the identified
    # original is filed in the record instead (CLINICAL_SAFETY.md; SDK file_image).
    deidentified = is_deidentified(purpose)
    file_original = original if deidentified and record is not None else None
    if given is not None and prepared is not None and emergency is None \
            and given[1].decision is not ConsentDecision.REFUSED:  # a refusal is filed below
        from clients.sdk.consent import ensure_sendable, image_hash

        ensure_sendable(given[1], purpose, [image_hash(prepared.image.data)])
        if file_original is not None:
            check_covers_original(given[1], file_original.image)
    if prepared is None and given is None and emergency is None \
            and purpose is not Purpose.DIRECT_CARE:
        raise FlowError(f"a message for {purpose.value} needs the patient's consent naming "
                        "that purpose: pass --consent-token FILE (lightbox consent capture "
                        f"--purpose {purpose.value} ... --token-out FILE writes it)",
                        code=ErrorCode.CONSENT_MISSING.value)
    if device is None:
        device = unlock_profile(args)
        thread_id = thread_of(device, args.thread) if args.thread else None
    unlocked = device
    new_thread = thread_id is None

    async def go() -> tuple[str, str, int, list[str]]:
        client = command_client(unlocked)
        events = client.subscribe()
        try:
            await client.start()
            people = [await client.resolve_user(login) for login in logins]
            users = [p.user_id for p in people]
            await check_devices(client, people)
            await check_roles(client, roles)
            # Everything that can be checked or done without the thread comes first: a send
            # stopped by a check leaves no empty consult behind.
            from clients.sdk.consent import register_consent

            thread = None
            if thread_id is not None:
                thread = {t.thread_id: t for t in await client.threads()}.get(thread_id)
            # A consent captured for a photo added to a consult names the consult's people,
            # who receive it (the relay checks the consent covers them: docs/PROTOCOL.md §13).
            named_users, named_roles = (users, roles) if thread is None else (
                [u for u in thread.members if u != client.user_id], list(thread.roles))
            token: str | None = None
            if prepared is None and given is not None:
                await register_consent(client.relay, given[0])  # the same again: a no-op
            if prepared is not None and emergency is None:
                token = given[0] if given is not None else consent_token(
                    args, unlocked, prepared.image.data, named_users, named_roles, purpose)
                await register_consent(client.relay, token)
                claims = peek_consent_token_unverified(token)
                if claims.decision is ConsentDecision.REFUSED:
                    await file_refusal(client, token, record, wait=args.file_wait)
                if file_original is not None:
                    check_covers_original(claims, file_original.image)
            if thread_id is not None:
                where = thread_id
                created = None
            else:
                thread = created = await client.create_thread(users, roles, priority)
                where = created.thread_id
            try:
                if prepared is None:
                    sent = await client.send_text(
                        where, text, priority=priority, purpose=purpose,
                        subject=args.subject, necessity=args.necessity,
                        consent_id=None if given is None else given[1].jti,
                        emergency=emergency)
                else:
                    sent = await client.send_image(
                        where, prepared.image, consent_token=token, text=text,
                        record=record if emergency or not deidentified else None,
                        purpose=purpose, priority=priority, subject=args.subject,
                        warnings=[w.issue.value for w in prepared.warnings],
                        progress=ProgressBar(),
                        necessity=None if emergency else args.necessity,
                        burned_in=burned_in, emergency=emergency)
            except RelayUnavailable:
                raise  # kept in the outbox: it goes later, in this thread
            except (SDKError, ProtocolError):
                if created is not None:
                    await withdraw_thread(client, created)
                raise
            if emergency is not None:
                print("BREAK-GLASS: sent without consent; the privacy office reviews it, and "
                      "the thread reminds you until you file the consent sought afterwards "
                      "or why none was possible (lightbox break-glass)")
            if file_original is not None and record is not None and token is not None:
                filed = await client.file_image(
                    file_original.image, consent_token=token, record=record,
                    warnings=[w.issue.value for w in file_original.warnings])
                print(f"the identified original went to the record gateway to be filed "
                      f"in the patient's record (message {filed.message_id})")
            waiting = await gap_lines(client, where, sent.message_id) if roles else []
            reached = await recipients(client, thread, people, roles)
            return sent.message_id, where, sent.thread_seq, [reached, *waiting]
        finally:
            await client.close()
            print_problems(events)  # what it dropped as it synced

    what = "the consult" if new_thread else "the message"
    try:
        message_id, where, seq, (reached, *waiting) = run_async(go)
    except KeyboardInterrupt:
        print("stopped before the relay confirmed the message: it is kept on this device and "
              "sent again the next time this device connects (lightbox outbox lists it)",
              file=sys.stderr)
        return 130
    except RelayUnavailable as exc:
        if not exc.kept:
            raise
        print(kept_sentence(exc, what), file=sys.stderr)
        return 1
    # Whom it reached, on the line that says it went, so that a wrong recipient is seen at once
    # (docs/SECURITY.md "Misdirection"); and the patient a photo was filed under when the
    # consult named them (consult_patient).
    print(f"sent: message {message_id} stored by the relay in thread {where} (#{seq}), "
          f"to {reached}{patient_note}")
    for line in waiting:
        print(line)
    return 0


async def gap_lines(client: LightboxClient, thread_id: str, message_id: str) -> list[str]:
    """A consult sent to a role while nobody is on call for it: the relay opened its wait for
    the next shift in the transaction that stored it (docs/PROTOCOL.md §16.4), so ``send``
    says so at once, in the words ``watch`` uses, rather than leave it to a ``watch`` the
    intern may not be running. Nothing when the relay cannot be asked now."""
    lines = []
    for step in await client.thread_escalation_steps(thread_id):
        if step.message_id == message_id and step.kind == "no_shift":
            await learn_escalation_names(client, step)
            lines.append(describe_escalation(client, step))
    return lines


# How many people the sent line names; the rest are counted (as `lightbox threads` does).
NAMED_RECIPIENTS = 3


async def recipients(client: LightboxClient, thread: api.ThreadInfo | None,
                     people: list[api.DirectoryEntry], roles: list[str]) -> str:
    """Whom a send reached, for its ``sent:`` line: the roles, then the people by the names on
    their verified certificates (``role:orthopaedics_oncall, Bea Bone``), from the thread as
    the relay lists it, else as ``--to`` named them."""
    named = {p.user_id: p.display_name for p in people}
    if thread is not None:
        roles = list(thread.roles)
        others = [u for u in thread.members if u != client.user_id]
        with contextlib.suppress(SDKError):  # names from verified certificates
            await client.ensure_names([u for u in others if u not in named])
    else:
        others = list(named)
    names = [named.get(u) or client.display_name(u) for u in others[:NAMED_RECIPIENTS]]
    if len(others) > NAMED_RECIPIENTS:
        names.append(counted(len(others) - NAMED_RECIPIENTS, "more person", "more people"))
    reach = [*(f"role:{r}" for r in roles), *names]
    return ", ".join(reach) if reach else "nobody else (only you are in this consult)"


# A thread named by the start of its id, as `watch` and `inbox` print it (8 characters).
MIN_THREAD_PREFIX = 8
_THREAD_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_THREAD_PREFIX = re.compile(r"^[0-9a-f][0-9a-f-]*$")


def thread_of(device: ProfileDevice, given: str) -> str:
    """The consult ``--thread`` names: its whole id, or the start of it (8 characters or more,
    as ``watch`` and ``inbox`` print it) when that starts the id of exactly one consult this
    device knows (the threads the relay last listed to it, kept in the vault; when none of
    them does, the relay is asked for the device's threads first: a consult that reached the
    user while this process never listed threads, as through ``lightbox watch``). Anything
    else is refused before anything is sent, naming the ids to use."""
    wanted = given.strip().lower()
    if _THREAD_ID.match(wanted):
        return wanted  # the relay says whether it is one of the user's consults (send_command)
    if not _THREAD_PREFIX.match(wanted) and wanted:
        bad = sorted({c for c in given.strip() if c.lower() not in "0123456789abcdef-"})
        raise FlowError(f"--thread {given!r}: a consult's id has only the digits 0-9, the "
                        f"letters a-f and dashes, not {', '.join(map(repr, bad))}, as "
                        "`lightbox threads` prints it; nothing was sent",
                        code=ErrorCode.VALIDATION_FAILED.value)
    if len(wanted.replace("-", "")) < MIN_THREAD_PREFIX:
        raise FlowError(f"--thread {given!r}: give the consult's id, or at least its first "
                        f"{MIN_THREAD_PREFIX} characters as `lightbox threads` prints it; "
                        "nothing was sent", code=ErrorCode.VALIDATION_FAILED.value)
    known = sorted(t for t in device.vault.notes(THREAD_NOTE) if t.startswith(wanted))
    if not known:
        list_threads(device)
        known = sorted(t for t in device.vault.notes(THREAD_NOTE) if t.startswith(wanted))
    if len(known) == 1:
        return known[0]
    if not known:
        raise FlowError(f"no consult this device knows has an id starting {given!r}: "
                        "`lightbox threads` lists yours with their ids; nothing was sent",
                        code=ErrorCode.THREAD_NOT_FOUND.value)
    raise FlowError(f"{given!r} starts the ids of {len(known)} consults: "
                    f"{', '.join(known)}; give the one you mean with --thread ID; "
                    "nothing was sent", code="ambiguous")


def list_threads(device: ProfileDevice) -> None:
    """The device's threads as the relay lists them now, kept in the vault (ThreadBook). A
    relay out of reach leaves the threads as last listed."""
    async def listed() -> None:
        client = command_client(device)
        try:
            await client.ensure_login()
            await client.threads()
        finally:
            await client.close()

    with contextlib.suppress(RelayUnavailable):
        run_async(listed)


def consult_patient(device: ProfileDevice, thread_id: str, typed: RecordData | None, *,
                    infer: bool) -> tuple[RecordData | None, str]:
    """The patient a photo added to a consult is sent with, and what the sent line adds about
    them. The consult's patient is the one its latest message with record data names (sent or
    received, as this device's vault holds it). A patient typed that any of the consult's
    records names as another (clients/sdk/patients.py ``same_patient``) is refused before
    anything is sent: their photo goes in a new consult, never into another patient's
    (docs/CLINICAL_SAFETY.md). None typed, for a photo that is filed (``infer``): the consult's
    patient, said on the sent line. A consult whose patient this device does not know takes
    what was typed."""
    consult = [body.record for body in map(body_of, device.vault.messages(thread_id))
               if body is not None and body.record is not None]
    if not consult:
        return typed, ""
    known = consult[-1]
    if typed is None:
        if not infer:
            return None, ""
        # The patient only: the study fields (accession, region) are this photo's own.
        return (msgspec.structs.replace(known, accession_number="", anatomic_region=""),
                f"; the photo is filed under this consult's patient, {patient_label(known)}")
    # Another patient than any of the consult's records names (the rule, and why every record:
    # clients/sdk/patients.py), as the desktop's warning would judge the consult with it.
    other = next((r for r in reversed(consult) if not same_patient(typed, r)), None)
    if other is not None:
        ours, theirs = patient_labels([other, typed])
        raise FlowError(f"this consult is about {ours}; a photo of another patient ({theirs}) "
                        "goes in a new consult (lightbox send --to ...); nothing was sent",
                        code="patient_mismatch")
    # The same patient, written as the consult first wrote them: one spelling in the record.
    return msgspec.structs.replace(
        typed, patient_name=known.patient_name or typed.patient_name, patient_id=known.patient_id,
        issuer_of_patient_id=known.issuer_of_patient_id or typed.issuer_of_patient_id,
        birth_date=known.birth_date or typed.birth_date, sex=known.sex or typed.sex), ""


def kept_sentence(exc: RelayUnavailable, what: str = "the consult") -> str:
    """What ``send`` says when the relay did not take the send, which is kept in the outbox
    (``exc.kept``): one sentence, the plain cause, and the command that sends it."""
    return (f"error: cannot reach the relay ({exc.reason}), so {what} is not sent yet: it is "
            "kept on this device and goes the next time lightbox connects to the relay (run "
            "`lightbox inbox` to send it; `lightbox outbox` lists it)")


async def check_roles(client: LightboxClient, roles: list[str], *,
                      outcome: str = "nothing was sent") -> None:
    """Before a thread names them: each role must reach someone else of this organisation
    now (its on-call ladder, else a colleague holding it), or the send stops with a sentence
    naming the role (a mistyped role would otherwise make an empty consult). An on-call role
    between shifts that nobody holds is no misspelling: said as it is. (The relay would keep
    such a consult for the next shift, docs/PROTOCOL.md §16.4, but there is no device to seal
    it for until then.) The sentence ends with ``outcome``, what the command did not do."""
    for role in roles:
        if await _role_reaches_others(client, role):
            continue
        if await _is_on_call_role(client, role):
            raise FlowError(f"nobody is on call for the role {role!r} now and nobody else "
                            "holds it, so a consult to it would reach no one before its next "
                            "shift: page the on-call doctor, or send to a colleague by name "
                            f"(--to user:LOGIN); {outcome}", code="nobody_on_call")
        near = await _roles_like(client, role)
        guess = difflib.get_close_matches(role, sorted(near - {role}), n=1, cutoff=0.7)
        hint = f" (did you mean role:{guess[0]}?)" if guess else ""
        raise FlowError(f"nobody {'else ' if role in near else ''}in your organisation holds "
                        f"the role {role!r}{hint}: check its spelling (lightbox lookup WORD "
                        f"lists colleagues with their roles); {outcome}",
                        code=ErrorCode.ROLE_UNKNOWN.value)


async def check_devices(client: LightboxClient, people: list[api.DirectoryEntry]) -> None:
    """Before a thread names them: each colleague named with ``--to user:LOGIN`` must have a
    device that can receive (an active device certificate in the key directory), or the send
    stops with a sentence naming them. Otherwise the consult would be made and then refused
    as ``device_set_mismatch`` (clients/sdk/trust.py), which says nothing to a clinician."""
    for person in people:
        if person.user_id == client.user_id:
            continue  # one's own other devices are not a recipient to check
        if not (await client.relay.user_devices(person.user_id)).devices:
            raise FlowError(f"{person.login} has no device that can receive messages (their "
                            "devices were revoked or never enrolled): ask them to enrol one, "
                            "or send to the on-call role (--to role:ROLE). Nothing was sent.",
                            code="no_device")


async def _role_reaches_others(client: LightboxClient, role: str) -> bool:
    """Whom the relay's role reach (its on-call shift's ladder, else everyone holding the
    role) would name besides me; True when the directory cannot tell."""
    me = client.state
    try:
        oncall = await client.relay.on_call(role)
    except RelayRequestError as exc:
        if exc.code != ErrorCode.ROLE_UNKNOWN.value:
            raise
        oncall = None  # no rota for it: the role reaches whoever holds it
    if oncall is not None and oncall.shift is not None:
        return any(step.user_id != me.user_id for step in oncall.shift.ladder)
    if len(role) < 2:
        return True  # too short to search the directory by
    found = (await client.relay.directory(q=role)).users
    if len(found) >= 50:
        return True  # more matches than the relay lists: it may be among the rest
    return any(u.org_id == me.org_id and role in u.roles and u.user_id != me.user_id
               for u in found)


async def _is_on_call_role(client: LightboxClient, role: str) -> bool:
    """Whether ``role`` has an on-call rota in my organisation (``GET /v1/oncall/{role}``)."""
    try:
        await client.relay.on_call(role)
    except RelayRequestError as exc:
        if exc.code != ErrorCode.ROLE_UNKNOWN.value:
            raise
        return False
    return True


async def _roles_like(client: LightboxClient, role: str) -> set[str]:
    """Roles of my organisation whose name shares the first word of ``role``."""
    me = client.state
    word = role.split("_")[0]
    if len(word) < 2:
        return set()
    with contextlib.suppress(SDKError):
        found = (await client.relay.directory(q=word[:max(2, len(word) - 1)])).users
        return {r for u in found if u.org_id == me.org_id for r in u.roles}
    return set()


async def withdraw_thread(client: LightboxClient, thread: api.ThreadInfo) -> None:
    """The thread this send made holds nothing (its first message was refused for good): take
    its users out, then me, so that it lists as a consult for nobody (PROTOCOL §11 has no
    thread deletion; a role the thread names still reaches its holders). Best effort."""
    if any(r.thread_id == thread.thread_id for r in client.vault.outbox()):
        return  # kept to go later: the thread is needed
    me = client.state.user_id
    with contextlib.suppress(SDKError):
        for user_id in [u for u in thread.members if u != me] + [me]:
            await client.relay.remove_participant(thread.thread_id, user_id)
        await client.threads()  # forget it here too


def emergency_of(args: argparse.Namespace, purpose: Purpose) -> Emergency | None:
    """The break-glass declaration of ``send --emergency``, checked before the password."""
    if args.emergency is None:
        return None
    if args.consent_token or args.patient_agreed:
        raise FlowError("--emergency is for when no consent can be asked: leave out "
                        "--consent-token and --patient-agreed",
                        code=ErrorCode.BREAK_GLASS_NOT_ALLOWED.value)
    emergency = Emergency(EmergencyCategory(args.emergency_category), args.emergency)
    check_emergency(emergency, purpose=purpose, consent=None, body=Body(text="-"))
    return emergency


def break_glass_command(args: argparse.Namespace) -> int:
    """List this user's emergency messages awaiting their follow-up, or file one."""
    if args.action == "follow-up" and not args.case:
        raise FlowError("say which case: lightbox break-glass follow-up CASE",
                        code=ErrorCode.VALIDATION_FAILED.value)
    token = token_file(args.consent_token) if args.consent_token else None
    device = unlock_profile(args)

    async def go() -> None:
        client = command_client(device)
        events = client.subscribe()
        try:
            await client.start()
            if args.action == "follow-up":
                case = await client.follow_up_break_glass(
                    args.case, consent_token=token, no_consent=args.no_consent,
                    words=args.reason or "")
                print(f"break-glass case {case.case_id}: follow-up filed ({case.follow_up}: "
                      f"{case.follow_up_detail}); the reminder is cleared")
                return
            cases = await client.break_glass_pending()
            for c in cases:
                print(f"{c.case_id}  [{when(c.declared_at)}] {c.category.replace('_', ' ')}  "
                      f"thread {c.thread_id}  message {c.message_id}")
            print(f"{counted(len(cases), 'emergency message')} "
                  f"{for_count(len(cases), 'awaits', 'await')} a consent or a reason why none was "
                  "possible" + (": lightbox break-glass follow-up CASE --consent-token FILE "
                                "| --no-consent WHY --reason TEXT" if cases else ""))
        finally:
            await client.close()
            print_problems(events)  # what it dropped as it synced

    run_async(go)
    return 0


def correct_patient_command(args: argparse.Namespace) -> int:
    """The record gateway held an image (the identity typed is not the record's): send it
    again with the identity corrected (SDK ``correct_patient``)."""
    check_patient_fields(args.patient_id, args.patient_name, args.birth_date)
    device = unlock_profile(args)

    async def go() -> tuple[str, int]:
        client = command_client(device)
        events = client.subscribe()
        try:
            await client.start()
            await client.threads()
            try:
                held = client.vault.message(args.message)
            except ItemNotFound:
                held = None
            if held is None or held.thread_id != args.thread:
                raise FlowError(f"no message {args.message} of yours in thread {args.thread}",
                                code=ErrorCode.NOT_FOUND.value)
            # Synced first, so a filing receipt or notice waiting on the relay is known: an
            # image already filed is never sent for filing again (the gateway refuses it too).
            await client.wait_synced(args.timeout)
            refuse_if_filed(client, held)
            sent = await client.correct_patient(
                args.message, patient_id=args.patient_id, patient_name=args.patient_name,
                birth_date=args.birth_date, issuer=args.issuer)
            return sent.message_id, sent.thread_seq
        finally:
            await client.close()
            print_problems(events)  # what it dropped as it synced

    message_id, seq = run_async(go)
    print(f"sent again with the corrected patient identity: message {message_id} (#{seq}); "
          "the record gateway checks it again before filing")
    return 0


def refuse_if_filed(client: LightboxClient, message: VaultMessage) -> None:
    """Refuse a ``correct-patient`` of an image this device knows is filed (the gateway's
    filing receipt or the relay's filed notice): a filed image is corrected by the records
    team in the PACS; sending it again could only file it twice, or to the wrong patient."""
    body = body_of(message)
    sent = [a.attachment_id for a in body.attachments] if body is not None else []
    for aid in dict.fromkeys([*message.attachment_ids, *sent]):
        status = client.image_status(aid)
        ref = client.receiver.record_reference(message.thread_id, aid) or status.record_ref
        if ref is not None or status.filed_at is not None:
            where = f" as {ref}" if ref else ""
            raise FlowError(f"the image {aid} is already filed in the patient's record{where}; "
                            "a filed image is corrected by the records team in the PACS",
                            code=ErrorCode.CONFLICT.value)


def is_deidentified(purpose: Purpose) -> bool:
    from clients.sdk.consent import DEIDENTIFIED_PURPOSES

    return purpose in DEIDENTIFIED_PURPOSES


def check_covers_original(claims: ConsentClaims, original: imaging.SanitisedImage) -> None:
    """Before anything is sent: filing the identified original needs a consent for direct
    care that names it (``consent capture`` with both purposes names both copies)."""
    from clients.sdk.consent import image_hash

    if Purpose.DIRECT_CARE not in claims.purposes or \
            image_hash(original.data) not in claims.images:
        raise FlowError("to file the identified original in the patient's record, the consent "
                        "must also cover direct care and name the original: capture it with "
                        "--purpose direct_care as well (it then names both copies), or send "
                        "without patient data", code=ErrorCode.CONSENT_PURPOSE.value)
