"""clients/admin/ops.py, IT's operations through the relay's admin API, each rule directly
against a real relay (``world``, its IT administrator logged in): the per-row import report,
finding a user by exact login, revocation lists read back and verified under our own key
before the next is built on them (and nothing posted when nothing changes), the relay's copy
of a certificate checked to be ours, and a new enrolment code only for a user who never
enrolled."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from clients.admin import ops
from clients.admin.csvio import LicenceFields, UserRow
from clients.sdk.errors import FlowError
from clients.sdk.http import RelayHTTP
from clients.sdk.timefmt import format_time
from protocol import certs
from protocol.keys import CHEAP_PROFILE, OrganisationKey
from tests.identity_world import World

ORG = "st-elsewhere"


@pytest.fixture
async def it(world: World) -> AsyncIterator[RelayHTTP]:
    async with RelayHTTP(world.relay.base_url, admin_token=world.admin_token) as relay:
        yield relay


def _row(line: int, login: str) -> UserRow:
    return UserRow(line=line, name=f"Dr {login.title()}", login=login, roles=("physician",),
                   specialty=None, department=None,
                   licence=LicenceFields("GMC", "1234567", "UK", int(time.time()) + 86400 * 365))


async def _provision(world: World, it: RelayHTTP, *rows: UserRow) -> ops.ImportReport:
    return await ops.provision_rows(it, rows, org_id=ORG, org_key=world.org.key,
                                    now=int(time.time()), code_valid_hours=72, kdf=CHEAP_PROFILE)


def _lost(device_id: str) -> certs.RevocationEntry:
    return certs.RevocationEntry(subject=certs.RevocationSubject.DEVICE, id=device_id,
                                 revoked_at=int(time.time()), reason="lost", wipe=False)


# -- importing and finding users ------------------------------------------------------------------


async def test_each_row_the_relay_refuses_is_reported_by_its_line(world: World,
                                                                  it: RelayHTTP) -> None:
    await _provision(world, it, _row(2, "taken"))
    report = await _provision(world, it, _row(7, "taken"), _row(8, "fresh"))
    assert [p.row.login for p in report.provisioned] == ["fresh"]
    [failed] = report.failed
    assert (failed.line, failed.login) == (7, "taken")
    assert failed.reason == "conflict: a user with this login exists"


async def test_a_user_is_found_by_exact_login_or_by_id(world: World, it: RelayHTTP) -> None:
    report = await _provision(world, it, _row(2, "ada.byron"), _row(3, "ada"))
    assert (await ops.resolve_user(it, "ada")).login == "ada"
    by_id = report.provisioned[0].user_id
    assert (await ops.resolve_user(it, by_id)).login == "ada.byron"
    with pytest.raises(FlowError) as err:
        await ops.resolve_user(it, "ad")
    assert (err.value.code, str(err.value)) == ("not_found", "no user with login 'ad'")


# -- revocation lists -----------------------------------------------------------------------------


async def test_revoking_what_is_revoked_already_posts_nothing(world: World,
                                                              it: RelayHTTP) -> None:
    key, lost = world.org.key, str(uuid.uuid4())
    first, changed = await ops.apply_revocations(it, org_id=ORG, org_key=key,
                                                 now=int(time.time()), add=[_lost(lost)])
    assert changed and first is not None
    again, changed = await ops.apply_revocations(it, org_id=ORG, org_key=key,
                                                 now=int(time.time()), add=[_lost(lost)])
    assert not changed
    assert again == first  # read back from the relay and verified: the same list
    served = await ops.current_revocation_list(it, ORG, key.public)
    assert served is not None and served.number == first.number


async def test_a_list_our_key_did_not_sign_is_refused(world: World, it: RelayHTTP) -> None:
    await ops.apply_revocations(it, org_id=ORG, org_key=world.org.key, now=int(time.time()),
                                add=[_lost(str(uuid.uuid4()))])
    with pytest.raises(FlowError) as err:
        await ops.current_revocation_list(it, ORG, OrganisationKey.generate().public)
    assert str(err.value) == ("the relay serves a revocation list for our organisation that "
                              "our key did not sign")


async def test_with_no_list_at_the_relay_there_is_no_current_list(world: World,
                                                                  it: RelayHTTP) -> None:
    assert await ops.current_revocation_list(it, ORG, world.org.key.public) is None


# -- certificates and enrolment codes -------------------------------------------------------------


async def test_the_relay_s_copy_of_a_certificate_must_be_ours_and_name_the_user(
        world: World, it: RelayHTTP) -> None:
    report = await _provision(world, it, _row(2, "cert.owner"))
    made = report.provisioned[0]
    assert ops.our_certificate(made.certificate, user_id=made.user_id, org_id=ORG,
                               org_key=world.org.key).user_id == made.user_id
    with pytest.raises(FlowError) as other_user:
        ops.our_certificate(made.certificate, user_id="0" * 8 + "-0000-4000-8000-" + "0" * 12,
                            org_id=ORG, org_key=world.org.key)
    assert (other_user.value.code, str(other_user.value)) == (
        "certificate_invalid", "the relay served another user's certificate")
    with pytest.raises(FlowError) as other_key:
        ops.our_certificate(made.certificate, user_id=made.user_id, org_id=ORG,
                            org_key=OrganisationKey.generate())
    assert other_key.value.code == "certificate_invalid"
    assert "not signed by our organisation key" in str(other_key.value)


async def test_a_new_code_is_issued_only_to_a_user_who_never_enrolled(
        world: World, it: RelayHTTP) -> None:
    user = world.org.user("enrolled.user")
    await world.onboard(user)
    await _provision(world, it, _row(2, "pending.user"))
    enrolled = await ops.resolve_user(it, "enrolled.user")
    with pytest.raises(FlowError) as err:
        await ops.reissue_enrolment(it, enrolled, org_id=ORG, org_key=world.org.key,
                                    now=int(time.time()), code_valid_hours=24, kdf=CHEAP_PROFILE)
    assert err.value.code == "user_already_enrolled"
    assert str(err.value).startswith("enrolled.user has a device still active")

    pending = await ops.resolve_user(it, "pending.user")
    made = await ops.reissue_enrolment(it, pending, org_id=ORG, org_key=world.org.key,
                                       now=int(time.time()), code_valid_hours=24,
                                       kdf=CHEAP_PROFILE)
    detail = await it.get_user(pending.user_id)
    assert made.request.enrolment_expires_at == detail.enrolment_expires_at
    assert detail.user_certificate == made.certificate


async def test_a_suspended_user_is_resumed_before_a_new_code(world: World,
                                                             it: RelayHTTP) -> None:
    await _provision(world, it, _row(2, "on.leave"))
    pending = await ops.resolve_user(it, "on.leave")
    suspended = msgspec.structs.replace(pending, status="suspended")
    with pytest.raises(FlowError) as err:
        await ops.reissue_enrolment(it, suspended, org_id=ORG, org_key=world.org.key,
                                    now=int(time.time()), code_valid_hours=24)
    assert (err.value.code, str(err.value)) == (
        "user_suspended", "on.leave is suspended: resume them first (`lightbox-admin user resume`)")


async def test_an_expired_code_of_a_user_who_never_enrolled_says_how_to_reissue(
        world: World, it: RelayHTTP) -> None:
    await _provision(world, it, _row(2, "late.comer"))
    detail = await it.get_user((await ops.resolve_user(it, "late.comer")).user_id)
    until = detail.enrolment_expires_at
    assert until is not None
    assert ops.describe_enrolment(detail) == f"pending, valid until {format_time(until)}"
    expired = msgspec.structs.replace(detail, enrolment="expired")
    assert ops.describe_enrolment(expired) == (
        f"expired {format_time(until)} (issue a new one: lightbox-admin user reissue late.comer)")
    active = msgspec.structs.replace(expired, user=msgspec.structs.replace(detail.user,
                                                                          status="active"))
    assert ops.describe_enrolment(active) == f"expired {format_time(until)}"
    assert ops.describe_enrolment(msgspec.structs.replace(detail, enrolment="used")) == "used"
