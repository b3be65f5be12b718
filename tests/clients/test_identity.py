"""clients/sdk/identity.py, each rule directly, against a real relay (``world``): what enrolment
checks before it registers a device, the prekeys it makes, that only the device holding the
identity key approves a link, the deadline of waiting for one (an injected clock), and that
the key directory is verified under the pinned organisation key and its revocation list."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from clients.sdk import identity
from clients.sdk.errors import FlowError, KeyStoreError
from clients.sdk.http import RelayHTTP
from clients.sdk.keystore import KeyStore, OpenKeyStore
from protocol import api, certs
from protocol.canonical import b64url_encode, encode_struct, peek_compact
from protocol.keys import (
    CHEAP_PROFILE,
    DeviceKeys,
    IdentityKey,
    X25519KeyPair,
    generate_enrolment_code,
    normalise_enrolment_code,
    seal_with_passphrase,
)
from tests.clinician_world import enrol_clinician
from tests.identity_world import PASSWORD, User, World

NOW = 1_800_000_000
DEVICE = "5d0c7a3e-9f1b-4e26-8a4d-3c2b1a0f9e8d"


@pytest.fixture
async def anonymous(world: World) -> AsyncIterator[RelayHTTP]:
    relay = RelayHTTP(world.relay.base_url)
    yield relay
    await relay.aclose()


def _sealed_bundle(user: User, *, code: str | None = None,
                   identity_key: IdentityKey | None = None) -> str:
    """What IT's tool seals under the enrolment code (clients/admin/provisioning.py)."""
    bundle = api.EnrolmentBundle(
        user_id=user.user_id, login=user.login, org_id=user.org.org_id,
        org_public_key=b64url_encode(user.org.key.public),
        identity_seed=b64url_encode((identity_key or user.identity).seed.reveal()))
    sealed = seal_with_passphrase(encode_struct(bundle), code or user.code,
                                  opslimit=CHEAP_PROFILE.opslimit,
                                  memlimit=CHEAP_PROFILE.memlimit)
    return b64url_encode(sealed)


async def _provisioned(world: World, login: str, *, code: str | None = None,
                       identity_key: IdentityKey | None = None) -> User:
    user = world.org.user(login)
    sealed = _sealed_bundle(user, code=code, identity_key=identity_key)
    (result,) = await world.provision(user, sealed_identity=sealed)
    assert result["ok"], result
    return user


async def _enrol(relay: RelayHTTP, tmp: Path, user: User, *, password: str = PASSWORD,
                 code: str | None = None) -> OpenKeyStore:
    return await identity.enrol(relay, KeyStore(tmp / user.login), code or user.code, password,
                                one_time=3, kdf=CHEAP_PROFILE)


async def _enrol_refused(relay: RelayHTTP, tmp: Path, user: User, **kw: str) -> FlowError:
    with pytest.raises(FlowError) as err:
        await _enrol(relay, tmp, user, **kw)
    assert not (tmp / user.login).exists() or not KeyStore(tmp / user.login).exists()
    return err.value


# -- prekeys and passwords (no relay) --------------------------------------------------------------


def test_prekeys_are_numbered_on_from_the_first_id_the_signed_one_first() -> None:
    keys = DeviceKeys.generate(DEVICE)
    batch = identity.make_prekeys(keys, first_id=7, one_time=3, signed=True, now=NOW)
    assert batch.signed_secret is not None and batch.signed_token is not None
    assert batch.signed_secret.prekey_id == 7
    assert [s.prekey_id for s in batch.one_time_secrets] == [8, 9, 10]
    assert batch.next_prekey_id == 11
    signed = peek_compact(batch.signed_token, certs.SignedPrekey,
                          max_length=certs.MAX_CERTIFICATE_LENGTH)
    assert (signed.device_id, signed.prekey_id, signed.created_at) == (DEVICE, 7, NOW)
    for token, secret in zip(batch.one_time_tokens, batch.one_time_secrets, strict=True):
        published = peek_compact(token, certs.OneTimePrekey,
                                 max_length=certs.MAX_CERTIFICATE_LENGTH)
        assert published.prekey_id == secret.prekey_id
        # Each published key is the public half of the secret kept: every one can be opened.
        assert published.public == X25519KeyPair.from_secret(secret.secret).public


def test_without_a_signed_prekey_the_ids_start_with_the_one_time_keys() -> None:
    batch = identity.make_prekeys(DeviceKeys.generate(DEVICE), first_id=1, one_time=2,
                                  signed=False, now=NOW)
    assert (batch.signed_token, batch.signed_secret) == (None, None)
    assert [s.prekey_id for s in batch.one_time_secrets] == [1, 2]


def test_a_weak_password_is_password_too_weak() -> None:
    with pytest.raises(FlowError) as err:
        identity.check_new_password("alice-in-wonderland", login="alice")
    assert (err.value.code, str(err.value)) == (
        "password_too_weak", "the password must not contain the login name")


# -- enrolment ------------------------------------------------------------------------------------


async def test_enrolment_pins_the_org_key_and_keeps_every_prekey_secret(
        world: World, anonymous: RelayHTTP, tmp_path: Path) -> None:
    user = await _provisioned(world, "enrolling")
    opened = await _enrol(anonymous, tmp_path, user)
    st = opened.state
    assert (st.user_id, st.org_id, st.org_public_key) == (user.user_id, user.org.org_id,
                                                          user.org.key.public)
    assert st.identity_seed == user.identity.seed.reveal()
    assert [p.prekey_id for p in st.signed_prekeys] == [1]
    assert [p.prekey_id for p in st.one_time_prekeys] == [2, 3, 4]
    assert st.next_prekey_id == 5
    tokens = await identity.login(anonymous, st, PASSWORD)  # the relay knows the device
    assert tokens.access_token


async def test_a_malformed_code_is_refused_before_the_relay_is_asked(
        world: World, anonymous: RelayHTTP, tmp_path: Path) -> None:
    user = await _provisioned(world, "malformed")
    err = await _enrol_refused(anonymous, tmp_path, user, code="not a code")
    assert str(err).startswith("the enrolment code is not well formed")


async def test_a_package_the_code_does_not_open_is_enrolment_code_invalid(
        world: World, anonymous: RelayHTTP, tmp_path: Path) -> None:
    other_code = normalise_enrolment_code(generate_enrolment_code())
    user = await _provisioned(world, "wrongseal", code=other_code)
    err = await _enrol_refused(anonymous, tmp_path, user)
    assert (err.code, str(err)) == ("enrolment_code_invalid",
                                    "the enrolment code does not open the enrolment package")


async def test_a_certificate_for_another_identity_key_than_the_sealed_one_is_refused(
        world: World, anonymous: RelayHTTP, tmp_path: Path) -> None:
    user = await _provisioned(world, "swapped", identity_key=IdentityKey.generate())
    err = await _enrol_refused(anonymous, tmp_path, user)
    assert (err.code, str(err)) == ("certificate_invalid",
                                    "the user certificate does not match the sealed identity key")


async def test_the_password_policy_applies_before_the_device_is_registered(
        world: World, anonymous: RelayHTTP, tmp_path: Path) -> None:
    user = await _provisioned(world, "weakling")
    err = await _enrol_refused(anonymous, tmp_path, user, password="weakling-1234567")
    assert err.code == "password_too_weak"
    opened = await _enrol(anonymous, tmp_path, user)  # the code was not used up
    assert opened.state.user_id == user.user_id


async def test_a_store_holding_a_device_is_never_overwritten(
        world: World, anonymous: RelayHTTP, tmp_path: Path) -> None:
    user = await _provisioned(world, "twice")
    await _enrol(anonymous, tmp_path, user)
    with pytest.raises(KeyStoreError, match="already holds an enrolled device"):
        await _enrol(anonymous, tmp_path, user)


# -- linking --------------------------------------------------------------------------------------


async def test_only_the_device_holding_the_identity_key_approves_a_link(
        world: World, anonymous: RelayHTTP, tmp_path: Path) -> None:
    user = await _provisioned(world, "linker")
    opened = await _enrol(anonymous, tmp_path, user)
    opened.save(msgspec.structs.replace(opened.state, identity_seed=None))
    pending = await identity.offer_link(anonymous)
    with pytest.raises(FlowError) as err:
        await identity.approve_link(anonymous, opened, pending.code)
    assert err.value.code == "forbidden"
    assert "approve the link from the device you enrolled" in str(err.value)


async def test_waiting_for_a_link_gives_up_at_the_deadline(anonymous: RelayHTTP) -> None:
    pending = await identity.offer_link(anonymous)
    ticks = itertools.count(0.0, 400.0)  # each look at the clock is 400 s later
    with pytest.raises(FlowError) as err:
        await identity.wait_for_link(anonymous, pending, max_wait=600.0, interval=0,
                                     clock=lambda: next(ticks))
    assert (err.value.code, str(err.value)) == ("pairing_code_invalid",
                                                "no answer from the enrolled device in time")
    assert next(ticks) == 1200.0  # asked at 0 (deadline 600), 400, then gave up at 800


# -- the key directory ----------------------------------------------------------------------------


async def test_a_device_our_revocation_list_names_does_not_verify_in_the_directory(
        world: World, anonymous: RelayHTTP, tmp_path: Path) -> None:
    """The relay serves a device the organisation revoked (it has not been given the list this
    device holds): the directory answer is refused, not trusted."""
    user = await _provisioned(world, "looker")
    opened = await _enrol(anonymous, tmp_path, user)
    colleague = await enrol_clinician(world, tmp_path, "colleague")
    relay = identity.device_relay(opened)
    try:
        await identity.login(relay, opened.state, PASSWORD)
        _, views = await identity.verified_user_devices(relay, opened, colleague.user_id)
        assert [v.verified.device_id for v in views] == [colleague.client.device_id]
        revoking = world.org.revocation_list(2, devices=(colleague.client.device_id,))
        opened.save(msgspec.structs.replace(opened.state, revocation_lists=[revoking]))
        with pytest.raises(FlowError) as err:
            await identity.verified_user_devices(relay, opened, colleague.user_id)
        assert err.value.code == "certificate_revoked"
        assert str(err.value).startswith("the directory served a device that does not verify")
    finally:
        await relay.aclose()
        await colleague.client.relay.aclose()


@pytest.mark.world(orgs=("st-elsewhere", "st-other"))
async def test_only_our_organisation_s_revocation_lists_are_taken(
        world: World, anonymous: RelayHTTP) -> None:
    for number, org in enumerate(world.orgs.values(), 2):
        r = await world.revoke(org, number)
        assert r.status_code == 200, r.text
    ours = await identity.org_revocation_lists(anonymous, "st-elsewhere")
    assert [peek_compact(t, certs.RevocationList,
                         max_length=certs.MAX_REVOCATION_LIST_LENGTH).org_id for t in ours] == [
        "st-elsewhere"]
    assert await identity.org_revocation_lists(anonymous, "st-nobody") == []
