"""The relay's user records (server/store/users.py) on a real database: one user per id and
per login, the key directory's search (active users with valid credentials only, a search
string matched literally), suspension and resumption by revocation list, enrolment codes used
once and never after expiry, and the one rule of a user's standing."""

from __future__ import annotations

import dataclasses
import time

import asyncpg
import pytest

from protocol.errors import ErrorCode
from server.errors import Conflict, RelayError
from server.store import users
from tests.identity_world import Org, User

NOW = time.time()


async def stored(conn: asyncpg.Connection, user: User, *, status: str = "active") -> User:
    await users.insert_user(conn, user.body, user.cert, user.login, now=NOW)
    if status != "pending":
        await users.set_status(conn, user.user_id, status, now=NOW)
    return user


async def status(conn: asyncpg.Connection, user_id: str) -> str:
    user = await users.get_user(conn, user_id)
    assert user is not None
    return user.status


async def found(conn: asyncpg.Connection, q: str, org: Org, *,
                exact_login: bool = False) -> list[str]:
    return [u.login for u in await users.search_directory(
        conn, q, org_ids=[org.org_id], now=NOW, exact_login=exact_login)]


async def test_an_id_or_a_login_is_taken_once(conn: asyncpg.Connection) -> None:
    org = Org("st-elsewhere")
    amy = await stored(conn, org.user("amy.ortho"))
    with pytest.raises(Conflict) as info:
        await users.insert_user(conn, org.user("other").body, "t", "amy.ortho", now=NOW)
    assert info.value.detail == "a user with this login exists"
    with pytest.raises(Conflict) as info:
        await users.insert_user(conn, amy.body, amy.cert, "amy.again", now=NOW)
    assert info.value.detail == "a user with this user id exists"
    got = await users.get_user(conn, amy.user_id)
    assert got is not None and (got.login, got.status) == ("amy.ortho", "active")
    assert await users.get_user(conn, "not-a-uuid") is None


async def test_the_directory_finds_active_credentialed_users_by_any_of_their_words(
        conn: asyncpg.Connection) -> None:
    org, other = Org("st-elsewhere"), Org("county-general")
    await stored(conn, org.user("amy.ortho", display_name="Dr Amy Bone", specialty="Hand"))
    await stored(conn, org.user("ben.derm", roles=("dermatology_oncall",)))
    await stored(conn, org.user("cal.gone", roles=("orthopaedics_oncall",)), status="suspended")
    await stored(conn, org.user("dee.new"), status="pending")
    await stored(conn, org.user("eve.lapsed", licence_expires_at=int(NOW) - 60))
    await stored(conn, other.user("fay.ortho"))
    assert await found(conn, "ORTHO", org) == ["amy.ortho"]  # login or role, any case
    assert await found(conn, "hand", org) == ["amy.ortho"]
    assert await found(conn, "bone", org) == ["amy.ortho"]
    assert await found(conn, "dermatology", org) == ["ben.derm"]
    assert await found(conn, "%", org) == []  # literally a percent sign
    assert await found(conn, "a_y", org) == []  # "_" is no wildcard either ("amy")
    assert await found(conn, "_oncall", org) == ["amy.ortho", "ben.derm"]  # their roles
    assert await found(conn, "amy", org, exact_login=True) == []
    assert await found(conn, "amy.ortho", org, exact_login=True) == ["amy.ortho"]


async def test_a_list_suspends_its_users_and_the_next_list_resumes_the_rest(
        conn: asyncpg.Connection) -> None:
    org = Org("st-elsewhere")
    amy, ben = await stored(conn, org.user("amy")), await stored(conn, org.user("ben"))
    await users.set_password_hash(conn, amy.user_id, "hash", now=NOW)
    both = sorted([amy.user_id, ben.user_id])
    assert await users.suspend(conn, org.org_id, both, now=NOW) == both
    assert await users.suspend(conn, org.org_id, both, now=NOW) == []  # newly only
    assert await users.suspend(conn, "county-general", both, now=NOW) == []
    assert await users.resume_all_but(conn, org.org_id, [ben.user_id], now=NOW) == [amy.user_id]
    assert [await status(conn, u) for u in (amy.user_id, ben.user_id)] == ["active",
                                                                         "suspended"]
    assert await users.resume_all_but(conn, org.org_id, [], now=NOW) == [ben.user_id]
    assert await status(conn, ben.user_id) == "pending"  # never enrolled


async def test_an_enrolment_code_is_used_once_and_never_after_it_expires(
        conn: asyncpg.Connection) -> None:
    amy = await stored(conn, Org("st-elsewhere").user("amy"), status="pending")
    await users.insert_enrolment(conn, b"h" * 32, amy.user_id, b"sealed", expires_at=NOW + 60,
                                 now=NOW)
    with pytest.raises(Conflict):
        await users.insert_enrolment(conn, b"h" * 32, amy.user_id, b"x", expires_at=NOW + 60,
                                     now=NOW)
    assert (await users.get_enrolment(conn, b"h" * 32, now=NOW)).sealed_identity == b"sealed"
    with pytest.raises(RelayError) as info:
        await users.consume_enrolment(conn, b"h" * 32, now=NOW + 60)
    assert info.value.code is ErrorCode.ENROLMENT_CODE_EXPIRED
    assert await users.consume_enrolment(conn, b"h" * 32, now=NOW) == amy.user_id
    with pytest.raises(RelayError) as info:
        await users.consume_enrolment(conn, b"h" * 32, now=NOW)
    assert info.value.code is ErrorCode.ENROLMENT_CODE_USED
    with pytest.raises(RelayError) as info:
        await users.get_enrolment(conn, b"u" * 32, now=NOW)
    assert info.value.code is ErrorCode.ENROLMENT_CODE_INVALID


def test_a_users_standing_reports_suspension_then_licence_then_certificate() -> None:
    """The one rule login, every request and the key directory apply (UserRecord.standing)."""
    now = 1_800_000_000
    user = users.UserRecord(
        user_id="u", org_id="o", login="amy", display_name="Dr Amy", account_kind="clinician",
        roles=[], specialty=None, department=None, licence_expires_at=now + 60,
        cert_not_after=now + 120, identity_key=b"", user_certificate="", status="active",
        password_hash=None)
    assert user.standing(now) is None
    assert user.standing(now + 60) is ErrorCode.LICENCE_EXPIRED
    assert dataclasses.replace(user, licence_expires_at=None).standing(now + 119) is None
    assert dataclasses.replace(user, licence_expires_at=None).standing(
        now + 120) is ErrorCode.CERTIFICATE_EXPIRED
    assert dataclasses.replace(user, status="suspended").standing(
        now + 120) is ErrorCode.USER_SUSPENDED
