"""The websocket handshake's checks (server/socketauth.py), called directly on the relay's own
token service and device check over the real database: the token, the device it names, the
challenge signature, revocation, and a device revoked with wipe let in only to hear its order."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from protocol.errors import ErrorCode
from protocol.frames import Hello, challenge_signing_bytes
from protocol.keys import DeviceKeys
from protocol.session import AuthRequested
from server.db import Database
from server.errors import RelayError
from server.socketauth import DeviceSocketAuthenticator, SocketPrincipal
from server.wipes import WipeRequired
from tests.identity_world import Device, World, identity_world

TOKEN_TTL = 600


@pytest.fixture
async def world(db_dsn: str, tmp_path: Path) -> AsyncIterator[World]:
    async with identity_world(db_dsn, tmp_path, access_token_ttl=TOKEN_TTL) as w:
        yield w


def handshake_of(world: World, relay_db: Database,
                 clock: Callable[[], float] | None = None) -> DeviceSocketAuthenticator:
    relay = world.relay.relay
    return DeviceSocketAuthenticator(db=relay_db, tokens=relay.tokens,
                                     authenticator=relay.authn, clock=clock or world.clock)


def auth(device: Device, *, claims: str | None = None, signer: DeviceKeys | None = None,
         token: str | None = None) -> AuthRequested:
    """The device's ``auth`` answer: its token (or ``token``), claiming to be ``claims`` (default
    itself), the challenge signed by ``signer`` (default its own key)."""
    token = token or device.access_token
    assert token is not None
    nonce = os.urandom(32)
    hello = Hello(versions=[1], access_token=token, device_id=claims or device.device_id,
                  client="test", client_version="1")
    signature = (signer or device.keys).sign(challenge_signing_bytes(nonce, token))
    return AuthRequested(hello=hello, version=1, nonce=nonce, signature=signature)


async def refused(handshake: DeviceSocketAuthenticator, request: AuthRequested) -> ErrorCode:
    with pytest.raises(RelayError) as info:
        await handshake.authenticate(request)
    assert not isinstance(info.value, WipeRequired)
    return info.value.code


async def test_a_device_with_its_token_and_signature_is_the_principal(
        world: World, relay_db: Database) -> None:
    amy = world.org.user("amy.ortho")
    phone = await world.onboard(amy)
    got = await handshake_of(world, relay_db).authenticate(auth(phone))
    assert amy.body.licence is not None
    assert got == SocketPrincipal(user_id=amy.user_id, device_id=phone.device_id,
                                  org_id=world.org.org_id, signing_key=phone.keys.signing.public,
                                  licence_expires_at=amy.body.licence.expires_at)


async def test_a_token_presented_for_another_device_is_token_device_mismatch(
        world: World, relay_db: Database) -> None:
    phone = await world.onboard(world.org.user("amy.ortho"))
    other = await world.onboard(world.org.user("ben.ortho"))
    assert await refused(handshake_of(world, relay_db),
                         auth(phone, claims=other.device_id)) is ErrorCode.TOKEN_DEVICE_MISMATCH


async def test_a_challenge_signed_by_another_key_is_challenge_failed(
        world: World, relay_db: Database) -> None:
    phone = await world.onboard(world.org.user("amy.ortho"))
    thief = DeviceKeys.generate(phone.device_id)
    assert await refused(handshake_of(world, relay_db),
                         auth(phone, signer=thief)) is ErrorCode.CHALLENGE_FAILED


async def test_an_expired_token_is_token_expired_on_the_injected_clock(
        world: World, relay_db: Database) -> None:
    phone = await world.onboard(world.org.user("amy.ortho"))
    later = handshake_of(world, relay_db, clock=lambda: world.clock() + TOKEN_TTL + 60)
    assert await refused(later, auth(phone)) is ErrorCode.TOKEN_EXPIRED
    assert await refused(handshake_of(world, relay_db),
                         auth(phone, token="not.a.token")) is ErrorCode.TOKEN_INVALID


async def test_a_revoked_device_without_wipe_is_device_revoked(
        world: World, relay_db: Database) -> None:
    phone = await world.onboard(world.org.user("amy.ortho"))
    assert (await world.revoke(world.org, 1, devices=(phone.device_id,))).status_code == 200
    assert await refused(handshake_of(world, relay_db), auth(phone)) is ErrorCode.DEVICE_REVOKED


async def test_a_device_revoked_with_wipe_that_signs_with_its_key_must_wipe(
        world: World, relay_db: Database) -> None:
    amy = world.org.user("amy.ortho")
    phone = await world.onboard(amy)
    assert (await world.revoke(world.org, 1, devices=(phone.device_id,),
                               wipe=True)).status_code == 200
    handshake = handshake_of(world, relay_db)
    with pytest.raises(WipeRequired) as info:
        await handshake.authenticate(auth(phone))
    assert (info.value.device_id, info.value.user_id) == (phone.device_id, amy.user_id)
    assert info.value.code is ErrorCode.DEVICE_REVOKED
    # Someone else holding the phone's token, without its key, hears no order.
    thief = DeviceKeys.generate(phone.device_id)
    assert await refused(handshake, auth(phone, signer=thief)) is ErrorCode.DEVICE_REVOKED


async def test_a_lost_phone_back_with_an_expired_token_still_hears_its_wipe_order(
        world: World, relay_db: Database) -> None:
    phone = await world.onboard(world.org.user("amy.ortho"))
    assert (await world.revoke(world.org, 1, devices=(phone.device_id,),
                               wipe=True)).status_code == 200
    later = handshake_of(world, relay_db, clock=lambda: world.clock() + TOKEN_TTL + 60)
    with pytest.raises(WipeRequired):
        await later.authenticate(auth(phone))
    thief = DeviceKeys.generate(phone.device_id)
    assert await refused(later, auth(phone, signer=thief)) is ErrorCode.TOKEN_EXPIRED
