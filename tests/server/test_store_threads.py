"""Thread storage: participants (users and roles), unread counts, device sets, and the message
queue's ordering and acknowledgement rules, against the real Postgres."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid

import asyncpg
import pytest

from server.errors import Forbidden, InvalidInput, NotFound
from server.store import batches, messages, oncall, threads

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


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
        await batches.lock_and_read(conn, [msg.thread_id], [], NOW)
        stored = await batches.store_messages(conn, [msg], NOW, channel="test_store",
                                              notifications=[])
    return stored[(msg.sender_device_id, msg.message_id)].thread_seq



async def two_party_thread(conn: asyncpg.Connection
                           ) -> tuple[str, tuple[str, str], tuple[str, str]]:
    """Users a and b of org-a with one device each, and a routine thread a opened to b:
    ``(thread id, (a, a's device), (b, b's device))``."""
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[b], roles=[], now=NOW)
    return tid, (a, a1), (b, b1)

async def test_creator_and_listed_users_are_participants(conn: asyncpg.Connection) -> None:
    a, b, c = [await add_user(conn) for _ in range(3)]
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a, priority="urgent",
                                users=[b], roles=[], now=NOW)
    assert await threads.participants(conn, tid, NOW) == {a, b}
    assert not await threads.is_participant(conn, tid, c, NOW)


async def test_role_holders_of_the_threads_org_are_participants(conn: asyncpg.Connection) -> None:
    a = await add_user(conn)
    ortho = await add_user(conn, roles=("orthopaedics",))
    other_org = await add_user(conn, roles=("orthopaedics",), org="org-b")
    suspended = await add_user(conn, roles=("orthopaedics",), status="suspended")
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[], roles=["orthopaedics"], now=NOW)
    members = await threads.participants(conn, tid, NOW)
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
    assert b in await threads.participants(conn, tid, NOW)
    await threads.remove_participant(conn, thread_id=tid, actor=a, user_id=b, now=NOW)
    assert b not in await threads.participants(conn, tid, NOW)
    with pytest.raises(NotFound):
        await threads.remove_participant(conn, thread_id=tid, actor=a, user_id=b, now=NOW)


async def test_unknown_thread_is_thread_not_found(conn: asyncpg.Connection) -> None:
    a = await add_user(conn)
    with pytest.raises(NotFound) as err:
        await threads.is_participant(conn, str(uuid.uuid4()), a, NOW)
    assert err.value.code.value == "thread_not_found"


async def test_device_set_separates_active_from_revoked_and_suspended(
        conn: asyncpg.Connection) -> None:
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    b2 = await add_device(conn, b, status="revoked")
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id="org-a", creator=a,
                                priority="routine", users=[b], roles=[], now=NOW)
    ds = await threads.device_set(conn, tid, NOW)
    assert ds.active == {a1, b1}
    assert ds.inactive == {b2}


async def test_messages_take_consecutive_sequence_numbers_and_count_as_unread(
        conn: asyncpg.Connection) -> None:
    tid, (a, a1), (b, b1) = await two_party_thread(conn)
    seqs = [await store(conn, new_message(tid, a, a1, [b1], body=bytes([i])))
            for i in range(3)]
    assert seqs == [1, 2, 3]
    (summary,) = await threads.list_threads(conn, b, at=NOW)
    assert summary.unread == 3
    await threads.mark_read(conn, tid, b, 2, now=NOW)
    await threads.mark_read(conn, tid, b, 1, now=NOW)  # never moves backwards
    (summary,) = await threads.list_threads(conn, b, at=NOW)
    assert summary.unread == 1


async def test_a_stored_message_is_found_by_sender_device_and_id_with_its_hash(
        conn: asyncpg.Connection) -> None:
    """What the send pipeline compares a retry against (server/sends.py: the same bytes are
    the original acceptance, other bytes ``duplicate_conflict``; tested there end to end)."""
    tid, (a, a1), (_, b1) = await two_party_thread(conn)
    msg = new_message(tid, a, a1, [b1], body=b"first")
    seq = await store(conn, msg)
    other = new_message(tid, a, a1, [b1])
    found = (await batches.lock_and_read(
        conn, [tid], [(a1, msg.message_id), (a1, other.message_id), (b1, msg.message_id)],
        NOW)).existing
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


async def test_the_sweep_purges_a_message_that_never_had_a_delivery_from_its_next_sweep_on(
        conn: asyncpg.Connection) -> None:
    """A message with no recipient device has no delivery whose removal would purge it: the
    sweep does, one sweep after it was stored (a send committing while a sweep reads the keys
    is then committed), and looks at it only once."""
    tid, (a, a1), _ = await two_party_thread(conn)
    await store(conn, new_message(tid, a, a1, []))
    assert await messages.purge_delivered_ciphertext(conn) == 0  # marks it for the next
    assert await conn.fetchval("SELECT sealed IS NOT NULL FROM messages")
    assert await messages.purge_delivered_ciphertext(conn) == 1
    assert await conn.fetchval("SELECT sealed FROM messages") is None
    await conn.execute("UPDATE messages SET sealed = '\\x00'")  # as if it had been kept
    assert await messages.purge_delivered_ciphertext(conn) == 0  # behind the sweep now
    assert await conn.fetchval("SELECT swept_to FROM purge_progress") == await conn.fetchval(
        "SELECT message_pk FROM messages")


async def _reach_by_every_path(conn: asyncpg.Connection, tid: str, people: list[str],
                               at: dt.datetime) -> list[set[str]]:
    """Who the thread reaches at ``at`` as each reader of the rule sees it: the send check and
    the recipients endpoint (threads.participants, threads.device_set), the batch store
    (batches.lock_and_read) and the thread list (threads.list_threads of each person)."""
    single = await threads.participants(conn, tid, at)
    batch = (await batches.lock_and_read(conn, [tid], [], at)).members[tid]
    listed = {u for u in people
              if tid in {t.thread_id for t in await threads.list_threads(conn, u, at=at)}}
    ds = await threads.device_set(conn, tid, at)
    owners = {str(r["user_id"]) for r in await conn.fetch(
        "SELECT user_id FROM devices WHERE device_id = ANY($1::uuid[])", sorted(ds.active))}
    return [single, batch, listed, owners]


async def test_every_reader_agrees_on_who_a_role_reaches_across_a_shift_handover(
        conn: asyncpg.Connection) -> None:
    """Certificate holders before the first shift, each ladder during its shift (half-open:
    the incoming ladder from the handover's first instant), the holders again after the last;
    suspended users, users of another organisation (holding the role or on a ladder) and
    removed roles reach nothing. The send
    check, the batch store, the recipients' devices and the thread list must agree at every
    instant, or a sender is refused with device_set_mismatch forever."""
    creator = await add_user(conn)
    holder = await add_user(conn, roles=("ortho_oncall",))
    suspended_holder = await add_user(conn, roles=("ortho_oncall",), status="suspended")
    elsewhere = await add_user(conn, roles=("ortho_oncall",), org="org-b")
    first, first_backup = await add_user(conn), await add_user(conn)
    second = await add_user(conn)
    suspended_backup = await add_user(conn)
    visitor = await add_user(conn, org="org-b")  # on a ladder, but of another organisation
    people = [creator, holder, suspended_holder, elsewhere, first, first_backup, second,
              suspended_backup, visitor]
    for u in people:
        await add_device(conn, u)
    t0, t1, t2 = NOW, NOW + dt.timedelta(hours=8), NOW + dt.timedelta(hours=16)
    await oncall.set_role(conn, org_id="org-a", role="ortho_oncall", display_name="Ortho",
                          urgent_seconds=300, routine_seconds=1800, now=NOW)
    await oncall.add_shift(conn, org_id="org-a", role="ortho_oncall", starts_at=t0, ends_at=t1,
                           ladder=[first, first_backup], now=NOW)
    await oncall.add_shift(conn, org_id="org-a", role="ortho_oncall", starts_at=t1, ends_at=t2,
                           ladder=[second, suspended_backup, visitor], now=NOW)
    await conn.execute("UPDATE users SET status = 'suspended' WHERE user_id = $1",
                       suspended_backup)
    tid, dropped = str(uuid.uuid4()), str(uuid.uuid4())
    for thread in (tid, dropped):
        await threads.create_thread(conn, thread_id=thread, org_id="org-a", creator=creator,
                                    priority="urgent", users=[], roles=["ortho-oncall"],
                                    now=NOW)
    await threads.remove_participant(conn, thread_id=dropped, actor=creator,
                                     role="ortho_oncall", now=NOW)
    # As if a message were stored in each: a thread with none is listed to its creator only.
    await conn.execute("UPDATE threads SET last_seq = 1 WHERE thread_id = ANY($1::uuid[])",
                       [tid, dropped])
    tick = dt.timedelta(microseconds=1)
    expected = {
        t0 - tick: {creator, holder},
        t0: {creator, first, first_backup},
        t1 - tick: {creator, first, first_backup},
        t1: {creator, second},
        t2 - tick: {creator, second},
        t2: {creator, holder},
    }
    for at, reached in expected.items():
        assert await _reach_by_every_path(conn, tid, people, at) == [reached] * 4, at
        assert await _reach_by_every_path(conn, dropped, people, at) == [{creator}] * 4, at


async def test_a_thread_with_no_message_stored_is_listed_to_its_creator_alone(
        conn: asyncpg.Connection) -> None:
    """Its first message on its way, or refused (consent, a size the relay refuses): the
    others would see an empty consult with nothing to read or answer (docs/PROTOCOL.md §11,
    ``GET /v1/threads``); once a message is stored it is theirs too."""
    tid, (a, a1), (b, b1) = await two_party_thread(conn)
    assert [t.thread_id for t in await threads.list_threads(conn, a, at=NOW)] == [tid]
    assert await threads.list_threads(conn, b, at=NOW) == []
    await store(conn, new_message(tid, a, a1, [b1]))
    assert [t.thread_id for t in await threads.list_threads(conn, b, at=NOW)] == [tid]
