"""Consent on the relay (docs/ARCHITECTURE.md §5, docs/PROTOCOL.md §13): registration, enforcement
on every send, withdrawal, and recipients' mismatch reports.

**Registration** verifies a token against the identity key in the issuer's stored user
certificate: the issuer must be an active clinician of a trusted organisation whose certificate
still verifies (not revoked, not expired, licence valid), and the token's ``org`` must be the
issuer's. A refusal (decision ``refused``) is registered like an agreement: it is evidence.

**Enforcement** (:meth:`ConsentService.check_send`, called by the send pipeline inside its
transaction, before anything is stored). A message needs a consent when it carries an
attachment, declares any purpose other than ``direct_care``, or is flagged ``external``.
Direct-care text to colleagues of the sender's own organisation needs none: the docs/ARCHITECTURE.md
§5 table asks only the clinician's treatment attestation there, which sending a consult message is
(and threads are single-organisation today). A message that names a consent is checked even when it
would not need one. The check, first failure wins: consent_missing (none named),
consent_invalid (unregistered, the issuer no longer active or their certificate no longer
valid, or the token no longer verifies), then :func:`protocol.consent.check_consent` for every
recipient user with their stored certificates: consent_revoked, consent_expired,
consent_refused, consent_purpose, consent_external_requires_written,
consent_recipient_out_of_scope. Forwarding (sending an image under the same consent into
another thread) is the same check, which also requires the forwarder to be covered.

A send locks the consent row FOR SHARE and a revocation locks it FOR UPDATE, so a revocation
either commits first (the send is refused) or waits for the send's batch and then withdraws it.

**Withdrawal** (:meth:`ConsentService.revoke`) by the issuing clinician or a privacy officer of
the consent's organisation, or (:meth:`ConsentService.revoke_as_admin`) by the privacy office
through IT's tool (an administrator; the reason is audited): marks it revoked; deletes every
queued delivery of a message sent under it and tells each sender's devices (a ``withdrawn``
notice); issues an expiry order (reason ``consent_revoked``) to every device that may hold a
copy of an image sent under it, durable until that device confirms (server/store/expiry.py);
from then on the relay refuses to serve those images (consent_revoked).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import msgspec

from protocol import canonical
from protocol.certs import MAX_CERTIFICATE_LENGTH, UserCertificate, verify_user_certificate
from protocol.consent import (
    DEFAULT_CONSENT_POLICY,
    ConsentClaims,
    ConsentPolicy,
    check_consent,
    peek_consent_token_unverified,
    verify_consent_token,
)
from protocol.errors import DecodeError, ErrorCode, PolicyDenied, VerificationError
from protocol.frames import ExpiryReason, Withdrawn, WithdrawReason, encode_frame
from protocol.model import MessageHeader, Purpose
from server import audit, events
from server.authn import AdminPrincipal, Principal
from server.db import Database
from server.errors import Forbidden, NotFound, RelayError
from server.store import admins, consents, devices, expiry, messages, oncall, users
from server.trust import Trust

__all__ = [
    "PRIVACY_OFFICER_ROLE",
    "ConsentPolicies",
    "ConsentService",
    "RevokeResult",
    "Withdrawal",
    "needs_consent",
]

log = logging.getLogger("lightbox.consents")
PRIVACY_OFFICER_ROLE = "privacy_officer"


def needs_consent(header: MessageHeader) -> bool:
    """Whether a message must reference a consent (module docstring)."""
    return bool(header.attachment_ids) or header.purpose is not Purpose.DIRECT_CARE or \
        header.external


class ConsentPolicies:
    """Per-organisation consent policies; an organisation not configured gets the defaults.

    The file (``LIGHTBOX_CONSENT_POLICY_FILE``) is JSON ``{org_id: {ConsentPolicy fields}}``,
    for example ``{"st-elsewhere": {"attestation_purposes": [], "max_validity": 2592000}}``
    (written consent always, and no token older than 30 days)."""

    def __init__(self, by_org: Mapping[str, ConsentPolicy] | None = None) -> None:
        self.by_org = dict(by_org or {})

    @classmethod
    def from_file(cls, path: Path | None) -> ConsentPolicies:
        if path is None:
            return cls()
        try:
            raw = json.loads(path.read_text())
            parsed = msgspec.convert(raw, dict[str, ConsentPolicy])
        except (OSError, ValueError, msgspec.ValidationError) as exc:
            raise ValueError(f"{path}: not a valid consent policy file: {exc}") from exc
        return cls(parsed)

    def for_org(self, org_id: str) -> ConsentPolicy:
        return self.by_org.get(org_id, DEFAULT_CONSENT_POLICY)


@dataclasses.dataclass(frozen=True)
class RevokeResult:
    record: consents.ConsentRecord
    withdrawn: int
    orders: int
    already: bool = False  # withdrawn before this request: nothing changed


@dataclasses.dataclass(frozen=True)
class Withdrawal:
    """A consent for the privacy office: the claims, who captured it, the audited withdrawal
    (``by``, ``as``, ``reason``, ``withdrawn_message_ids``), its messages and copies."""

    record: consents.ConsentRecord
    claims: ConsentClaims
    issuer_login: str
    issuer_name: str
    revocation: dict[str, Any] | None
    revoked_by: str | None  # "Dr Ivy Intern (ivy.intern), the issuing clinician"
    messages: int
    copies: list[consents.Copy]


def _invalid(detail: str) -> RelayError:
    return Forbidden(ErrorCode.CONSENT_INVALID, detail)


class ConsentService:
    def __init__(self, *, db: Database, trust: Trust, policies: ConsentPolicies,
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.trust, self.policies, self.clock = db, trust, policies, clock
        self._certs: dict[str, UserCertificate] = {}

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    # -- certificates --------------------------------------------------------------------------

    def _peek_cert(self, token: str) -> UserCertificate:
        """A stored user certificate's body. The relay verified it when IT provisioned it and
        status (suspension, revocation) is in the users table, so a peek is enough here."""
        cert = self._certs.get(token)
        if cert is None:
            cert = canonical.peek_compact(token, UserCertificate,
                                          max_length=MAX_CERTIFICATE_LENGTH)
            if len(self._certs) >= 4096:
                self._certs.clear()
            self._certs[token] = cert
        return cert

    async def _issuer(self, conn: asyncpg.Connection, user_id: str, org_id: str,
                      now: int) -> UserCertificate:
        """The issuer's verified certificate, if they may issue consent now."""
        user = await users.get_user(conn, user_id)
        if user is None:
            raise _invalid("the issuer is unknown")
        if user.org_id != org_id:
            raise _invalid("the issuer belongs to another organisation")
        if org_id not in self.trust.orgs:
            raise _invalid("the issuer's organisation is not trusted")
        if user.account_kind != "clinician":
            raise _invalid("only a clinician can issue consent")
        if user.status != "active":
            raise _invalid("the issuer is not an active user")
        try:
            return verify_user_certificate(user.user_certificate, trusted_orgs=self.trust.orgs,
                                           at=now, revocations=await self.trust.revocations(conn))
        except VerificationError as exc:
            log.info("consent issuer refused", extra={"reason": exc.reason})
            raise _invalid("the issuer's certificate is no longer valid") from None

    # -- registration ----------------------------------------------------------------------------

    async def register(self, me: Principal, token: str) -> tuple[consents.ConsentRecord, bool]:
        """Verify and store a token; returns (record, newly registered)."""
        now = self.now()
        at = int(now.timestamp())
        try:
            claimed = peek_consent_token_unverified(token)
        except DecodeError as exc:
            raise _invalid("not a valid consent token") from exc
        policy = self.policies.for_org(claimed.org)
        async with self.db.pool.acquire() as conn, conn.transaction():
            issuer = await self._issuer(conn, claimed.iss, claimed.org, at)
            try:
                claims = verify_consent_token(token, issuer.identity_key, at=at,
                                              leeway=policy.clock_skew)
            except VerificationError as exc:
                log.info("consent token refused", extra={"reason": exc.reason})
                raise Forbidden(exc.code, "the consent token did not verify"
                                if exc.code is ErrorCode.CONSENT_INVALID
                                else "the consent token is outside its validity period"
                                ) from None
            record, created = await consents.insert(conn, claims, token,
                                                    registered_by=me.device_id, now=now)
            if created:
                await audit.append(conn, "consent.registered", subject_kind="consent",
                                   subject_id=claims.jti, details={
                                       "issuer": claims.iss, "org_id": claims.org,
                                       "decision": claims.decision.value,
                                       "basis": claims.basis.value,
                                       "purposes": [p.value for p in claims.purposes],
                                       "images": len(claims.images),
                                       "form_version": claims.form_version})
        return record, created

    async def get(self, me: Principal, consent_id: str) -> consents.ConsentRecord:
        """A consent for one of its participants (or a privacy officer of its organisation);
        not_found for anyone else, as for an unknown id."""
        async with self.db.pool.acquire() as conn:
            record = await consents.get(conn, consent_id)
            if record is None or not await self._may_see(conn, me, record):
                raise NotFound(ErrorCode.NOT_FOUND, "no such consent")
        return record

    async def _may_see(self, conn: asyncpg.Connection, me: Principal,
                       record: consents.ConsentRecord) -> bool:
        if self._officer(me, record):
            return True
        return await consents.is_participant(conn, record.consent_id, me.user_id)

    @staticmethod
    def _officer(me: Principal, record: consents.ConsentRecord) -> bool:
        return PRIVACY_OFFICER_ROLE in me.roles and me.org_id == record.org_id

    # -- withdrawal ------------------------------------------------------------------------------

    async def revoke(self, me: Principal, consent_id: str, *, reason: str = "") -> RevokeResult:
        """Withdrawal by the issuing clinician or a privacy officer of the organisation; anyone
        else who may see the consent: forbidden; anyone else: not_found."""
        async def allowed(conn: asyncpg.Connection, record: consents.ConsentRecord) -> str:
            if not await self._may_see(conn, me, record):
                raise NotFound(ErrorCode.NOT_FOUND, "no such consent")
            if me.user_id == record.issuer_user_id:
                return "issuer"
            if self._officer(me, record):
                return PRIVACY_OFFICER_ROLE
            raise Forbidden(ErrorCode.FORBIDDEN, "only the issuing clinician or a privacy "
                            "officer of the organisation can revoke this consent")
        return await self._withdraw(consent_id, by=me.user_id, allowed=allowed, reason=reason)

    async def revoke_as_admin(self, admin: AdminPrincipal, consent_id: str, *,
                              reason: str) -> RevokeResult:
        """Withdrawal by the privacy office through IT's tool (an administrator of the relay;
        docs/SECURITY.md "Administrators"): the same effects as the clinician's."""
        async def allowed(conn: asyncpg.Connection, record: consents.ConsentRecord) -> str:
            return "it_admin"
        return await self._withdraw(consent_id, by=admin.admin_id, allowed=allowed,
                                    reason=reason)

    async def _withdraw(
        self, consent_id: str, *, by: str, reason: str,
        allowed: Callable[[asyncpg.Connection, consents.ConsentRecord], Awaitable[str]],
    ) -> RevokeResult:
        now = self.now()
        async with self.db.pool.acquire() as conn, conn.transaction():
            record = await consents.get(conn, consent_id, lock="update")
            if record is None:
                raise NotFound(ErrorCode.NOT_FOUND, "no such consent")
            acting_as = await allowed(conn, record)
            if record.revoked_at is not None:
                return RevokeResult(record, 0, 0, already=True)  # idempotent
            await consents.mark_revoked(conn, consent_id, by=by, now=now)
            woken: set[str] = set()
            withdrawn = await consents.withdraw_undelivered(conn, consent_id)
            for w in withdrawn:
                targets = [d.device_id for d in
                           await devices.list_devices(conn, w.sender_user_id, active_only=True)]
                frame = encode_frame(Withdrawn(message_id=w.message_id, thread_id=w.thread_id,
                                               reason=WithdrawReason.CONSENT_REVOKED,
                                               at=int(now.timestamp())))
                await messages.add_notices(conn, targets, "withdrawn", frame,
                                           dedupe_key=f"withdrawn:{w.message_id}", now=now)
                woken.update(targets)
            holders = await consents.holders(conn, consent_id)
            orders = await expiry.issue(
                conn, [expiry.NewOrder(h.device_id, h.attachment_id, h.thread_id)
                       for h in holders], ExpiryReason.CONSENT_REVOKED, now=now)
            woken.update(h.device_id for h in holders)
            await audit.append(conn, "consent.revoked", subject_kind="consent",
                               subject_id=consent_id, details={
                                   "by": by, "as": acting_as, "reason": reason or None,
                                   "withdrawn_messages": len(withdrawn),
                                   "withdrawn_message_ids": [
                                       w.message_id for w in withdrawn][:audit.MAX_DETAIL_ITEMS],
                                   "withdrawn_deliveries": sum(len(w.devices) for w in withdrawn),
                                   "expiry_orders": len(orders)})
            ids = sorted(woken)
            for i in range(0, len(ids), 180):
                await events.publish(conn, "deliver", device_ids=ids[i:i + 180])
            updated = await consents.get(conn, consent_id)
        assert updated is not None
        return RevokeResult(updated, len(withdrawn), len(orders))

    # -- listing and the privacy office's view ---------------------------------------------------

    async def issued_by(self, me: Principal) -> list[consents.ConsentRecord]:
        """The consents this clinician captured, newest first."""
        async with self.db.pool.acquire() as conn:
            return await consents.list_issued(conn, me.user_id)

    async def withdrawal(self, consent_id: str) -> Withdrawal:
        """Everything the privacy office needs to see about a consent and its withdrawal."""
        async with self.db.pool.acquire() as conn:
            record = await consents.get(conn, consent_id)
            if record is None:
                raise NotFound(ErrorCode.NOT_FOUND, "no such consent")
            issuer = await users.get_user(conn, record.issuer_user_id)
            revoked = [r for r in await audit.rows(conn, subject_kind="consent",
                                                   subject_id=consent_id,
                                                   event_prefix="consent.revoked")]
            revocation = dict(revoked[0].details) if revoked else None
            by = None
            if revocation is not None:
                by = await self._who(conn, str(revocation.get("as")), str(revocation.get("by")))
            return Withdrawal(
                record=record, claims=self._claims(record),
                issuer_login=issuer.login if issuer else "",
                issuer_name=issuer.display_name if issuer else "",
                revocation=revocation, revoked_by=by,
                messages=await consents.count_messages(conn, consent_id),
                copies=await consents.copies(conn, consent_id))

    @staticmethod
    async def _who(conn: asyncpg.Connection, acting_as: str, actor_id: str) -> str:
        """Who withdrew a consent, as the privacy office reads it."""
        if acting_as == "it_admin":
            admin = await admins.get_admin(conn, actor_id)
            return f"the privacy office through IT ({admin.login if admin else 'an administrator'})"
        user = await users.get_user(conn, actor_id)
        name = f"{user.display_name} ({user.login})" if user else "a clinician"
        return f"{name}, " + ("the issuing clinician" if acting_as == "issuer"
                              else "privacy officer")

    # -- recipients' reports -----------------------------------------------------------------

    async def report_mismatch(self, me: Principal, consent_id: str, *, message_id: str,
                              attachment_id: str | None, reason: str) -> None:
        """Audit a recipient's refusal to show an image the consent does not name."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            record = await consents.get(conn, consent_id)
            if record is None or not await self._may_see(conn, me, record):
                raise NotFound(ErrorCode.NOT_FOUND, "no such consent")
            await audit.append(conn, "consent.image_mismatch", subject_kind="consent",
                               subject_id=consent_id, outcome="refused", details={
                                   "message_id": message_id, "attachment_id": attachment_id,
                                   "reason": reason, "reported_by": me.device_id})

    # -- enforcement -------------------------------------------------------------------------

    async def check_send(self, conn: asyncpg.Connection, header: MessageHeader,
                         now: dt.datetime) -> None:
        """Refuse (RelayError with a consent_* code) a message its consent does not cover.
        Runs in the send transaction; see the module docstring for the order of checks."""
        if header.consent_id is None:
            if needs_consent(header):
                raise Forbidden(ErrorCode.CONSENT_MISSING,
                                "this message needs a registered consent")
            return
        record = await consents.get(conn, header.consent_id, lock="share")
        if record is None:
            raise _invalid("the consent is not registered")
        at = int(now.timestamp())
        revoked = record.revoked_at is not None
        claims = self._claims(record)
        policy = self.policies.for_org(claims.org)
        if not revoked:
            issuer = await self._issuer(conn, claims.iss, claims.org, at)
            claims = self._verified(record, issuer) or claims
        owners = await users.certificates_of_device_owners(
            conn, [header.sender_device_id, *header.recipient_devices])
        if header.sender_device_id not in owners:
            raise _invalid("unknown sender device")
        sender = self._peek_cert(owners[header.sender_device_id][1])
        recipients = {uid: cert for d, (uid, cert) in owners.items()
                      if d != header.sender_device_id}
        if not recipients:  # no other device: still check the sender's own standing
            recipients = {sender.user_id: owners[header.sender_device_id][1]}
        oncall_roles = await oncall.ladder_roles(conn, claims.org, sorted(recipients), now)
        try:
            for user_id in sorted(recipients):
                check_consent(claims, purpose=header.purpose, sender=sender,
                              recipient=self._peek_cert(recipients[user_id]), policy=policy,
                              revoked=revoked, at=at,
                              recipient_oncall_roles=oncall_roles.get(user_id, ()))
        except PolicyDenied as exc:
            raise Forbidden(exc.code, str(exc)) from None

    @staticmethod
    def _claims(record: consents.ConsentRecord) -> ConsentClaims:
        try:
            return peek_consent_token_unverified(record.token)
        except DecodeError as exc:
            raise _invalid("the stored consent token is unreadable") from exc

    @staticmethod
    def _verified(record: consents.ConsentRecord, issuer: UserCertificate) -> ConsentClaims | None:
        """Check the token's signature again under the issuer's current certificate (time is
        check_consent's business, with the policy's skew: an expired token returns None after
        its signature was verified)."""
        try:
            return verify_consent_token(record.token, issuer.identity_key, at=int(record.
                                        registered_at.timestamp()), leeway=0)
        except VerificationError as exc:
            if exc.code is ErrorCode.CONSENT_EXPIRED:
                return None
            raise _invalid("the consent token no longer verifies") from None
