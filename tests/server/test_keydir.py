"""The key directory (server/keydir.py) called directly beside a running relay that enrolled
the users: only reachable users are found or handed out (active, of a trusted organisation,
certificate and licence valid), a claim of one-time prekeys is all or nothing and names the
devices it could not serve, and a search is 2 to 64 characters or one exact login
(docs/ARCHITECTURE.md §2 and §4)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable

import pytest

from protocol.errors import ErrorCode
from server.authn import Principal
from server.db import Database
from server.errors import RelayError
from server.keydir import KeyDirectory
from server.prekeys import PrekeyService
from server.trust import Trust
from tests.helpers import make_settings
from tests.identity_world import Device, World

PREKEYS = 3


@pytest.fixture
def keydir(world: World, relay_db: Database) -> KeyDirectory:
    """The directory on the relay's clock (``world.clock``), which a test may move on."""
    clock = world.clock
    settings = make_settings()
    trust = Trust({org.org_id: org.key.public for org in world.orgs.values()})
    return KeyDirectory(db=relay_db, trust=trust, settings=settings, clock=clock,
                        prekeys=PrekeyService(db=relay_db, settings=settings, clock=clock))


def principal(device: Device) -> Principal:
    return Principal(user_id=device.user.user_id, device_id=device.device_id,
                     org_id=device.user.org.org_id, device_kind=device.kind.value,
                     signing_key=device.keys.signing.public, family_id=str(uuid.uuid4()))


async def refused(call: Awaitable[object]) -> RelayError:
    with pytest.raises(RelayError) as info:
        await call
    return info.value


async def remaining(keydir: KeyDirectory, device: Device) -> int:
    return (await keydir.count(principal(device))).remaining


async def test_a_reachable_users_devices_are_handed_out(world: World,
                                                        keydir: KeyDirectory) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    found = await keydir.user_devices(amy.user.user_id)
    assert found.user_certificate == amy.user.cert
    assert [d.device_certificate for d in found.devices] == [amy.cert]


async def test_an_unknown_or_not_yet_enrolled_user_is_not_found(world: World,
                                                                keydir: KeyDirectory) -> None:
    pending = world.org.user("pat.pending")
    await world.provision(pending)
    for user_id in (str(uuid.uuid4()), pending.user_id):
        err = await refused(keydir.user_devices(user_id))
        assert (err.code, err.detail) == (ErrorCode.NOT_FOUND, "no such user")


async def test_a_suspended_user_or_lapsed_licence_is_refused_by_its_reason(
        world: World, keydir: KeyDirectory) -> None:
    amy = await world.onboard(world.org.user("amy.ortho", licence_expires_at=int(time.time()) + 60))
    ben = await world.onboard(world.org.user("ben.ortho"))
    await world.execute("UPDATE users SET status = 'suspended' WHERE user_id = $1",
                        uuid.UUID(ben.user.user_id))
    assert (await refused(keydir.user_devices(ben.user.user_id))).code == (
        ErrorCode.USER_SUSPENDED)
    await keydir.user_devices(amy.user.user_id)
    world.clock.advance(61)
    assert (await refused(keydir.user_devices(amy.user.user_id))).code == (
        ErrorCode.LICENCE_EXPIRED)


async def test_a_user_of_an_organisation_no_longer_trusted_is_not_found(
        world: World, relay_db: Database) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    settings = make_settings()
    distrusting = KeyDirectory(db=relay_db, trust=Trust({}), settings=settings,
                               prekeys=PrekeyService(db=relay_db, settings=settings))
    assert (await refused(distrusting.user_devices(amy.user.user_id))).code == (
        ErrorCode.NOT_FOUND)
    assert await distrusting.directory("amy") == []


async def test_a_claim_takes_one_one_time_prekey_per_device_asked_once(
        world: World, keydir: KeyDirectory) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    ben = await world.onboard(world.org.user("ben.ortho"), prekeys=PREKEYS)
    keys = await keydir.claim(principal(amy), [ben.device_id, ben.device_id])
    assert [(k.device_id, k.device_certificate, k.user_certificate) for k in keys] == [
        (ben.device_id, ben.cert, ben.user.cert)]
    assert keys[0].one_time_prekey is not None
    assert await remaining(keydir, ben) == PREKEYS - 1


async def test_a_device_with_no_one_time_prekey_left_is_served_its_signed_prekey_alone(
        world: World, keydir: KeyDirectory) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    ben = await world.onboard(world.org.user("ben.ortho"), prekeys=1)
    await keydir.claim(principal(amy), [ben.device_id])
    (key,) = await keydir.claim(principal(amy), [ben.device_id])
    assert key.one_time_prekey is None and key.signed_prekey


async def test_a_claim_with_an_unavailable_device_takes_nothing_and_names_only_those(
        world: World, keydir: KeyDirectory) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    ben = await world.onboard(world.org.user("ben.ortho"), prekeys=PREKEYS)
    cat = await world.onboard(world.org.user("cat.ortho"))
    dan = await world.onboard(world.org.user("dan.ortho"))
    await world.execute("UPDATE devices SET status = 'revoked' WHERE device_id = $1",
                        uuid.UUID(cat.device_id))
    await world.execute("UPDATE users SET status = 'suspended' WHERE user_id = $1",
                        uuid.UUID(dan.user.user_id))
    unknown = str(uuid.uuid4())
    err = await refused(keydir.claim(principal(amy), [
        ben.device_id, cat.device_id, unknown, dan.device_id]))
    assert (err.code, err.detail) == (ErrorCode.NOT_FOUND,
                                      "some devices are unknown or not reachable")
    assert err.extra == {"device_ids": [cat.device_id, unknown, dan.device_id]}
    assert await remaining(keydir, ben) == PREKEYS


@pytest.mark.parametrize("q", ["a", " a ", "x" * 65, ""])
async def test_a_search_is_two_to_sixty_four_characters(keydir: KeyDirectory, q: str) -> None:
    err = await refused(keydir.directory(q))
    assert (err.code, err.detail) == (ErrorCode.VALIDATION_FAILED,
                                      "q must be 2 to 64 characters")


@pytest.mark.parametrize(("q", "login"), [
    ("", "A.Upper"), ("", "x"), ("", "-dash.first"), ("amy", "amy.ortho"), ("", "x" * 65)])
async def test_an_exact_login_is_a_login_without_q(keydir: KeyDirectory, q: str,
                                                   login: str) -> None:
    err = await refused(keydir.directory(q, login=login))
    assert err.code == ErrorCode.VALIDATION_FAILED
    assert err.detail is not None and err.detail.startswith("login must be a login")


async def test_an_exact_login_finds_that_user_alone(world: World, keydir: KeyDirectory) -> None:
    await world.onboard(world.org.user("amy.ortho"))
    await world.onboard(world.org.user("amy.orthopaedics"))
    assert [e.login for e in await keydir.directory("", login="amy.ortho")] == ["amy.ortho"]
    assert sorted(e.login for e in await keydir.directory("  amy.orth  ")) == [
        "amy.ortho", "amy.orthopaedics"]
