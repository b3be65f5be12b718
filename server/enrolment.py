"""A user's first device enrols with the code IT printed; further devices are linked (paired)
by an enrolled one.

Enrolment: the client proves knowledge of the code with ``enrolment_token(code)`` (the relay
stores only its SHA-256), fetches the identity key sealed under the code (which the relay cannot
open), then registers the device certificate it signed with that identity key, its prekeys and
the password. The relay verifies the whole chain (organisation -> user -> device -> prekeys)
before it stores anything, and marks the code used atomically with the registration.
Wrong codes are counted per client address (server/throttle.py): a throttled address gets
``rate_limited`` for a wrong code, never for a right one.
A clinician of an organisation that signs on with its IdP and refuses passwords
(server/orgidentity.py ``password_login``) enrols with the IdP's ID token only
(server/oidc.py): a password enrolment is ``sso_required``, before the code is used or the
password looked at, and the code stays good for ``lightbox enroll --sso``.

Pairing (docs/PROTOCOL.md §11): the new device posts its public keys MACed with a secret the
user carries over; an enrolled device of the user fetches them, checks the MAC, signs the new
device's certificate with the identity key and posts it; the new device collects it. The relay
checks that certificate against the user's identity key and the offered keys, and enforces the
device limit.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable

import asyncpg

from protocol.api import DeviceKeys as DeviceKeysBody
from protocol.api import (
    EnrolComplete,
    EnrolFetch,
    Enrolled,
    EnrolPackage,
    PairingCertificate,
    PairingClaim,
    PairingOffer,
    PairingPending,
    PairingResult,
)
from protocol.canonical import b64url_decode, b64url_encode
from protocol.certs import (
    VerifiedDevice,
    verify_chain,
    verify_one_time_prekey,
    verify_signed_prekey,
)
from protocol.errors import DecodeError, ErrorCode, PolicyDenied, ProtocolError
from protocol.model import DeviceKind
from protocol.passwords import check_password
from protocol.sso import SsoEnrolComplete
from server import audit
from server.audit import AUDIT_CONTEXT
from server.authn import Principal
from server.db import Database
from server.errors import (
    Conflict,
    InvalidInput,
    LimitError,
    NotFound,
    RelayError,
    Unauthorized,
)
from server.orgidentity import IdentitySettings
from server.passwords import Passwords
from server.settings import Settings
from server.store import devices, pairing, prekeys, users
from server.throttle import Throttle
from server.trust import Trust, refusal

__all__ = ["SSO_REQUIRED_ENROL", "EnrolmentService", "verify_prekeys"]

SSO_REQUIRED_ENROL = (
    "your organisation signs you in with its single sign-on, not a Lightbox password: enrol "
    "with your hospital account (`lightbox enroll --sso`, or the phone app, which offers the "
    "hospital's sign-in)")


def _decode(text: str, code: ErrorCode, what: str, length: int | None = 32) -> bytes:
    try:
        return b64url_decode(text, length=length, max_length=256)
    except DecodeError as exc:
        raise InvalidInput(code, f"{what} is malformed") from exc


def verify_prekeys(device: VerifiedDevice, tokens: list[str], *,
                   batch_max: int) -> list[tuple[int, str]]:
    """Verify one-time prekeys under the device key: ``prekey_batch_too_large`` above
    ``batch_max``, ``prekey_duplicate`` for a repeated id, ``certificate_invalid`` otherwise."""
    if len(tokens) > batch_max:
        raise LimitError(ErrorCode.PREKEY_BATCH_TOO_LARGE,
                         f"at most {batch_max} one-time prekeys per upload")
    out: list[tuple[int, str]] = []
    seen: set[int] = set()
    for token in tokens:
        try:
            body = verify_one_time_prekey(token, device)
        except ProtocolError as exc:
            raise refusal(exc, "one-time prekey") from exc
        if body.prekey_id in seen:
            raise Conflict(ErrorCode.PREKEY_DUPLICATE, "a prekey id is repeated in the batch")
        seen.add(body.prekey_id)
        out.append((body.prekey_id, token))
    return out


class EnrolmentService:
    def __init__(self, *, db: Database, trust: Trust, passwords: Passwords, settings: Settings,
                 identity: IdentitySettings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.trust, self.passwords = db, trust, passwords
        self.settings, self.clock = settings, clock
        self.identity = identity or IdentitySettings()
        self.throttle = Throttle(settings)

    # --- enrolment ------------------------------------------------------------------------

    async def fetch(self, body: EnrolFetch) -> EnrolPackage:
        now = self.clock()
        async with self.db.pool.acquire() as conn:
            rec = await self._enrolment(conn, body.enrolment_token, "enrol.fetch", now)
            user = await users.get_user(conn, rec.user_id)
            assert user is not None  # foreign key
            await audit.append(conn, "enrol.fetch", subject_kind="user", subject_id=user.user_id)
        return EnrolPackage(user_certificate=user.user_certificate,
                            sealed_identity=b64url_encode(rec.sealed_identity),
                            expires_at=rec.expires_at)

    async def complete(self, body: EnrolComplete | SsoEnrolComplete, *,
                       first_factor: Callable[[users.UserRecord], Awaitable[None]] | None = None
                       ) -> Enrolled:
        """Register the first device. The first factor is the password of ``EnrolComplete``,
        or, for ``SsoEnrolComplete``, ``first_factor``: the check that the IdP's ID token names
        this user (server/oidc.py); such a user has no relay password."""
        now = self.clock()
        async with self.db.pool.acquire() as conn:
            await self._enrolment(conn, body.enrolment_token, "enrol.complete", now)
            # The code and the certificate it unlocks, read from one snapshot: a re-issue
            # (lightbox-admin user reissue) committing between two separate reads would pair
            # the old code with the new certificate and refuse, as certificate_invalid, a
            # device that was valid a moment earlier. Here the old pair is seen whole (and the
            # write below finds the code gone: enrolment_code_invalid), or the new one.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                rec = await users.get_enrolment(conn, _token_hash(body.enrolment_token),
                                                now=now)
                user = await users.get_user(conn, rec.user_id)
            assert user is not None
            if isinstance(body, EnrolComplete) and self.identity.for_org(
                    user.org_id).refuses_password(user.account_kind):
                await audit.append(conn, "enrol.complete", subject_kind="user",
                                   subject_id=user.user_id, outcome="denied",
                                   details={"reason": ErrorCode.SSO_REQUIRED.value,
                                            "first_factor": "password"})
                raise Unauthorized(ErrorCode.SSO_REQUIRED, SSO_REQUIRED_ENROL)
            verified = await self._verify_device(conn, user, body.device_certificate, now)
        try:
            signed = verify_signed_prekey(body.signed_prekey, verified)
        except ProtocolError as exc:
            raise refusal(exc, "signed prekey") from exc
        one_time = verify_prekeys(verified, list(body.one_time_prekeys),
                                  batch_max=self.settings.prekey_batch_max)
        password_hash: str | None = None
        if isinstance(body, EnrolComplete):
            try:
                check_password(body.password, login=user.login, display_name=user.display_name,
                               min_length=self.settings.password_min_length)
            except PolicyDenied as exc:
                raise InvalidInput(ErrorCode.PASSWORD_TOO_WEAK, str(exc)) from exc
            password_hash = await self.passwords.hash(body.password)
        else:
            assert first_factor is not None
            await first_factor(user)
        token_hash = _token_hash(body.enrolment_token)
        device = verified.device
        async with self.db.pool.acquire() as conn, conn.transaction():
            await users.consume_enrolment(conn, token_hash, now=now)
            await self._register(conn, verified, body.device_certificate, now)
            await prekeys.set_signed(conn, device.device_id, signed.prekey_id, body.signed_prekey,
                                     now=now)
            if one_time:
                await prekeys.add_one_time(conn, device.device_id, one_time)
            if password_hash is not None:
                await users.set_password_hash(conn, user.user_id, password_hash, now=now)
            await users.set_status(conn, user.user_id, "active", now=now)
            await audit.append(conn, "enrol.complete", subject_kind="device",
                               subject_id=device.device_id, actor_kind="user",
                               actor_id=user.user_id,
                               details={"user_id": user.user_id, "kind": device.kind.value,
                                        "one_time_prekeys": len(one_time),
                                        "first_factor": "password" if password_hash else "sso"})
        return Enrolled(user_id=user.user_id, device_id=device.device_id, login=user.login)

    async def _enrolment(self, conn: asyncpg.Connection, token_b64: str, event: str,
                         now: float) -> users.EnrolmentRecord:
        ip = AUDIT_CONTEXT.get().client_ip
        try:
            return await users.get_enrolment(conn, _token_hash(token_b64), now=now)
        except RelayError as exc:
            # A right code is never held back (server/throttle.py), nor a used or expired
            # one; a wrong one from a throttled address is answered rate_limited, not counted.
            wrong = exc.code is ErrorCode.ENROLMENT_CODE_INVALID
            wait = await self.throttle.enrolment_wait(conn, ip, now=now) if wrong else None
            async with conn.transaction():
                if wrong and wait is None:
                    await self.throttle.enrolment_failure(conn, ip, now=now)
                await audit.append(conn, event, outcome="denied",
                                   details={"reason": ErrorCode.RATE_LIMITED.value
                                            if wait is not None else exc.code.value})
            if wait is not None:
                raise LimitError(ErrorCode.RATE_LIMITED, "too many wrong enrolment codes",
                                 retry_after=wait) from exc
            raise

    async def _verify_device(self, conn: asyncpg.Connection, user: users.UserRecord,
                             device_cert: str, now: float) -> VerifiedDevice:
        revocations = await self.trust.revocations(conn)
        try:
            return verify_chain(user.user_certificate, device_cert, trusted_orgs=self.trust.orgs,
                                at=int(now), revocations=revocations)
        except ProtocolError as exc:
            raise refusal(exc, "device certificate") from exc

    async def _register(self, conn: asyncpg.Connection, verified: VerifiedDevice, token: str,
                        now: float) -> None:
        """Insert the device, holding the user's row lock so the limit cannot be raced."""
        await users.get_user(conn, verified.user_id, for_update=True)
        if await devices.count_active(conn, verified.user_id) >= \
                self.settings.max_devices_per_user:
            raise Conflict(ErrorCode.DEVICE_LIMIT,
                           f"at most {self.settings.max_devices_per_user} devices per user")
        await devices.insert_device(conn, verified.device, token, now=now)

    # --- pairing --------------------------------------------------------------------------

    async def offer(self, body: PairingOffer) -> int:
        now = self.clock()
        token_hash = _decode(body.pairing_token_hash, ErrorCode.PAIRING_CODE_INVALID,
                             "pairing token hash")
        signing = _decode(body.keys.signing_key, ErrorCode.VALIDATION_FAILED, "signing key")
        dh = _decode(body.keys.dh_key, ErrorCode.VALIDATION_FAILED, "dh key")
        mac = _decode(body.mac, ErrorCode.VALIDATION_FAILED, "mac")
        async with self.db.pool.acquire() as conn, conn.transaction():
            if await devices.get_device(conn, body.keys.device_id) is not None:
                raise Conflict(detail="a device with this id exists")
            expires = await pairing.create_offer(
                conn, token_hash=token_hash, device_id=body.keys.device_id,
                kind=body.keys.kind.value, signing_key=signing, dh_key=dh, mac=mac, now=now,
                ttl=self.settings.pairing_ttl)
            await audit.append(conn, "pairing.offer", subject_kind="device",
                               subject_id=body.keys.device_id)
        return expires

    async def pending(self, principal: Principal, token_hash_b64: str) -> PairingPending:
        token_hash = _decode(token_hash_b64, ErrorCode.PAIRING_CODE_INVALID, "pairing code")
        async with self.db.pool.acquire() as conn:
            offer = await pairing.get_offer(conn, token_hash, now=self.clock())
        if offer.completed:
            raise NotFound(ErrorCode.PAIRING_CODE_INVALID, "pairing already completed")
        return PairingPending(keys=_keys_body(offer), mac=b64url_encode(offer.offer_mac),
                              expires_at=offer.expires_at)

    async def certify(self, principal: Principal, token_hash_b64: str,
                      body: PairingCertificate) -> None:
        now = self.clock()
        token_hash = _decode(token_hash_b64, ErrorCode.PAIRING_CODE_INVALID, "pairing code")
        org_key = _decode(body.org_public_key, ErrorCode.VALIDATION_FAILED, "org_public_key")
        mac = _decode(body.mac, ErrorCode.VALIDATION_FAILED, "mac")
        async with self.db.pool.acquire() as conn, conn.transaction():
            offer = await pairing.get_offer(conn, token_hash, now=now, for_update=True)
            if offer.completed:
                raise NotFound(ErrorCode.PAIRING_CODE_INVALID, "pairing already completed")
            user = await users.get_user(conn, principal.user_id)
            assert user is not None
            verified = await self._verify_device(conn, user, body.device_certificate, now)
            cert = verified.device
            if (cert.device_id != offer.device_id or cert.kind.value != offer.kind
                    or cert.signing_key != offer.signing_key or cert.dh_key != offer.dh_key):
                raise InvalidInput(ErrorCode.CERTIFICATE_INVALID,
                                   "the certificate does not certify the offered keys")
            if not hmac.compare_digest(self.trust.orgs.get(user.org_id, b""), org_key):
                raise InvalidInput(ErrorCode.CERTIFICATE_UNTRUSTED,
                                   "org_public_key is not the user's organisation key")
            await self._register(conn, verified, body.device_certificate, now)
            await pairing.complete(conn, token_hash, user_id=user.user_id,
                                   device_certificate=body.device_certificate,
                                   org_public_key=org_key, mac=mac, now=now)
            await audit.append(conn, "pairing.complete", subject_kind="device",
                               subject_id=cert.device_id,
                               details={"user_id": user.user_id, "kind": cert.kind.value,
                                        "linked_by": principal.device_id})

    async def result(self, token_hash_b64: str, body: PairingClaim) -> PairingResult | None:
        """The certificate for the new device, or None while the pairing is still pending."""
        token_hash = _decode(token_hash_b64, ErrorCode.PAIRING_CODE_INVALID, "pairing code")
        token = _decode(body.pairing_token, ErrorCode.PAIRING_CODE_INVALID, "pairing token")
        if not hmac.compare_digest(hashlib.sha256(token).digest(), token_hash):
            raise NotFound(ErrorCode.PAIRING_CODE_INVALID, "wrong pairing token")
        async with self.db.pool.acquire() as conn:
            offer = await pairing.get_offer(conn, token_hash, now=self.clock())
            if not offer.completed:
                return None
            assert offer.user_id is not None
            assert offer.device_certificate is not None
            user = await users.get_user(conn, offer.user_id)
        assert user is not None
        assert offer.org_public_key is not None
        assert offer.result_mac is not None
        return PairingResult(user_certificate=user.user_certificate,
                             device_certificate=offer.device_certificate,
                             org_public_key=b64url_encode(offer.org_public_key),
                             mac=b64url_encode(offer.result_mac), login=user.login)


def _token_hash(token_b64: str) -> bytes:
    token = _decode(token_b64, ErrorCode.ENROLMENT_CODE_INVALID, "enrolment token")
    return hashlib.sha256(token).digest()


def _keys_body(offer: pairing.PairingRecord) -> DeviceKeysBody:
    return DeviceKeysBody(device_id=offer.device_id, kind=DeviceKind(offer.kind),
                          signing_key=b64url_encode(offer.signing_key),
                          dh_key=b64url_encode(offer.dh_key))
