"""Set-based storage for group commit: a whole batch of sends in one or two statements.

The send pipeline (server/sends.py) stores many messages per transaction. Doing that row by row
costs several round trips per message; these functions take the whole batch at once (arrays
through ``unnest``), so a batch costs the same round trips whatever its size. Paced traffic
makes batches of one or two messages, where the round trips are the cost. A batch whose threads
the relay has not read yet (or whose state has changed since) takes four:
``BEGIN``, :func:`lock_and_read` (the thread locks, then everything the checks read, with a
digest of it per thread), :func:`store_messages` (everything written, and the wake-up) and
``COMMIT``. A batch of threads the relay has read before takes one: :func:`lock_and_store`
locks them, confirms that each thread's state is unchanged, stores and commits, in one
statement (alembic migration 0015; docs/BENCHMARKS.md has the figures). "Unchanged" is the
directory epoch when no change the digest covers has committed anywhere since the read, and
each thread's digest when one has (alembic migration 0016).

Lock order: both lock the batch's thread rows in ``thread_id`` order before they read
anything, so two relay processes storing batches that touch the same threads cannot deadlock
(each waits for the other in the same order). The locks and the reads are one call of a SQL
function (alembic migration 0014 says why it is a function: its reads take their snapshot
after the locks are granted, never before).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Collection, Iterable, Mapping, Sequence

import asyncpg
import msgspec

from protocol.canonical import UUID_RE
from server.store.messages import PRIORITY_RANK, NewMessage
from server.store.threads import DeviceSet

__all__ = [
    "QUEUED_LIMIT",
    "BatchReads",
    "Existing",
    "KnownStored",
    "Stored",
    "StoredDelivery",
    "lock_and_read",
    "lock_and_store",
    "store_messages",
    "uuid_array",
]


@dataclasses.dataclass(frozen=True)
class Existing:
    thread_id: str
    thread_seq: int
    body_hash: bytes
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class BatchReads:
    """What the checks of a batch read once its threads are locked (:func:`lock_and_read`)."""

    orgs: dict[str, str]  # thread -> its organisation, for the threads that exist
    existing: dict[tuple[str, str], Existing]  # (sender device, message id) already stored
    members: dict[str, set[str]]  # thread -> its participants at the moment given
    device_sets: dict[str, DeviceSet]  # thread -> its participants' devices
    routed: frozenset[str]  # threads with on-call work: a role, or a reseal request pending
    digests: dict[str, bytes]  # thread -> the digest of all the above (:func:`lock_and_store`)
    epoch: int | None = None  # the directory epoch, in the same snapshot (migration 0016)


async def lock_and_read(conn: asyncpg.Connection, thread_ids: Iterable[str],
                        keys: Sequence[tuple[str, str]], at: dt.datetime) -> BatchReads:
    """Lock the threads' rows in id order (within the caller's transaction), then read the
    retries among ``keys`` (sender device, message id), each existing thread's organisation,
    participants at ``at``, device sets and on-call work: one round trip."""
    rows = await conn.fetch(
        "SELECT * FROM lock_and_read_batch($1::uuid[], $2::uuid[], $3::uuid[], $4)",
        [k[0] for k in keys], [k[1] for k in keys], sorted(set(thread_ids)), at)
    orgs: dict[str, str] = {}
    existing: dict[tuple[str, str], Existing] = {}
    members: dict[str, set[str]] = {}
    by_user: dict[str, list[tuple[str, bool]]] = {}
    device_orgs: dict[str, str] = {}
    routed = set()
    digests: dict[str, bytes] = {}
    epoch: int | None = None
    for r in rows:
        k = r["k"]
        if k == "o":
            orgs[r["a"]] = r["b"]
            members.setdefault(r["a"], set())
        elif k == "m":
            existing[(r["a"], r["b"])] = Existing(r["c"], int(r["n"]), bytes(r["h"]), r["at"])
        elif k == "p":
            members.setdefault(r["a"], set()).add(r["b"])
        elif k == "d":
            by_user.setdefault(r["a"], []).append((r["b"], r["f"]))
            device_orgs[r["b"]] = r["c"]
        elif k == "v":
            digests[r["a"]] = bytes(r["h"])
        elif k == "e":
            epoch = int(r["n"])
        else:
            routed.add(r["a"])
    sets = {}
    for tid, us in members.items():
        devs = [d for u in us for d in by_user.get(u, ())]
        sets[tid] = DeviceSet(active=frozenset(d for d, a in devs if a),
                              inactive=frozenset(d for d, a in devs if not a),
                              orgs={d: device_orgs[d] for d, _ in devs})
    return BatchReads(orgs, existing, members, sets, frozenset(routed), digests, epoch)


class StoredDelivery(msgspec.Struct, frozen=True):  # a struct: server/store/messages.py
    """A delivery the store queued: its primary key, id and device, and ``queued``: the ids of
    that device's other deliveries still queued and not held, as the store saw them under the
    thread locks (alembic migration 0017). The same batch's deliveries are not among them."""

    delivery_pk: int
    delivery_id: str
    device_id: str
    queued: tuple[str, ...] | None  # None: not asked (not local), or QUEUED_LIMIT or more


QUEUED_LIMIT = 8
"""The most queued ids the store returns per delivery (alembic migration 0017). A delivery
with that many has ``queued`` None, as the store may have left some out: a device with that
many deliveries unacknowledged reads its queue anyway (a closed loop, a backlog), and a
short list keeps the store cheap."""


class Stored(msgspec.Struct, frozen=True):  # a struct: server/store/messages.py
    message_pk: int
    thread_seq: int
    deliveries: tuple[StoredDelivery, ...] = ()


_UUIDS = re.compile(f"(?:{UUID_RE.pattern}(?:,{UUID_RE.pattern})*)?")
_WORDS = re.compile("(?:[a-z_]+(?:,[a-z_]+)*)?")


def uuid_array(values: Iterable[str | None]) -> str:
    """A ``uuid[]`` as the text Postgres reads it (``{a,b,NULL}``; PostgreSQL manual §8.15.2
    "Array Value Input"), for a parameter cast ``$n::text::uuid[]``. asyncpg's binary array
    encoding checks each element's type against abstract base classes, about a third of a
    microsecond an element, which the send path paid for a dozen columns of every message;
    Postgres's parser reads the text for less (docs/BENCHMARKS.md, round 24). Only UUIDs in
    their lowercase textual form are written, so no value can change the array's shape: any
    other value is a ValueError."""
    ids = list(values)
    given = [v for v in ids if v is not None]
    joined = ",".join(given)
    # Each value one UUID: the text is as long as that many UUIDs and their commas.
    if len(joined) != 37 * len(given) - (1 if given else 0) or _UUIDS.fullmatch(joined) is None:
        raise ValueError("not a lowercase UUID")
    return "{" + ",".join("NULL" if v is None else v for v in ids) + "}"


def _words(values: Iterable[str]) -> str:
    """A ``text[]`` of lowercase words (a priority, a purpose) as text (:func:`uuid_array`)."""
    joined = ",".join(values)
    if _WORDS.fullmatch(joined) is None:
        raise ValueError("not a lowercase word")
    return "{" + joined + "}"


def _columns(msgs: Sequence[NewMessage]) -> list[object]:
    """The batch as the store functions take it: one array per column, in batch order; those
    of ids and words as text (:func:`uuid_array`), the bytes as ``bytea[]``."""
    return [
        uuid_array([m.message_id for m in msgs]),
        uuid_array([m.thread_id for m in msgs]),
        uuid_array([m.sender_user_id for m in msgs]),
        uuid_array([m.sender_device_id for m in msgs]),
        _words([m.priority for m in msgs]),
        "{" + ",".join([str(PRIORITY_RANK[m.priority]) for m in msgs]) + "}",
        _words([m.purpose for m in msgs]),
        uuid_array([m.consent_id for m in msgs]),
        [m.body_hash for m in msgs],
        # Each message's recipients, a uuid[] literal quoted as one element of the text[].
        "{" + ",".join(['"' + uuid_array(m.recipients) + '"' for m in msgs]) + "}",
        [m.sealed for m in msgs],
    ]


def _stored(rows: Iterable[asyncpg.Record]) -> dict[tuple[str, str], Stored]:
    """One row per delivery (a message without any has one row without): per message."""
    out: dict[tuple[str, str], tuple[int, int, list[StoredDelivery]]] = {}
    for r in rows:
        _, _, ds = out.setdefault((r["stored_device"], r["stored_id"]),
                                  (int(r["stored_pk"]), int(r["stored_seq"]), []))
        if r["d_pk"] is not None:
            queued = r["d_queued"]
            ds.append(StoredDelivery(
                int(r["d_pk"]), r["d_id"], r["d_device"],
                tuple(queued) if queued is not None and len(queued) < QUEUED_LIMIT else None))
    return {k: Stored(pk, seq, tuple(ds)) for k, (pk, seq, ds) in out.items()}


# Ids and words come as text and are cast by Postgres (:func:`uuid_array`).
_STORE = (
    "SELECT * FROM store_batch_delivering($1::text::uuid[], $2::text::uuid[], "
    "$3::text::uuid[], $4::text::uuid[], $5::text::text[], $6::text::smallint[], "
    "$7::text::text[], $8::text::uuid[], $9::bytea[], $10::text::text[], $11::bytea[], "
    "$12, $13, $14::text[], $15::text::uuid[])")
_LOCK_AND_STORE = (
    "SELECT * FROM lock_and_store_batch_delivering($1::text::uuid[], $2::bytea[], $3::bigint, "
    "$4, $5::text::uuid[], $6::text::uuid[], $7::text::uuid[], $8::text::uuid[], "
    "$9::text::text[], $10::text::smallint[], $11::text::text[], $12::text::uuid[], "
    "$13::bytea[], $14::text::text[], $15::bytea[], $16, $17, $18::text[], "
    "$19::text::uuid[])")


async def store_messages(conn: asyncpg.Connection, msgs: Sequence[NewMessage],
                         now: dt.datetime, *, channel: str, notifications: Sequence[str],
                         local: Collection[str] = ()) -> dict[tuple[str, str], Stored]:
    """Store messages (in batch order) with their deliveries and send ``notifications`` on
    ``channel``, in one statement (the SQL function ``store_batch_delivering``: each thread's
    counter advanced, the messages numbered on from it in batch order, one delivery per
    recipient device in the same order, the notifications delivered by Postgres only if the
    transaction commits); returns each message's primary key, thread number and deliveries
    (:class:`StoredDelivery`, with ``queued`` for the devices in ``local`` only). The threads
    must be locked (:func:`lock_and_read`)."""
    if not msgs:
        return {}
    rows = await conn.fetch(_STORE, *_columns(msgs), now, channel, list(notifications),
                            uuid_array(local))
    return _stored(rows)


@dataclasses.dataclass(frozen=True)
class KnownStored:
    """What :func:`lock_and_store` stored, and the directory epoch it read under the locks:
    the state the batch was checked against is current as of that epoch."""

    stored: dict[tuple[str, str], Stored]
    epoch: int | None
    by_epoch: bool  # the epoch given was current: no digest was computed


async def lock_and_store(conn: asyncpg.Connection, digests: Mapping[str, bytes],
                         epoch: int | None, at: dt.datetime, msgs: Sequence[NewMessage],
                         now: dt.datetime, *, channel: str, notifications: Sequence[str],
                         local: Collection[str] = ()) -> KnownStored | None:
    """Lock the threads, and store the batch as :func:`store_messages` does only if each
    thread's state is still the one read by :func:`lock_and_read` at an earlier moment (the
    directory ``epoch`` read with it is still current, or else each thread's digest given is)
    and none of the messages is stored yet: one statement, run outside any transaction so that
    it commits on its own (alembic migrations 0015 and 0016). ``None``: nothing was stored,
    and the caller must read again under the locks."""
    if not msgs:
        return KnownStored({}, epoch, by_epoch=False)
    tids = sorted(digests)
    rows = await conn.fetch(_LOCK_AND_STORE, uuid_array(tids), [digests[t] for t in tids],
                            epoch, at, *_columns(msgs), now, channel, list(notifications),
                            uuid_array(local))
    if not rows:
        return None
    current = rows[0]["epoch"]
    current = None if current is None else int(current)
    return KnownStored(_stored(rows), current,
                       by_epoch=epoch is not None and current == epoch)
