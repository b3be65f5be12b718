"""The device's signed prekey upkeep (clients/sdk/prekeys.py) against a real relay, with the
time passed in: rotation once the interval has passed, old secrets kept for the keep window for
messages in flight and deleted after it, and the client running it when it starts (and
stopping it, without a warning, once the relay has cut the user off)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec
import pytest

from clients.sdk.client import MessageEvent, StatusEvent
from clients.sdk.prekeys import DAY, PrekeyPolicy, rotate_signed_prekey
from protocol import certs
from protocol.canonical import peek_compact
from protocol.errors import CloseCode
from tests.clients.test_client import next_event, started
from tests.clinician_world import Clinician, enrol_clinician
from tests.helpers import eventually
from tests.identity_world import World

POLICY = PrekeyPolicy(rotation=7 * DAY, keep=2 * DAY)


async def served(person: Clinician) -> int:
    """The id of the signed prekey the relay hands out for the person's device."""
    listing = await person.client.relay.user_devices(person.user_id)
    for bundle in listing.devices:
        cert = peek_compact(bundle.device_certificate, certs.DeviceCertificate)
        if cert.device_id == person.client.device_id:
            assert bundle.signed_prekey is not None
            return peek_compact(bundle.signed_prekey, certs.SignedPrekey).prekey_id
    raise AssertionError("the device is not listed")


def kept(person: Clinician) -> list[int]:
    return [p.prekey_id for p in person.vault.state.signed_prekeys]


async def test_the_signed_prekey_rotates_after_the_interval_and_the_old_one_goes_after_the_keep(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    await intern.client.ensure_login()
    first = await served(intern)
    t0 = int(time.time())
    try:
        assert not await rotate_signed_prekey(intern.client.relay, intern.vault, POLICY,
                                              now=t0 + 7 * DAY - 60)
        assert (kept(intern), await served(intern)) == ([first], first)
        assert await rotate_signed_prekey(intern.client.relay, intern.vault, POLICY,
                                          now=t0 + 7 * DAY + 1)
        new = await served(intern)
        assert new != first
        assert kept(intern) == [first, new]  # the old one stays for messages in flight
        assert not await rotate_signed_prekey(intern.client.relay, intern.vault, POLICY,
                                              now=t0 + 9 * DAY)
        assert kept(intern) == [first, new]
        assert not await rotate_signed_prekey(intern.client.relay, intern.vault, POLICY,
                                              now=t0 + 9 * DAY + 2)
        assert (kept(intern), await served(intern)) == ([new], new)
    finally:
        await intern.client.relay.aclose()


async def test_an_upload_cut_short_is_made_good_on_the_next_run(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    await intern.client.ensure_login()
    first = await served(intern)
    t0 = int(time.time())
    real_upload = intern.client.relay.upload_signed_prekey

    async def cut(signed_prekey: str) -> None:
        raise ConnectionError("the network went away")

    try:
        intern.client.relay.upload_signed_prekey = cut  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await rotate_signed_prekey(intern.client.relay, intern.vault, POLICY,
                                       now=t0 + 7 * DAY + 1)
        intern.client.relay.upload_signed_prekey = real_upload  # type: ignore[method-assign]
        (_, new) = kept(intern)  # kept before the upload was tried
        assert await served(intern) == first
        assert await rotate_signed_prekey(intern.client.relay, intern.vault, POLICY,
                                          now=t0 + 7 * DAY + 2)
        assert await served(intern) == new
    finally:
        await intern.client.relay.aclose()


async def _in_flight(world: World, tmp_path: Path, *, after: int) -> tuple[Clinician, str]:
    """Ben sends the intern a message while the intern is offline and has no one-time prekey
    left (so it is sealed to the signed prekey alone); then the intern's device rotates at
    +7 days and runs its upkeep again ``after`` seconds later."""
    intern = await enrol_clinician(world, tmp_path, "intern", one_time=0)
    ben = await enrol_clinician(world, tmp_path, "ben")
    async with started(ben):
        thread = await ben.client.create_thread(users=[intern.user_id])
        await ben.client.send_text(thread.thread_id, "Sealed to the old signed prekey")
    await intern.client.ensure_login()
    t0 = int(time.time())
    await rotate_signed_prekey(intern.client.relay, intern.vault, POLICY, now=t0 + 7 * DAY + 1)
    await rotate_signed_prekey(intern.client.relay, intern.vault, POLICY,
                               now=t0 + 7 * DAY + 1 + after)
    return intern, thread.thread_id


async def test_a_message_in_flight_to_the_old_signed_prekey_opens_within_the_keep_window(
        world: World, tmp_path: Path) -> None:
    intern, thread_id = await _in_flight(world, tmp_path, after=POLICY.keep - 60)
    events = intern.client.subscribe()
    async with started(intern):
        event = await next_event(events, MessageEvent)
    assert event.body.text == "Sealed to the old signed prekey"
    assert event.message.thread_id == thread_id


async def test_a_message_to_a_deleted_signed_prekey_no_longer_opens(
        world: World, tmp_path: Path) -> None:
    """Forward secrecy without a one-time prekey starts when the old signed prekey is gone."""
    intern, _ = await _in_flight(world, tmp_path, after=POLICY.keep + 1)
    events = intern.client.subscribe()
    async with started(intern):
        event = await next_event(events, StatusEvent,
                                 lambda e: "could not be opened" in e.detail)
    assert "dropped" in event.detail


async def test_a_started_client_rotates_a_signed_prekey_that_is_due(
        world: World, tmp_path: Path) -> None:
    """The schedule: the client runs the upkeep when it starts (and hourly after); here the
    enrolled signed prekey is older than the client's rotation interval."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    intern.client.prekey_policy = PrekeyPolicy(rotation=3600, keep=DAY)
    (old,) = intern.vault.state.signed_prekeys
    intern.vault.save(msgspec.structs.replace(intern.vault.state, signed_prekeys=[
        msgspec.structs.replace(old, created_at=old.created_at - 3601)]))
    async with started(intern):
        async def rotated() -> bool:
            return await served(intern) != old.prekey_id
        await eventually(rotated)
        assert kept(intern) == [old.prekey_id, await served(intern)]


async def test_a_suspended_users_upkeep_warns_no_one_and_the_client_says_how_it_ended(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """IT suspended the user (an organisation-signed revocation list, as `lightbox-admin user
    suspend` posts): the relay refuses the upkeep's requests with user_suspended. That is not
    a failure of the upkeep to warn about (the CLI prints the SDK's warnings on the user's
    terminal, before its own sentence): it is logged for the record only, and the
    application hears of it as the client's end, with the relay's close code (4005)."""
    intern = await enrol_clinician(world, tmp_path, "intern")
    await intern.client.ensure_login()  # a session still valid when IT suspends the user
    r = await world.revoke(world.org, 1, users=(intern.user_id,))
    assert r.status_code == 200, r.text
    events = intern.client.subscribe()
    with caplog.at_level("INFO", logger="lightbox"):
        await intern.client.start()
        try:
            stopped = await next_event(events, StatusEvent, lambda e: e.state == "stopped")

            async def upkeep_heard() -> bool:
                return any("prekey upkeep stopped" in r.getMessage()
                           and getattr(r, "code", None) == "user_suspended"
                           for r in caplog.records)

            await eventually(upkeep_heard)
        finally:
            await intern.client.close()
    assert stopped.close_code == CloseCode.USER_SUSPENDED, stopped
    warned = [r.getMessage() for r in caplog.records
              if r.name.startswith("lightbox") and r.levelno >= logging.WARNING]
    assert warned == [], warned
