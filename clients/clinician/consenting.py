"""Consent on the command line (docs/CLINICAL_SAFETY.md): ``lightbox consent capture`` asks the
two statements and the decision, signs the token on the device and registers it, files a
refusal, and writes the patient's copy as a PDF; ``consent list`` and ``consent withdraw``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from clients.clinician import phi
from clients.clinician.device import store_of
from clients.clinician.sending import check_roles, read_image, record_from_args, role_name
from clients.clinician.shell import command_client, print_problems, rejection, unlock_profile
from clients.sdk import consent as consent_capture
from clients.sdk import consent_pdf, people
from clients.sdk.errors import FlowError, RelayRequestError, SDKError
from clients.sdk.failures import run_async
from clients.sdk.imaging import ImageRejected, RejectCode, prepare_image
from clients.sdk.keystore import (
    DeviceState,
)
from clients.sdk.profile import ProfileDevice
from clients.sdk.prompts import yes
from clients.sdk.timefmt import format_time
from clients.sdk.wording import counted
from protocol import api, certs
from protocol.body import ConsentFiling
from protocol.consent import (
    ConsentBasis,
    ConsentClaims,
    ConsentDecision,
    peek_consent_token_unverified,
)
from protocol.errors import ErrorCode
from protocol.model import Purpose

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

__all__ = [
    "ask",
    "capture_command",
    "consent_line",
    "consent_list",
    "consent_withdraw",
    "filed_documents",
    "names_of",
    "own_label",
    "pdf_command",
    "pdf_options",
    "resolve_people",
    "say_filed",
    "say_registered",
    "write_consent_pdf",
    "yes",
]


def ask(question: str, default: str | None = None) -> str:
    suffix = f" [{default}]" if default else ""
    answer = input(f"{question}{suffix}: ").strip()
    return answer or (default or "")




def capture_command(args: argparse.Namespace) -> int:
    """Record the patient's decision: flags for scripts, prompts for whatever is missing when
    a person is at the terminal (the two statements are then shown and confirmed)."""
    interactive = sys.stdin.isatty() and not args.yes
    purposes = [Purpose(p) for p in args.purpose or []]
    images = []
    for path in args.image or []:
        # The consent names the image that will be sent: the sanitised JPEG (orientation
        # applied, metadata stripped), which is what `lightbox send` encrypts; with --redact,
        # the redacted copy (clients/clinician/phi.py, deterministic), which is what it then shares.
        try:
            clean = prepare_image(read_image(path, outcome="No consent was recorded.")).image
        except ImageRejected as exc:
            # A file over the limit is named in its own sentence, with what to use instead.
            said = exc.reason if exc.code is RejectCode.TOO_LARGE else \
                f"{path}: {rejection(exc, 'No consent was recorded.')}"
            raise FlowError(said, code="validation_failed") from exc
        strictest = next((p for p in purposes if p in phi.DEIDENTIFIED_PURPOSES), None)
        original = clean
        if args.redact != "none" or strictest is not None:
            clean = phi.prepare_for_purpose(clean, strictest or Purpose.DIRECT_CARE,
                                            mode=phi.RedactMode(args.redact),
                                            rules=phi.rules_from_env()).image
        images.append(consent_capture.image_hash(clean.data))
        if strictest is not None and Purpose.DIRECT_CARE in purposes and \
                original.data != clean.data:
            # The identified original is what the record gets (CLINICAL_SAFETY.md): a consent
            # for direct care as well names it too, so `send` can file it.
            images.append(consent_capture.image_hash(original.data))
    if not images:
        raise FlowError("name the images shown to the patient with --image FILE",
                        code="validation_failed")
    decision = args.decision
    shown = args.statements_shown
    if interactive:
        if not purposes:
            purposes = [Purpose(p.strip()) for p in ask(
                "Purposes (" + ", ".join(p.value for p in Purpose) + ")",
                Purpose.DIRECT_CARE.value).split(",") if p.strip()]
        print("Read to the patient:")
        print("  1. " + consent_capture.PERMANENCE_STATEMENT)
        print("  2. " + consent_capture.NO_EFFECT_ON_CARE_STATEMENT)
        shown = shown or yes("Were both statements shown and understood?")
        decision = decision or ("agreed" if yes("Does the patient agree?") else "refused")
    record = record_from_args(args)
    refused = ConsentDecision(decision or "agreed") is ConsentDecision.REFUSED
    if record is not None and not refused:
        raise FlowError("patient data for an agreement is sealed with the image when it is "
                        "sent (`lightbox send --patient-id ...`)", code="validation_failed")
    if refused and record is None and not args.no_register:
        if not interactive:
            raise FlowError("a refusal is filed in the patient's record (CLINICAL_SAFETY.md): give "
                            "--patient-id MRN and --patient-name FAMILY^GIVEN",
                            code="validation_failed")
        args.patient_id = ask("Patient ID (MRN) for the record")
        args.patient_name = ask("Patient name (FAMILY^GIVEN)")
        record = record_from_args(args)
    device = unlock_profile(args)  # the vault too: a refusal goes to the record
    roles = [role_name(r, f"--role {r!r}") for r in args.role or []]
    # Before anything is signed: a role nobody holds would make a consent that covers no one
    # (the same check as `lightbox send`, clients/clinician/sending.py check_roles).
    named = run_async(lambda: resolve_people(device, args.user or [], roles))
    capture = consent_capture.ConsentCapture(
        purposes=purposes or [Purpose.DIRECT_CARE], images=images,
        decision=ConsentDecision(decision or "agreed"), basis=ConsentBasis(args.basis),
        recipient_users=[e.user_id for e in named], recipient_roles=roles,
        recipient_orgs=args.org or [], external=args.external,
        permanence_statement_shown=shown, no_effect_on_care_statement_shown=shown,
        form_version=args.form_version, valid_for=int(args.valid_days * 86400))
    token, claims = consent_capture.capture_consent(device.store.state, capture)

    async def go() -> str:
        client = command_client(device)
        events = client.subscribe()
        try:
            await client.ensure_login()
            status = (await consent_capture.register_consent(client.relay, token)).status
            say_registered(claims, status)
            if record is not None:
                await client.start()
                sent, filed = await client.file_consent(token, record, wait=args.file_wait)
                say_filed(sent.message_id, filed, waited=args.file_wait)
            return status
        finally:
            await client.close()
            print_problems(events)  # what it dropped as it synced

    if args.no_register:
        say_registered(claims, "not registered")
    else:
        run_async(go)
    if args.token_out:
        Path(args.token_out).write_text(token + "\n")
    if args.fhir:
        Path(args.fhir).write_text(json.dumps(consent_capture.fhir_consent(token), indent=2))
    if args.pdf:
        names = {e.user_id: people.person_label(e.display_name, e.roles, e.specialty)
                 for e in named}
        write_consent_pdf(args, claims, own_label(device.store.state), names)
    return 0


async def resolve_people(device: ProfileDevice, names: Sequence[str],
                         roles: Sequence[str] = ()) -> list[api.DirectoryEntry]:
    """The named recipients, by login (clients/sdk/people.py), before anything is signed; and
    each recipient role held by someone (:func:`check_roles`)."""
    if not names and not roles:
        return []
    client = command_client(device)
    try:
        await client.ensure_login()
        await check_roles(client, list(roles), outcome="no consent was recorded")
        return await people.resolve_users(client.relay, names) if names else []
    finally:
        await client.close()


def own_label(state: DeviceState) -> str:
    """How the patient's copy names the clinician on this device: from our certificate."""
    me = certs.verify_user_certificate(state.user_certificate, trusted_orgs=state.trusted_orgs(),
                                       at=int(time.time()))
    return people.person_label(me.display_name, me.roles, me.specialty)


def say_registered(claims: ConsentClaims, status: str) -> None:
    print(f"consent {claims.jti}: {claims.decision.value} (relay: {status}) for "
          f"{', '.join(p.value for p in claims.purposes)}; {counted(len(claims.images), 'image')}",
          flush=True)


def say_filed(message_id: str, filed: ConsentFiling | None, *, waited: float = 30.0) -> None:
    """Where the gateway filed it; or, with no receipt within the ``waited`` seconds
    (``--file-wait``), that it is not filed yet: the command cannot know more, and "sent for
    filing" alone reads as done."""
    if filed is None:
        print(f"not filed yet: sent to the record gateway for filing (message {message_id}), "
              f"which did not confirm it within {waited:g} s; its receipt will arrive in your "
              "record thread (`lightbox inbox`) once it is filed")
        return
    print(f"filed in the patient's record by the record gateway: {filed_documents(filed)}")


def filed_documents(filed: ConsentFiling) -> str:
    """What the gateway really filed (protocol/body.py ``FiledDocument``): the consent form,
    and the FHIR Consent only where a FHIR server took it (``location``); without one the
    FHIR Consent exists only inside the form (clients/gateway/records.py)."""
    posted = [d.location for d in filed.documents if d.kind == "fhir_consent" and d.location]
    what = [f"consent form in study {filed.study_instance_uid}"
            for d in filed.documents if d.kind == "consent_form"]
    what += [f"FHIR Consent at {location}" for location in posted]
    if not posted:
        what.append("no FHIR server is configured: the FHIR Consent is only inside the form")
    return ", ".join(what)


def write_consent_pdf(args: argparse.Namespace, claims: ConsentClaims, clinician_name: str,
                       user_names: dict[str, str]) -> None:
    """The patient's copy (CLINICAL_SAFETY.md): kept on this device, never sent to the relay.
    People are named by name (and specialty or role), never by an id."""
    display = consent_pdf.ConsentFormDisplay(
        organisation_name=args.organisation_name, privacy_contact=args.privacy_contact,
        patient_label=args.patient_label or "", clinician_name=clinician_name,
        user_names=user_names)
    path = consent_pdf.save_consent_pdf(args.pdf, consent_pdf.render_consent_pdf(claims,
                                                                                 display))
    print(f"patient's copy of consent {claims.jti}: {path} (give it to the patient; it is "
          "not sent anywhere)")


def pdf_command(args: argparse.Namespace) -> int:
    try:
        _token, claims = consent_pdf.load_consent_token(args.token_file)
    except consent_pdf.ConsentPdfError as exc:
        raise FlowError(exc.reason, code="not_found") from None
    args.pdf = args.out
    clinician_name, names = "", dict[str, str]()
    if (store_of(args).directory / "vault.db").exists() or store_of(args).exists():
        # Name people from their verified certificates (the profile's relay session).
        device = unlock_profile(args)
        try:
            clinician_name, names = run_async(lambda: names_of(device, claims))
        except SDKError as exc:
            said = exc.said if isinstance(exc, RelayRequestError) else exc
            print(f"warning: people are not named on this copy (the relay could not be asked: "
                  f"{said})", file=sys.stderr)
    write_consent_pdf(args, claims, clinician_name, names)
    return 0


async def names_of(device: ProfileDevice,
                    claims: ConsentClaims) -> tuple[str, dict[str, str]]:
    """The capturing clinician and each named recipient, from certificates verified against
    the organisation key; someone the directory no longer serves stays unnamed."""
    labels: dict[str, str] = {}
    client = command_client(device)
    try:
        await client.ensure_login()
        for user_id in dict.fromkeys([claims.iss, *claims.recipients.users]):
            try:
                user = await client.person(user_id)
            except (RelayRequestError, FlowError):
                continue
            labels[user_id] = people.person_label(user.display_name, user.roles, user.specialty)
    finally:
        await client.close()
    return labels.get(claims.iss, ""), labels


def consent_line(claims: ConsentClaims) -> str:
    return (f"{claims.decision.value} for {', '.join(p.value for p in claims.purposes)}, "
            f"{len(claims.images)} image{'s' if len(claims.images) != 1 else ''}, captured "
            f"{format_time(claims.iat)}")


def consent_list(args: argparse.Namespace) -> int:
    device = unlock_profile(args)

    async def go() -> list[api.ConsentInfo]:
        client = command_client(device)
        try:
            await client.ensure_login()
            return (await client.relay.my_consents()).consents
        finally:
            await client.close()

    found = run_async(go)
    for info in found:
        claims = peek_consent_token_unverified(info.token)
        status = (info.status if info.revoked_at is None
                  else f"withdrawn {format_time(info.revoked_at)}")
        print(f"{info.consent_id}  {status}: {consent_line(claims)}")
    print(f"{counted(len(found), 'consent')} you captured")
    return 0


def consent_withdraw(args: argparse.Namespace) -> int:
    """Withdraw a consent this clinician captured (the relay withdraws undelivered messages
    and orders every copy of its images destroyed, docs/PROTOCOL.md §13)."""
    consent_id = args.consent_id.strip().lower()
    if not UUID_RE.match(consent_id):
        raise FlowError(f"{args.consent_id!r} is not a consent id: it is the consent reference "
                        "on the patient's copy (`lightbox consent list` shows yours)",
                        code=ErrorCode.VALIDATION_FAILED.value)
    interactive = sys.stdin.isatty() and not args.yes
    if not interactive and not args.yes:
        raise FlowError("withdrawing a consent cannot be undone: pass --yes to confirm",
                        code=ErrorCode.VALIDATION_FAILED.value)
    device = unlock_profile(args)

    async def go() -> tuple[api.ConsentRevoked, ConsentClaims]:
        client = command_client(device)
        try:
            await client.ensure_login()
            try:
                info = await client.relay.get_consent(consent_id)
            except RelayRequestError as exc:
                if exc.code == ErrorCode.NOT_FOUND.value:
                    raise FlowError(f"no consent {consent_id} that you captured or took part "
                                    "in (`lightbox consent list` shows yours)",
                                    code=ErrorCode.NOT_FOUND.value) from None
                raise
            claims = peek_consent_token_unverified(info.token)
            if info.revoked_at is not None:
                raise FlowError(f"consent {consent_id} was already withdrawn on "
                                f"{format_time(info.revoked_at)}",
                                code=ErrorCode.CONSENT_REVOKED.value)
            print(f"consent {consent_id}: {consent_line(claims)}")
            if interactive and not await asyncio.to_thread(
                    yes, "Withdraw it? Undelivered messages are withdrawn and every copy of "
                    "its images is deleted"):
                raise FlowError("nothing withdrawn", code="cancelled")
            try:
                result = await client.relay.revoke_consent(consent_id, args.reason or "")
            except RelayRequestError as exc:
                if exc.code == ErrorCode.FORBIDDEN.value:
                    who = "another clinician"
                    with contextlib.suppress(SDKError):
                        who = (await client.person(claims.iss)).display_name
                    raise FlowError(f"consent {consent_id} was captured by {who}: only they or "
                                    "the privacy office can withdraw it",
                                    code=ErrorCode.FORBIDDEN.value) from None
                raise
            if result.already:
                raise FlowError(f"consent {consent_id} was already withdrawn on "
                                f"{format_time(result.revoked_at)}",
                                code=ErrorCode.CONSENT_REVOKED.value)
            client.vault.note_consent_withdrawn(consent_id, result.revoked_at)
            return result, claims
        finally:
            await client.close()

    result, _claims = run_async(go)
    print(f"withdrawn: consent {consent_id} at {format_time(result.revoked_at)}")
    print(f"messages withdrawn before delivery: {result.withdrawn_messages}")
    print(f"copies ordered to expire: {result.expiry_orders} (each device deletes its copy and "
          "confirms; images already filed in the record stay there)")
    return 0


def pdf_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient-label", metavar="TEXT", help="what identifies the patient "
                        "on their own copy (e.g. their name); only in the PDF")
    parser.add_argument("--organisation-name", metavar="NAME",
                        help="default $LIGHTBOX_ORGANISATION_NAME, else the organisation id")
    parser.add_argument("--privacy-contact", metavar="TEXT", help="how to withdraw: default "
                        f"${consent_pdf.PRIVACY_CONTACT_ENV}")
