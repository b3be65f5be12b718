"""Tests of protocol/session.py: the sans-I/O handshake and connection state machines."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import frames as f
from protocol.errors import CloseCode, ErrorCode, LimitExceeded, ProtocolError, VerificationError
from protocol.keys import Ed25519KeyPair
from protocol.model import SealedMessage
from protocol.session import (
    AuthRequested,
    ClientSession,
    ClientState,
    ErrorEvent,
    FrameReceived,
    ServerSession,
    ServerState,
    SessionReady,
    verify_challenge,
)
from tests.protocol.frame_samples import T0, U1, U2, U3, sample_frames

NONCE = bytes(range(32))
TOKEN = "header.payload.signature"
DEVICE_KEY = Ed25519KeyPair.from_seed(b"\x07" * 32)
CLIENT_FRAMES = [
    fr for fr in sample_frames() if f.DIRECTION[type(fr)] is f.Direction.CLIENT_TO_SERVER
]
SERVER_FRAMES = [
    fr for fr in sample_frames() if f.DIRECTION[type(fr)] is f.Direction.SERVER_TO_CLIENT
]
HELLO = f.Hello(versions=[1], access_token=TOKEN, device_id=U1, client="test", client_version="1")


def enc(frame: f.Frame) -> bytes:
    return f.encode_frame(frame)


def sent(session: ServerSession | ClientSession) -> list[f.Frame]:
    return [f.decode_frame(data) for data in session.data_to_send()]


def server(**kw: object) -> ServerSession:
    return ServerSession(nonce=NONCE, now=T0, **kw)  # type: ignore[arg-type]


def authenticating_server(**kw: object) -> tuple[ServerSession, AuthRequested]:
    s = server(**kw)
    assert s.receive_data(enc(HELLO)) == []
    sent(s)
    signature = DEVICE_KEY.sign(f.challenge_signing_bytes(NONCE, TOKEN))
    (event,) = s.receive_data(enc(f.Auth(signature=signature)))
    assert isinstance(event, AuthRequested)
    return s, event


def ready_server(**kw: object) -> ServerSession:
    s, _ = authenticating_server(**kw)
    s.accept(session_id=U2, user_id=U3, server_time=T0, expires_at=T0 + 3600)
    sent(s)
    return s


def sample_message() -> SealedMessage:
    """The sealed message of the catalogue's ``send`` frame."""
    send = sample_frames()[4]
    assert isinstance(send, f.Send)
    return send.message


def only_error(session: ServerSession, events: Sequence[object]) -> tuple[ErrorEvent, f.Error]:
    (event,) = events
    assert isinstance(event, ErrorEvent)
    (frame,) = sent(session)
    assert isinstance(frame, f.Error)
    assert frame.code is event.code
    assert frame.fatal is event.fatal
    return event, frame


def the_error(events: Sequence[object]) -> ErrorEvent:
    """The one event a client's input produced, which must be an error."""
    (event,) = events
    assert isinstance(event, ErrorEvent)
    return event


# --- server handshake ----------------------------------------------------------------------------


def test_hello_is_answered_with_a_challenge_of_the_injected_nonce_and_time() -> None:
    s = server()
    assert s.receive_data(enc(HELLO)) == []
    assert sent(s) == [f.Challenge(version=1, nonce=NONCE, server_time=T0)]
    assert s.state is ServerState.AWAIT_AUTH


def test_auth_yields_auth_requested_with_the_exact_signed_bytes() -> None:
    s, event = authenticating_server()
    assert s.state is ServerState.VERIFYING
    assert event.hello == HELLO
    assert event.version == 1
    assert event.signed_bytes == f.challenge_signing_bytes(NONCE, TOKEN)
    verify_challenge(DEVICE_KEY.public, event.nonce, TOKEN, event.signature)


def test_verify_challenge_rejects_a_signature_by_another_key() -> None:
    other = Ed25519KeyPair.from_seed(b"\x08" * 32)
    signature = other.sign(f.challenge_signing_bytes(NONCE, TOKEN))
    with pytest.raises(VerificationError) as info:
        verify_challenge(DEVICE_KEY.public, NONCE, TOKEN, signature)
    assert info.value.code is ErrorCode.CHALLENGE_FAILED


def test_verify_challenge_rejects_an_answer_for_another_token() -> None:
    signature = DEVICE_KEY.sign(f.challenge_signing_bytes(NONCE, "other-token"))
    with pytest.raises(VerificationError):
        verify_challenge(DEVICE_KEY.public, NONCE, TOKEN, signature)


def test_accept_sends_ready_with_the_hello_device_and_limits() -> None:
    s, _ = authenticating_server(limits=f.Limits(send_window=4))
    s.accept(session_id=U2, user_id=U3, server_time=T0, expires_at=T0 + 60, heartbeat=15)
    (ready,) = sent(s)
    assert isinstance(ready, f.Ready)
    assert (ready.device_id, ready.user_id, ready.heartbeat) == (U1, U3, 15)
    assert ready.limits.send_window == 4
    assert s.state is ServerState.READY


def test_reject_sends_a_fatal_error_and_closes_with_auth_failed() -> None:
    s, _ = authenticating_server()
    s.reject(ErrorCode.TOKEN_EXPIRED, "expired")
    (frame,) = sent(s)
    assert isinstance(frame, f.Error)
    assert (frame.code, frame.fatal) == (ErrorCode.TOKEN_EXPIRED, True)
    assert s.close_code is CloseCode.AUTH_FAILED
    assert s.state is ServerState.CLOSED
    assert s.receive_data(enc(f.Ping(nonce=b"x"))) == []


def test_accept_outside_verifying_is_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        server().accept(session_id=U2, user_id=U3, server_time=T0, expires_at=T0 + 60)
    assert info.value.code is ErrorCode.UNEXPECTED_FRAME


def test_unsupported_version_closes_with_4008() -> None:
    s = server()
    hello = f.Hello(
        versions=[7, 9], access_token=TOKEN, device_id=U1, client="c", client_version="1"
    )
    event, _frame = only_error(s, s.receive_data(enc(hello)))
    assert event.code is ErrorCode.UNSUPPORTED_VERSION
    assert event.close_code is CloseCode.UNSUPPORTED_VERSION
    assert s.state is ServerState.CLOSED


def test_nonce_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ServerSession(nonce=b"short", now=T0)


# --- anything before authentication --------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [fr for fr in CLIENT_FRAMES if not isinstance(fr, f.Hello)] + [f.Ping(nonce=b"x")],
    ids=lambda fr: type(fr).__name__,
)
def test_any_frame_but_hello_first_is_unexpected_and_closes(frame: f.Frame) -> None:
    s = server()
    event, error = only_error(s, s.receive_data(enc(frame)))
    assert event.code is ErrorCode.UNEXPECTED_FRAME
    assert event.close_code is CloseCode.POLICY_VIOLATION
    assert error.fatal
    assert s.state is ServerState.CLOSED


@pytest.mark.parametrize(
    "frame",
    [fr for fr in CLIENT_FRAMES if not isinstance(fr, f.Auth)] + [f.Pong(nonce=b"x")],
    ids=lambda fr: type(fr).__name__,
)
def test_any_frame_but_auth_after_hello_is_unexpected_and_closes(frame: f.Frame) -> None:
    s = server()
    s.receive_data(enc(HELLO))
    sent(s)
    event, _ = only_error(s, s.receive_data(enc(frame)))
    assert event.code is ErrorCode.UNEXPECTED_FRAME
    assert event.fatal


def test_frames_while_the_answer_is_being_verified_are_unexpected() -> None:
    s, _ = authenticating_server()
    event, _ = only_error(s, s.receive_data(enc(CLIENT_FRAMES[2])))
    assert event.code is ErrorCode.UNEXPECTED_FRAME
    assert event.fatal


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda fr: type(fr).__name__)
def test_server_frames_sent_by_a_client_before_auth_are_unexpected(frame: f.Frame) -> None:
    s = server()
    event, _ = only_error(s, s.receive_data(enc(frame)))
    assert event.code is ErrorCode.UNEXPECTED_FRAME
    assert event.close_code is CloseCode.POLICY_VIOLATION


def test_malformed_frame_before_auth_closes_with_protocol_error() -> None:
    s = server()
    event, _ = only_error(s, s.receive_data(b"\xc1"))
    assert event.code is ErrorCode.MALFORMED_FRAME
    assert event.close_code is CloseCode.PROTOCOL_ERROR


def test_oversize_frame_closes_with_1009() -> None:
    s = server(limits=f.Limits(max_frame=64))
    event, _ = only_error(s, s.receive_data(b"\x00" * 65))
    assert event.code is ErrorCode.FRAME_TOO_LARGE
    assert event.close_code is CloseCode.MESSAGE_TOO_BIG


# --- ready connection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [fr for fr in CLIENT_FRAMES if not isinstance(fr, f.Hello | f.Auth)],
    ids=lambda fr: type(fr).__name__,
)
def test_client_frames_are_received_once_ready(frame: f.Frame) -> None:
    s = ready_server()
    assert s.receive_data(enc(frame)) == [FrameReceived(frame)]


@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=lambda fr: type(fr).__name__)
def test_wrong_direction_frame_when_ready_is_unexpected_but_not_fatal(frame: f.Frame) -> None:
    s = ready_server()
    event, _error = only_error(s, s.receive_data(enc(frame)))
    assert event.code is ErrorCode.UNEXPECTED_FRAME
    assert not event.fatal
    assert s.state is ServerState.READY


def test_repeated_hello_when_ready_is_unexpected() -> None:
    s = ready_server()
    event, _ = only_error(s, s.receive_data(enc(HELLO)))
    assert event.code is ErrorCode.UNEXPECTED_FRAME
    assert not event.fatal


def test_malformed_send_is_answered_with_its_req_id_and_the_connection_stays() -> None:
    s = ready_server()
    data = msgspec.msgpack.encode({"t": "send", "req_id": "r9", "message": "nope"})
    event, error = only_error(s, s.receive_data(data))
    assert (event.code, error.req_id, error.fatal) == (ErrorCode.MALFORMED_FRAME, "r9", False)
    ping = f.Ping(nonce=b"a")
    assert s.receive_data(enc(ping)) == [FrameReceived(ping)]


def test_unknown_and_oversize_field_codes_reach_the_peer() -> None:
    s = ready_server()
    event, _ = only_error(s, s.receive_data(msgspec.msgpack.encode({"t": "warp"})))
    assert event.code is ErrorCode.UNKNOWN_FRAME_TYPE
    data = msgspec.msgpack.encode({"t": "ping", "nonce": b"x" * 99})
    event, _ = only_error(s, s.receive_data(data))
    assert event.code is ErrorCode.FIELD_TOO_LARGE


def test_too_many_bad_frames_close_with_protocol_error() -> None:
    s = ready_server(max_bad_frames=2)
    for _ in range(2):
        event, _ = only_error(s, s.receive_data(b"\xc1"))
        assert not event.fatal
    event, error = only_error(s, s.receive_data(b"\xc1"))
    assert event.close_code is CloseCode.PROTOCOL_ERROR
    assert error.fatal


def test_ping_is_answered_with_pong_of_the_same_nonce() -> None:
    s = ready_server()
    assert s.receive_data(enc(f.Ping(nonce=b"abc"))) == [FrameReceived(f.Ping(nonce=b"abc"))]
    assert sent(s) == [f.Pong(nonce=b"abc")]


def test_send_window_overflow_is_rate_limited_until_accepted() -> None:
    s = ready_server(limits=f.Limits(send_window=2))
    first, second, third = (
        f.Send(req_id=r, message=sample_message())
        for r in ("a", "b", "c")
    )
    assert s.receive_data(enc(first)) == [FrameReceived(first)]
    assert s.receive_data(enc(second)) == [FrameReceived(second)]
    event, error = only_error(s, s.receive_data(enc(third)))
    assert (event.code, error.req_id, error.fatal) == (ErrorCode.RATE_LIMITED, "c", False)
    assert error.retry_after is not None
    s.send(
        f.Accepted(
            req_id="a", message_id=U1, thread_id=U2, thread_seq=1, server_time=T0, duplicate=False
        )
    )
    assert s.in_flight == 1
    assert s.receive_data(enc(third)) == [FrameReceived(third)]


def test_server_send_refuses_client_frames_handshake_frames_and_fatal_errors() -> None:
    s = ready_server()
    for frame in (
        HELLO,
        f.Ack(delivery_ids=[U1]),
        f.Challenge(version=1, nonce=NONCE, server_time=T0),
        f.Error(code=ErrorCode.BAD_REQUEST, fatal=True),
    ):
        with pytest.raises(ProtocolError) as info:
            s.send(frame)
        assert info.value.code is ErrorCode.UNEXPECTED_FRAME


def test_server_send_before_ready_is_refused() -> None:
    with pytest.raises(ProtocolError):
        server().send(f.KeysLow(remaining=1, target=10))


def test_close_sends_a_fatal_error_and_sets_the_close_code() -> None:
    s = ready_server()
    s.close(CloseCode.DEVICE_REVOKED, code=ErrorCode.DEVICE_REVOKED, detail="lost phone")
    (frame,) = sent(s)
    assert isinstance(frame, f.Error)
    assert frame.fatal
    assert s.close_code is CloseCode.DEVICE_REVOKED
    assert s.state is ServerState.CLOSED


# --- client --------------------------------------------------------------------------------------


def client(**kw: object) -> ClientSession:
    return ClientSession(
        access_token=TOKEN,
        device_id=U1,
        client="test",
        client_version="1",
        sign=DEVICE_KEY.sign,
        **kw,  # type: ignore[arg-type]
    )


def pump(c: ClientSession, s: ServerSession) -> tuple[list[object], list[object]]:
    """Deliver every pending message both ways until both sides are quiet."""
    client_events: list[object] = []
    server_events: list[object] = []
    while True:
        to_server, to_client = c.data_to_send(), s.data_to_send()
        if not to_server and not to_client:
            return client_events, server_events
        for data in to_server:
            server_events += s.receive_data(data)
        for data in to_client:
            client_events += c.receive_data(data)


def test_client_and_server_complete_the_handshake_in_memory() -> None:
    c, s = client(), server()
    _, server_events = pump(c, s)
    (auth,) = server_events
    assert isinstance(auth, AuthRequested)
    verify_challenge(DEVICE_KEY.public, auth.nonce, auth.hello.access_token, auth.signature)
    s.accept(session_id=U2, user_id=U3, server_time=T0, expires_at=T0 + 60)
    client_events, _ = pump(c, s)
    assert [type(e) for e in client_events] == [SessionReady]
    assert c.state is ClientState.READY
    c.send(f.Ping(nonce=b"hb"))
    client_events, server_events = pump(c, s)
    assert server_events == [FrameReceived(f.Ping(nonce=b"hb"))]
    assert client_events == [FrameReceived(f.Pong(nonce=b"hb"))]


def ready_client(**kw: object) -> ClientSession:
    c, s = client(**kw), server()
    pump(c, s)
    s.accept(session_id=U2, user_id=U3, server_time=T0, expires_at=T0 + 60)
    pump(c, s)
    assert c.state is ClientState.READY
    return c


def test_client_refuses_a_version_it_did_not_offer() -> None:
    c = client()
    c.data_to_send()
    event = the_error(c.receive_data(enc(f.Challenge(version=2, nonce=NONCE, server_time=T0))))
    assert event.code is ErrorCode.UNSUPPORTED_VERSION
    assert c.state is ClientState.CLOSED


@pytest.mark.parametrize(
    "frame",
    [fr for fr in SERVER_FRAMES if not isinstance(fr, f.Challenge | f.Error)],
    ids=lambda fr: type(fr).__name__,
)
def test_client_treats_anything_but_challenge_first_as_unexpected(frame: f.Frame) -> None:
    c = client()
    event = the_error(c.receive_data(enc(frame)))
    assert event.code is ErrorCode.UNEXPECTED_FRAME
    assert event.close_code is CloseCode.PROTOCOL_ERROR


def test_client_treats_client_frames_from_the_relay_as_unexpected() -> None:
    c = ready_client()
    event = the_error(c.receive_data(enc(f.Ack(delivery_ids=[U1]))))
    assert event.code is ErrorCode.UNEXPECTED_FRAME


def test_client_stops_on_a_fatal_error_from_the_relay() -> None:
    c = client()
    error = f.Error(code=ErrorCode.TOKEN_EXPIRED, fatal=True)
    assert c.receive_data(enc(error)) == [FrameReceived(error)]
    assert c.state is ClientState.CLOSED


def test_client_cannot_send_before_ready_or_send_relay_frames() -> None:
    with pytest.raises(ProtocolError):
        client().send(f.Ack(delivery_ids=[U1]))
    with pytest.raises(ProtocolError):
        ready_client().send(f.KeysLow(remaining=1, target=2))


def test_client_send_window_is_enforced_locally_and_freed_by_accepted() -> None:
    c = ready_client()
    message = sample_message()
    for i in range(f.DEFAULT_SEND_WINDOW):
        c.send(f.Send(req_id=f"r{i}", message=message))
    with pytest.raises(ProtocolError) as info:
        c.send(f.Send(req_id="over", message=message))
    assert info.value.code is ErrorCode.RATE_LIMITED
    accepted = f.Accepted(
        req_id="r0", message_id=U1, thread_id=U2, thread_seq=1, server_time=T0, duplicate=False
    )
    c.receive_data(enc(accepted))
    c.send(f.Send(req_id="over", message=message))
    assert c.in_flight == f.DEFAULT_SEND_WINDOW


def test_client_refuses_to_send_a_frame_over_the_relays_maximum() -> None:
    c = ready_client()
    with pytest.raises(LimitExceeded) as info:
        c.send(f.Receipt(statement="x" * (f.DEFAULT_MAX_FRAME + 1)))
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.binary(max_size=200) | st.sampled_from([enc(fr) for fr in sample_frames()]), max_size=12
    )
)
def test_any_input_to_a_ready_server_yields_events_never_exceptions(inputs: list[bytes]) -> None:
    s = ready_server()
    for data in inputs:
        for event in s.receive_data(data):
            assert isinstance(event, FrameReceived | ErrorEvent)
        for out in s.data_to_send():
            assert type(f.decode_frame(out)) in f.DIRECTION
    assert s.state in {ServerState.READY, ServerState.CLOSED}


def test_auth_requested_repr_does_not_leak_the_access_token() -> None:
    _, event = authenticating_server()
    assert TOKEN not in repr(event)
