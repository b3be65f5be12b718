"""``lightbox``: the clinician's command-line client (the phone stand-in).

Each device is a *profile* (``--profile``, default ``$LIGHTBOX_PROFILE``, else ``gateway``
for ``enroll --kind gateway`` as ``lightbox-gateway`` expects, else ``default``): a
directory under ``$LIGHTBOX_HOME`` (``~/.lightbox``) holding the sealed key store
(clients/sdk/keystore.py). The password (prompted, or ``$LIGHTBOX_PASSWORD`` for scripts) is the
account password set at enrolment; it also unlocks the key store.

    lightbox enroll --server URL --code CODE [--kind mobile|desktop]   first device
    lightbox link --server URL [--kind desktop]                        on the NEW device
    lightbox link --approve CODE                                       on the enrolled device
    lightbox login | logout | whoami | devices | lookup QUERY | keys claim LOGIN
    lightbox consent capture --image FILE --purpose direct_care --role R ...   (or prompts)
                             [--pdf FILE] [--redact all-text]
    lightbox consent pdf TOKEN_FILE --out FILE       the patient's copy (clients/sdk/consent_pdf.py)
    lightbox consent list                            the consents you captured
    lightbox consent withdraw CONSENT_ID [--reason TEXT] [--yes]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import sys
from collections.abc import Awaitable, Iterator, Sequence
from typing import TypeVar

import msgspec

from clients.clinician import commands as clinician
from clients.clinician.consenting import (
    capture_command,
    consent_list,
    consent_withdraw,
    pdf_command,
    pdf_options,
)
from clients.clinician.device import open_device, password_prompt, read_password, store_of
from clients.clinician.logout import logout
from clients.clinician.shell import when
from clients.sdk import consent as consent_capture
from clients.sdk import expiry, identity, people, sso
from clients.sdk.errors import (
    DeviceWiped,
    FlowError,
    KeyStoreError,
    RelayRequestError,
)
from clients.sdk.failures import run_async, run_command
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import (
    KeyStore,
    OpenKeyStore,
    default_profile,
    lightbox_home,
)
from clients.sdk.vault import VAULT_FILE
from clients.sdk.wording import counted
from protocol import certs
from protocol.consent import (
    ConsentBasis,
    ConsentDecision,
)
from protocol.errors import DecodeError, ErrorCode
from protocol.keys import key_id, normalise_enrolment_code
from protocol.model import SUPPORTED_VERSIONS, DeviceKind, Purpose

__all__ = ["main"]

VERSION = "0.1.0"
# How a clinician who signs in at the hospital's identity provider signs in again.
SSO_HINT = "sign in again with your hospital account: run `lightbox login --sso`"
T = TypeVar("T")
# An enrolment code the relay does not know (or that does not open the package): a typo, or a
# code IT has since replaced by reissuing it (docs/USER_GUIDE.md "Handouts"), which the relay
# cannot tell apart; the handout says the same (clients/admin/handout.py INVALID_NOTE).
CODE_INVALID = ("this enrolment code does not work: check it against your handout; if IT has "
                "given you a newer handout since, only the newest one's code works: ask IT "
                "for the newest handout")

# A code that is not 20 letters and digits (protocol/keys.py normalise_enrolment_code), as the
# phone app says it (clients/phone/src/app/worker.ts).
CODE_SHAPE = ("that is not an enrolment code: it has 20 letters and digits, in five groups of "
              "four, as on your handout (such as 7K2M-9QXP-4RTV-8WJN-3HBC); nothing was saved")


# --- enrolment and linking -------------------------------------------------------------------


@contextlib.contextmanager
def _no_empty_profile(store: KeyStore) -> Iterator[None]:
    """A profile folder this command creates is removed again when the command fails before
    a key store or vault is in it (a wrong code, the relay refusing, Ctrl-C): a failed
    ``enroll`` or ``link`` leaves ``~/.lightbox/<profile>`` as it found it."""
    folder = store.directory
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed and folder.is_dir() and not store.exists() \
                and not (folder / VAULT_FILE).exists():
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _enroll(args: argparse.Namespace) -> int:
    store = store_of(args)
    if store.exists():
        raise KeyStoreError(f"profile {args.profile!r} already holds a device")
    try:  # a code of the wrong shape is no typo of a handout's: said before any prompt
        normalise_enrolment_code(args.code)
    except DecodeError:
        raise FlowError(CODE_SHAPE, code=ErrorCode.ENROLMENT_CODE_INVALID.value) from None
    password = read_password("Choose a password (at least 12 characters)"
                         if not args.sso else "Choose a passphrase for this device's key store "
                         "(at least 12 characters)", confirm=True)

    async def go() -> OpenKeyStore:
        async with RelayHTTP(args.server) as relay:
            async def id_token(org_id: str) -> str:
                return (await _sso(relay, args, org_id)).id_token

            return await identity.enrol(relay, store, args.code, password,
                                        kind=DeviceKind(args.kind),
                                        sso=id_token if args.sso else None)

    try:
        with _no_empty_profile(store):
            opened = run_async(go)
    except (RelayRequestError, FlowError) as exc:
        if exc.code != ErrorCode.ENROLMENT_CODE_INVALID.value:
            raise
        raise FlowError(CODE_INVALID, code=exc.code) from exc
    st = opened.state
    print(f"enrolled {st.login} on this {st.device_kind} (device {st.device_id})")
    print(f"organisation {st.org_id} pinned, key fingerprint {key_id(st.org_public_key)}")
    print(f"key store: {opened.directory}")
    return 0


def _link_new(args: argparse.Namespace) -> int:
    store = store_of(args)
    if store.exists():
        raise KeyStoreError(f"profile {args.profile!r} already holds a device")

    async def go() -> OpenKeyStore:
        async with RelayHTTP(args.server) as relay:
            pending = await identity.offer_link(relay, DeviceKind(args.kind))
            print(f"pairing code: {pending.code}", flush=True)
            print(f"on your enrolled device run:  lightbox link --approve {pending.code}",
                  flush=True)
            result = await identity.wait_for_link(relay, pending, max_wait=args.wait,
                                                  interval=args.poll)
            return await identity.finish_link(relay, store, pending, result, password)

    with _no_empty_profile(store):
        store.check_writable()
        password = read_password("Your Lightbox password")
        opened = run_async(go)
    st = opened.state
    print(f"linked: {st.login} on this {st.device_kind} (device {st.device_id}), logged in")
    print(f"organisation {st.org_id} pinned, key fingerprint {key_id(st.org_public_key)}")
    return 0


def _link_approve(args: argparse.Namespace) -> int:
    device = open_device(args)

    cert = device.call(lambda relay: identity.approve_link(relay, device.opened, args.approve))
    print(f"approved: {cert.kind.value} device {cert.device_id} certified for "
          f"{device.state.login} until {when(cert.not_after)}")
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
    store = store_of(args)
    if not store.exists():
        raise KeyStoreError(f"profile {args.profile!r} has no device")
    password = read_password(f"Passphrase of this device's key store ({args.profile})"
                         if args.sso else password_prompt(args.profile))
    opened = store.open(password)

    async def go() -> int | None:
        async with identity.device_relay(opened) as relay:
            relay.tokens = None
            if args.sso:
                signed_in = await _sso(relay, args, opened.state.org_id)
                try:
                    await identity.sso_login(relay, opened.state, signed_in)
                except RelayRequestError as exc:
                    wrong = sso.someone_else(exc, signed_in, opened.state.login)
                    if wrong is None:
                        raise
                    raise wrong from exc
            else:
                await identity.log_in_again(relay, opened, password)
            if opened.state.sso != args.sso:  # how this device signs in from now on
                opened.update(lambda st: msgspec.structs.replace(st, sso=args.sso))
            count = await relay.prekey_count()
            if count.remaining < count.low_water:
                await identity.upload_prekeys(relay, opened,
                                              one_time=count.target - count.remaining)
                return count.target
            return count.remaining

    remaining = run_async(go)
    st = opened.state
    assert st.session is not None
    print(f"logged in as {st.login} on device {st.device_id}; session until "
          f"{when(st.session.expires_at)} (renewed automatically)")
    print(f"one-time prekeys at the relay: {remaining}")
    return 0


def _whoami(args: argparse.Namespace) -> int:
    device = open_device(args)
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

    remaining = device.call(lambda relay: relay.prekey_count()).remaining
    print(f"session:      valid; {remaining} one-time prekeys at the relay")
    return 0


def _devices(args: argparse.Namespace) -> int:
    device = open_device(args)

    _user, views = device.call(lambda relay: identity.verified_user_devices(
        relay, device.opened, device.state.user_id))
    for v in views:
        d = v.verified.device
        mark = "*" if d.device_id == device.state.device_id else " "
        print(f"{mark} {d.device_id} {d.kind.value:<8} certified {when(d.issued_at)} "
              f"key {key_id(d.signing_key)}")
    print(f"{counted(len(views), 'device')}, every certificate verified against the "
          "organisation key")
    return 0


def _lookup(args: argparse.Namespace) -> int:
    device = open_device(args)

    found = device.call(lambda relay: relay.directory(args.query))
    rows = [(e.user_id, f"{e.display_name} ({e.login})", ", ".join(e.roles),
             " / ".join(x for x in (e.specialty, e.department, e.org_id) if x))
            for e in found.users]
    for user_id, name, roles, where in rows:
        print(f"{user_id}  {name}  [{roles}]  {where}")
    print(f"{len(rows)} found")
    return 0


def _keys_claim(args: argparse.Namespace) -> int:
    device = open_device(args)

    async def claim(relay: RelayHTTP) -> list[identity.ClaimedDevice]:
        user_id = (await people.resolve_user(relay, args.user)).user_id
        return await identity.claim_user_keys(relay, device.opened, user_id)

    claimed = device.call(claim)
    for c in claimed:
        otk = (f"one-time prekey {c.one_time_prekey.prekey_id}" if c.one_time_prekey
               else "no one-time prekey left (signed prekey only)")
        print(f"{c.verified.device_id} {c.verified.device.kind.value:<8} "
              f"signed prekey {c.signed_prekey.prekey_id}, {otk}: chain and signatures verified")
    print(f"{counted(len(claimed), 'device')} claimed")
    return 0


# --- consent capture ---------------------------------------------------------------------------


# --- consent withdrawal --------------------------------------------------------------------------


def _sso_options(p: argparse.ArgumentParser, help_: str) -> None:
    p.add_argument("--sso", action="store_true", help=help_)
    p.add_argument("--no-browser", action="store_true",
                   help="with --sso: only print the sign-in address (open it anywhere that "
                        "can reach this machine's 127.0.0.1, e.g. this machine's browser)")
    p.add_argument("--sso-wait", type=float, default=300.0, help=argparse.SUPPRESS)


def _sso(relay: RelayHTTP, args: argparse.Namespace, org_id: str) -> Awaitable[sso.SignedIn]:
    """The IdP's sign-in page (clients/sdk/sso.py): its address printed, a browser opened."""
    def show(url: str) -> None:
        print("sign in with your hospital account at:", flush=True)
        print(f"  {url}", flush=True)

    return sso.sign_in(relay, org_id, show=show, open_browser=not args.no_browser,
                       timeout=args.sso_wait)


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
    _sso_options(en, "sign in with the hospital's single sign-on instead of choosing a "
                     "Lightbox password (the password asked for then protects only this "
                     "device's key store)")
    en.set_defaults(func=_enroll)
    ln = sub.add_parser("link", help="link a new device (run here on the new device), or "
                                     "approve one with --approve CODE on the enrolled device")
    ln.add_argument("--server", help="the relay (new device)")
    ln.add_argument("--kind", choices=[k.value for k in DeviceKind], default="desktop")
    ln.add_argument("--approve", metavar="CODE", help="the code the new device shows")
    ln.add_argument("--wait", type=float, default=600.0, help="seconds to wait for approval")
    ln.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    ln.set_defaults(func=_link)
    lg = sub.add_parser("login", help="log in (password, or --sso, + device signature)")
    _sso_options(lg, "sign in with the hospital's single sign-on (a browser page)")
    lg.set_defaults(func=_login)
    sub.add_parser("logout", help="end this device's session at the relay and forget its "
                   "tokens (a shared workstation)").set_defaults(func=logout)
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
    pdf_options(cc)
    clinician.add_patient_options(cc.add_argument_group(
        "patient data (a refusal is filed in the patient's record with it; sealed)"))
    cc.add_argument("--file-wait", type=float, default=30.0, metavar="SECONDS",
                    help="how long to wait for the record gateway's receipt of a refusal")
    cc.set_defaults(func=capture_command)
    cp = consent.add_parser("pdf", help="the patient's copy of a captured consent (PDF)")
    cp.add_argument("token_file", metavar="TOKEN_FILE", help="from `consent capture "
                                                             "--token-out`")
    cp.add_argument("--out", required=True, metavar="FILE")
    pdf_options(cp)
    cp.set_defaults(func=pdf_command)
    cw = consent.add_parser("withdraw", help="withdraw a consent you captured (undelivered "
                                             "messages withdrawn, copies deleted)")
    cw.add_argument("consent_id", metavar="CONSENT_ID", help="the consent reference (on the "
                                                            "patient's copy; `consent list`)")
    cw.add_argument("--reason", metavar="TEXT", default="",
                    help="why, for the audit log (no patient details)")
    cw.add_argument("--yes", action="store_true", help="no confirmation prompt (scripts)")
    cw.set_defaults(func=consent_withdraw)
    consent.add_parser("list", help="the consents you captured, newest first").set_defaults(
        func=consent_list)
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
                       login_hint="run `lightbox login`", sso_hint=SSO_HINT,
                       details_dir=lightbox_home())


if __name__ == "__main__":
    sys.exit(main())
