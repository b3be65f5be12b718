"""Attachment metadata: who uploaded what (for quota and ownership), which devices may download
it, which messages reference it, and the sweep of uploads no message ever referenced.

The bytes themselves are in a :class:`server.blobs.BlobStore`; these tables hold no ciphertext.
Access rows (``attachment_access``) are written by the send pipeline in the same transaction as
the message that references the attachment: a device may download an attachment only if it
uploaded it or a message referencing it was addressed to it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence

import asyncpg

from protocol.errors import ErrorCode
from server.errors import Forbidden, InvalidInput, LimitError, NotFound, RelayError

__all__ = [
    "AttachmentRecord",
    "check_references",
    "create",
    "delete_unreferenced",
    "get_owned",
    "mark_finalised",
    "record_references",
    "require_download",
]


@dataclasses.dataclass(frozen=True)
class AttachmentRecord:
    attachment_id: str
    owner_user_id: str
    owner_device_id: str
    size: int
    finalised: bool
    referenced: bool


def _record(row: asyncpg.Record) -> AttachmentRecord:
    return AttachmentRecord(
        attachment_id=str(row["attachment_id"]), owner_user_id=str(row["owner_user_id"]),
        owner_device_id=str(row["owner_device_id"]), size=int(row["size"]),
        finalised=row["finalised_at"] is not None, referenced=row["referenced_at"] is not None)


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def create(conn: asyncpg.Connection, *, attachment_id: str, user_id: str, device_id: str,
                 size: int, quota: int, now: dt.datetime) -> None:
    """Record a new upload of ``size`` ciphertext bytes, within the user's ``quota`` (every
    attachment the user still has on the relay counts). Call inside a transaction: the quota
    check is serialised per user."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", "attachment-quota:" + user_id)
    used = int(await conn.fetchval(
        "SELECT coalesce(sum(size), 0) FROM attachments WHERE owner_user_id = $1", user_id))
    if used + size > quota:
        raise LimitError(ErrorCode.QUOTA_EXCEEDED,
                         f"{used} of {quota} bytes in use; this upload needs {size}",
                         extra={"used": used, "quota": quota})
    await conn.execute(
        "INSERT INTO attachments (attachment_id, owner_user_id, owner_device_id, size, "
        "created_at) VALUES ($1, $2, $3, $4, $5)", attachment_id, user_id, device_id, size, now)


async def get_owned(conn: asyncpg.Connection, attachment_id: str, device_id: str
                    ) -> AttachmentRecord:
    """The upload, if this device made it. An unknown id and another device's upload get the
    same answer (upload_not_found), so ids cannot be probed."""
    aid = _uuid(attachment_id)
    row = None if aid is None else await conn.fetchrow(
        "SELECT * FROM attachments WHERE attachment_id = $1", aid)
    if row is None or str(row["owner_device_id"]) != device_id:
        raise NotFound(ErrorCode.UPLOAD_NOT_FOUND, "no such upload")
    return _record(row)


async def mark_finalised(conn: asyncpg.Connection, attachment_id: str, now: dt.datetime) -> None:
    await conn.execute(
        "UPDATE attachments SET finalised_at = coalesce(finalised_at, $2) "
        "WHERE attachment_id = $1", attachment_id, now)


async def require_download(conn: asyncpg.Connection, attachment_id: str, device_id: str
                           ) -> AttachmentRecord:
    """The attachment, if this device may download it: it uploaded it, or a message referencing
    it was addressed to it. Otherwise attachment_forbidden, for unknown ids too (no probing);
    consent_revoked once a consent it was sent under is withdrawn (docs/ARCHITECTURE.md §1 journey
    6);
    attachment_expired (410) once this device's expiry order for it is issued, or the relay
    deleted its ciphertext."""
    aid = _uuid(attachment_id)
    row = None if aid is None else await conn.fetchrow(
        "SELECT a.*, EXISTS (SELECT 1 FROM attachment_access x WHERE x.attachment_id = "
        "a.attachment_id AND x.device_id = $2) AS granted FROM attachments a "
        "WHERE a.attachment_id = $1", aid, uuid.UUID(device_id))
    if row is None or not (row["granted"] or str(row["owner_device_id"]) == device_id):
        raise Forbidden(ErrorCode.ATTACHMENT_FORBIDDEN,
                        "no delivery referencing this attachment was addressed to this device")
    if row["finalised_at"] is None:
        raise NotFound(ErrorCode.UPLOAD_NOT_FOUND, "the upload is not finalised")
    revoked = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM message_attachments ma JOIN messages m USING (message_pk) "
        "JOIN consents c ON c.consent_id = m.consent_id WHERE ma.attachment_id = $1 "
        "AND c.revoked_at IS NOT NULL)", aid)
    if revoked:
        raise Forbidden(ErrorCode.CONSENT_REVOKED, "the consent for this image was withdrawn")
    # docs/PROTOCOL.md §15: once this device's expiry order is issued, its copy must not
    # (re)appear; once the ciphertext is deleted, there is nothing to hand out.
    expired = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM expiry_orders WHERE attachment_id = $1 AND device_id = $2)"
        " OR EXISTS (SELECT 1 FROM attachment_lifecycle WHERE attachment_id = $1 "
        "AND ciphertext_deleted_at IS NOT NULL)", aid, uuid.UUID(device_id))
    if expired:
        raise RelayError(ErrorCode.ATTACHMENT_EXPIRED,
                         "this device's copy of the image has expired; the record keeps it")
    return _record(row)


async def check_references(conn: asyncpg.Connection, attachment_ids: Sequence[str],
                           sender_device_id: str) -> None:
    """Refuse a message whose attachments are unknown or not the sender's to send
    (upload_not_found: neither uploaded by this device nor received by it, which is
    forwarding), or not finalised (validation_failed). Locks the rows (FOR SHARE) so the
    sweep cannot delete an upload a message in this transaction is about to reference."""
    if len(set(attachment_ids)) != len(attachment_ids):
        raise InvalidInput(ErrorCode.VALIDATION_FAILED, "an attachment id is repeated")
    ids = [_uuid(a) for a in attachment_ids]
    if any(i is None for i in ids):
        raise NotFound(ErrorCode.UPLOAD_NOT_FOUND, "no such upload")
    rows = await conn.fetch(
        "SELECT a.attachment_id, a.owner_device_id, a.finalised_at, EXISTS (SELECT 1 FROM "
        "attachment_access x WHERE x.attachment_id = a.attachment_id AND x.device_id = $2) "
        "AS granted FROM attachments a WHERE a.attachment_id = ANY($1::uuid[]) "
        "ORDER BY a.attachment_id FOR SHARE OF a", ids, uuid.UUID(sender_device_id))
    usable = {str(r["attachment_id"]): r for r in rows
              if str(r["owner_device_id"]) == sender_device_id or r["granted"]}
    for a in attachment_ids:
        r = usable.get(a)
        if r is None:
            raise NotFound(ErrorCode.UPLOAD_NOT_FOUND, "an attachment is unknown or not yours")
        if r["finalised_at"] is None:
            raise InvalidInput(ErrorCode.VALIDATION_FAILED, "an attachment is not finalised")


async def record_references(conn: asyncpg.Connection, *, sender_device_id: str, message_id: str,
                            attachment_ids: Sequence[str], recipients: Sequence[str],
                            now: dt.datetime) -> None:
    """After the message is stored (same transaction): link it to its attachments, grant each
    recipient device access, and mark the attachments referenced (never swept)."""
    message_pk = await conn.fetchval(
        "SELECT message_pk FROM messages WHERE sender_device_id = $1 AND message_id = $2",
        sender_device_id, message_id)
    ids = list(attachment_ids)
    await conn.execute(
        "INSERT INTO message_attachments (message_pk, attachment_id) "
        "SELECT $1, a FROM unnest($2::uuid[]) AS a ON CONFLICT DO NOTHING", message_pk, ids)
    await conn.execute(
        "INSERT INTO attachment_access (attachment_id, device_id, granted_at) "
        "SELECT a, d, $3 FROM unnest($1::uuid[]) AS a CROSS JOIN unnest($2::uuid[]) AS d "
        "ON CONFLICT DO NOTHING", ids, list(recipients), now)
    await conn.execute(
        "UPDATE attachments SET referenced_at = coalesce(referenced_at, $2) "
        "WHERE attachment_id = ANY($1::uuid[])", ids, now)


async def delete_unreferenced(conn: asyncpg.Connection, *, older_than: dt.datetime,
                              limit: int = 500) -> list[str]:
    """Delete the metadata of uploads created before ``older_than`` that no message references;
    returns their ids so the caller deletes their blobs. A concurrent send holding the row
    (check_references) makes this wait, then skip it once it is referenced."""
    rows = await conn.fetch(
        "DELETE FROM attachments WHERE attachment_id IN (SELECT attachment_id FROM attachments "
        "WHERE referenced_at IS NULL AND created_at < $1 ORDER BY created_at LIMIT $2 "
        "FOR UPDATE SKIP LOCKED) AND referenced_at IS NULL RETURNING attachment_id",
        older_than, limit)
    return [str(r["attachment_id"]) for r in rows]
