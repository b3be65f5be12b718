"""What IT does through the admin API (server/provisioning.py), the service called directly
beside a running relay, with its clock injected: each provisioned row stands or fails alone
with its reason, an enrolment code lives no longer than LIGHTBOX_ENROLMENT_CODE_TTL, a renewal
keeps the user, organisation and identity key and must be newer, and revocation lists apply
in order: an older one is refused, the same one again changes nothing, a different one of the
same number is refused, and a later list resumes the users it no longer names
(docs/PROTOCOL.md §4.5)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

import msgspec
import pytest

from protocol.api import ProvisionUser
from protocol.certs import issue_user_certificate
from protocol.errors import ErrorCode
from server.db import Database
from server.errors import RelayError
from server.provisioning import ProvisioningService
from server.trust import Trust
from tests.helpers import make_settings
from tests.identity_world import Org, User, World
from tests.server.test_escalation import SimClock

TTL = 3600


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def service(world: World, relay_db: Database, clock: SimClock) -> ProvisioningService:
    trust = Trust({org.org_id: org.key.public for org in world.orgs.values()})
    return ProvisioningService(db=relay_db, trust=trust, clock=clock,
                               settings=make_settings(enrolment_code_ttl=TTL))


def row(user: User, **fields: Any) -> ProvisionUser:
    return msgspec.convert({**user.provision_row(), **fields}, ProvisionUser)


async def refused(call: Awaitable[object]) -> RelayError:
    with pytest.raises(RelayError) as info:
        await call
    return info.value


async def code_expiry(world: World, user: User) -> int:
    conn = await world.db()
    try:
        return int((await conn.fetchval(
            "SELECT expires_at FROM enrolment_codes WHERE user_id = $1",
            uuid.UUID(user.user_id))).timestamp())
    finally:
        await conn.close()


async def test_each_row_stands_or_fails_alone_with_its_reason(
        world: World, service: ProvisioningService, clock: SimClock) -> None:
    amy, ben, cat = (world.org.user(n) for n in ("amy.ortho", "ben.ortho", "cat.ortho"))
    stranger = Org("county-general").user("dan.ortho")
    results = await service.provision([
        row(amy), row(ben, enrolment_expires_at=int(clock.now) - 1), row(stranger),
        row(cat), row(amy, login="amy.again")])
    assert [(r.index, r.ok, r.code) for r in results] == [
        (0, True, None), (1, False, "validation_failed"), (2, False, "certificate_untrusted"),
        (3, True, None), (4, False, "conflict")]
    assert results[1].detail == "enrolment_expires_at is in the past"
    assert results[2].user_id is None or results[2].user_id == stranger.user_id
    assert results[4].user_id == amy.user_id


async def test_an_enrolment_code_lives_no_longer_than_the_ttl(
        world: World, service: ProvisioningService, clock: SimClock) -> None:
    amy, ben = world.org.user("amy.ortho"), world.org.user("ben.ortho")
    await service.provision([row(amy, enrolment_expires_at=int(clock.now) + 10 * TTL),
                             row(ben, enrolment_expires_at=int(clock.now) + 60)])
    assert await code_expiry(world, amy) == int(clock.now) + TTL
    assert await code_expiry(world, ben) == int(clock.now) + 60


async def test_a_renewal_must_keep_user_org_and_identity_key_and_be_newer(
        world: World, service: ProvisioningService) -> None:
    amy = world.org.user("amy.ortho")
    await world.onboard(amy)
    later = msgspec.structs.replace(amy.body, serial=str(uuid.uuid4()),
                                    issued_at=amy.body.issued_at + 10)
    other_key = msgspec.structs.replace(later, identity_key=bytes(32))
    same_time = msgspec.structs.replace(amy.body, serial=str(uuid.uuid4()))
    sign = world.org.key
    err = await refused(service.renew_certificate(
        amy.user_id, issue_user_certificate(other_key, sign)))
    assert (err.code, err.detail) == (
        ErrorCode.CERTIFICATE_INVALID,
        "a renewal must keep the user, organisation and identity key")
    err = await refused(service.renew_certificate(
        amy.user_id, issue_user_certificate(same_time, sign)))
    assert (err.code, err.detail) == (ErrorCode.CONFLICT,
                                      "the certificate is not newer than the one held")
    renewed = await service.renew_certificate(amy.user_id, issue_user_certificate(later, sign))
    assert renewed.user_certificate == issue_user_certificate(later, sign)
    err = await refused(service.renew_certificate(str(uuid.uuid4()),
                                                  issue_user_certificate(later, sign)))
    assert (err.code, err.detail) == (ErrorCode.NOT_FOUND, "no such user")


async def test_revocation_lists_apply_in_order_and_resume_who_they_no_longer_name(
        world: World, service: ProvisioningService) -> None:
    org = world.org
    amy = await world.onboard(org.user("amy.ortho"))
    ben = await world.onboard(org.user("ben.ortho"))
    # The same signed list twice (issued again, it would carry a later time whenever the
    # clock's second turned in between, and be another list 2).
    listed = org.revocation_list(2, devices=(amy.device_id,), users=(ben.user.user_id,))
    first = await service.apply_revocations(listed)
    assert (first.devices_revoked, first.users_suspended, first.users_resumed) == (
        [amy.device_id], [ben.user.user_id], [])
    again = await service.apply_revocations(listed)
    assert again.unchanged and again.devices_revoked == again.users_suspended == []
    err = await refused(service.apply_revocations(org.revocation_list(2)))
    assert (err.code, err.detail) == (ErrorCode.CONFLICT, "a different list 2 is already held")
    err = await refused(service.apply_revocations(org.revocation_list(1)))
    assert (err.code, err.detail) == (ErrorCode.CONFLICT, "list 1 is older than list 2")
    later = await service.apply_revocations(org.revocation_list(3, devices=(amy.device_id,)))
    assert (later.devices_revoked, later.users_suspended, later.users_resumed) == (
        [], [], [ben.user.user_id])


async def test_a_list_not_signed_by_a_trusted_organisation_is_refused(
        service: ProvisioningService) -> None:
    err = await refused(service.apply_revocations(Org("county-general").revocation_list(1)))
    assert err.code == ErrorCode.CERTIFICATE_UNTRUSTED
