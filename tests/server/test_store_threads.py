"""Thread storage: participants (users and roles), unread counts, device sets, and the message
queue's ordering and acknowledgement rules, against the real Postgres."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from server.errors import Forbidden, InvalidInput, NotFound
from server.store import batches, messages, threads

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(db_dsn)
    try:
        yield c
    finally:
        await c.close()


async def add_user(conn: asyncpg.Connection, *, roles: tuple[str, ...] = (), org: str = "org-a",
                   status: str = "active") -> str:
    uid = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO users (user_id, org_id, login, display_name, account_kind, roles, "
        "cert_not_after, identity_key, user_certificate, status, created_at, updated_at) "
        "VALUES ($1, $2, $3, 'Dr Test', 'clinician', $4, $5, $6, 'cert', $7, $5, $5)",
        uid, org, "u" + uid[:8], list(roles), NOW + dt.timedelta(days=365), bytes(32), status)
    return uid


async def add_device(conn: asyncpg.Connection, user_id: str, status: str = "active") -> str:
    did = str(uuid.uuid4())
    await conn.execute(
        "INSERT INTO devices (device_id, user_id, kind, device_certificate, signing_key, dh_key, "
        "status, created_at) VALUES ($1, $2, 'mobile', 'cert', $3, $3, $4, $5)",
        did, user_id, bytes(32), status, NOW)
    return did


def new_message(thread_id: str, sender: str, device: str, recipients: list[str],
                body: bytes = b"ciphertext", mid: str | None = None) -> messages.NewMessage:
    return messages.NewMessage(
        message_id=mid or str(uuid.uuid4()), thread_id=thread_id, sender_user_id=sender,
        sender_device_id=device, priority="routine", purpose="direct_care", consent_id=None,
        body_hash=hashlib.sha256(body).digest(), sealed=body, recipients=recipients)


async def store(conn: asyncpg.Connection, msg: messages.NewMessage) -> int:
    """Store one message the way the send pipeline stores a batch (server/sends.py): the
    thread's next number, the message, its deliveries, in one transaction; its number."""
    async with conn.transaction():
        seq = (await batches.reserve_sequence_numbers(conn, {msg.thread_id: 1}))[msg.thread_id]
        pks = await batches.insert_messages(conn, [(msg, seq)], NOW)
        await batches.insert_deliveries(
            conn, [(d, pks[(msg.sender_device_id, msg.message_id)], msg.priority)
                   for d in msg.recipients], NOW)
    return seq


async def test_creator_and_listed_users_are_participants(conn: asyncpg.Connection) -> None:
    a, b, c = [await add_user(conn) for _ in range(3)]
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a, priority="urgent",
                                users=[b], roles=[], now=NOW)
    assert await threads.participants(conn, tid) == {a, b}
    assert not await threads.is_participant(conn, tid, c)


async def test_role_holders_of_the_threads_org_are_participants(conn: asyncpg.Connection) -> None:
    a = await add_user(conn)
    ortho = await add_user(conn, roles=("orthopaedics",))
    other_org = await add_user(conn, roles=("orthopaedics",), org="org-b")
    suspended = await add_user(conn, roles=("orthopaedics",), status="suspended")
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[], roles=["orthopaedics"], now=NOW)
    members = await threads.participants(conn, tid)
    assert ortho in members
    assert other_org not in members and suspended not in members


async def test_unknown_participant_is_refused_and_nothing_is_created(
        conn: asyncpg.Connection) -> None:
    a = await add_user(conn)
    tid = str(uuid.uuid4())
    with pytest.raises(InvalidInput) as err:
        await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                    priority="routine", users=[str(uuid.uuid4())], roles=[],
                                    now=NOW)
    assert err.value.code.value == "validation_failed"
    assert await conn.fetchval("SELECT count(*) FROM threads") == 0


async def test_only_participants_can_add_or_remove(conn: asyncpg.Connection) -> None:
    a, b, outsider = [await add_user(conn) for _ in range(3)]
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[], roles=[], now=NOW)
    with pytest.raises(Forbidden) as err:
        await threads.add_participants(conn, thread_id=tid, actor=outsider, users=[b], roles=[],
                                       now=NOW)
    assert err.value.code.value == "not_thread_member"
    await threads.add_participants(conn, thread_id=tid, actor=a, users=[b], roles=[], now=NOW)
    assert b in await threads.participants(conn, tid)
    await threads.remove_participant(conn, thread_id=tid, actor=a, user_id=b, now=NOW)
    assert b not in await threads.participants(conn, tid)
    with pytest.raises(NotFound):
        await threads.remove_participant(conn, thread_id=tid, actor=a, user_id=b, now=NOW)


async def test_unknown_thread_is_thread_not_found(conn: asyncpg.Connection) -> None:
    a = await add_user(conn)
    with pytest.raises(NotFound) as err:
        await threads.is_participant(conn, str(uuid.uuid4()), a)
    assert err.value.code.value == "thread_not_found"


async def test_device_set_separates_active_from_revoked_and_suspended(
        conn: asyncpg.Connection) -> None:
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    b2 = await add_device(conn, b, status="revoked")
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[b], roles=[], now=NOW)
    ds = await threads.device_set(conn, tid)
    assert ds.active == {a1, b1}
    assert ds.inactive == {b2}


async def test_messages_take_consecutive_sequence_numbers_and_count_as_unread(
        conn: asyncpg.Connection) -> None:
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[b], roles=[], now=NOW)
    seqs = [await store(conn, new_message(tid, a, a1, [b1], body=bytes([i])))
            for i in range(3)]
    assert seqs == [1, 2, 3]
    (summary,) = await threads.list_threads(conn, b)
    assert summary.unread == 3
    await threads.mark_read(conn, tid, b, 2)
    await threads.mark_read(conn, tid, b, 1)  # never moves backwards
    (summary,) = await threads.list_threads(conn, b)
    assert summary.unread == 1


async def test_a_stored_message_is_found_by_sender_device_and_id_with_its_hash(
        conn: asyncpg.Connection) -> None:
    """What the send pipeline compares a retry against (server/sends.py: the same bytes are
    the original acceptance, other bytes ``duplicate_conflict``; tested there end to end)."""
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[b], roles=[], now=NOW)
    msg = new_message(tid, a, a1, [b1], body=b"first")
    seq = await store(conn, msg)
    other = new_message(tid, a, a1, [b1])
    found = await batches.existing_messages(
        conn, [(a1, msg.message_id), (a1, other.message_id), (b1, msg.message_id)])
    assert list(found) == [(a1, msg.message_id)]  # only that device's message, once
    existing = found[(a1, msg.message_id)]
    assert (existing.thread_id, existing.thread_seq, existing.body_hash) == (
        tid, seq, hashlib.sha256(b"first").digest())


async def test_deliveries_come_in_order_and_only_the_owner_can_acknowledge(
        conn: asyncpg.Connection) -> None:
    a, b, c = [await add_user(conn) for _ in range(3)]
    a1, b1, c1 = [await add_device(conn, u) for u in (a, b, c)]
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[b, c], roles=[], now=NOW)
    for i in range(5):
        await store(conn, new_message(tid, a, a1, [b1, c1], body=bytes([i])))
    page1 = await messages.fetch_deliveries(conn, b1, after_pk=0, limit=3)
    page2 = await messages.fetch_deliveries(conn, b1, after_pk=page1[-1].delivery_pk, limit=3)
    assert [d.thread_seq for d in page1 + page2] == [1, 2, 3, 4, 5]
    # c1 tries to acknowledge b1's deliveries: nothing happens to them
    assert await messages.ack(conn, c1, [d.delivery_id for d in page1]) == []
    assert await messages.queue_depth(conn, b1) == 5
    removed = await messages.ack(conn, b1, [d.delivery_id for d in page1])
    assert len(removed) == 3
    assert await messages.queue_depth(conn, b1) == 2
    assert await messages.queue_depth(conn, c1) == 5


async def test_ciphertext_is_purged_once_every_device_acknowledged(
        conn: asyncpg.Connection) -> None:
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[b], roles=[], now=NOW)
    await store(conn, new_message(tid, a, a1, [b1]))
    later = NOW + dt.timedelta(hours=1)
    assert await messages.purge_delivered_ciphertext(conn, older_than=later) == 0
    (d,) = await messages.fetch_deliveries(conn, b1, after_pk=0, limit=10)
    await messages.ack(conn, b1, [d.delivery_id])
    assert await messages.purge_delivered_ciphertext(conn, older_than=later) == 1
    assert await conn.fetchval("SELECT sealed FROM messages") is None
