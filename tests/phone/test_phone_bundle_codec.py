"""The phone's reading of a websocket message (clients/phone/src/protocol/frames.ts
``decodeMessage``, run under Node) against vectors, and against the Python SDK's own client
session (protocol/session.py ``ClientSession``, which clients/sdk/socket.py drives): a frame
alone, or a ``bundle``'s frames in order up to the first bad one (docs/PROTOCOL.md §3.6),
including the 58-byte example bundle of §3.6."""

from __future__ import annotations

import os
import uuid
from typing import Any

import msgspec
import pytest

from protocol.canonical import b64url_encode
from protocol.errors import ErrorCode
from protocol.frames import (
    Bundle,
    Challenge,
    Error,
    Frame,
    Limits,
    Ping,
    Pong,
    QueueEmpty,
    Ready,
    encode_frame,
)
from protocol.session import ClientSession, ErrorEvent, FrameReceived, SessionReady
from tests.phone.node import run_driver

# PROTOCOL §3.6 "Example": the bundle of a ping and its pong, nonce 01 02.
EXAMPLE = bytes.fromhex("""
82 a1 74 a6 62 75 6e 64 6c 65 a6 66 72 61 6d 65 73 92 c4 12 82 a1 74 a4 70 69 6e 67 a5 6e
6f 6e 63 65 c4 02 01 02 c4 12 82 a1 74 a4 70 6f 6e 67 a5 6e 6f 6e 63 65 c4 02 01 02
""")


def ping(nonce: bytes) -> bytes:
    return encode_frame(Ping(nonce=nonce))


def bundle(*entries: bytes) -> bytes:
    return encode_frame(Bundle(frames=list(entries)))


def raw(value: Any) -> bytes:
    """Plain MessagePack, for what the strict encoder refuses to write."""
    return msgspec.msgpack.encode(value)


P = [ping(bytes([i])) for i in range(70)]
Seen = list[tuple[str, str | None]]


def pings(*nonces: int) -> Seen:
    return [("ping", bytes([n]).hex()) for n in nonces]


# (name, message, bundles selected, ready, frames the phone takes, the error that ends it)
CASES: list[tuple[str, bytes, bool, bool, Seen, str | None]] = [
    ("the 58-byte example", EXAMPLE, True, True, [("ping", "0102"), ("pong", "0102")], None),
    ("the example, subprotocol not selected", EXAMPLE, False, True, [], "unexpected_frame"),
    ("the example, before ready", EXAMPLE, True, False, [], "unexpected_frame"),
    ("the example, neither", EXAMPLE, False, False, [], "unexpected_frame"),
    ("a frame alone", P[1], True, True, pings(1), None),
    ("a bad frame alone", b"\xc1", True, True, [], "malformed_frame"),
    ("a frame alone, no subprotocol", P[1], False, True, pings(1), None),
    ("a bundle of one", bundle(P[1]), True, True, pings(1), None),
    ("64 frames", bundle(*P[:64]), True, True, pings(*range(64)), None),
    ("65 frames", bundle(*P[:65]), True, True, [], "field_too_large"),
    ("65 frames, not selected", bundle(*P[:65]), False, True, [], "field_too_large"),
    ("an empty bundle", raw({"t": "bundle", "frames": []}), True, True, [], "malformed_frame"),
    ("no frames field", raw({"t": "bundle"}), True, True, [], "malformed_frame"),
    ("frames not a list", raw({"t": "bundle", "frames": P[1]}), True, True, [],
     "malformed_frame"),
    ("an entry not bytes", raw({"t": "bundle", "frames": ["ping"]}), True, True, [],
     "malformed_frame"),
    ("an unknown field", raw({"t": "bundle", "frames": [P[1]], "x": 1}), True, True, [],
     "malformed_frame"),
    ("a bundle in a bundle", bundle(P[1], bundle(P[2], P[3]), P[4]), True, True, pings(1),
     "unexpected_frame"),
    ("not MessagePack inside", bundle(P[1], P[2], b"\xc1", P[3]), True, True, pings(1, 2),
     "malformed_frame"),
    ("trailing bytes inside", bundle(P[1], P[2] + b"\x00", P[3]), True, True, pings(1),
     "malformed_frame"),
    ("an unknown type inside", bundle(P[1], raw({"t": "nope"}), P[3]), True, True, pings(1),
     "unknown_frame_type"),
    ("an oversize nonce inside", bundle(P[1], raw({"t": "ping", "nonce": bytes(33)}), P[3]),
     True, True, pings(1), "field_too_large"),
    ("a missing field inside", bundle(P[1], raw({"t": "pong"}), P[3]), True, True, pings(1),
     "malformed_frame"),
    ("relay frames inside", bundle(encode_frame(QueueEmpty(pending=0, server_time=5)),
                                   encode_frame(Error(req_id="r1", code=ErrorCode.RATE_LIMITED,
                                                      retry_after=1.5)),
                                   encode_frame(Pong(nonce=b"\x09"))),
     True, True, [("queue_empty", None), ("error", None), ("pong", "09")], None),
    # Over the maximum frame size as a whole, though each entry alone is not: refused before
    # anything in it is parsed.
    ("over 1 MiB", bundle(raw({"t": "ping", "nonce": os.urandom(600_000)}),
                          raw({"t": "ping", "nonce": os.urandom(600_000)})),
     True, True, [], "frame_too_large"),
]


def sdk_reads(message: bytes, *, bundles: bool, ready: bool) -> tuple[Seen, str | None]:
    """What the Python SDK's client session takes from ``message``, in the same state."""
    session = ClientSession(access_token="token", device_id=str(uuid.uuid4()), client="test",
                            client_version="1", sign=lambda _: bytes(64))
    if bundles:
        session.use_bundles()
    if ready:
        assert session.receive_data(encode_frame(
            Challenge(version=1, nonce=bytes(32), server_time=1))) == []
        (ev,) = session.receive_data(encode_frame(Ready(
            session_id=str(uuid.uuid4()), device_id=str(uuid.uuid4()),
            user_id=str(uuid.uuid4()), version=1, server_time=1, heartbeat=30,
            expires_at=3600, limits=Limits())))
        assert isinstance(ev, SessionReady)
    seen: Seen = []
    error: str | None = None
    for ev in session.receive_data(message):
        if isinstance(ev, FrameReceived):
            seen.append(_view(ev.frame))
        elif isinstance(ev, ErrorEvent):
            error = ev.code.value
    return seen, error


def _view(frame: Frame) -> tuple[str, str | None]:
    tag = str(type(frame).__struct_config__.tag)
    return tag, frame.nonce.hex() if isinstance(frame, Ping | Pong) else None


@pytest.fixture(scope="module")
def phone_reads() -> list[tuple[Seen, str | None]]:
    answer = run_driver({"op": "decode_messages", "cases": [
        {"data": b64url_encode(m), "bundles": b, "ready": r} for _, m, b, r, _, _ in CASES]})
    return [([(f["t"], f.get("nonce")) for f in got["frames"]], got["error"])
            for got in answer["results"]]


def test_the_example_is_the_bundle_of_a_ping_and_its_pong() -> None:
    assert len(EXAMPLE) == 58
    assert EXAMPLE == bundle(ping(b"\x01\x02"), encode_frame(Pong(nonce=b"\x01\x02")))


@pytest.mark.parametrize(("index", "name"), [(i, c[0]) for i, c in enumerate(CASES)])
def test_the_phone_reads_a_message_as_the_vector_and_the_sdk_say(
        phone_reads: list[tuple[Seen, str | None]], index: int, name: str) -> None:
    _, message, bundles, ready, frames, error = CASES[index]
    assert phone_reads[index] == (frames, error), name
    assert sdk_reads(message, bundles=bundles, ready=ready) == (frames, error), name
