"""The audit trail: append-only, hash-chained, metadata only.

Every security-relevant event (provisioning, enrolment, logins, revocations, filing, expiry,
consent changes...) is one row. Each row stores the SHA-256 of its canonical content together
with the previous row's hash, so editing, deleting or reordering rows breaks the chain, and
:func:`verify` names the first row affected. ``audit_head`` holds the last sequence number and
hash, updated in the same transaction, so a deleted tail is detected too. A trigger refuses
UPDATE and DELETE for the relay's role (docs/SECURITY.md: run the relay as a role that does not
own the table). An attacker able to rewrite the whole chain is out of reach of any unkeyed
chain; operators anchor the head elsewhere (``lightbox-server audit head``, docs/OPERATIONS.md).

Rows carry **no PHI and no secrets**: ids, event names, outcomes and small metadata only. The
``details`` mapping is restricted to strings, integers, booleans, None, lists and mappings, and
each string to :data:`MAX_DETAIL_STRING` characters.

Row hash (hex digests are over bytes)::

    row_hash = SHA-256( b"lightbox/v1/audit\\x00" || prev_hash || canonical_json(content) )

where ``content`` is the JSON object of the row's columns except the two hashes, ``at`` as an
RFC 3339 UTC string with microseconds, keys sorted, no whitespace (RFC 8785 for this subset).
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

__all__ = [
    "AUDIT_CONTEXT",
    "GENESIS_HASH",
    "AuditContext",
    "AuditRow",
    "VerifyReport",
    "append",
    "canonical_content",
    "row_hash",
    "rows",
    "verify",
]

LABEL = b"lightbox/v1/audit\x00"
GENESIS_HASH = bytes(32)
MAX_DETAIL_STRING = 512
MAX_DETAIL_ITEMS = 64


@dataclasses.dataclass(frozen=True)
class AuditContext:
    """Who is acting and through which request; set per request by the web layer."""

    request_id: str | None = None
    client_ip: str | None = None
    actor_kind: str = "system"
    actor_id: str | None = None


AUDIT_CONTEXT: contextvars.ContextVar[AuditContext] = contextvars.ContextVar(
    "lightbox_audit_context", default=AuditContext()  # noqa: B039 - frozen, immutable default
)


@dataclasses.dataclass(frozen=True)
class AuditRow:
    seq: int
    at: dt.datetime
    event: str
    actor_kind: str
    actor_id: str | None
    subject_kind: str | None
    subject_id: str | None
    outcome: str
    client_ip: str | None
    request_id: str | None
    details: Mapping[str, Any]
    prev_hash: bytes
    row_hash: bytes


def _check_details(value: Any, depth: int = 0) -> None:
    if depth > 4:
        raise ValueError("audit details nested too deeply")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, str):
        if len(value) > MAX_DETAIL_STRING:
            raise ValueError("audit detail string too long")
        return
    if isinstance(value, list | tuple):
        if len(value) > MAX_DETAIL_ITEMS:
            raise ValueError("audit detail list too long")
        for v in value:
            _check_details(v, depth + 1)
        return
    if isinstance(value, Mapping):
        if len(value) > MAX_DETAIL_ITEMS:
            raise ValueError("audit detail mapping too large")
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError("audit detail keys must be strings")
            _check_details(v, depth + 1)
        return
    raise ValueError(f"audit details cannot hold {type(value).__name__}")


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_content(
    *, seq: int, at: dt.datetime, event: str, actor_kind: str, actor_id: str | None,
    subject_kind: str | None, subject_id: str | None, outcome: str, client_ip: str | None,
    request_id: str | None, details: Mapping[str, Any],
) -> bytes:
    content = {
        "seq": seq, "at": _rfc3339(at), "event": event, "actor_kind": actor_kind,
        "actor_id": actor_id, "subject_kind": subject_kind, "subject_id": subject_id,
        "outcome": outcome, "client_ip": client_ip, "request_id": request_id,
        "details": details,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def row_hash(prev_hash: bytes, content: bytes) -> bytes:
    return hashlib.sha256(LABEL + prev_hash + content).digest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def append(
    conn: asyncpg.Connection,
    event: str,
    *,
    subject_kind: str | None = None,
    subject_id: str | None = None,
    outcome: str = "ok",
    details: Mapping[str, Any] | None = None,
    actor_kind: str | None = None,
    actor_id: str | None = None,
    context: AuditContext | None = None,
    now: Callable[[], dt.datetime] = _now,
) -> int:
    """Append one event and return its sequence number.

    Runs inside the caller's transaction when there is one, so the audited change and its
    audit row commit or roll back together. Appends are serialised by the row lock on
    ``audit_head``.
    """
    ctx = context or AUDIT_CONTEXT.get()
    details = dict(details or {})
    _check_details(details)
    at = now().astimezone(dt.UTC)
    async with conn.transaction():
        head = await conn.fetchrow("SELECT seq, row_hash FROM audit_head FOR UPDATE")
        if head is None:
            raise RuntimeError("audit_head is missing: database not migrated?")
        seq = int(head["seq"]) + 1
        prev = bytes(head["row_hash"])
        actor_kind = actor_kind or ctx.actor_kind
        actor_id = actor_id if actor_id is not None else ctx.actor_id
        h = row_hash(prev, canonical_content(
            seq=seq, at=at, event=event, actor_kind=actor_kind, actor_id=actor_id,
            subject_kind=subject_kind, subject_id=subject_id, outcome=outcome,
            client_ip=ctx.client_ip, request_id=ctx.request_id, details=details,
        ))
        await conn.execute(
            "INSERT INTO audit_log (seq, at, event, actor_kind, actor_id, subject_kind, "
            "subject_id, outcome, client_ip, request_id, details, prev_hash, row_hash) "
            "VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11::jsonb,$12,$13)",
            seq, at, event, actor_kind, actor_id, subject_kind, subject_id,
            outcome, ctx.client_ip, ctx.request_id, json.dumps(details), prev, h,
        )
        await conn.execute("UPDATE audit_head SET seq = $1, row_hash = $2", seq, h)
    return seq


def _row(r: asyncpg.Record) -> AuditRow:
    return AuditRow(
        seq=r["seq"], at=r["at"], event=r["event"], actor_kind=r["actor_kind"],
        actor_id=r["actor_id"], subject_kind=r["subject_kind"], subject_id=r["subject_id"],
        outcome=r["outcome"], client_ip=r["client_ip"], request_id=r["request_id"],
        details=json.loads(r["details"]), prev_hash=bytes(r["prev_hash"]),
        row_hash=bytes(r["row_hash"]),
    )


async def rows(
    conn: asyncpg.Connection,
    *,
    subject_kind: str | None = None,
    subject_id: str | None = None,
    event_prefix: str | None = None,
    after_seq: int = 0,
    limit: int = 1000,
) -> list[AuditRow]:
    """Read audit rows in order, optionally for one subject or family of events."""
    recs = await conn.fetch(
        "SELECT * FROM audit_log WHERE seq > $1 "
        "AND ($2::text IS NULL OR subject_kind = $2) AND ($3::text IS NULL OR subject_id = $3) "
        "AND ($4::text IS NULL OR starts_with(event, $4)) ORDER BY seq LIMIT $5",
        after_seq, subject_kind, subject_id, event_prefix, limit,
    )
    return [_row(r) for r in recs]


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    problem: str | None = None  # edited | deleted | reordered | truncated | rewritten
    message: str = "audit chain intact"


async def verify(conn: asyncpg.Connection, *, batch: int = 5000,
                 kept: tuple[int, bytes] | None = None) -> VerifyReport:
    """Walk the whole chain and report the first row edited, deleted or reordered. With
    ``kept``, a head printed by ``audit head`` earlier and kept elsewhere (sequence, hash):
    also that the chain still passes through it. A chain rewritten whole, every hash
    recomputed and the head moved, is consistent in itself; only a hash kept outside the
    database tells it from the one that was there (docs/SECURITY.md, the audit trail)."""
    prev_hash, expected_seq, checked = GENESIS_HASH, 1, 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        last_seq = 0
        while True:
            recs = await conn.fetch(
                "SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2", last_seq, batch
            )
            if not recs:
                break
            for rec in recs:
                r = _row(rec)
                last_seq = r.seq
                if r.seq != expected_seq:
                    kind = "deleted" if r.seq > expected_seq else "reordered"
                    return VerifyReport(False, checked, expected_seq, kind,
                                        f"row {expected_seq} is missing or out of order "
                                        f"(found row {r.seq} next)")
                content = canonical_content(
                    seq=r.seq, at=r.at, event=r.event, actor_kind=r.actor_kind,
                    actor_id=r.actor_id, subject_kind=r.subject_kind, subject_id=r.subject_id,
                    outcome=r.outcome, client_ip=r.client_ip, request_id=r.request_id,
                    details=r.details,
                )
                if r.prev_hash != prev_hash:
                    return VerifyReport(False, checked, r.seq, "reordered",
                                        f"row {r.seq} does not follow the row before it "
                                        "(a row before it was edited, replaced or reordered)")
                if row_hash(r.prev_hash, content) != r.row_hash:
                    return VerifyReport(False, checked, r.seq, "edited",
                                        f"row {r.seq} was edited after it was written")
                if kept is not None and r.seq == kept[0] and r.row_hash != kept[1]:
                    return VerifyReport(False, checked, r.seq, "rewritten",
                                        f"row {r.seq} is not the row of the kept head: the "
                                        "chain up to it was rewritten since")
                prev_hash, expected_seq, checked = r.row_hash, r.seq + 1, checked + 1
        head = await conn.fetchrow("SELECT seq, row_hash FROM audit_head")
    if head is None or int(head["seq"]) != expected_seq - 1 or bytes(head["row_hash"]) != prev_hash:
        head_seq = None if head is None else int(head["seq"])
        return VerifyReport(False, checked, expected_seq, "truncated",
                            f"the chain ends at row {expected_seq - 1} but its head says "
                            f"{head_seq}: rows at the end were deleted")
    if kept is not None and kept[0] > expected_seq - 1:
        return VerifyReport(False, checked, expected_seq, "truncated",
                            f"the chain ends at row {expected_seq - 1}, before the kept "
                            f"head's row {kept[0]}: rows were deleted and the head moved back")
    return VerifyReport(True, checked)
