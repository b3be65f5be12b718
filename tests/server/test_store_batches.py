"""server/store/batches.py: the set-based storage of group commit (thread locks, sequence
numbers, device sets of many threads at once), against the real Postgres. Who the threads
reach is tested with the other readers of the rule in test_store_threads.py."""

from __future__ import annotations

import uuid

import asyncpg

from server.store import batches, threads
from tests.server.test_store_threads import NOW, add_device, add_user


async def new_thread(conn: asyncpg.Connection, creator: str, *users: str,
                     org: str = "org-a") -> str:
    tid = str(uuid.uuid4())
    await threads.create_thread(conn, thread_id=tid, org_id=org, creator=creator,
                                priority="routine", users=list(users), roles=[], now=NOW)
    return tid


async def test_locking_names_the_organisation_of_each_existing_thread_only(
        conn: asyncpg.Connection) -> None:
    a, b = await add_user(conn), await add_user(conn, org="org-b")
    ta, tb = await new_thread(conn, a), await new_thread(conn, b, org="org-b")
    missing = str(uuid.uuid4())
    async with conn.transaction():
        assert await batches.lock_threads(conn, [tb, missing, ta, ta]) == {
            ta: "org-a", tb: "org-b"}


async def test_sequence_numbers_are_reserved_per_thread_in_consecutive_runs(
        conn: asyncpg.Connection) -> None:
    a = await add_user(conn)
    t1, t2 = await new_thread(conn, a), await new_thread(conn, a)
    assert await batches.reserve_sequence_numbers(conn, {}) == {}
    assert await batches.reserve_sequence_numbers(conn, {t1: 3, t2: 1}) == {t1: 1, t2: 1}
    assert await batches.reserve_sequence_numbers(conn, {t1: 2, t2: 2}) == {t1: 4, t2: 2}
    assert await conn.fetchval("SELECT last_seq FROM threads WHERE thread_id = $1", t1) == 5


async def test_device_sets_of_many_threads_split_active_from_stale_with_organisations(
        conn: asyncpg.Connection) -> None:
    a, b = await add_user(conn), await add_user(conn)
    suspended = await add_user(conn, status="suspended")
    elsewhere = await add_user(conn, org="org-b")
    a1, b1 = await add_device(conn, a), await add_device(conn, b)
    b_old = await add_device(conn, b, status="revoked")
    s1, e1 = await add_device(conn, suspended), await add_device(conn, elsewhere)
    t1, t2 = str(uuid.uuid4()), str(uuid.uuid4())
    members = {t1: {a, b, suspended}, t2: {a, elsewhere}}
    sets = await batches.device_sets(conn, members)
    assert sets[t1].active == {a1, b1} and sets[t1].inactive == {b_old, s1}
    assert sets[t2].active == {a1, e1} and sets[t2].inactive == frozenset()
    assert sets[t2].orgs == {a1: "org-a", e1: "org-b"}
    assert set(sets[t1].orgs) == {a1, b1, b_old, s1}
