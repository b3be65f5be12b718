"""A connection's send budget (server/sendrate.py): messages and bytes a minute, bursts of a
minute's worth, refused with rate_limited and the exact seconds to wait, refilled as the
injected clock moves."""

from __future__ import annotations

import uuid

import pytest

from protocol.errors import ErrorCode
from protocol.model import MessageHeader, Priority, Purpose, SealedMessage, WrappedKey
from server.errors import RelayError
from server.sendrate import Bucket, SendRate


def sealed(ciphertext: bytes, recipients: int = 2) -> SealedMessage:
    """A message of the shape the relay meters (only its sizes matter here)."""
    header = MessageHeader(
        v=1, message_id=str(uuid.uuid4()), thread_id=str(uuid.uuid4()),
        sender_user_id=str(uuid.uuid4()), sender_device_id=str(uuid.uuid4()), sent_at=0,
        purpose=Purpose.DIRECT_CARE, priority=Priority.ROUTINE, consent_id=None,
        attachment_ids=[], recipient_devices=[])
    keys = [WrappedKey(device_id=str(uuid.uuid4()), signed_prekey_id=1, one_time_prekey_id=None,
                       ephemeral_public=bytes(32), nonce=bytes(24), wrapped=bytes(48))
            for _ in range(recipients)]
    return SealedMessage(header=header, nonce=bytes(24), ciphertext=ciphertext, keys=keys,
                         signature=bytes(64))


def test_a_bucket_gives_a_minutes_worth_at_once_then_refills_at_its_rate() -> None:
    bucket = Bucket(60, now=0.0)
    assert all(bucket.take(1, 0.0) == 0.0 for _ in range(60))
    assert bucket.take(1, 0.0) == pytest.approx(1.0)
    assert bucket.take(1, 0.5) == pytest.approx(0.5)
    assert bucket.take(1, 1.0) == 0.0
    assert bucket.take(5, 1000.0) == 0.0 and bucket.tokens == pytest.approx(55)  # capped


def refused_after(rate: SendRate, message: SealedMessage, now: float) -> float:
    with pytest.raises(RelayError) as info:
        rate.admit(message, now)
    assert info.value.code is ErrorCode.RATE_LIMITED
    assert info.value.retry_after is not None
    return info.value.retry_after


def test_messages_over_the_minute_are_rate_limited_with_the_wait() -> None:
    message = sealed(b"x" * 10)
    rate = SendRate(messages_per_minute=6, bytes_per_minute=1 << 20, now=0.0)
    for _ in range(6):
        rate.admit(message, 0.0)
    assert refused_after(rate, message, 0.0) == pytest.approx(10.0)
    rate.admit(message, 10.0)


def test_bytes_count_ciphertext_and_wrapped_keys() -> None:
    message = sealed(b"x" * 1000)
    size = 1000 + 2 * 48
    rate = SendRate(messages_per_minute=600, bytes_per_minute=2 * size, now=0.0)
    rate.admit(message, 0.0)
    rate.admit(message, 0.0)
    assert refused_after(rate, message, 0.0) == pytest.approx(30.0)
