"""What IT does through the admin API: provision users, re-issue enrolment codes, renew
licences, apply revocation lists.

Every certificate and list here was signed by an organisation key inside IT's tool; the relay
verifies it against the pinned organisation keys (server/trust.py) and stores it, and could not
have made it. Each step is audited in the transaction that makes it.

Revocation lists are cumulative (docs/PROTOCOL.md §4.5). Applying one, in one transaction:
devices named are revoked for good (and asked to wipe when the entry says so); users named are
suspended; users of that organisation no longer named are resumed; refresh tokens of affected
devices and users are revoked; and a ``revoked`` event is published, delivered on commit to
every relay process so they close the affected websockets (server/events.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import asyncpg
import msgspec

from protocol.api import EnrolmentReissue, EnrolmentReissued, ProvisionResult, ProvisionUser
from protocol.canonical import b64url_decode, peek_compact
from protocol.certs import (
    RevocationSet,
    RevocationSubject,
    UserCertificate,
    verify_user_certificate,
)
from protocol.errors import DecodeError, ErrorCode, ProtocolError
from server import audit, events
from server.db import Database
from server.errors import Conflict, Forbidden, InvalidInput, NotFound, RelayError
from server.renewals import keep_withdrawn
from server.settings import Settings
from server.store import devices, messages, revocations, sessions, users
from server.trust import Trust, refusal

__all__ = ["AppliedRevocations", "ProvisioningService"]

_MAX_SEALED = 8192


class AppliedRevocations(msgspec.Struct, frozen=True, kw_only=True):
    """What applying a revocation list changed (answer of POST /v1/admin/revocations)."""

    org_id: str
    number: int
    devices_revoked: list[str]
    users_suspended: list[str]
    users_resumed: list[str]
    unchanged: bool = False


class ProvisioningService:
    def __init__(self, *, db: Database, trust: Trust, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.trust, self.settings, self.clock = db, trust, settings, clock

    # --- users ----------------------------------------------------------------------------

    async def provision(self, rows: list[ProvisionUser]) -> list[ProvisionResult]:
        """One result per row; a bad row does not stop the others."""
        results = []
        async with self.db.pool.acquire() as conn:
            revs = await self.trust.revocations(conn)
            for index, row in enumerate(rows):
                user_id: str | None = None
                try:
                    cert = self._verify(row.user_certificate, revs)
                    user_id = cert.user_id
                    async with conn.transaction():
                        await self._provision_one(conn, row, cert)
                except RelayError as exc:
                    results.append(ProvisionResult(index=index, user_id=user_id, ok=False,
                                                   code=exc.code.value, detail=exc.detail))
                    async with conn.transaction():
                        await audit.append(conn, "admin.user_provision", subject_kind="user",
                                           subject_id=user_id, outcome="denied",
                                           details={"reason": exc.code.value, "row": index})
                else:
                    results.append(ProvisionResult(index=index, user_id=user_id, ok=True))
        return results

    async def provision_in(self, conn: asyncpg.Connection, row: ProvisionUser
                           ) -> UserCertificate:
        """One user, in the caller's transaction (the directory's queue links it in the same
        one, server/scim/pending.py); the certificate it verified."""
        cert = self._verify(row.user_certificate, await self.trust.revocations(conn))
        await self._provision_one(conn, row, cert)
        return cert

    def _verify(self, token: str, revs: RevocationSet) -> UserCertificate:
        try:
            return verify_user_certificate(token, trusted_orgs=self.trust.orgs,
                                           at=int(self.clock()), revocations=revs)
        except ProtocolError as exc:
            raise refusal(exc, "user certificate") from exc

    def _enrolment(self, token_hash_b64: str, sealed_b64: str, expires_at: int,
                   now: float) -> tuple[bytes, bytes, int]:
        """The token hash and sealed package decoded, and the code's expiry capped at
        LIGHTBOX_ENROLMENT_CODE_TTL from now."""
        try:
            token_hash = b64url_decode(token_hash_b64, length=32)
            sealed = b64url_decode(sealed_b64, max_length=_MAX_SEALED)
        except DecodeError as exc:
            raise InvalidInput(detail="enrolment_token_hash or sealed_identity is malformed") \
                from exc
        expires = min(expires_at, int(now) + self.settings.enrolment_code_ttl)
        if expires <= now:
            raise InvalidInput(detail="enrolment_expires_at is in the past")
        return token_hash, sealed, expires

    async def _provision_one(self, conn: asyncpg.Connection, row: ProvisionUser,
                             cert: UserCertificate) -> None:
        now = self.clock()
        token_hash, sealed, expires = self._enrolment(
            row.enrolment_token_hash, row.sealed_identity, row.enrolment_expires_at, now)
        await users.insert_user(conn, cert, row.user_certificate, row.login, now=now)
        await users.insert_enrolment(conn, token_hash, cert.user_id, sealed, expires_at=expires,
                                     now=now)
        await audit.append(conn, "admin.user_provision", subject_kind="user",
                           subject_id=cert.user_id,
                           details={"org_id": cert.org_id, "enrolment_expires_at": expires})

    async def reissue_enrolment(self, user_id: str, body: EnrolmentReissue) -> EnrolmentReissued:
        """A new enrolment code for a user who never enrolled, or whose every device IT has
        revoked (a lost only phone: their identity key was on it, so no device is left to
        link a new one from): their certificate (new identity key, same user and
        organisation) and every unused code replaced in one transaction, so the old code is
        unknown at once (enrolment_code_invalid). The old identity key then certifies nothing
        the relay serves: a device certificate it signed no longer chains to the user's
        certificate. A user with a device still active is refused (user_already_enrolled):
        they link a new device from it."""
        now = self.clock()
        token_hash, sealed, expires = self._enrolment(
            body.enrolment_token_hash, body.sealed_identity, body.enrolment_expires_at, now)
        async with self.db.pool.acquire() as conn, conn.transaction():
            await users.lock_enrolments(conn, user_id)
            current = await users.get_user(conn, user_id, for_update=True)
            if current is None:
                raise NotFound(detail="no such user")
            if current.status == "suspended":
                raise Forbidden(ErrorCode.USER_SUSPENDED,
                                "the user is suspended: resume them first")
            if await devices.count_active(conn, user_id):  # a pending user has none
                raise Conflict(ErrorCode.USER_ALREADY_ENROLLED,
                               "the user has a device still active: link a new one from it "
                               "(revoke a lost one)")
            cert = self._verify(body.user_certificate, await self.trust.revocations(conn))
            previous = peek_compact(current.user_certificate, UserCertificate)
            if cert.user_id != current.user_id or cert.org_id != current.org_id:
                raise InvalidInput(ErrorCode.CERTIFICATE_INVALID,
                                   "a re-issue must keep the user and organisation")
            if cert.issued_at < previous.issued_at or cert.serial == previous.serial:
                raise Conflict(detail="the certificate is not newer than the one held")
            await users.replace_certificate(conn, cert, body.user_certificate, now=now)
            await keep_withdrawn(conn, cert, previous, now=now)
            replaced = await users.replace_enrolment(conn, token_hash, user_id, sealed,
                                                     expires_at=expires, now=now)
            await audit.append(conn, "admin.enrolment_reissued", subject_kind="user",
                               subject_id=user_id,
                               details={"org_id": cert.org_id, "enrolment_expires_at": expires,
                                        "codes_replaced": replaced,
                                        "after_enrolment": current.status != "pending"})
        return EnrolmentReissued(user_id=user_id, login=current.login,
                                 enrolment_expires_at=expires, replaced=replaced)

    async def renew_certificate(self, user_id: str, token: str) -> users.UserRecord:
        """Licence renewal: the same user, organisation and identity key, issued later."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            cert, _ = await self.renew_in(conn, user_id, token)
            await audit.append(conn, "admin.licence_renewal", subject_kind="user",
                               subject_id=user_id,
                               details={"licence_expires_at": None if cert.licence is None
                                        else cert.licence.expires_at})
            renewed = await users.get_user(conn, user_id)
        assert renewed is not None
        return renewed

    async def renew_in(self, conn: asyncpg.Connection, user_id: str, token: str
                       ) -> tuple[UserCertificate, UserCertificate]:
        """A renewed certificate stored in the caller's transaction (the renewal queue's
        too, server/scim/pending.py): (the new certificate, the one it replaced)."""
        current = await users.get_user(conn, user_id, for_update=True)
        if current is None:
            raise NotFound(detail="no such user")
        cert = self._verify(token, await self.trust.revocations(conn))
        previous = peek_compact(current.user_certificate, UserCertificate)
        if (cert.user_id != current.user_id or cert.org_id != current.org_id
                or cert.identity_key != current.identity_key):
            raise InvalidInput(ErrorCode.CERTIFICATE_INVALID,
                               "a renewal must keep the user, organisation and identity key")
        if cert.issued_at <= previous.issued_at:
            raise Conflict(detail="the certificate is not newer than the one held")
        await users.replace_certificate(conn, cert, token, now=self.clock())
        await keep_withdrawn(conn, cert, previous, now=self.clock())
        return cert, previous

    # --- revocation -----------------------------------------------------------------------

    async def apply_revocations(self, token: str) -> AppliedRevocations:
        now = self.clock()
        try:
            rl = self.trust.verify_list(token)
        except ProtocolError as exc:
            raise refusal(exc, "revocation list") from exc
        device_ids = sorted({e.id for e in rl.entries if e.subject is RevocationSubject.DEVICE})
        wipe = sorted({e.id for e in rl.entries
                       if e.subject is RevocationSubject.DEVICE and e.wipe})
        user_ids = sorted({e.id for e in rl.entries if e.subject is RevocationSubject.USER})
        async with self.db.pool.acquire() as conn, conn.transaction():
            # Serialise lists of one organisation (there may be no row to lock yet).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                               "revocations:" + rl.org_id)
            held = await revocations.get_latest(conn, rl.org_id, for_update=True)
            if held is not None:
                if rl.number < held[0]:
                    raise Conflict(detail=f"list {rl.number} is older than list {held[0]}")
                if rl.number == held[0]:
                    if self.trust.verify_list(held[1]) != rl:
                        raise Conflict(detail=f"a different list {rl.number} is already held")
                    return AppliedRevocations(org_id=rl.org_id, number=rl.number,
                                              devices_revoked=[], users_suspended=[],
                                              users_resumed=[], unchanged=True)
            await revocations.put(conn, rl.org_id, rl.number, token, now=now)
            revoked = await devices.revoke_devices(conn, device_ids, wipe=wipe, org_id=rl.org_id,
                                                   now=now)
            # Nothing is ever sent to a revoked device again (a wipe order is made, not
            # queued): what waited for it goes, and with the last delivery of a message its
            # ciphertext (server/purge.py).
            dropped = await messages.drop_queues(conn, revoked)
            suspended = await users.suspend(conn, rl.org_id, user_ids, now=now)
            resumed = await users.resume_all_but(conn, rl.org_id, user_ids, now=now)
            await sessions.revoke_for(conn, device_ids=revoked, user_ids=suspended, now=now)
            await audit.append(conn, "revocation.list_applied", subject_kind="org",
                               subject_id=rl.org_id,
                               details={"number": rl.number, "entries": len(rl.entries),
                                        "devices_revoked": len(revoked),
                                        "users_suspended": len(suspended),
                                        "users_resumed": len(resumed)})
            for did in revoked:
                await audit.append(conn, "revocation.device_revoked", subject_kind="device",
                                   subject_id=did, details={
                                       "wipe": did in wipe,
                                       **messages.dropped_details(dropped, did)})
            for uid in suspended:
                await audit.append(conn, "revocation.user_suspended", subject_kind="user",
                                   subject_id=uid)
            for uid in resumed:
                await audit.append(conn, "revocation.user_resumed", subject_kind="user",
                                   subject_id=uid)
            if revoked:
                await events.publish_revocation(conn, device_ids=revoked, reason="device_revoked")
            if suspended:
                await events.publish_revocation(conn, user_ids=suspended, reason="user_suspended")
        return AppliedRevocations(org_id=rl.org_id, number=rl.number, devices_revoked=revoked,
                                  users_suspended=suspended, users_resumed=resumed)
