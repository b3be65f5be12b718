"""Sessions begun with the hospital's OpenID provider (server/store/sso.py) on a real database:
a family's re-authentication time is kept to the second, a family not begun with SSO has none,
and a family goes with its user."""

from __future__ import annotations

import time
import uuid

import asyncpg
import pytest

from server.store import sso, users
from tests.identity_world import Org, User

NOW = time.time()


async def stored(conn: asyncpg.Connection, user: User) -> User:
    await users.insert_user(conn, user.body, user.cert, user.login, now=NOW)
    return user


async def test_a_recorded_family_must_sign_in_again_at_its_reauth_time(
        conn: asyncpg.Connection) -> None:
    amy = await stored(conn, Org("st-elsewhere").user("amy"))
    family = str(uuid.uuid4())
    await sso.record(conn, family, amy.user_id, reauth_at=1_800_000_000.75)
    assert await sso.reauth_at(conn, family) == 1_800_000_000


async def test_a_family_not_begun_with_sso_has_no_reauth_time(
        conn: asyncpg.Connection) -> None:
    assert await sso.reauth_at(conn, str(uuid.uuid4())) is None


async def test_a_family_is_recorded_once(conn: asyncpg.Connection) -> None:
    amy = await stored(conn, Org("st-elsewhere").user("amy"))
    family = str(uuid.uuid4())
    await sso.record(conn, family, amy.user_id, reauth_at=NOW + 60)
    with pytest.raises(asyncpg.UniqueViolationError):
        await sso.record(conn, family, amy.user_id, reauth_at=NOW + 3600)
    assert await sso.reauth_at(conn, family) == int(NOW + 60)


async def test_a_family_for_an_unknown_user_is_refused(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await sso.record(conn, str(uuid.uuid4()), str(uuid.uuid4()), reauth_at=NOW)


async def test_a_users_sso_families_go_with_the_user(conn: asyncpg.Connection) -> None:
    amy = await stored(conn, Org("st-elsewhere").user("amy"))
    family = str(uuid.uuid4())
    await sso.record(conn, family, amy.user_id, reauth_at=NOW + 60)
    await conn.execute("DELETE FROM users WHERE user_id = $1", uuid.UUID(amy.user_id))
    assert await sso.reauth_at(conn, family) is None


async def test_each_family_keeps_its_own_reauth_time(conn: asyncpg.Connection) -> None:
    org = Org("st-elsewhere")
    amy, ben = await stored(conn, org.user("amy")), await stored(conn, org.user("ben"))
    first, second, third = (str(uuid.uuid4()) for _ in range(3))
    await sso.record(conn, first, amy.user_id, reauth_at=NOW + 60)
    await sso.record(conn, second, amy.user_id, reauth_at=NOW + 120)
    await sso.record(conn, third, ben.user_id, reauth_at=NOW + 180)
    assert [await sso.reauth_at(conn, f) for f in (first, second, third)] == [
        int(NOW + 60), int(NOW + 120), int(NOW + 180)]
