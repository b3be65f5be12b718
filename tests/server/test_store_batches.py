"""server/store/batches.py: the set-based storage of group commit (thread locks, what a batch's
checks read, what it writes), against the real Postgres. Who the threads reach is tested with
the other readers of the rule in test_store_threads.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import uuid

import asyncpg
import msgspec
import pytest

from server.store import batches, escalations, messages, threads
from tests.helpers import eventually
from tests.server.test_store_threads import NOW, add_device, add_user, new_message


async def new_thread(conn: asyncpg.Connection, creator: str, *users: str,
                     org: str = "org-a", roles: tuple[str, ...] = ()) -> str:
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id=org, creator=creator,
                                priority="routine", users=list(users), roles=list(roles),
                                now=NOW)
    return tid


async def waits_for_a_lock(observer: asyncpg.Connection, conn: asyncpg.Connection) -> bool:
    """Postgres shows ``conn``'s statement waiting for a lock (a thread's row lock here)."""
    event = await observer.fetchval(
        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", conn.get_server_pid())
    return bool(event == "Lock")


async def test_locking_names_the_organisation_of_each_existing_thread_only(
        conn: asyncpg.Connection, db_dsn: str) -> None:
    a, b = await add_user(conn), await add_user(conn, org="org-b")
    ta, tb = await new_thread(conn, a), await new_thread(conn, b, org="org-b")
    spare = await new_thread(conn, a)
    missing = str(uuid.uuid4())
    other = await asyncpg.connect(db_dsn)
    try:
        async with conn.transaction():
            reads = await batches.lock_and_read(conn, [tb, missing, ta, ta], [], NOW)
            assert reads.orgs == {ta: "org-a", tb: "org-b"}
            assert set(reads.members) == set(reads.device_sets) == {ta, tb}
            for tid in (ta, tb):  # held until the batch's transaction ends
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await other.execute("SELECT 1 FROM threads WHERE thread_id = $1 "
                                        "FOR UPDATE NOWAIT", tid)
            await other.execute(  # a thread the batch does not name is not locked
                "SELECT 1 FROM threads WHERE thread_id = $1 FOR UPDATE NOWAIT", spare)
        await other.execute("SELECT 1 FROM threads WHERE thread_id = $1 FOR UPDATE NOWAIT", ta)
    finally:
        await other.close()


async def test_the_reads_see_what_the_transaction_holding_the_lock_committed(
        conn: asyncpg.Connection, db_dsn: str) -> None:
    """A batch that waits for another batch's thread lock reads after that one commits: its
    retry, a member added and a device enrolled with it are all seen (one statement that
    locked and read would keep the snapshot it started with, from before the wait)."""
    a, b, c = await add_user(conn), await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = await new_thread(conn, a, b)
    msg = new_message(tid, a, a1, [b1])
    holder = await asyncpg.connect(db_dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await batches.lock_and_read(holder, [tid], [], NOW)
        await batches.store_messages(holder, [msg], NOW, channel="c", notifications=[])
        await holder.execute("INSERT INTO thread_members (thread_id, user_id, added_at, "
                             "added_by) VALUES ($1, $2, $3, $4)", tid, c, NOW, a)
        c1 = await add_device(holder, c)
        async with conn.transaction():
            waiting = asyncio.ensure_future(batches.lock_and_read(
                conn, [tid], [(a1, msg.message_id)], NOW))

            await eventually(lambda: waits_for_a_lock(holder, conn))
            assert not waiting.done()
            await tx.commit()
            reads = await waiting
        assert reads.members[tid] == {a, b, c}
        assert reads.device_sets[tid].active == {a1, b1, c1}
        assert reads.existing[(a1, msg.message_id)].thread_seq == 1
    finally:
        await holder.close()


async def test_messages_are_numbered_per_thread_in_batch_order_across_batches(
        conn: asyncpg.Connection) -> None:
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    t1, t2 = await new_thread(conn, a, b), await new_thread(conn, a, b)
    first = [new_message(t, a, a1, [b1]) for t in (t1, t2, t1, t1)]
    async with conn.transaction():
        stored = await batches.store_messages(conn, first, NOW, channel="c", notifications=[])
    assert [stored[(m.sender_device_id, m.message_id)].thread_seq for m in first] == [1, 1, 2, 3]
    second = [new_message(t, a, a1, [b1]) for t in (t2, t1)]
    async with conn.transaction():
        stored = await batches.store_messages(conn, second, NOW, channel="c", notifications=[])
    assert [stored[(m.sender_device_id, m.message_id)].thread_seq for m in second] == [2, 4]
    assert await conn.fetchval("SELECT last_seq FROM threads WHERE thread_id = $1", t1) == 4
    by_id = {r["m"]: r["message_pk"] for r in await conn.fetch(
        "SELECT message_id::text AS m, message_pk FROM messages")}
    assert [by_id[m.message_id] for m in first] == sorted(by_id[m.message_id] for m in first)
    assert [stored[(a1, m.message_id)].message_pk for m in second] == [
        by_id[m.message_id] for m in second]  # primary keys in batch order too


async def test_each_recipient_device_gets_one_delivery_in_batch_order_with_its_rank(
        conn: asyncpg.Connection) -> None:
    a, b, c = [await add_user(conn) for _ in range(3)]
    a1 = await add_device(conn, a)
    b1, b2, c1 = await add_device(conn, b), await add_device(conn, b), await add_device(conn, c)
    tid = await new_thread(conn, a, b, c)
    routine = new_message(tid, a, a1, [b1, b2, c1])
    urgent = msgspec.structs.replace(new_message(tid, a, a1, [c1, b1]), priority="urgent")
    async with conn.transaction():
        stored = await batches.store_messages(conn, [routine, urgent], NOW, channel="c",
                                              notifications=[])
    rows = await conn.fetch(
        "SELECT device_id::text AS d, message_pk, priority, created_at, held FROM deliveries "
        "ORDER BY delivery_pk")
    pk_r = stored[(a1, routine.message_id)].message_pk
    pk_u = stored[(a1, urgent.message_id)].message_pk
    assert [(r["d"], r["message_pk"], r["priority"]) for r in rows] == [
        (b1, pk_r, 1), (b2, pk_r, 1), (c1, pk_r, 1), (c1, pk_u, 0), (b1, pk_u, 0)]
    assert {r["created_at"] for r in rows} == {NOW} and not any(r["held"] for r in rows)
    sealed = await conn.fetchrow("SELECT sealed, size, body_hash, recipients::text[] AS r "
                                 "FROM messages WHERE message_pk = $1", pk_r)
    assert (bytes(sealed["sealed"]), sealed["size"], bytes(sealed["body_hash"]),
            sealed["r"]) == (routine.sealed, len(routine.sealed), routine.body_hash,
                             [b1, b2, c1])


async def test_the_notifications_go_out_when_the_batch_commits_and_never_when_it_rolls_back(
        conn: asyncpg.Connection, db_dsn: str) -> None:
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = await new_thread(conn, a, b)
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(db_dsn)
    try:
        await listener.add_listener("batch_test", lambda *args: heard.put_nowait(args[-1]))
        payloads = [json.dumps({"n": 1}), json.dumps({"n": 2})]
        try:
            async with conn.transaction():
                await batches.store_messages(conn, [new_message(tid, a, a1, [b1])], NOW,
                                             channel="batch_test", notifications=payloads)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        async with conn.transaction():
            await batches.store_messages(conn, [new_message(tid, a, a1, [b1])], NOW,
                                         channel="batch_test", notifications=payloads)
        got = [await asyncio.wait_for(heard.get(), 10) for _ in payloads]
        await listener.execute("SELECT 1")  # a round trip: anything else queued has arrived
        assert got == payloads and heard.empty()
        assert await conn.fetchval("SELECT count(*) FROM messages") == 1
    finally:
        await listener.close()


async def test_the_reads_split_active_devices_from_stale_with_organisations(
        conn: asyncpg.Connection) -> None:
    a, b = await add_user(conn), await add_user(conn)
    suspended = await add_user(conn, status="suspended")
    elsewhere = await add_user(conn, org="org-b")
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    b_old = await add_device(conn, b, status="revoked")
    s1, e1 = await add_device(conn, suspended), await add_device(conn, elsewhere)
    t1 = await new_thread(conn, a, b)
    t2 = await new_thread(conn, a)
    await conn.executemany(  # a suspended member, and one of another organisation
        "INSERT INTO thread_members (thread_id, user_id, added_at, added_by) "
        "VALUES ($1, $2, $3, $4)", [(t1, suspended, NOW, a), (t2, elsewhere, NOW, a)])
    reads = await batches.lock_and_read(conn, [t1, t2], [], NOW)
    assert reads.members == {t1: {a, b, suspended}, t2: {a, elsewhere}}
    sets = reads.device_sets
    assert sets[t1].active == {a1, b1} and sets[t1].inactive == {b_old, s1}
    assert sets[t2].active == {a1, e1} and sets[t2].inactive == frozenset()
    assert sets[t2].orgs == {a1: "org-a", e1: "org-b"}
    assert set(sets[t1].orgs) == {a1, b1, b_old, s1}


async def test_the_reads_find_retries_by_sender_device_and_id_only(
        conn: asyncpg.Connection) -> None:
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = await new_thread(conn, a, b)
    msg = new_message(tid, a, a1, [b1])
    async with conn.transaction():
        await batches.store_messages(conn, [msg], NOW, channel="c", notifications=[])
    other = str(uuid.uuid4())
    reads = await batches.lock_and_read(
        conn, [tid], [(a1, msg.message_id), (b1, msg.message_id), (a1, other)], NOW)
    assert list(reads.existing) == [(a1, msg.message_id)]
    assert reads.existing[(a1, msg.message_id)].thread_seq == 1


async def test_only_threads_with_a_role_or_a_pending_reseal_are_routed(
        conn: asyncpg.Connection) -> None:
    """server/oncall.py's after-store work is skipped for the others: a thread counts while a
    role is on it, or while a reseal request of it is not done (even once its role is gone)."""
    a, b = await add_user(conn, roles=("cardiology",)), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    plain, with_role = await new_thread(conn, a, b), await new_thread(
        conn, b, roles=("cardiology",))
    resealing = await new_thread(conn, a, b)
    msg = new_message(resealing, a, a1, [b1])
    async with conn.transaction():
        stored = await batches.store_messages(conn, [msg], NOW, channel="c", notifications=[])
    esc = await escalations.create(
        conn, message_pk=stored[(a1, msg.message_id)].message_pk, message_id=msg.message_id,
        thread_id=resealing, sender_user_id=a, org_id="org-a", role="cardiology",
        shift_id=str(uuid.uuid4()), ladder=[b], deadline=60, due_at=NOW, shift_ends_at=NOW,
        now=NOW)
    assert esc is not None
    await escalations.request_reseal(conn, escalation_id=esc.escalation_id, thread_id=resealing,
                                     devices=[b1], holders=[a1], now=NOW,
                                     deadline=NOW + dt.timedelta(minutes=5))
    all_three = [plain, with_role, resealing]
    assert (await batches.lock_and_read(conn, all_three, [], NOW)).routed == {
        with_role, resealing}
    await escalations.reseal_done(conn, esc.escalation_id, NOW)
    await conn.execute("UPDATE thread_roles SET removed_at = $1", NOW)
    assert (await batches.lock_and_read(conn, all_three, [], NOW)).routed == frozenset()


async def _digest(conn: asyncpg.Connection, tid: str) -> bytes:
    return (await batches.lock_and_read(conn, [tid], [], NOW)).digests[tid]


async def test_a_threads_digest_changes_with_everything_the_checks_read_and_nothing_else(
        conn: asyncpg.Connection) -> None:
    """The digest covers the organisation, the participants, their devices (organisation,
    active or not) and on-call work; a message stored in the thread leaves it as it was."""
    a, b, c = await add_user(conn), await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid, other = await new_thread(conn, a, b), await new_thread(conn, a, b)
    seen = [await _digest(conn, tid)]
    assert len(seen[0]) == 32  # SHA-256
    assert await _digest(conn, other) == seen[0]  # state only: compared thread by thread

    async def changed(sql: str, *args: object) -> None:
        await conn.execute(sql, *args)
        seen.append(await _digest(conn, tid))
        assert seen[-1] not in seen[:-1], sql

    async with conn.transaction():
        await batches.store_messages(conn, [new_message(tid, a, a1, [b1])], NOW, channel="c",
                                     notifications=[])
    assert await _digest(conn, tid) == seen[0]
    await changed("INSERT INTO thread_members (thread_id, user_id, added_at, added_by) "
                  "VALUES ($1, $2, $3, $4)", tid, c, NOW, a)
    c1 = await add_device(conn, c)
    seen.append(await _digest(conn, tid))
    assert seen[-1] not in seen[:-1]  # a participant's device enrolled
    await changed("UPDATE devices SET status = 'revoked' WHERE device_id = $1", c1)
    await changed("UPDATE users SET status = 'suspended' WHERE user_id = $1", b)
    await changed("UPDATE users SET org_id = 'org-b' WHERE user_id = $1", c)
    await changed("UPDATE thread_members SET removed_at = $2 WHERE thread_id = $1 "
                  "AND user_id = $3", tid, NOW, c)
    await changed("INSERT INTO thread_roles (thread_id, role, added_at) "
                  "VALUES ($1, 'cardiology', $2)", tid, NOW)


async def test_a_batch_of_unchanged_threads_is_stored_and_committed_in_one_statement(
        conn: asyncpg.Connection, db_dsn: str) -> None:
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    t1, t2 = await new_thread(conn, a, b), await new_thread(conn, a, b)
    reads = await batches.lock_and_read(conn, [t1, t2], [], NOW)
    msgs = [new_message(t, a, a1, [b1]) for t in (t1, t2, t1)]
    heard: asyncio.Queue[str] = asyncio.Queue()
    other = await asyncpg.connect(db_dsn)
    try:
        await other.add_listener("known_test", lambda *args: heard.put_nowait(args[-1]))
        result = await batches.lock_and_store(conn, reads.digests, reads.epoch, NOW, msgs, NOW,
                                              channel="known_test", notifications=["wake"])
        assert result is not None and (result.by_epoch, result.epoch) == (True, reads.epoch)
        stored = result.stored
        assert [stored[(m.sender_device_id, m.message_id)].thread_seq for m in msgs] == [1, 1, 2]
        assert not conn.is_in_transaction()
        # Committed: another connection sees the messages and deliveries, and heard the wake-up.
        assert await other.fetchval("SELECT count(*) FROM messages") == 3
        assert await other.fetchval("SELECT count(*) FROM deliveries WHERE device_id = $1",
                                    b1) == 3
        assert await asyncio.wait_for(heard.get(), 10) == "wake"
    finally:
        await other.close()


@pytest.mark.parametrize("epoch", ["as read", "none"])
@pytest.mark.parametrize("change", ["device", "member", "retry", "thread"])
async def test_nothing_is_stored_when_a_thread_changed_or_a_message_is_a_retry(
        conn: asyncpg.Connection, db_dsn: str, change: str, epoch: str) -> None:
    """Whether the epoch given is the one read with the state (and has moved since) or there
    is none (the digests decide at once)."""
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = await new_thread(conn, a, b)
    reads = await batches.lock_and_read(conn, [tid], [], NOW)
    digests, given = reads.digests, (reads.epoch if epoch == "as read" else None)
    msg = new_message(tid, a, a1, [b1])
    if change == "device":
        await add_device(conn, b)
    elif change == "member":
        await conn.execute("UPDATE thread_members SET removed_at = $2 WHERE thread_id = $1 "
                           "AND user_id = $3", tid, NOW, b)
    elif change == "retry":
        async with conn.transaction():
            await batches.store_messages(conn, [msg], NOW, channel="c", notifications=[])
    else:  # a digest for a thread that does not exist
        digests = {**digests, str(uuid.uuid4()): digests[tid]}
    before = await conn.fetchval("SELECT count(*) FROM messages")
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(db_dsn)
    try:
        await listener.add_listener("known_test", lambda *args: heard.put_nowait(args[-1]))
        assert await batches.lock_and_store(conn, digests, given, NOW, [msg], NOW,
                                            channel="known_test", notifications=["wake"]) is None
        await listener.execute("SELECT 1")
        assert heard.empty()
    finally:
        await listener.close()
    assert await conn.fetchval("SELECT count(*) FROM messages") == before
    assert await conn.fetchval("SELECT last_seq FROM threads WHERE thread_id = $1", tid) == (
        1 if change == "retry" else 0)


async def test_the_store_of_known_threads_waits_for_the_lock_and_sees_what_its_holder_did(
        conn: asyncpg.Connection, db_dsn: str) -> None:
    """Its comparison runs after the lock is granted, on a snapshot taken then: a device
    enrolled by the transaction that held the thread is seen, and nothing is stored."""
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = await new_thread(conn, a, b)
    reads = await batches.lock_and_read(conn, [tid], [], NOW)
    holder = await asyncpg.connect(db_dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await batches.lock_and_read(holder, [tid], [], NOW)
        await add_device(holder, b)
        waiting = asyncio.ensure_future(batches.lock_and_store(
            conn, reads.digests, reads.epoch, NOW, [new_message(tid, a, a1, [b1])], NOW,
            channel="c", notifications=[]))

        await eventually(lambda: waits_for_a_lock(holder, conn))
        assert not waiting.done()
        await tx.commit()
        assert await waiting is None
    finally:
        await holder.close()
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


# -- the directory epoch (alembic migration 0016) -------------------------------------------


async def _epoch(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT n FROM directory_epoch"))


async def test_every_change_the_digest_covers_advances_the_epoch_once_per_transaction(
        conn: asyncpg.Connection) -> None:
    """The same changes as the digest test above, each in a transaction of its own, and the
    thread's deletion: each moves the epoch on by one, however many rows it touched."""
    a, b, c = await add_user(conn), await add_user(conn), await add_user(conn)
    await add_device(conn, a)
    tid = await new_thread(conn, a, b)
    c1 = str(uuid.uuid4())
    changes = [
        ("INSERT INTO thread_members (thread_id, user_id, added_at, added_by) "
         "VALUES ($1, $2, $3, $4)", tid, c, NOW, a),
        ("INSERT INTO devices (device_id, user_id, kind, device_certificate, signing_key, "
         "dh_key, status, created_at) VALUES ($1, $2, 'mobile', 'cert', $3, $3, 'active', $4)",
         c1, c, bytes(32), NOW),
        ("UPDATE devices SET status = 'revoked' WHERE device_id = $1", c1),
        ("UPDATE users SET status = 'suspended' WHERE user_id = $1", b),
        ("UPDATE users SET org_id = 'org-b' WHERE user_id = $1", c),
        ("UPDATE thread_members SET removed_at = $2 WHERE thread_id = $1 AND user_id = $3",
         tid, NOW, c),
        ("INSERT INTO thread_roles (thread_id, role, added_at) VALUES ($1, 'cardiology', $2)",
         tid, NOW),
        ("UPDATE thread_roles SET removed_at = $2 WHERE thread_id = $1", tid, NOW),
        ("UPDATE threads SET org_id = 'org-b' WHERE thread_id = $1", tid),
        ("DELETE FROM devices WHERE device_id = $1", c1),
        ("UPDATE devices SET status = 'revoked' WHERE user_id = ANY ($1::uuid[])", [a, b, c]),
        ("DELETE FROM threads WHERE thread_id = $1", tid),
    ]
    for sql, *args in changes:
        before = await _epoch(conn)
        await conn.execute(sql, *args)
        assert await _epoch(conn) == before + 1, sql
    before = await _epoch(conn)
    async with conn.transaction():  # several changes, one transaction: one step
        d = await add_user(conn)
        await add_device(conn, d)
        await add_device(conn, d)
        await new_thread(conn, a, d)
    assert await _epoch(conn) == before + 1


async def test_what_the_digest_does_not_cover_leaves_the_epoch_alone(
        conn: asyncpg.Connection) -> None:
    """Messages, read marks (also of someone a role reaches, whose row is born removed),
    a device seen or wiped, a user's name, roles or password: nothing a send checks."""
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = await new_thread(conn, a, b)
    outsider = await add_user(conn)
    before = await _epoch(conn)
    async with conn.transaction():
        await batches.store_messages(conn, [new_message(tid, a, a1, [b1])], NOW, channel="c",
                                     notifications=[])
    await threads.mark_read(conn, tid, b, 1, now=NOW)
    await threads.mark_read(conn, tid, outsider, 1, now=NOW)
    await conn.execute("UPDATE devices SET last_seen_at = $2, wipe_pending = false "
                       "WHERE device_id = $1", b1, NOW)
    await conn.execute("UPDATE users SET display_name = 'Dr Renamed', roles = '{x}', "
                       "password_hash = 'h' WHERE user_id = $1", b)
    await conn.execute("UPDATE devices SET status = 'active' WHERE device_id = $1", b1)
    await conn.execute("UPDATE users SET status = 'active' WHERE user_id = $1", b)
    assert await _epoch(conn) == before
    assert (await batches.lock_and_read(conn, [tid], [], NOW)).epoch == before


async def test_a_current_epoch_stores_without_a_digest_and_a_moved_one_compares_them(
        conn: asyncpg.Connection) -> None:
    """The epoch decides alone while it is current: a change made with the triggers off (so
    that it does not advance the epoch) goes unseen with the epoch given and is refused on
    the digests without one. An epoch moved by another thread's change costs a digest
    comparison, and the store answers the new epoch, current for the next batch."""
    a, b, c = await add_user(conn), await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = await new_thread(conn, a, b)
    reads = await batches.lock_and_read(conn, [tid], [], NOW)
    assert reads.epoch is not None

    async def store(epoch: int | None) -> batches.KnownStored | None:
        return await batches.lock_and_store(conn, reads.digests, epoch, NOW,
                                            [new_message(tid, a, a1, [b1])], NOW, channel="c",
                                            notifications=[])

    first = await store(reads.epoch)
    assert first is not None and (first.by_epoch, first.epoch) == (True, reads.epoch)
    await new_thread(conn, a, c)  # another thread: the epoch moves, this thread's state not
    second = await store(reads.epoch)
    assert second is not None and second.by_epoch is False
    assert second.epoch == reads.epoch + 1
    third = await store(second.epoch)
    assert third is not None and third.by_epoch is True

    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # no triggers
        await add_device(conn, b)
    assert await _epoch(conn) == second.epoch
    assert await store(None) is None  # the digests see the device
    trusted = await store(second.epoch)
    assert trusted is not None and trusted.by_epoch is True
    assert [r["n"] for r in await conn.fetch(
        "SELECT thread_seq AS n FROM messages WHERE thread_id = $1 ORDER BY 1", tid)] == [
            1, 2, 3, 4]


async def test_the_epoch_joins_no_deadlock_with_the_thread_locks(
        conn: asyncpg.Connection, db_dsn: str) -> None:
    """One transaction holds a thread's lock and adds a member; another has enrolled a device
    and then waits for that thread. Were the epoch's row taken at the change, each would wait
    for the other; it is taken at the commit, so the first commits and the second goes on."""
    a, b, c = await add_user(conn), await add_user(conn), await add_user(conn)
    tid = await new_thread(conn, a, b)
    before = await _epoch(conn)
    other = await asyncpg.connect(db_dsn)
    try:
        first, second = conn.transaction(), other.transaction()
        await first.start()
        await second.start()
        await batches.lock_and_read(conn, [tid], [], NOW)  # the thread's lock
        await add_device(other, c)
        waiting = asyncio.ensure_future(batches.lock_and_read(other, [tid], [], NOW))
        await eventually(lambda: waits_for_a_lock(conn, other))
        await conn.execute("INSERT INTO thread_members (thread_id, user_id, added_at, "
                           "added_by) VALUES ($1, $2, $3, $4)", tid, c, NOW, a)
        await first.commit()
        reads = await asyncio.wait_for(waiting, 10)
        assert c in reads.members[tid]  # read after the first committed
        await second.commit()
    finally:
        await other.close()
    assert await _epoch(conn) == before + 2


# The statement of the release before migration 0016, as its relays send it.
_STATEMENT_BEFORE_0016 = (  # its columns given as today's relay gives them (array text)
    "SELECT * FROM lock_and_store_batch($1::uuid[], $2::bytea[], $3, $4::text::uuid[], "
    "$5::text::uuid[], $6::text::uuid[], $7::text::uuid[], $8::text::text[], "
    "$9::text::smallint[], $10::text::text[], $11::text::uuid[], $12::bytea[], "
    "$13::text::text[], $14::bytea[], $15, $16, $17::text[])")


async def test_a_relay_of_the_release_before_still_stores_by_digest_after_the_upgrade(
        conn: asyncpg.Connection) -> None:
    """A relay still running while migration 0016 is applied (until it is restarted) stores
    through the function it knows, which compares digests: an unchanged thread is stored, a
    thread with a device enrolled since is not."""
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = await new_thread(conn, a, b)
    reads = await batches.lock_and_read(conn, [tid], [], NOW)

    async def send() -> list[asyncpg.Record]:
        msg = new_message(tid, a, a1, [b1])
        rows: list[asyncpg.Record] = await conn.fetch(
            _STATEMENT_BEFORE_0016, [tid], [reads.digests[tid]], NOW, *batches._columns([msg]),
            NOW, "c", [])
        return rows

    assert [r["stored_seq"] for r in await send()] == [1]
    await add_device(conn, b)
    assert await send() == []
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1


async def test_each_delivery_stored_lists_its_devices_other_deliveries_still_queued(
        conn: asyncpg.Connection) -> None:
    """What lets a relay write a delivery it stored without reading it back (alembic migration
    0017): per delivery to a device the relay names as connected to it, the ids of the device's
    other deliveries still queued and not held, in queue order, whatever their thread.
    Acknowledged, held, other devices' and the same batch's deliveries are not listed; for a
    device not named, nothing is asked."""
    a, b, c = await add_user(conn), await add_user(conn), await add_user(conn)
    a1, b1, c1 = await add_device(conn, a), await add_device(conn, b), await add_device(conn, c)
    t1, t2 = await new_thread(conn, a, b, c), await new_thread(conn, a, b)

    async def send(*msgs: messages.NewMessage) -> dict[tuple[str, str], batches.Stored]:
        async with conn.transaction():
            return await batches.store_messages(conn, list(msgs), NOW, channel="c",
                                                notifications=[], local=[b1, c1])

    def to(stored: dict[tuple[str, str], batches.Stored], msg: messages.NewMessage,
           device: str) -> batches.StoredDelivery:
        (d,) = [d for d in stored[(a1, msg.message_id)].deliveries if d.device_id == device]
        return d

    first, acked, held = (new_message(t1, a, a1, [b1, c1]) for _ in range(3))
    elsewhere = new_message(t2, a, a1, [b1])
    s = await send(first, acked, held, elsewhere)
    assert to(s, elsewhere, b1).queued == ()  # the same batch's are not listed
    assert [d.device_id for d in s[(a1, first.message_id)].deliveries] == [b1, c1]
    await messages.ack(conn, b1, [to(s, acked, b1).delivery_id])
    await conn.execute("UPDATE deliveries SET held = true WHERE delivery_id = $1",
                       to(s, held, b1).delivery_id)
    later = new_message(t1, a, a1, [b1, c1])
    s2 = await send(later)
    assert to(s2, later, b1).queued == (to(s, first, b1).delivery_id,
                                        to(s, elsewhere, b1).delivery_id)
    assert to(s2, later, c1).queued == tuple(
        to(s, m, c1).delivery_id for m in (first, acked, held))
    row = await conn.fetchrow("SELECT delivery_pk, device_id::text AS d FROM deliveries "
                              "WHERE delivery_id = $1", to(s2, later, b1).delivery_id)
    assert (row["delivery_pk"], row["d"]) == (to(s2, later, b1).delivery_pk, b1)
    elsewhere_only = new_message(t1, a, a1, [b1, c1])
    async with conn.transaction():
        s3 = await batches.store_messages(conn, [elsewhere_only], NOW, channel="c",
                                          notifications=[], local=[c1])
    assert to(s3, elsewhere_only, b1).queued is None  # b1 is connected elsewhere: not asked
    before = to(s2, later, c1)
    assert before.queued is not None
    assert to(s3, elsewhere_only, c1).queued == (*before.queued, before.delivery_id)


async def test_a_delivery_with_more_queued_than_listed_says_so(
        conn: asyncpg.Connection) -> None:
    """Past the store's limit the list is cut, and a cut list must never pass for complete."""
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = await new_thread(conn, a, b)
    ahead = [new_message(tid, a, a1, [b1]) for _ in range(batches.QUEUED_LIMIT)]
    async with conn.transaction():
        await batches.store_messages(conn, ahead[:-1], NOW, channel="c", notifications=[])
        last = await batches.store_messages(conn, ahead[-1:], NOW, channel="c",
                                            notifications=[], local=[b1])
        over = new_message(tid, a, a1, [b1])
        stored = await batches.store_messages(conn, [over], NOW, channel="c",
                                              notifications=[], local=[b1])
    (d,) = last[(a1, ahead[-1].message_id)].deliveries
    assert d.queued is not None and len(d.queued) == batches.QUEUED_LIMIT - 1
    (d,) = stored[(a1, over.message_id)].deliveries
    assert d.queued is None


async def test_a_message_to_no_device_is_stored_without_deliveries(
        conn: asyncpg.Connection) -> None:
    a = await add_user(conn)
    a1 = await add_device(conn, a)
    tid = await new_thread(conn, a)
    msg = new_message(tid, a, a1, [])
    async with conn.transaction():
        stored = await batches.store_messages(conn, [msg], NOW, channel="c", notifications=[])
    assert stored[(a1, msg.message_id)].deliveries == ()
    assert stored[(a1, msg.message_id)].thread_seq == 1


# The statement of the release before migration 0017, as its relays send it.
_STATEMENT_BEFORE_0017 = (  # its columns given as today's relay gives them (array text)
    "SELECT * FROM lock_and_store_batch($1::uuid[], $2::bytea[], $3::bigint, $4, "
    "$5::text::uuid[], $6::text::uuid[], $7::text::uuid[], $8::text::uuid[], "
    "$9::text::text[], $10::text::smallint[], $11::text::text[], $12::text::uuid[], "
    "$13::bytea[], $14::text::text[], $15::bytea[], $16, $17, $18::text[])")


async def test_a_relay_of_the_release_before_0017_still_stores_after_the_upgrade(
        conn: asyncpg.Connection) -> None:
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tid = await new_thread(conn, a, b)
    reads = await batches.lock_and_read(conn, [tid], [], NOW)
    msg = new_message(tid, a, a1, [b1])
    rows = await conn.fetch(_STATEMENT_BEFORE_0017, [tid], [reads.digests[tid]], reads.epoch,
                            NOW, *batches._columns([msg]), NOW, "c", [])
    assert [(r["stored_id"], r["stored_seq"], r["epoch"]) for r in rows] == [
        (msg.message_id, 1, reads.epoch)]
    assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE device_id = $1", b1) == 1


@pytest.mark.parametrize("seed", range(5))
async def test_handed_over_deliveries_are_ordered_as_the_queue_read_orders_them(
        conn: asyncpg.Connection, seed: int) -> None:
    """messages.queue_order (the pump's order for deliveries written without a read) against
    fetch_next_deliveries on the same deliveries: urgent first across threads, a routine
    delivery carried forward by a later urgent one of its thread, thread order kept."""
    rng = random.Random(seed)
    a, b = await add_user(conn), await add_user(conn)
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    tids = [await new_thread(conn, a, b) for _ in range(4)]
    new: list[messages.NewDelivery] = []
    for _ in range(4):
        batch = [msgspec.structs.replace(new_message(rng.choice(tids), a, a1, [b1]),
                                     priority=rng.choice(["urgent", "routine"]))
                 for _ in range(rng.randint(1, 5))]
        async with conn.transaction():
            stored = await batches.store_messages(conn, batch, NOW, channel="c",
                                                  notifications=[], local=[b1])
        for m in batch:
            st = stored[(a1, m.message_id)]
            (d,) = st.deliveries
            new.append(messages.NewDelivery(b1, m.thread_id, messages.Delivery(
                d.delivery_pk, d.delivery_id, st.thread_seq, m.priority, NOW, m.sealed),
                d.queued))
    (read,) = await messages.fetch_next_deliveries(
        conn, [messages.DeliveryRequest(b1, [], 100)])
    rng.shuffle(new)
    assert [n.delivery for n in messages.queue_order(new)] == read


def test_ids_go_to_the_store_as_array_text_that_only_uuids_can_shape() -> None:
    """The store's id columns are sent as array text (``uuid_array``): UUIDs and NULL only, so
    no value can add an element, end the array or quote its way out of it."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    assert batches.uuid_array([a, None, b]) == "{" + f"{a},NULL,{b}" + "}"
    assert batches.uuid_array([]) == "{}"
    for bad in ("x},{y", a + "," + b, a.upper(), a + '"', "NULL", "", a[:-1]):
        with pytest.raises(ValueError, match="not a lowercase UUID"):
            batches.uuid_array([a, bad])
