"""Identity flows of a device: enrolment, device linking, login, and the verified key directory.

Why here: the relay is not trusted to vouch for anyone (docs/ARCHITECTURE.md §2). Every certificate
the relay hands out is verified against the organisation key this device pinned when it enrolled
(from the bundle sealed under the enrolment code) or linked (from the MAC-protected pairing result),
and against the newest organisation-signed revocation list it has seen.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from clients.sdk.errors import (
    FlowError,
    KeyStoreError,
    RelayRequestError,
    SessionEnded,
    flow_error,
)
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import DeviceState, DeviceStore, KeyStore, OpenKeyStore, PrekeySecret
from clients.sdk.sharedtokens import SharedTokens
from clients.sdk.sso import SignedIn
from clients.sdk.wording import counted
from protocol import api, certs, pairing
from protocol.canonical import b64url_decode, b64url_encode, decode_struct, peek_compact
from protocol.envelope import wrapped_key_for
from protocol.errors import DecodeError, ErrorCode, PolicyDenied, ProtocolError
from protocol.keys import (
    DeviceKeys,
    IdentityKey,
    PassphraseProfile,
    Prekey,
    normalise_enrolment_code,
    open_with_passphrase,
)
from protocol.model import DeviceKind, SealedMessage
from protocol.sso import SsoEnrolComplete, SsoLogin

__all__ = [
    "DEVICE_CERTIFICATE_LIFETIME",
    "ONE_TIME_PREKEYS",
    "ClaimedDevice",
    "DeviceView",
    "PendingLink",
    "PrekeyBatch",
    "approve_link",
    "check_new_password",
    "claim_user_keys",
    "device_relay",
    "enrol",
    "finish_link",
    "forget_one_time_prekey",
    "keep_new_prekeys",
    "log_in_again",
    "login",
    "make_prekeys",
    "offer_link",
    "org_revocation_lists",
    "refresh_revocations",
    "replenish_one_time_prekeys",
    "sso_login",
    "upload_prekeys",
    "verified_user_devices",
    "wait_for_link",
]

DEVICE_CERTIFICATE_LIFETIME = 2 * 365 * 86400
ONE_TIME_PREKEYS = 100
Clock = Callable[[], float]


def _now(clock: Clock) -> int:
    return int(clock())


def check_new_password(password: str, *, login: str, display_name: str | None = None) -> None:
    """The shared password policy (protocol/passwords.py); FlowError(password_too_weak)."""
    from protocol.passwords import check_password

    try:
        check_password(password, login=login, display_name=display_name)
    except PolicyDenied as exc:
        raise FlowError(str(exc), code=ErrorCode.PASSWORD_TOO_WEAK.value) from exc


# --- prekeys -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrekeyBatch:
    """Freshly made prekeys: the signed tokens to upload and the secrets to keep."""

    signed_token: str | None
    signed_secret: PrekeySecret | None
    one_time_tokens: list[str]
    one_time_secrets: list[PrekeySecret]
    next_prekey_id: int


async def replenish_one_time_prekeys(relay: RelayHTTP, store: DeviceStore, count: int, *,
                                     now: int) -> None:
    """Make ``count`` one-time prekeys, keep their secrets in the store first (so none is ever
    published without its secret), then upload them in batches."""
    if count <= 0:
        return
    batch = keep_new_prekeys(store, one_time=count, signed=False, now=now)
    for i in range(0, len(batch.one_time_tokens), api.MAX_PREKEY_BATCH):
        await relay.upload_one_time_prekeys(batch.one_time_tokens[i:i + api.MAX_PREKEY_BATCH])


def keep_new_prekeys(store: DeviceStore, *, one_time: int, signed: bool, now: int
                     ) -> PrekeyBatch:
    """Make prekeys and keep their secrets in the store, before any is uploaded (a prekey the
    relay hands out must always be openable here). Their ids follow the newest state the
    profile holds, and they are added to it (clients/sdk/keystore.py ``state_lock``), so two
    programs of one profile never make the same id nor drop each other's secrets."""
    made: list[PrekeyBatch] = []

    def add(st: DeviceState) -> DeviceState:
        batch = make_prekeys(st.device_keys(), first_id=st.next_prekey_id, one_time=one_time,
                             signed=signed, now=now)
        made.append(batch)
        return msgspec.structs.replace(
            st, next_prekey_id=batch.next_prekey_id,
            signed_prekeys=st.signed_prekeys
            + ([batch.signed_secret] if batch.signed_secret else []),
            one_time_prekeys=st.one_time_prekeys + batch.one_time_secrets)

    store.update(add)
    return made[-1]


def forget_one_time_prekey(store: DeviceStore, sealed: SealedMessage) -> None:
    """Delete the one-time prekey secret a received message used, once it is opened and
    stored (forward secrecy, PROTOCOL §5.5): nothing can open that message's key again."""
    st = store.state
    key = wrapped_key_for(sealed, st.device_id)
    if key is None or key.one_time_prekey_id is None:
        return
    used = key.one_time_prekey_id
    if any(p.prekey_id == used for p in st.one_time_prekeys):
        # Onto the newest state: keystore.state_lock says why.
        store.update(lambda now: msgspec.structs.replace(
            now, one_time_prekeys=[p for p in now.one_time_prekeys if p.prekey_id != used]))


def make_prekeys(
    keys: DeviceKeys, *, first_id: int, one_time: int, signed: bool, now: int
) -> PrekeyBatch:
    """A signed prekey (optional) and ``one_time`` one-time prekeys, with consecutive ids."""
    next_id = first_id
    signed_token = signed_secret = None
    if signed:
        pk = Prekey.generate(next_id)
        signed_token = certs.issue_signed_prekey(
            certs.SignedPrekey(device_id=keys.device_id, prekey_id=pk.prekey_id,
                               public=pk.public, created_at=now), keys.signing)
        signed_secret = PrekeySecret(prekey_id=pk.prekey_id,
                                     secret=pk.keypair.secret.reveal(), created_at=now)
        next_id += 1
    tokens, secrets = [], []
    for _ in range(one_time):
        pk = Prekey.generate(next_id)
        tokens.append(certs.issue_one_time_prekey(
            certs.OneTimePrekey(device_id=keys.device_id, prekey_id=pk.prekey_id,
                                public=pk.public), keys.signing))
        secrets.append(PrekeySecret(prekey_id=pk.prekey_id, secret=pk.keypair.secret.reveal(),
                                    created_at=now))
        next_id += 1
    return PrekeyBatch(signed_token, signed_secret, tokens, secrets, next_id)


def _device_certificate(
    user: certs.UserCertificate, identity: IdentityKey, *, device_id: str, kind: DeviceKind,
    signing_key: bytes, dh_key: bytes, now: int,
) -> str:
    if kind is DeviceKind.GATEWAY and user.account_kind is not certs.AccountKind.SERVICE:
        raise FlowError("only a service account may have a gateway device",
                        code=ErrorCode.CERTIFICATE_INVALID.value)
    body = certs.DeviceCertificate(
        v=certs.CERTIFICATE_VERSION, device_id=device_id, user_id=user.user_id,
        org_id=user.org_id, kind=kind, signing_key=signing_key, dh_key=dh_key, issued_at=now,
        not_after=min(user.not_after, now + DEVICE_CERTIFICATE_LIFETIME),
    )
    return certs.issue_device_certificate(body, identity)


# --- enrolment -----------------------------------------------------------------------------


async def enrol(
    relay: RelayHTTP,
    store: KeyStore,
    code: str,
    password: str,
    *,
    kind: DeviceKind = DeviceKind.MOBILE,
    one_time: int = ONE_TIME_PREKEYS,
    kdf: PassphraseProfile | None = None,
    clock: Clock = time.time,
    sso: Callable[[str], Awaitable[str]] | None = None,
) -> OpenKeyStore:
    """Enrol this device as the user's first: unseal the identity key with the code, pin the
    organisation key from the sealed bundle, verify the user certificate against it, register
    the device and its prekeys, and save the key store under ``password``.

    With ``sso`` (the organisation signs in with its IdP: clients/sdk/sso.py), the relay gets
    the ID token ``sso(org_id)`` returns instead of a password, and ``password`` protects only
    this device's key store."""
    if store.exists():
        raise KeyStoreError(f"{store.directory} already holds an enrolled device")
    store.check_writable()
    try:
        norm = normalise_enrolment_code(code)
    except DecodeError as exc:
        raise flow_error(exc, "the enrolment code is not well formed") from exc
    token = api.enrolment_token(norm)
    package = await relay.enrol_fetch(token)
    try:
        sealed = b64url_decode(package.sealed_identity)
        bundle = decode_struct(open_with_passphrase(sealed, norm), api.EnrolmentBundle)
        org_key = b64url_decode(bundle.org_public_key, length=32)
        identity = IdentityKey.from_seed(b64url_decode(bundle.identity_seed, length=32))
    except ProtocolError as exc:
        raise FlowError("the enrolment code does not open the enrolment package",
                        code=ErrorCode.ENROLMENT_CODE_INVALID.value) from exc
    now = _now(clock)
    try:
        user = certs.verify_user_certificate(
            package.user_certificate, trusted_orgs={bundle.org_id: org_key}, at=now)
    except ProtocolError as exc:
        raise flow_error(exc, "the user certificate does not verify") from exc
    if (user.user_id, user.org_id, user.identity_key) != (
            bundle.user_id, bundle.org_id, identity.public):
        raise FlowError("the user certificate does not match the sealed identity key",
                        code=ErrorCode.CERTIFICATE_INVALID.value)
    if user.is_record_gateway and kind is not DeviceKind.GATEWAY:
        # Before the code is used: the relay would take it for a phone, and the gateway
        # (lightbox-gateway) would then have no device until IT issues a new code.
        raise FlowError(
            f"{bundle.login} is the record gateway's service account, not a clinician's: "
            f"enrol it on the gateway host with `lightbox enroll --kind gateway --server "
            f"{relay.base_url} --code CODE` (this code has not been used)",
            code=ErrorCode.VALIDATION_FAILED.value)
    check_new_password(password, login=bundle.login, display_name=user.display_name)

    device_id = str(uuid.uuid4())
    keys = DeviceKeys.generate(device_id)
    device_cert = _device_certificate(user, identity, device_id=device_id, kind=kind,
                                      signing_key=keys.signing.public, dh_key=keys.dh.public,
                                      now=now)
    batch = make_prekeys(keys, first_id=1, one_time=one_time, signed=True, now=now)
    assert batch.signed_token is not None
    assert batch.signed_secret is not None
    if sso is None:
        enrolled = await relay.enrol_complete(api.EnrolComplete(
            enrolment_token=b64url_encode(token), device_certificate=device_cert,
            signed_prekey=batch.signed_token, one_time_prekeys=batch.one_time_tokens,
            password=password))
    else:
        enrolled = await relay.enrol_complete_sso(SsoEnrolComplete(
            enrolment_token=b64url_encode(token), device_certificate=device_cert,
            signed_prekey=batch.signed_token, one_time_prekeys=batch.one_time_tokens,
            org_id=user.org_id, id_token=await sso(user.org_id)))
    if enrolled.user_id != user.user_id or enrolled.device_id != device_id:
        raise FlowError("the relay confirmed another user or device")
    state = DeviceState(
        server_url=relay.base_url, login=bundle.login, user_id=user.user_id, org_id=user.org_id,
        org_public_key=org_key, identity_seed=identity.seed.reveal(), device_id=device_id,
        device_kind=kind.value, device_seed=keys.signing.seed.reveal(),
        dh_secret=keys.dh.secret.reveal(), user_certificate=package.user_certificate,
        device_certificate=device_cert, signed_prekeys=[batch.signed_secret],
        one_time_prekeys=batch.one_time_secrets, next_prekey_id=batch.next_prekey_id,
        sso=sso is not None,
    )
    return store.create(state, password, profile=kdf)


# --- login ---------------------------------------------------------------------------------


def device_relay(opened: OpenKeyStore, **kwargs: object) -> RelayHTTP:
    """A RelayHTTP acting as this device; new tokens are saved to the key store."""

    def save_tokens(tokens: api.TokenPair) -> None:
        # Onto the state as saved now: another program of the profile may have saved since.
        opened.update(lambda st: msgspec.structs.replace(st, session=tokens))

    st = opened.state
    return RelayHTTP(st.server_url, device=st.device_keys().signing, tokens=st.session,
                     on_tokens=save_tokens, sso=st.sso, shared=SharedTokens.of(opened),
                     **kwargs)  # type: ignore[arg-type]


async def sso_login(relay: RelayHTTP, state: DeviceState, signed_in: SignedIn
                    ) -> api.TokenPair:
    """The IdP's ID token (clients/sdk/sso.py) + the device's signature over its nonce (the
    relay's challenge) -> a token pair, exactly as :func:`login` with a password."""
    keys = state.device_keys()
    relay.device = keys.signing
    nonce = b64url_decode(signed_in.nonce, max_length=64)
    signature = keys.sign(api.login_signing_input(nonce, state.login, state.device_id))
    return await relay.sso_login(SsoLogin(org_id=state.org_id, id_token=signed_in.id_token,
                                          device_id=state.device_id,
                                          signature=b64url_encode(signature)))


async def login(relay: RelayHTTP, state: DeviceState, password: str) -> api.TokenPair:
    """Password + the device's signature over a fresh relay nonce -> a token pair."""
    keys = state.device_keys()
    relay.device = keys.signing
    challenge = await relay.challenge()
    nonce = b64url_decode(challenge.nonce, max_length=64)
    signature = keys.sign(api.login_signing_input(nonce, state.login, state.device_id))
    return await relay.login(api.LoginRequest(
        login=state.login, password=password, device_id=state.device_id,
        nonce=challenge.nonce, signature=b64url_encode(signature)))


async def log_in_again(relay: RelayHTTP, store: DeviceStore, password: str | None,
                       *, ended: str = ErrorCode.UNAUTHENTICATED.value) -> api.TokenPair:
    """Log in again after the relay ended the session (``ended``: its code), with the password
    when this program holds one and the user has one at the relay.

    A device that signs in at its organisation's identity provider (``DeviceState.sso``), or
    whose organisation now takes no password (sso_required; or a wrong one where it signs on
    with its IdP: a profile enrolled before the device kept how it signs in), cannot:
    :class:`SessionEnded` says so, unless the organisation's signed revocation list names the
    device (docs/PROTOCOL.md §15), which is then the refusal (device_revoked), as a password
    login would have been told; a password is never said to be wrong to a user who has
    none."""
    state = store.state
    if password is not None and not state.sso:
        try:
            return await login(relay, state, password)
        except RelayRequestError as exc:
            if exc.code not in {ErrorCode.INVALID_CREDENTIALS.value,
                                ErrorCode.SSO_REQUIRED.value}:
                raise
            if exc.code == ErrorCode.INVALID_CREDENTIALS.value:
                try:
                    await relay.sso_config(state.org_id)
                except RelayRequestError:
                    raise exc from None  # no single sign-on: the password is wrong
    elif password is None and not state.sso:
        raise SessionEnded(ended, sso=False)
    revoked = (await refresh_revocations(relay, store)).device_entry(state.org_id,
                                                                     state.device_id)
    if revoked is not None:
        raise RelayRequestError(ErrorCode.DEVICE_REVOKED.value, 403,
                                "the organisation's revocation list names this device")
    raise SessionEnded(ended, sso=True)


async def upload_prekeys(
    relay: RelayHTTP, opened: OpenKeyStore, *, one_time: int = ONE_TIME_PREKEYS,
    signed: bool = False, clock: Clock = time.time,
) -> api.PrekeyCount | None:
    """Make and upload prekeys, keeping their secrets in the key store first (a prekey the
    relay hands out must always be openable here)."""
    batch = keep_new_prekeys(opened, one_time=one_time, signed=signed, now=_now(clock))
    if batch.signed_token is not None:
        await relay.upload_signed_prekey(batch.signed_token)
    count = None
    for i in range(0, len(batch.one_time_tokens), api.MAX_PREKEY_BATCH):
        count = await relay.upload_one_time_prekeys(
            batch.one_time_tokens[i:i + api.MAX_PREKEY_BATCH])
    return count


# --- device linking ------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingLink:
    """The new device's side of a pairing, between offer and result. ``code`` is what the
    user types into the enrolled device; it never leaves this process otherwise."""

    code: str
    secret: pairing.PairingSecret
    keys: DeviceKeys
    kind: DeviceKind
    public: api.DeviceKeys


async def offer_link(relay: RelayHTTP, kind: DeviceKind = DeviceKind.DESKTOP) -> PendingLink:
    """On the new device: make its keys and a pairing code, and post the MACed offer."""
    code = pairing.generate_pairing_code()
    secret = pairing.PairingSecret(code)
    keys = DeviceKeys.generate(str(uuid.uuid4()))
    public = api.DeviceKeys(device_id=keys.device_id, kind=kind,
                            signing_key=b64url_encode(keys.signing.public),
                            dh_key=b64url_encode(keys.dh.public))
    await relay.pairing_offer(api.PairingOffer(
        pairing_token_hash=secret.token_hash_b64, keys=public,
        mac=b64url_encode(pairing.offer_mac(code, public))))
    return PendingLink(code=code, secret=secret, keys=keys, kind=kind, public=public)


async def wait_for_link(
    relay: RelayHTTP, pending: PendingLink, *, max_wait: float = 600.0, interval: float = 1.0,
    clock: Clock = time.monotonic,
) -> api.PairingResult:
    """Poll until the enrolled device has answered (or ``max_wait`` seconds pass)."""
    deadline = clock() + max_wait
    while True:
        result = await relay.pairing_result(pending.secret.token_hash_b64, pending.secret.token)
        if result is not None:
            return result
        if clock() >= deadline:
            raise FlowError("no answer from the enrolled device in time",
                            code=ErrorCode.PAIRING_CODE_INVALID.value)
        await asyncio.sleep(interval)


def _verify_link_result(
    pending: PendingLink, result: api.PairingResult, now: int
) -> tuple[certs.VerifiedDevice, bytes]:
    try:
        org_key = b64url_decode(result.org_public_key, length=32)
        pairing.verify_result_mac(pending.code, result.user_certificate,
                                  result.device_certificate, org_key,
                                  b64url_decode(result.mac, max_length=64))
        claimed = peek_compact(result.user_certificate, certs.UserCertificate,
                               max_length=certs.MAX_CERTIFICATE_LENGTH)
        verified = certs.verify_chain(result.user_certificate, result.device_certificate,
                                      trusted_orgs={claimed.org_id: org_key}, at=now,
                                      revocations=None)
    except ProtocolError as exc:
        raise flow_error(exc, "the pairing result does not verify") from exc
    d = verified.device
    if (d.device_id, d.kind, d.signing_key, d.dh_key) != (
            pending.keys.device_id, pending.kind, pending.keys.signing.public,
            pending.keys.dh.public):
        raise FlowError("the certificate does not name this device's keys",
                        code=ErrorCode.CERTIFICATE_INVALID.value)
    return verified, org_key


async def finish_link(
    relay: RelayHTTP,
    store: KeyStore,
    pending: PendingLink,
    result: api.PairingResult,
    password: str,
    *,
    one_time: int = ONE_TIME_PREKEYS,
    kdf: PassphraseProfile | None = None,
    clock: Clock = time.time,
) -> OpenKeyStore:
    """On the new device: verify the MAC and the chain against the organisation key in the
    MAC-protected result, log in (which checks the password), save the key store, upload the
    signed prekey and one-time prekeys."""
    if store.exists():
        raise KeyStoreError(f"{store.directory} already holds a device")
    verified, org_key = _verify_link_result(pending, result, _now(clock))
    state = DeviceState(
        server_url=relay.base_url, login=result.login, user_id=verified.user_id,
        org_id=verified.org_id, org_public_key=org_key, identity_seed=None,
        device_id=pending.keys.device_id, device_kind=pending.kind.value,
        device_seed=pending.keys.signing.seed.reveal(),
        dh_secret=pending.keys.dh.secret.reveal(), user_certificate=result.user_certificate,
        device_certificate=result.device_certificate,
    )
    tokens = await login(relay, state, password)
    opened = store.create(msgspec.structs.replace(state, session=tokens), password, profile=kdf)
    await upload_prekeys(relay, opened, one_time=one_time, signed=True, clock=clock)
    return opened


async def approve_link(
    relay: RelayHTTP, opened: OpenKeyStore, code: str, *, clock: Clock = time.time,
) -> certs.DeviceCertificate:
    """On the enrolled device: check the offer's MAC, certify the new device with the
    identity key, and post the certificate with the result MAC. ``relay`` is logged in."""
    st = opened.state
    identity = st.identity_key()
    if identity is None:
        raise FlowError("this device does not hold the identity key: approve the link from "
                        "the device you enrolled with the enrolment code",
                        code=ErrorCode.FORBIDDEN.value)
    try:
        secret = pairing.PairingSecret(code)
    except DecodeError as exc:
        raise flow_error(exc, "the pairing code is not well formed") from exc
    pending = await relay.pairing_pending(secret.token_hash_b64)
    try:
        pairing.verify_offer_mac(secret.code, pending.keys,
                                 b64url_decode(pending.mac, max_length=64))
        signing_key = b64url_decode(pending.keys.signing_key, length=32)
        dh_key = b64url_decode(pending.keys.dh_key, length=32)
    except ProtocolError as exc:
        raise flow_error(exc, "the new device's offer does not match the pairing code") from exc
    now = _now(clock)
    current = await relay.user_devices(st.user_id)
    try:
        user = certs.verify_user_certificate(current.user_certificate,
                                             trusted_orgs=st.trusted_orgs(), at=now)
    except ProtocolError as exc:
        raise flow_error(exc, "the relay's copy of our user certificate does not verify") from exc
    if user.user_id != st.user_id or user.identity_key != identity.public:
        raise FlowError("the relay serves a user certificate for another identity key",
                        code=ErrorCode.CERTIFICATE_INVALID.value)
    if current.user_certificate != st.user_certificate:
        opened.update(lambda now: msgspec.structs.replace(
            now, user_certificate=current.user_certificate))
    token = _device_certificate(user, identity, device_id=pending.keys.device_id,
                                kind=pending.keys.kind, signing_key=signing_key, dh_key=dh_key,
                                now=now)
    mac = pairing.result_mac(secret.code, current.user_certificate, token, st.org_public_key)
    try:
        await relay.pairing_certificate(secret.token_hash_b64, api.PairingCertificate(
            device_certificate=token, org_public_key=b64url_encode(st.org_public_key),
            mac=b64url_encode(mac)))
    except RelayRequestError as exc:
        if exc.code == ErrorCode.DEVICE_LIMIT.value:
            raise FlowError(
                f"you already have {counted(len(current.devices), 'device')}, the most your "
                "organisation allows: revoke one (ask IT) before linking another",
                code=exc.code) from exc
        raise
    return certs.verify_device_certificate(token, user=user, at=now)


# --- revocations and the key directory -----------------------------------------------------


async def org_revocation_lists(relay: RelayHTTP, org_id: str) -> list[str]:
    """The revocation-list tokens the relay serves that claim to be ``org_id``'s (unverified:
    the caller verifies them under the key it pins; other organisations' lists are left out,
    as we pin no key for them, and so are tokens that do not even parse)."""
    out = []
    for token in (await relay.revocations()).lists:
        try:
            claimed = peek_compact(token, certs.RevocationList,
                                   max_length=certs.MAX_REVOCATION_LIST_LENGTH)
        except ProtocolError:
            continue
        if claimed.org_id == org_id:
            out.append(token)
    return out


async def refresh_revocations(relay: RelayHTTP, opened: DeviceStore) -> certs.RevocationSet:
    """The newest revocation list of our organisation, verified and rollback-checked against
    the one kept in the device's store (which is updated)."""
    st = opened.state
    held = certs.RevocationSet()
    for token in st.revocation_lists:
        held.add(certs.verify_revocation_list(token, trusted_orgs=st.trusted_orgs()))
    newest = list(st.revocation_lists)
    for token in await org_revocation_lists(relay, st.org_id):
        try:
            if held.add(certs.verify_revocation_list(token, trusted_orgs=st.trusted_orgs())):
                newest = [token]
        except ProtocolError as exc:
            raise flow_error(exc, "the relay served a bad or older revocation list") from exc
    if newest != st.revocation_lists:
        opened.update(lambda now: msgspec.structs.replace(now, revocation_lists=newest))
    return held


@dataclass(frozen=True)
class DeviceView:
    verified: certs.VerifiedDevice
    signed_prekey: certs.SignedPrekey | None


async def verified_user_devices(
    relay: RelayHTTP, opened: OpenKeyStore, user_id: str, *, clock: Clock = time.time,
) -> tuple[certs.UserCertificate, list[DeviceView]]:
    """A user's devices from the directory, each chain verified against our pinned key and
    the current revocation list; a device that does not verify raises FlowError."""
    revocations = await refresh_revocations(relay, opened)
    answer = await relay.user_devices(user_id)
    now = _now(clock)
    trusted = opened.state.trusted_orgs()
    try:
        user = certs.verify_user_certificate(answer.user_certificate, trusted_orgs=trusted,
                                             at=now, revocations=revocations)
        views = []
        for bundle in answer.devices:
            verified = certs.verify_chain(answer.user_certificate, bundle.device_certificate,
                                          trusted_orgs=trusted, at=now, revocations=revocations)
            spk = (None if bundle.signed_prekey is None
                   else certs.verify_signed_prekey(bundle.signed_prekey, verified))
            views.append(DeviceView(verified, spk))
    except ProtocolError as exc:
        raise flow_error(exc, "the directory served a device that does not verify") from exc
    if user.user_id != user_id:
        raise FlowError("the directory answered for another user",
                        code=ErrorCode.CERTIFICATE_INVALID.value)
    return user, views


@dataclass(frozen=True)
class ClaimedDevice:
    verified: certs.VerifiedDevice
    signed_prekey: certs.SignedPrekey
    one_time_prekey: certs.OneTimePrekey | None


async def claim_user_keys(
    relay: RelayHTTP, opened: OpenKeyStore, user_id: str, *, clock: Clock = time.time,
) -> list[ClaimedDevice]:
    """Claim one one-time prekey per device of ``user_id`` and verify every signature."""
    _user, views = await verified_user_devices(relay, opened, user_id, clock=clock)
    if not views:
        return []
    wanted = {v.verified.device_id for v in views}
    claimed = await relay.claim_keys(sorted(wanted))
    revocations = await refresh_revocations(relay, opened)
    now = _now(clock)
    out = []
    try:
        for key in claimed.keys:
            verified = certs.verify_chain(key.user_certificate, key.device_certificate,
                                          trusted_orgs=opened.state.trusted_orgs(), at=now,
                                          revocations=revocations)
            if verified.device_id != key.device_id or verified.user_id != user_id:
                raise FlowError("a claimed key names another device",
                                code=ErrorCode.CERTIFICATE_INVALID.value)
            spk = certs.verify_signed_prekey(key.signed_prekey, verified)
            otk = (None if key.one_time_prekey is None
                   else certs.verify_one_time_prekey(key.one_time_prekey, verified))
            out.append(ClaimedDevice(verified, spk, otk))
    except ProtocolError as exc:
        raise flow_error(exc, "a claimed prekey does not verify") from exc
    if {c.verified.device_id for c in out} - wanted:
        raise FlowError("the relay answered for devices we did not ask for")
    return out
