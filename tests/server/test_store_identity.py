"""Identity storage without HTTP: admins, lockout backoff, prekey claim (server/store/)."""

from __future__ import annotations

import asyncpg
import pytest

from protocol.errors import ErrorCode
from server.errors import Conflict, Unauthorized
from server.passwords import Passwords
from server.store import admins, lockout


async def test_admin_accounts_are_created_once_and_verified(db_dsn: str) -> None:
    pw = Passwords("cheap")
    conn = await asyncpg.connect(db_dsn)
    try:
        admin_id = await admins.create_admin(conn, "it-admin", pw.hash_sync("long passphrase"))
        with pytest.raises(Conflict):
            await admins.create_admin(conn, "it-admin", pw.hash_sync("other"))
        admin = await admins.verify_admin_login(conn, pw, "it-admin", "long passphrase")
        assert admin.admin_id == admin_id
        for login, password in (("it-admin", "wrong"), ("nobody", "long passphrase")):
            with pytest.raises(Unauthorized) as info:
                await admins.verify_admin_login(conn, pw, login, password)
            assert info.value.code is ErrorCode.INVALID_CREDENTIALS
        stored = await conn.fetchval("SELECT password_hash FROM admins")
        assert "long passphrase" not in stored
    finally:
        await conn.close()


async def test_lockout_backs_off_exponentially_up_to_the_cap(db_dsn: str) -> None:
    policy = lockout.Policy(threshold=3, base=30, cap=100)
    conn = await asyncpg.connect(db_dsn)
    t = 1_800_000_000.0
    try:
        locks = [await lockout.record_failure(conn, "login:amy", policy, now=t + i)
                 for i in range(6)]
        assert locks == [0, 0, 30, 60, 100, 100]
        assert await lockout.retry_after(conn, ["login:amy", "addr:x"], now=t + 6) == 99
        assert await lockout.retry_after(conn, ["addr:x"], now=t + 6) is None
        assert await lockout.retry_after(conn, ["login:amy"], now=t + 200) is None
        # Long after the last failure, the count starts again.
        assert await lockout.record_failure(conn, "login:amy", policy, now=t + 1000) == 0
        await lockout.reset(conn, "login:amy")
        assert await conn.fetchval("SELECT count(*) FROM login_failures") == 0
    finally:
        await conn.close()


async def test_a_delay_remembers_failures_past_its_cap_and_forgotten_rows_are_purged(
        db_dsn: str) -> None:
    """A short delay (cap 8 s) that forgot its count after 8 quiet seconds would let a patient
    guesser start every burst from zero; it forgets after ``forget`` instead."""
    delay = lockout.Policy(threshold=2, base=2, cap=8, forget=600)
    conn = await asyncpg.connect(db_dsn)
    t = 1_800_000_000.0
    try:
        waits = [await lockout.record_failure(conn, "login:amy", delay, now=t + 100 * i)
                 for i in range(5)]
        assert waits == [0, 2, 4, 8, 8]
        await lockout.record_failure(conn, "addr:old", delay, now=t)
        # The next failure, long after both: amy's count starts again, addr:old is purged.
        assert await lockout.record_failure(conn, "login:amy", delay, now=t + 2000) == 0
        assert await conn.fetchval("SELECT array_agg(key) FROM login_failures") == ["login:amy"]
        await lockout.reset(conn, "login:amy")
    finally:
        await conn.close()

