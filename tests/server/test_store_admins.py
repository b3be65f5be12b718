"""IT administrator accounts (server/store/admins.py) on a real database: one account per
login; a login succeeds only with the right password on an enabled account, and every refusal
is the same ``invalid_credentials``, so the answer does not tell which logins exist."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from protocol.errors import ErrorCode
from server.errors import Conflict, Unauthorized
from server.passwords import Passwords
from server.store import admins, at

NOW = 1_800_000_000.0
PASSWORDS = Passwords("cheap")
RIGHT = "correct horse battery staple"


async def created(conn: asyncpg.Connection, login: str = "it.admin") -> str:
    return await admins.create_admin(conn, login, PASSWORDS.hash_sync(RIGHT), now=NOW)


async def refusal(conn: asyncpg.Connection, login: str, password: str) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        await admins.verify_admin_login(conn, PASSWORDS, login, password)
    return info.value


async def test_a_created_administrator_is_found_by_id_and_by_login(
        conn: asyncpg.Connection) -> None:
    admin_id = await created(conn)
    by_id, by_login = await admins.get_admin(conn, admin_id), await admins.get_admin_by_login(
        conn, "it.admin")
    assert by_id == by_login
    assert by_id is not None and (by_id.admin_id, by_id.login, by_id.disabled) == (
        admin_id, "it.admin", False)
    assert by_id.password_hash != RIGHT
    assert await conn.fetchval("SELECT created_at FROM admins") == at(NOW)


async def test_a_login_is_taken_once(conn: asyncpg.Connection) -> None:
    await created(conn)
    with pytest.raises(Conflict) as info:
        await created(conn)
    assert info.value.detail == "an administrator with this login exists"
    assert await conn.fetchval("SELECT count(*) FROM admins") == 1


async def test_an_unknown_administrator_is_none(conn: asyncpg.Connection) -> None:
    assert await admins.get_admin(conn, str(uuid.uuid4())) is None
    assert await admins.get_admin_by_login(conn, "nobody") is None


async def test_the_right_password_logs_the_administrator_in(conn: asyncpg.Connection) -> None:
    admin_id = await created(conn)
    admin = await admins.verify_admin_login(conn, PASSWORDS, "it.admin", RIGHT)
    assert admin.admin_id == admin_id


async def test_a_wrong_password_an_unknown_login_and_a_disabled_account_are_refused_alike(
        conn: asyncpg.Connection) -> None:
    await created(conn)
    await created(conn, "gone.admin")
    await conn.execute("UPDATE admins SET disabled_at = now() WHERE login = 'gone.admin'")
    refusals = [await refusal(conn, "it.admin", "wrong"),
                await refusal(conn, "nobody", RIGHT),
                await refusal(conn, "gone.admin", RIGHT)]
    assert {(r.code, r.detail) for r in refusals} == {
        (ErrorCode.INVALID_CREDENTIALS, "login or password is wrong")}


async def test_a_disabled_account_reads_as_disabled(conn: asyncpg.Connection) -> None:
    admin_id = await created(conn)
    await conn.execute("UPDATE admins SET disabled_at = now()")
    admin = await admins.get_admin(conn, admin_id)
    assert admin is not None and admin.disabled
