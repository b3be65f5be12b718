"""``lightbox``: the clinician's command-line client (the phone stand-in).

Each device is a *profile* (``--profile``, default ``$LIGHTBOX_PROFILE``, else ``gateway``
for ``enroll --kind gateway`` as ``lightbox-gateway`` expects, else ``default``): a
directory under ``$LIGHTBOX_HOME`` (``~/.lightbox``) holding the sealed key store
(clients/sdk/keystore.py). The password (prompted, or ``$LIGHTBOX_PASSWORD`` for scripts) is the
account password set at enrolment; it also unlocks the key store.

    lightbox enroll --server URL --code CODE [--kind mobile|desktop]   first device
    lightbox link --server URL [--kind desktop]                        on the NEW device
    lightbox link --approve CODE                                       on the enrolled device
    lightbox login | whoami | devices | lookup QUERY | keys claim LOGIN
    lightbox consent capture --image FILE --purpose direct_care --role R ...   (or prompts)
                             [--pdf FILE] [--redact all-text]
    lightbox consent pdf TOKEN_FILE --out FILE       the patient's copy (clients/sdk/consent_pdf.py)
    lightbox consent list                            the consents you captured
    lightbox consent withdraw CONSENT_ID [--reason TEXT] [--yes]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from clients.clinician import commands as clinician
from clients.clinician import phi
from clients.sdk import consent as consent_capture
from clients.sdk import consent_pdf, expiry, identity, people
from clients.sdk.errors import DeviceWiped, FlowError, KeyStoreError, RelayRequestError, SDKError
from clients.sdk.failures import run_command
from clients.sdk.http import RelayHTTP
from clients.sdk.imaging import ImageRejected, prepare_image
from clients.sdk.keystore import (
    DeviceState,
    KeyStore,
    OpenKeyStore,
    default_profile,
    lightbox_home,
)
from clients.sdk.profile import ProfileDevice
from clients.sdk.prompts import read_secret
from clients.sdk.timefmt import format_time
from protocol import api, certs
from protocol.body import ConsentFiling
from protocol.consent import (
    ConsentBasis,
    ConsentClaims,
    ConsentDecision,
    peek_consent_token_unverified,
)
from protocol.errors import ErrorCode
from protocol.keys import key_id
from protocol.model import SUPPORTED_VERSIONS, DeviceKind, Purpose

__all__ = ["main"]

VERSION = "0.1.0"
T = TypeVar("T")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _store(args: argparse.Namespace) -> KeyStore:
    return KeyStore.for_profile(args.profile)


def _password(prompt: str = "Password", *, confirm: bool = False) -> str:
    return read_secret("LIGHTBOX_PASSWORD", prompt, confirm=confirm)


class _Device:
    """An unlocked profile: its key store and the password (to log in again when needed)."""

    def __init__(self, opened: OpenKeyStore, password: str) -> None:
        self.opened = opened
        self.password = password

    @property
    def state(self) -> DeviceState:
        return self.opened.state

    async def relay(self) -> RelayHTTP:
        """A RelayHTTP acting as this device, logged in (reusing the saved session)."""
        async def login_again() -> api.TokenPair:  # the relay ended the session
            return await identity.login(relay, self.state, self.password)

        relay = identity.device_relay(self.opened, login_again=login_again)
        if relay.tokens is None or relay.tokens.refresh_expires_at <= time.time():
            relay.tokens = None
            try:
                await identity.login(relay, self.state, self.password)
            except BaseException:
                await relay.aclose()
                raise
        return relay


def _open(args: argparse.Namespace) -> _Device:
    store = _store(args)
    if not store.exists():
        raise KeyStoreError(f"profile {args.profile!r} has no device: run `lightbox enroll` "
                            "or `lightbox link` first")
    password = _password(f"Password ({args.profile})")
    return _Device(store.open(password), password)


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    async def runner() -> T:
        return await factory()
    return asyncio.run(runner())


def _when(ts: int) -> str:
    return format_time(ts)


# --- enrolment and linking -------------------------------------------------------------------


def _enroll(args: argparse.Namespace) -> int:
    store = _store(args)
    if store.exists():
        raise KeyStoreError(f"profile {args.profile!r} already holds a device")
    password = _password("Choose a password (at least 12 characters)", confirm=True)

    async def go() -> OpenKeyStore:
        async with RelayHTTP(args.server) as relay:
            return await identity.enrol(relay, store, args.code, password,
                                        kind=DeviceKind(args.kind))

    opened = _run(go)
    st = opened.state
    print(f"enrolled {st.login} on this {st.device_kind} (device {st.device_id})")
    print(f"organisation {st.org_id} pinned, key fingerprint {key_id(st.org_public_key)}")
    print(f"key store: {opened.directory}")
    return 0


def _link_new(args: argparse.Namespace) -> int:
    store = _store(args)
    if store.exists():
        raise KeyStoreError(f"profile {args.profile!r} already holds a device")
    store.check_writable()
    password = _password("Your Lightbox password")

    async def go() -> OpenKeyStore:
        async with RelayHTTP(args.server) as relay:
            pending = await identity.offer_link(relay, DeviceKind(args.kind))
            print(f"pairing code: {pending.code}", flush=True)
            print(f"on your enrolled device run:  lightbox link --approve {pending.code}",
                  flush=True)
            result = await identity.wait_for_link(relay, pending, max_wait=args.wait,
                                                  interval=args.poll)
            return await identity.finish_link(relay, store, pending, result, password)

    opened = _run(go)
    st = opened.state
    print(f"linked: {st.login} on this {st.device_kind} (device {st.device_id}), logged in")
    print(f"organisation {st.org_id} pinned, key fingerprint {key_id(st.org_public_key)}")
    return 0


def _link_approve(args: argparse.Namespace) -> int:
    device = _open(args)

    async def go() -> certs.DeviceCertificate:
        async with await device.relay() as relay:
            return await identity.approve_link(relay, device.opened, args.approve)

    cert = _run(go)
    print(f"approved: {cert.kind.value} device {cert.device_id} certified for "
          f"{device.state.login} until {_when(cert.not_after)}")
    return 0


def _link(args: argparse.Namespace) -> int:
    if args.approve:
        return _link_approve(args)
    if not args.server:
        raise FlowError("pass --server URL (new device) or --approve CODE (enrolled device)",
                        code="bad_request")
    return _link_new(args)


# --- session and directory -------------------------------------------------------------------


def _login(args: argparse.Namespace) -> int:
    store = _store(args)
    if not store.exists():
        raise KeyStoreError(f"profile {args.profile!r} has no device")
    password = _password(f"Password ({args.profile})")
    opened = store.open(password)

    async def go() -> int | None:
        async with identity.device_relay(opened) as relay:
            relay.tokens = None
            await identity.login(relay, opened.state, password)
            count = await relay.prekey_count()
            if count.remaining < count.low_water:
                await identity.upload_prekeys(relay, opened,
                                              one_time=count.target - count.remaining)
                return count.target
            return count.remaining

    remaining = _run(go)
    st = opened.state
    assert st.session is not None
    print(f"logged in as {st.login} on device {st.device_id}; session until "
          f"{_when(st.session.expires_at)} (renewed automatically)")
    print(f"one-time prekeys at the relay: {remaining}")
    return 0


def _whoami(args: argparse.Namespace) -> int:
    device = _open(args)
    st = device.state
    user = certs.verify_user_certificate(st.user_certificate, trusted_orgs=st.trusted_orgs(),
                                         at=int(dt.datetime.now(dt.UTC).timestamp()))
    print(f"login:        {st.login}")
    print(f"name:         {user.display_name} ({', '.join(user.roles)})")
    print(f"user id:      {st.user_id}, organisation {st.org_id} "
          f"(key {key_id(st.org_public_key)})")
    print(f"device:       {st.device_id} ({st.device_kind})")
    print(f"identity key: {'held on this device' if st.identity_seed else 'not on this device'}")
    print(f"server:       {st.server_url}")
    if st.session is None:
        print("session:      not logged in")
        return 0

    async def go() -> int:
        async with await device.relay() as relay:
            return (await relay.prekey_count()).remaining

    print(f"session:      valid; {_run(go)} one-time prekeys at the relay")
    return 0


def _devices(args: argparse.Namespace) -> int:
    device = _open(args)

    async def go() -> list[identity.DeviceView]:
        async with await device.relay() as relay:
            _user, views = await identity.verified_user_devices(relay, device.opened,
                                                                device.state.user_id)
            return views

    views = _run(go)
    for v in views:
        d = v.verified.device
        mark = "*" if d.device_id == device.state.device_id else " "
        print(f"{mark} {d.device_id} {d.kind.value:<8} certified {_when(d.issued_at)} "
              f"key {key_id(d.signing_key)}")
    print(f"{len(views)} devices, every certificate verified against the organisation key")
    return 0


def _lookup(args: argparse.Namespace) -> int:
    device = _open(args)

    async def go() -> list[tuple[str, str, str, str]]:
        async with await device.relay() as relay:
            found = await relay.directory(args.query)
        return [(e.user_id, f"{e.display_name} ({e.login})", ", ".join(e.roles),
                 " / ".join(x for x in (e.specialty, e.department, e.org_id) if x))
                for e in found.users]

    rows = _run(go)
    for user_id, name, roles, where in rows:
        print(f"{user_id}  {name}  [{roles}]  {where}")
    print(f"{len(rows)} found")
    return 0


def _keys_claim(args: argparse.Namespace) -> int:
    device = _open(args)

    async def go() -> list[identity.ClaimedDevice]:
        async with await device.relay() as relay:
            user_id = (await people.resolve_user(relay, args.user)).user_id
            return await identity.claim_user_keys(relay, device.opened, user_id)

    claimed = _run(go)
    for c in claimed:
        otk = (f"one-time prekey {c.one_time_prekey.prekey_id}" if c.one_time_prekey
               else "no one-time prekey left (signed prekey only)")
        print(f"{c.verified.device_id} {c.verified.device.kind.value:<8} "
              f"signed prekey {c.signed_prekey.prekey_id}, {otk}: chain and signatures verified")
    print(f"{len(claimed)} devices claimed")
    return 0


# --- consent capture ---------------------------------------------------------------------------


def _ask(question: str, default: str | None = None) -> str:
    suffix = f" [{default}]" if default else ""
    answer = input(f"{question}{suffix}: ").strip()
    return answer or (default or "")


def _yes(question: str) -> bool:
    return _ask(question + " (yes/no)").lower() in {"y", "yes"}


def _consent_capture(args: argparse.Namespace) -> int:
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
            clean = prepare_image(Path(path).read_bytes()).image
        except ImageRejected as exc:
            raise FlowError(f"{path}: {exc}", code="validation_failed") from exc
        strictest = next((p for p in purposes if p in phi.DEIDENTIFIED_PURPOSES), None)
        original = clean
        if args.redact != "none" or strictest is not None:
            clean = phi.prepare_for_purpose(clean, strictest or Purpose.DIRECT_CARE,
                                            mode=phi.RedactMode(args.redact),
                                            rules=phi.rules_from_env()).image
        images.append(consent_capture.image_hash(clean.data))
        if strictest is not None and Purpose.DIRECT_CARE in purposes and \
                original.data != clean.data:
            # The identified original is what the record gets (issue 10 item 4): a consent
            # for direct care as well names it too, so `send` can file it.
            images.append(consent_capture.image_hash(original.data))
    if not images:
        raise FlowError("name the images shown to the patient with --image FILE",
                        code="validation_failed")
    decision = args.decision
    shown = args.statements_shown
    if interactive:
        if not purposes:
            purposes = [Purpose(p.strip()) for p in _ask(
                "Purposes (" + ", ".join(p.value for p in Purpose) + ")",
                Purpose.DIRECT_CARE.value).split(",") if p.strip()]
        print("Read to the patient:")
        print("  1. " + consent_capture.PERMANENCE_STATEMENT)
        print("  2. " + consent_capture.NO_EFFECT_ON_CARE_STATEMENT)
        shown = shown or _yes("Were both statements shown and understood?")
        decision = decision or ("agreed" if _yes("Does the patient agree?") else "refused")
    record = clinician.record_from_args(args)
    refused = ConsentDecision(decision or "agreed") is ConsentDecision.REFUSED
    if record is not None and not refused:
        raise FlowError("patient data for an agreement is sealed with the image when it is "
                        "sent (`lightbox send --patient-id ...`)", code="validation_failed")
    if refused and record is None and not args.no_register:
        if not interactive:
            raise FlowError("a refusal is filed in the patient's record (issue 10): give "
                            "--patient-id MRN and --patient-name FAMILY^GIVEN",
                            code="validation_failed")
        args.patient_id = _ask("Patient ID (MRN) for the record")
        args.patient_name = _ask("Patient name (FAMILY^GIVEN)")
        record = clinician.record_from_args(args)
    device = clinician.unlock_profile(args)  # the vault too: a refusal goes to the record
    named = _run(lambda: _resolve_people(device, args.user or []))
    capture = consent_capture.ConsentCapture(
        purposes=purposes or [Purpose.DIRECT_CARE], images=images,
        decision=ConsentDecision(decision or "agreed"), basis=ConsentBasis(args.basis),
        recipient_users=[e.user_id for e in named], recipient_roles=args.role or [],
        recipient_orgs=args.org or [], external=args.external,
        permanence_statement_shown=shown, no_effect_on_care_statement_shown=shown,
        form_version=args.form_version, valid_for=int(args.valid_days * 86400))
    token, claims = consent_capture.capture_consent(device.store.state, capture)

    async def go() -> str:
        client = device.client()
        try:
            await client.ensure_login()
            status = (await consent_capture.register_consent(client.relay, token)).status
            _say_registered(claims, status)
            if record is not None:
                await client.start()
                sent, filed = await client.file_consent(token, record, wait=args.file_wait)
                _say_filed(sent.message_id, filed)
            return status
        finally:
            await client.close()

    if args.no_register:
        _say_registered(claims, "not registered")
    else:
        _run(go)
    if args.token_out:
        Path(args.token_out).write_text(token + "\n")
    if args.fhir:
        Path(args.fhir).write_text(json.dumps(consent_capture.fhir_consent(token), indent=2))
    if args.pdf:
        names = {e.user_id: people.person_label(e.display_name, e.roles, e.specialty)
                 for e in named}
        _write_consent_pdf(args, claims, _own_label(device.store.state), names)
    return 0


async def _resolve_people(device: ProfileDevice,
                          names: Sequence[str]) -> list[api.DirectoryEntry]:
    """The named recipients, by login (clients/sdk/people.py), before anything is signed."""
    if not names:
        return []
    client = device.client()
    try:
        await client.ensure_login()
        return await people.resolve_users(client.relay, names)
    finally:
        await client.close()


def _own_label(state: DeviceState) -> str:
    """How the patient's copy names the clinician on this device: from our certificate."""
    me = certs.verify_user_certificate(state.user_certificate, trusted_orgs=state.trusted_orgs(),
                                       at=int(time.time()))
    return people.person_label(me.display_name, me.roles, me.specialty)


def _say_registered(claims: ConsentClaims, status: str) -> None:
    print(f"consent {claims.jti}: {claims.decision.value} (relay: {status}) for "
          f"{', '.join(p.value for p in claims.purposes)}; {len(claims.images)} images",
          flush=True)


def _say_filed(message_id: str, filed: ConsentFiling | None) -> None:
    if filed is None:
        print(f"sent to the record gateway for filing (message {message_id}); its receipt "
              "will arrive in your record thread (`lightbox inbox`)")
        return
    what = ", ".join(
        f"consent form in study {filed.study_instance_uid}" if d.kind == "consent_form" else
        f"FHIR Consent {d.location or 'sha256 ' + (d.sha256 or '')[:16]}"
        for d in filed.documents)
    print(f"filed in the patient's record by the record gateway: {what}")


def _write_consent_pdf(args: argparse.Namespace, claims: ConsentClaims, clinician_name: str,
                       user_names: dict[str, str]) -> None:
    """The patient's copy (issue 10 item 2): kept on this device, never sent to the relay.
    People are named by name (and specialty or role), never by an id."""
    display = consent_pdf.ConsentFormDisplay(
        organisation_name=args.organisation_name, privacy_contact=args.privacy_contact,
        patient_label=args.patient_label or "", clinician_name=clinician_name,
        user_names=user_names)
    path = consent_pdf.save_consent_pdf(args.pdf, consent_pdf.render_consent_pdf(claims,
                                                                                 display))
    print(f"patient's copy of consent {claims.jti}: {path} (give it to the patient; it is "
          "not sent anywhere)")


def _consent_pdf(args: argparse.Namespace) -> int:
    try:
        _token, claims = consent_pdf.load_consent_token(args.token_file)
    except consent_pdf.ConsentPdfError as exc:
        raise FlowError(exc.reason, code="not_found") from None
    args.pdf = args.out
    clinician_name, names = "", dict[str, str]()
    if (_store(args).directory / "vault.db").exists() or _store(args).exists():
        # Name people from their verified certificates (the profile's relay session).
        device = clinician.unlock_profile(args)
        try:
            clinician_name, names = _run(lambda: _names_of(device, claims))
        except SDKError as exc:
            print(f"warning: people are not named on this copy (the relay could not be asked: "
                  f"{exc})", file=sys.stderr)
    _write_consent_pdf(args, claims, clinician_name, names)
    return 0


async def _names_of(device: ProfileDevice,
                    claims: ConsentClaims) -> tuple[str, dict[str, str]]:
    """The capturing clinician and each named recipient, from certificates verified against
    the organisation key; someone the directory no longer serves stays unnamed."""
    labels: dict[str, str] = {}
    client = device.client()
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


# --- consent withdrawal --------------------------------------------------------------------------


def _consent_line(claims: ConsentClaims) -> str:
    return (f"{claims.decision.value} for {', '.join(p.value for p in claims.purposes)}, "
            f"{len(claims.images)} image{'s' if len(claims.images) != 1 else ''}, captured "
            f"{format_time(claims.iat)}")


def _consent_list(args: argparse.Namespace) -> int:
    device = clinician.unlock_profile(args)

    async def go() -> list[api.ConsentInfo]:
        client = device.client()
        try:
            await client.ensure_login()
            return (await client.relay.my_consents()).consents
        finally:
            await client.close()

    found = _run(go)
    for info in found:
        claims = peek_consent_token_unverified(info.token)
        status = (info.status if info.revoked_at is None
                  else f"withdrawn {format_time(info.revoked_at)}")
        print(f"{info.consent_id}  {status}: {_consent_line(claims)}")
    print(f"{len(found)} consents you captured")
    return 0


def _consent_withdraw(args: argparse.Namespace) -> int:
    """Withdraw a consent this clinician captured (the relay withdraws undelivered messages
    and orders every copy of its images destroyed, docs/PROTOCOL.md §13)."""
    consent_id = args.consent_id.strip().lower()
    if not _UUID.match(consent_id):
        raise FlowError(f"{args.consent_id!r} is not a consent id: it is the consent reference "
                        "on the patient's copy (`lightbox consent list` shows yours)",
                        code=ErrorCode.VALIDATION_FAILED.value)
    interactive = sys.stdin.isatty() and not args.yes
    if not interactive and not args.yes:
        raise FlowError("withdrawing a consent cannot be undone: pass --yes to confirm",
                        code=ErrorCode.VALIDATION_FAILED.value)
    device = clinician.unlock_profile(args)

    async def go() -> tuple[api.ConsentRevoked, ConsentClaims]:
        client = device.client()
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
            print(f"consent {consent_id}: {_consent_line(claims)}")
            if interactive and not await asyncio.to_thread(
                    _yes, "Withdraw it? Undelivered messages are withdrawn and every copy of "
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

    result, _claims = _run(go)
    print(f"withdrawn: consent {consent_id} at {format_time(result.revoked_at)}")
    print(f"messages withdrawn before delivery: {result.withdrawn_messages}")
    print(f"copies ordered to expire: {result.expiry_orders} (each device deletes its copy and "
          "confirms; images already filed in the record stay there)")
    return 0


def _pdf_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient-label", metavar="TEXT", help="what identifies the patient "
                        "on their own copy (e.g. their name); only in the PDF")
    parser.add_argument("--organisation-name", metavar="NAME",
                        help="default $LIGHTBOX_ORGANISATION_NAME, else the organisation id")
    parser.add_argument("--privacy-contact", metavar="TEXT", help="how to withdraw: default "
                        f"${consent_pdf.PRIVACY_CONTACT_ENV}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lightbox", description="Lightbox clinician client.")
    protocols = ", ".join(map(str, SUPPORTED_VERSIONS))
    p.add_argument("--version", action="version",
                   version=f"lightbox {VERSION} (protocol {protocols})")
    p.add_argument("--profile", help="which device's key store to use (default: "
                   "$LIGHTBOX_PROFILE, else 'gateway' for `enroll --kind gateway`, else "
                   "'default')")
    sub = p.add_subparsers(dest="cmd")
    en = sub.add_parser("enroll", help="enrol this device with the code from IT's handout")
    en.add_argument("--server", required=True)
    en.add_argument("--code", required=True)
    en.add_argument("--kind", choices=[k.value for k in DeviceKind], default="mobile")
    en.set_defaults(func=_enroll)
    ln = sub.add_parser("link", help="link a new device (run here on the new device), or "
                                     "approve one with --approve CODE on the enrolled device")
    ln.add_argument("--server", help="the relay (new device)")
    ln.add_argument("--kind", choices=[k.value for k in DeviceKind], default="desktop")
    ln.add_argument("--approve", metavar="CODE", help="the code the new device shows")
    ln.add_argument("--wait", type=float, default=600.0, help="seconds to wait for approval")
    ln.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    ln.set_defaults(func=_link)
    sub.add_parser("login", help="log in (password + device signature)").set_defaults(
        func=_login)
    sub.add_parser("whoami", help="this device and its user").set_defaults(func=_whoami)
    sub.add_parser("devices", help="your devices, verified").set_defaults(func=_devices)
    lk = sub.add_parser("lookup", help="search the directory")
    lk.add_argument("query")
    lk.set_defaults(func=_lookup)
    keys = sub.add_parser("keys", help="debugging the key directory").add_subparsers(
        dest="keys_cmd", required=True)
    cl = keys.add_parser("claim", help="claim and verify a colleague's prekeys")
    cl.add_argument("user", help="a colleague's login (or user id, or a directory query "
                                 "matching one person)")
    cl.set_defaults(func=_keys_claim)
    consent = sub.add_parser("consent", help="patient consent for images").add_subparsers(
        dest="consent_cmd", required=True)
    cc = consent.add_parser("capture", help="record a patient's decision, sign it with your "
                                            "identity key and register it")
    cc.add_argument("--image", action="append", metavar="FILE", help="an image shown")
    cc.add_argument("--purpose", action="append", choices=[p.value for p in Purpose])
    cc.add_argument("--user", action="append", metavar="LOGIN",
                    help="a named recipient: a colleague's login (or user id)")
    cc.add_argument("--role", action="append", help="a recipient role (your organisation)")
    cc.add_argument("--org", action="append", help="a recipient organisation")
    cc.add_argument("--external", action="store_true", help="recipients outside your "
                                                            "organisation allowed")
    cc.add_argument("--decision", choices=[d.value for d in ConsentDecision])
    cc.add_argument("--basis", choices=[b.value for b in ConsentBasis],
                    default=ConsentBasis.TREATMENT_ATTESTATION.value)
    cc.add_argument("--statements-shown", action="store_true",
                    help="both statements (permanence, no effect on care) were shown")
    cc.add_argument("--form-version", default=consent_capture.FORM_VERSION)
    cc.add_argument("--valid-days", type=float, default=30.0)
    cc.add_argument("--token-out", metavar="FILE", help="write the signed token here")
    cc.add_argument("--fhir", metavar="FILE", help="write the FHIR R4 Consent here")
    cc.add_argument("--no-register", action="store_true", help=argparse.SUPPRESS)
    cc.add_argument("--yes", action="store_true", help="no prompts (scripts)")
    cc.add_argument("--redact", choices=["none", "identifiers", "all-text"], default="none",
                    help="name the copy with text blacked out (as `lightbox send --redact`)")
    cc.add_argument("--pdf", metavar="FILE", help="write the patient's copy (one-page PDF)")
    _pdf_options(cc)
    clinician.add_patient_options(cc.add_argument_group(
        "patient data (a refusal is filed in the patient's record with it; sealed)"))
    cc.add_argument("--file-wait", type=float, default=30.0, metavar="SECONDS",
                    help="how long to wait for the record gateway's receipt of a refusal")
    cc.set_defaults(func=_consent_capture)
    cp = consent.add_parser("pdf", help="the patient's copy of a captured consent (PDF)")
    cp.add_argument("token_file", metavar="TOKEN_FILE", help="from `consent capture "
                                                             "--token-out`")
    cp.add_argument("--out", required=True, metavar="FILE")
    _pdf_options(cp)
    cp.set_defaults(func=_consent_pdf)
    cw = consent.add_parser("withdraw", help="withdraw a consent you captured (undelivered "
                                             "messages withdrawn, copies deleted)")
    cw.add_argument("consent_id", metavar="CONSENT_ID", help="the consent reference (on the "
                                                            "patient's copy; `consent list`)")
    cw.add_argument("--reason", metavar="TEXT", default="",
                    help="why, for the audit log (no patient details)")
    cw.add_argument("--yes", action="store_true", help="no confirmation prompt (scripts)")
    cw.set_defaults(func=_consent_withdraw)
    consent.add_parser("list", help="the consents you captured, newest first").set_defaults(
        func=_consent_list)
    clinician.register(sub)  # threads, send, inbox, watch, desktop (clients/clinician/commands.py)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.profile = args.profile or default_profile(getattr(args, "kind", None))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0

    def after_wipe(exc: BaseException) -> str | None:
        """A profile whose device the organisation revoked and wiped says so, whatever the
        command tripped over (the erased vault, the ended session...); enrolling anew is
        the way out, so those commands report their own failures."""
        if args.cmd in {"enroll", "link"} or isinstance(exc, DeviceWiped):
            return None
        try:
            expiry.check_not_wiped(KeyStore.for_profile(args.profile).directory)
        except DeviceWiped as wiped:
            return str(wiped)
        except KeyStoreError:  # an invalid profile name: said by the failure itself
            pass
        return None

    return run_command("lightbox", lambda: int(args.func(args)), known=after_wipe,
                       login_hint="run `lightbox login`", details_dir=lightbox_home())


if __name__ == "__main__":
    sys.exit(main())
