"""Registered consent tokens, their revocation, and the messages sent under them.

A row holds the signed token (so anyone can re-verify it) and the claims the relay enforces.
The token's patient reference is opaque by protocol (PROTOCOL §7.2): nothing here identifies a
patient.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import asyncpg

from protocol.consent import ConsentClaims
from protocol.errors import ErrorCode
from server.errors import Conflict
from server.store import at

__all__ = [
    "ConsentRecord",
    "Copy",
    "Holder",
    "WithdrawnMessage",
    "copies",
    "count_messages",
    "get",
    "holders",
    "insert",
    "is_participant",
    "list_issued",
    "mark_revoked",
    "withdraw_undelivered",
]


@dataclasses.dataclass(frozen=True)
class ConsentRecord:
    consent_id: str
    issuer_user_id: str
    org_id: str
    token: str
    decision: str
    not_before: dt.datetime
    expires_at: dt.datetime
    registered_at: dt.datetime
    revoked_at: dt.datetime | None

    def status(self, now: dt.datetime) -> str:
        """revoked, refused, expired, not_yet_valid or active."""
        if self.revoked_at is not None:
            return "revoked"
        if self.decision != "agreed":
            return "refused"
        if now >= self.expires_at:
            return "expired"
        if now < self.not_before:
            return "not_yet_valid"
        return "active"


def _record(row: asyncpg.Record) -> ConsentRecord:
    return ConsentRecord(
        consent_id=str(row["consent_id"]), issuer_user_id=str(row["issuer_user_id"]),
        org_id=row["org_id"], token=row["token"], decision=row["decision"],
        not_before=row["not_before"], expires_at=row["expires_at"],
        registered_at=row["registered_at"], revoked_at=row["revoked_at"])


async def insert(conn: asyncpg.Connection, claims: ConsentClaims, token: str, *,
                 registered_by: str, now: dt.datetime) -> tuple[ConsentRecord, bool]:
    """Register a verified token; returns (record, created). Registering the same token again
    is a no-op; another token with the same id is a conflict."""
    r = claims.recipients
    row = await conn.fetchrow(
        "INSERT INTO consents (consent_id, issuer_user_id, org_id, token, purposes, "
        "recipient_users, recipient_roles, recipient_orgs, external, images, decision, basis, "
        "form_version, not_before, expires_at, registered_at, registered_by) VALUES "
        "($1,$2,$3,$4,$5,$6::uuid[],$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17) "
        "ON CONFLICT (consent_id) DO NOTHING RETURNING *",
        claims.jti, claims.iss, claims.org, token, [p.value for p in claims.purposes],
        list(r.users), list(r.roles), list(r.orgs), r.external, list(claims.images),
        claims.decision.value, claims.basis.value, claims.form_version, at(claims.nbf),
        at(claims.exp), now, registered_by)
    if row is not None:
        return _record(row), True
    existing = await get(conn, claims.jti)
    if existing is None or existing.token != token:
        raise Conflict(ErrorCode.CONFLICT, "another consent token with this id is registered")
    return existing, False


async def get(conn: asyncpg.Connection, consent_id: str, *, lock: str | None = None
              ) -> ConsentRecord | None:
    """The consent, or None. ``lock`` is ``"share"`` (a send: revocation waits for it) or
    ``"update"`` (revocation)."""
    try:
        cid = uuid.UUID(consent_id)
    except ValueError:
        return None
    suffix = {None: "", "share": " FOR SHARE", "update": " FOR UPDATE"}[lock]
    row = await conn.fetchrow("SELECT * FROM consents WHERE consent_id = $1" + suffix, cid)
    return None if row is None else _record(row)


async def mark_revoked(conn: asyncpg.Connection, consent_id: str, *, by: str,
                       now: dt.datetime) -> None:
    await conn.execute(
        "UPDATE consents SET revoked_at = $2, revoked_by = $3 WHERE consent_id = $1 "
        "AND revoked_at IS NULL", uuid.UUID(consent_id), now, uuid.UUID(by))


async def is_participant(conn: asyncpg.Connection, consent_id: str, user_id: str) -> bool:
    """Whether the user takes part in the consent: its issuer, a user it names, or the sender
    or a recipient of a message sent under it."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM consents WHERE consent_id = $1 AND "
        "(issuer_user_id = $2 OR $2 = ANY (recipient_users))) OR EXISTS (SELECT 1 FROM "
        "messages m WHERE m.consent_id = $1 AND (m.sender_user_id = $2 OR EXISTS (SELECT 1 "
        "FROM devices d WHERE d.user_id = $2 AND d.device_id = ANY (m.recipients))))",
        uuid.UUID(consent_id), uuid.UUID(user_id)))


@dataclasses.dataclass(frozen=True)
class WithdrawnMessage:
    message_id: str
    thread_id: str
    sender_user_id: str
    devices: tuple[str, ...]  # whose queued delivery was removed


async def withdraw_undelivered(conn: asyncpg.Connection, consent_id: str
                               ) -> list[WithdrawnMessage]:
    """Delete every still-queued delivery of a message sent under the consent; returns the
    messages affected (their senders are told)."""
    rows = await conn.fetch(
        "WITH gone AS (DELETE FROM deliveries d USING messages m WHERE d.message_pk = "
        "m.message_pk AND m.consent_id = $1 RETURNING m.message_id, m.thread_id, "
        "m.sender_user_id, d.device_id) SELECT message_id::text AS message_id, "
        "thread_id::text AS thread_id, sender_user_id::text AS sender_user_id, "
        "array_agg(device_id::text ORDER BY device_id) AS devices FROM gone "
        "GROUP BY message_id, thread_id, sender_user_id ORDER BY message_id",
        uuid.UUID(consent_id))
    return [WithdrawnMessage(r["message_id"], r["thread_id"], r["sender_user_id"],
                             tuple(r["devices"])) for r in rows]


@dataclasses.dataclass(frozen=True)
class Holder:
    attachment_id: str
    device_id: str
    thread_id: str


async def holders(conn: asyncpg.Connection, consent_id: str) -> list[Holder]:
    """Every (attachment, device) that may hold a copy of an image sent under the consent: the
    sending device and every device the message was addressed to. The relay cannot tell an
    unacknowledged delivery that reached its device from one that did not, so both count.
    Not a record gateway (it keeps nothing), nor a device that already confirmed destroying
    that image (after filing, say): as for filing (docs/PROTOCOL.md §15), an order it could
    only confirm again would leave the audit showing a copy "not confirmed" that is gone."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (ma.attachment_id, dev) ma.attachment_id::text AS attachment_id, "
        "dev::text AS device_id, m.thread_id::text AS thread_id FROM messages m "
        "JOIN message_attachments ma USING (message_pk) "
        "CROSS JOIN LATERAL unnest(m.recipients || m.sender_device_id) AS dev "
        "JOIN devices d ON d.device_id = dev "
        "WHERE m.consent_id = $1 AND d.kind <> 'gateway' AND NOT EXISTS ("
        "SELECT 1 FROM expiry_orders o WHERE o.attachment_id = ma.attachment_id "
        "AND o.device_id = dev AND o.confirmed_at IS NOT NULL) "
        "ORDER BY ma.attachment_id, dev, m.message_pk",
        uuid.UUID(consent_id))
    return [Holder(r["attachment_id"], r["device_id"], r["thread_id"]) for r in rows]


async def list_issued(conn: asyncpg.Connection, user_id: str, *, limit: int = 200
                      ) -> list[ConsentRecord]:
    """The consents a clinician issued (captured), newest first."""
    rows = await conn.fetch(
        "SELECT * FROM consents WHERE issuer_user_id = $1 "
        "ORDER BY registered_at DESC, consent_id LIMIT $2", uuid.UUID(user_id), limit)
    return [_record(r) for r in rows]


async def count_messages(conn: asyncpg.Connection, consent_id: str) -> int:
    """How many messages were sent under the consent."""
    return int(await conn.fetchval("SELECT count(*) FROM messages WHERE consent_id = $1",
                                   uuid.UUID(consent_id)))


@dataclasses.dataclass(frozen=True)
class Copy:
    """A device that may hold an image sent under a consent, with the expiry order that
    covers it (the withdrawal's when there is one, else the earliest other)."""

    attachment_id: str
    device_id: str
    device_kind: str
    user_id: str
    login: str
    display_name: str
    reason: str | None
    ordered_at: dt.datetime | None
    confirmed_at: dt.datetime | None


async def copies(conn: asyncpg.Connection, consent_id: str) -> list[Copy]:
    """Every copy :func:`holders` counts, with its owner and its expiry order."""
    rows = await conn.fetch(
        "WITH h AS (SELECT DISTINCT ma.attachment_id, dev AS device_id FROM messages m "
        "JOIN message_attachments ma USING (message_pk) "
        "CROSS JOIN LATERAL unnest(m.recipients || m.sender_device_id) AS dev "
        "WHERE m.consent_id = $1) "
        "SELECT h.attachment_id::text AS attachment_id, h.device_id::text AS device_id, "
        "d.kind, u.user_id::text AS user_id, u.login, u.display_name, o.reason, o.issued_at, "
        "o.confirmed_at FROM h JOIN devices d ON d.device_id = h.device_id "
        "JOIN users u ON u.user_id = d.user_id "
        "LEFT JOIN LATERAL (SELECT reason, issued_at, confirmed_at FROM expiry_orders e "
        "WHERE e.device_id = h.device_id AND e.attachment_id = h.attachment_id "
        "ORDER BY e.reason <> 'consent_revoked', e.issued_at LIMIT 1) o ON true "
        "ORDER BY h.attachment_id, u.display_name, h.device_id", uuid.UUID(consent_id))
    return [Copy(r["attachment_id"], r["device_id"], r["kind"], r["user_id"], r["login"],
                 r["display_name"], r["reason"], r["issued_at"], r["confirmed_at"])
            for r in rows]
