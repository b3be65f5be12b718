"""The send pipeline's checks that need no database (server/sends.py ``SendPipeline.check``)
on real sealed messages, and its shutdown: the header must name this connection as sender,
the sealed message fit LIGHTBOX_MAX_MESSAGE_BYTES, the recipients named and the wrapped keys
agree without repeats, a device never send to itself, and the sender's signature verify; a
pipeline stopped with sends still queued answers each ``not_ready``, storing none. Group
commit over a real relay is tests/server/test_send_pipeline.py."""

from __future__ import annotations

import dataclasses

import pytest

from protocol import envelope
from protocol.errors import ErrorCode
from protocol.model import SealedMessage
from server.db import Database
from server.errors import RelayError
from server.metrics import Metrics
from server.sends import Sender, SendPipeline
from tests.identity_world import World
from tests.relay_world import Peer, peer, seal, thread

MAX = 64 * 1024


def pipeline(world: World, db: Database, *, verify: bool = True) -> SendPipeline:
    relay = world.relay.relay
    return SendPipeline(db, Metrics(), policy=relay.pipeline.policy, max_message_bytes=MAX,
                        verify_signatures=verify)


def sender(p: Peer) -> Sender:
    return Sender(user_id=p.user_id, device_id=p.device_id,
                  signing_key=p.device.keys.signing.public)


def refusal(pipe: SendPipeline, who: Sender, message: SealedMessage,
            encoded: bytes | None = None) -> tuple[ErrorCode, str]:
    """What ``check`` refuses ``message`` with (``encoded``: its size on the wire, for a
    message the protocol's own encoder would not write)."""
    with pytest.raises(RelayError) as info:
        pipe.check(who, message, envelope.encode_sealed(message) if encoded is None else encoded)
    assert info.value.detail is not None
    return info.value.code, info.value.detail


async def test_a_well_formed_message_from_its_own_sender_passes(world: World,
                                                                relay_db: Database) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    message = seal(alice, await thread(world, alice, bob), [bob])
    pipeline(world, relay_db).check(sender(alice), message, envelope.encode_sealed(message))


async def test_a_header_naming_another_sender_is_sender_mismatch(world: World,
                                                                 relay_db: Database) -> None:
    alice, bob, cat = [await peer(world, n) for n in ("alice", "bob", "cat")]
    message = seal(alice, await thread(world, alice, bob), [bob])
    assert refusal(pipeline(world, relay_db), sender(cat), message) == (
        ErrorCode.SENDER_MISMATCH, "the header names another sender than this connection")


async def test_a_message_over_the_limit_is_message_too_large(world: World,
                                                             relay_db: Database) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    message = seal(alice, await thread(world, alice, bob), [bob], b"x" * MAX)
    assert refusal(pipeline(world, relay_db), sender(alice), message) == (
        ErrorCode.MESSAGE_TOO_LARGE, f"sealed message over {MAX} bytes")


async def test_recipients_that_disagree_with_the_wrapped_keys_are_device_set_mismatch(
        world: World, relay_db: Database) -> None:
    alice, bob, cat = [await peer(world, n) for n in ("alice", "bob", "cat")]
    tid = await thread(world, alice, bob)
    honest = seal(alice, tid, [bob])
    lying = seal(alice, tid, [bob], recipient_ids=[cat.device_id])
    repeated = seal(alice, tid, [bob], recipient_ids=[bob.device_id, bob.device_id])
    for message in (lying, repeated):
        assert refusal(pipeline(world, relay_db, verify=False), sender(alice), message,
                       envelope.encode_sealed(honest)) == (
            ErrorCode.DEVICE_SET_MISMATCH, "recipient_devices and wrapped keys disagree or repeat")


async def test_a_device_sending_to_itself_is_refused(world: World, relay_db: Database) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    message = seal(alice, await thread(world, alice, bob), [bob, alice])
    assert refusal(pipeline(world, relay_db), sender(alice), message) == (
        ErrorCode.DEVICE_SET_MISMATCH, "a device cannot send to itself")


async def test_a_signature_by_another_key_is_sender_mismatch_unless_not_verified(
        world: World, relay_db: Database) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    message = seal(alice, await thread(world, alice, bob), [bob])
    impostor = dataclasses.replace(sender(alice), signing_key=bob.device.keys.signing.public)
    assert refusal(pipeline(world, relay_db), impostor, message) == (
        ErrorCode.SENDER_MISMATCH, "the sender device's signature does not verify")
    pipeline(world, relay_db, verify=False).check(impostor, message,
                                                  envelope.encode_sealed(message))


async def test_sends_queued_when_the_pipeline_stops_are_answered_not_ready_and_not_stored(
        world: World, relay_db: Database) -> None:
    alice, bob = await peer(world, "alice"), await peer(world, "bob")
    tid = await thread(world, alice, bob)
    pipe = pipeline(world, relay_db)  # never started: nothing takes from its queue
    futures = [pipe.enqueue(sender(alice), seal(alice, tid, [bob], body)) for body in (b"1", b"2")]
    await pipe.stop()
    for fut in futures:
        with pytest.raises(RelayError) as info:
            await fut
        assert (info.value.code, info.value.detail) == (ErrorCode.NOT_READY,
                                                        "relay shutting down")
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    finally:
        await conn.close()
