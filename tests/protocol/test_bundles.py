"""Bundles (docs/PROTOCOL.md §3.6): several frames in one websocket message, only on a
connection that selected the ``lightbox.bundle`` subprotocol, each frame handled exactly as if
it had come alone."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import frames as f
from protocol.errors import CloseCode, DecodeError, ErrorCode, ProtocolError
from protocol.session import (
    ClientSession,
    ClientState,
    ErrorEvent,
    FrameReceived,
    ServerSession,
    ServerState,
    SessionReady,
)
from tests.protocol.frame_samples import T0, U1, U2, U3
from tests.protocol.test_session import (
    authenticating_server,
    client,
    enc,
    pump,
    ready_server,
    sample_message,
    sent,
    server,
)


def bundle(*frames: f.Frame | bytes) -> bytes:
    return enc(f.Bundle(frames=[x if isinstance(x, bytes) else enc(x) for x in frames]))


def send(req_id: str) -> f.Send:
    return f.Send(req_id=req_id, message=sample_message())


def bundled_server(**kw: object) -> ServerSession:
    s = ready_server(**kw)
    s.use_bundles()
    return s


def received(events: Sequence[object]) -> list[f.Frame]:
    return [e.frame for e in events if isinstance(e, FrameReceived)]


def unbundled(data: list[bytes]) -> list[f.Frame]:
    """The frames of websocket messages, bundles taken apart."""
    out: list[f.Frame] = []
    for message in data:
        frame = f.decode_frame(message)
        if isinstance(frame, f.Bundle):
            out += [f.decode_frame(x) for x in frame.frames]
        else:
            out.append(frame)
    return out


# --- pack_bundles -------------------------------------------------------------------------------


def test_pack_leaves_no_frame_and_one_frame_as_they_are() -> None:
    one = enc(f.Ping(nonce=b"x"))
    assert f.pack_bundles([], 1024) == []
    assert f.pack_bundles([one], 1024) == [one]


def test_pack_joins_frames_in_order_into_one_bundle() -> None:
    frames = [enc(f.Ping(nonce=bytes([i]))) for i in range(5)]
    (out,) = f.pack_bundles(frames, 1024)
    decoded = f.decode_frame(out)
    assert isinstance(decoded, f.Bundle)
    assert decoded.frames == frames


def test_pack_cuts_at_the_most_frames_a_bundle_may_hold() -> None:
    frames = [enc(f.Ping(nonce=b"")) for _ in range(f.MAX_BUNDLE * 2 + 1)]
    out = f.pack_bundles(frames, f.DEFAULT_MAX_FRAME)
    assert len(out) == 3
    assert [len(f.decode_frame(x).frames) for x in out[:2]] == [f.MAX_BUNDLE] * 2  # type: ignore[union-attr]
    assert out[2] == frames[-1]  # the last one alone goes as itself


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=3000), min_size=0, max_size=80),
       st.integers(min_value=400, max_value=20_000))
def test_pack_never_exceeds_the_size_and_keeps_every_frame_in_order(
        sizes: list[int], max_size: int) -> None:
    frames = [enc(f.Ping(nonce=b"")) if n < 32 else enc(f.Error(code=ErrorCode.INTERNAL_ERROR,
                                                                 detail="x" * min(n, 1024)))
              for n in sizes]
    out = f.pack_bundles(frames, max_size)
    for message in out:
        decoded = f.decode_frame(message, max_frame_size=10**7)
        if isinstance(decoded, f.Bundle):
            assert len(message) <= max_size
            assert 2 <= len(decoded.frames) <= f.MAX_BUNDLE
    flat: list[bytes] = []
    for message in out:
        decoded = f.decode_frame(message, max_frame_size=10**7)
        flat += decoded.frames if isinstance(decoded, f.Bundle) else [message]
    assert flat == frames


# --- the codec ----------------------------------------------------------------------------------


def test_a_bundle_with_no_frames_is_malformed() -> None:
    with pytest.raises(DecodeError) as info:
        f.decode_frame(msgspec.msgpack.encode({"t": "bundle", "frames": []}))
    assert info.value.code is ErrorCode.MALFORMED_FRAME


def test_a_bundle_of_more_than_the_limit_is_too_large_a_field() -> None:
    data = msgspec.msgpack.encode({"t": "bundle", "frames": [b"\x80"] * (f.MAX_BUNDLE + 1)})
    with pytest.raises(DecodeError) as info:
        f.decode_frame(data)
    assert info.value.code is ErrorCode.FIELD_TOO_LARGE


def test_a_bundle_of_strings_is_malformed() -> None:
    with pytest.raises(DecodeError) as info:
        f.decode_frame(msgspec.msgpack.encode({"t": "bundle", "frames": ["ping"]}))
    assert info.value.code is ErrorCode.MALFORMED_FRAME


# --- the relay's session: receiving -------------------------------------------------------------


def test_without_the_subprotocol_a_bundle_is_unexpected_and_none_of_its_frames_is_handled(
        ) -> None:
    s = ready_server()
    (event,) = s.receive_data(bundle(send("r1"), f.Ping(nonce=b"p")))
    assert isinstance(event, ErrorEvent)
    assert event.code is ErrorCode.UNEXPECTED_FRAME
    assert not event.fatal
    assert "lightbox.bundle" in event.detail
    (error,) = sent(s)  # no pong: the ping inside was not handled
    assert isinstance(error, f.Error)
    assert error.code is ErrorCode.UNEXPECTED_FRAME
    assert s.in_flight == 0


def test_a_bundle_before_ready_is_unexpected_and_fatal_even_with_the_subprotocol() -> None:
    s = server()
    s.use_bundles()
    (event,) = s.receive_data(bundle(f.Ping(nonce=b"p")))
    assert isinstance(event, ErrorEvent)
    assert (event.code, event.close_code) == (ErrorCode.UNEXPECTED_FRAME,
                                              CloseCode.POLICY_VIOLATION)
    assert s.state is ServerState.CLOSED


def test_a_bundle_while_authenticating_is_unexpected() -> None:
    s, _ = authenticating_server()
    s.use_bundles()
    (event,) = s.receive_data(bundle(f.Ping(nonce=b"p")))
    assert isinstance(event, ErrorEvent)
    assert event.code is ErrorCode.UNEXPECTED_FRAME
    assert s.state is ServerState.CLOSED


def test_each_frame_of_a_bundle_is_handled_in_order_as_if_alone() -> None:
    s = bundled_server()
    events = s.receive_data(bundle(send("r1"), f.Ping(nonce=b"p"),
                                   f.Ack(delivery_ids=[U1]), send("r2")))
    assert [type(x) for x in received(events)] == [f.Send, f.Ping, f.Ack, f.Send]
    assert s.in_flight == 2
    assert unbundled(s.data_to_send()) == [f.Pong(nonce=b"p")]


def test_a_malformed_frame_in_a_bundle_costs_that_frame_not_its_neighbours() -> None:
    s = bundled_server()
    broken = msgspec.msgpack.encode({"t": "send", "req_id": "bad-1", "message": 7})
    events = s.receive_data(bundle(send("r1"), broken, send("r2")))
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert [x.req_id for x in received(events)] == ["r1", "r2"]  # type: ignore[union-attr]
    (err,) = errors
    assert (err.code, err.req_id, err.fatal) == (ErrorCode.MALFORMED_FRAME, "bad-1", False)
    (answer,) = unbundled(s.data_to_send())
    assert isinstance(answer, f.Error)
    assert answer.req_id == "bad-1"


@pytest.mark.parametrize(("inner", "why"), [
    (f.Bundle(frames=[enc(f.Ping(nonce=b""))]), "bundle inside a bundle"),
    (f.Hello(versions=[1], access_token="t", device_id=U1, client="c", client_version="1"),
     "already authenticated"),
    (f.QueueEmpty(pending=0, server_time=T0), "server-to-client"),
])
def test_a_frame_out_of_place_in_a_bundle_is_unexpected(inner: f.Frame, why: str) -> None:
    s = bundled_server()
    events = s.receive_data(bundle(inner, f.Ping(nonce=b"after")))
    (err,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert err.code is ErrorCode.UNEXPECTED_FRAME
    assert why in err.detail
    assert received(events) == [f.Ping(nonce=b"after")]


def test_bundled_sends_count_against_the_send_window_one_by_one() -> None:
    s = bundled_server(limits=f.Limits(send_window=2))
    events = s.receive_data(bundle(send("r1"), send("r2"), send("r3")))
    assert [x.req_id for x in received(events)] == ["r1", "r2"]  # type: ignore[union-attr]
    (err,) = [e for e in events if isinstance(e, ErrorEvent)]
    assert (err.code, err.req_id) == (ErrorCode.RATE_LIMITED, "r3")


def test_bad_frames_in_bundles_count_towards_the_close_and_nothing_after_it_is_handled() -> None:
    s = bundled_server()
    junk = b"\xc1"
    events = s.receive_data(bundle(*([junk] * 9), f.Ping(nonce=b"late")))
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 9
    assert errors[-1].close_code is CloseCode.PROTOCOL_ERROR
    assert received(events) == []
    assert s.state is ServerState.CLOSED


def test_a_bundle_larger_than_the_maximum_frame_closes_before_it_is_parsed() -> None:
    s = bundled_server(limits=f.Limits(max_frame=1024))
    (event,) = s.receive_data(bundle(*[f.Ping(nonce=b"x" * 30)] * 40))
    assert isinstance(event, ErrorEvent)
    assert (event.code, event.close_code) == (ErrorCode.FRAME_TOO_LARGE,
                                              CloseCode.MESSAGE_TOO_BIG)


# --- the relay's session: sending ---------------------------------------------------------------


def test_the_relay_bundles_what_it_queued_since_ready_but_never_the_handshake() -> None:
    s, _ = authenticating_server()
    s.use_bundles()
    s.accept(session_id=U2, user_id=U3, server_time=T0, expires_at=T0 + 60)
    s.send(f.QueueEmpty(pending=0, server_time=T0))
    s.send_encoded(enc(f.KeysLow(remaining=1, target=10)))
    ready, rest = s.data_to_send()
    assert isinstance(f.decode_frame(ready), f.Ready)  # alone: the client is not ready yet
    assert isinstance(f.decode_frame(rest), f.Bundle)
    assert unbundled([rest]) == [f.QueueEmpty(pending=0, server_time=T0),
                                 f.KeysLow(remaining=1, target=10)]


def test_without_the_subprotocol_the_relay_writes_one_frame_per_message() -> None:
    s = ready_server()
    s.send(f.QueueEmpty(pending=0, server_time=T0))
    s.send_encoded(enc(f.KeysLow(remaining=1, target=10)))
    out = s.data_to_send()
    assert len(out) == 2
    assert not any(isinstance(f.decode_frame(x), f.Bundle) for x in out)


def test_the_relay_bundles_no_larger_than_its_maximum_frame() -> None:
    s = bundled_server(limits=f.Limits(max_frame=2048))
    for i in range(10):
        s.send(f.Error(code=ErrorCode.INTERNAL_ERROR, detail=str(i) * 500))
    out = s.data_to_send()
    assert len(out) > 1
    assert all(len(x) <= 2048 for x in out)
    assert [x.detail[0] for x in unbundled(out)] == [str(i) for i in range(10)]  # type: ignore[union-attr]


def test_bundles_are_not_sent_by_hand_and_encoded_frames_wait_for_ready() -> None:
    s = bundled_server()
    with pytest.raises(ProtocolError):
        s.send(f.Bundle(frames=[enc(f.Ping(nonce=b""))]))
    fresh = server()
    with pytest.raises(ProtocolError):
        fresh.send_encoded(enc(f.Ping(nonce=b"")))


# --- the client's session -----------------------------------------------------------------------


def ready_pair(*, bundles: bool) -> tuple[ClientSession, ServerSession]:
    c, s = client(), server()
    if bundles:
        c.use_bundles()
        s.use_bundles()
    pump(c, s)
    s.accept(session_id=U2, user_id=U3, server_time=T0, expires_at=T0 + 60)
    client_events, _ = pump(c, s)
    assert [type(e) for e in client_events] == [SessionReady]
    return c, s


def test_client_and_relay_exchange_bundles_both_ways() -> None:
    c, s = ready_pair(bundles=True)
    c.send(send("r1"))
    c.send(send("r2"))
    c.send(f.Ping(nonce=b"c"))
    (one,) = c.data_to_send()
    server_events = s.receive_data(one)
    assert [type(x) for x in received(server_events)] == [f.Send, f.Send, f.Ping]
    for req in ("r1", "r2"):
        s.send(f.Accepted(req_id=req, message_id=U1, thread_id=U2, thread_seq=1,
                          server_time=T0, duplicate=False))
    (answer,) = s.data_to_send()  # the pong and both answers
    client_events = c.receive_data(answer)
    assert [type(x) for x in received(client_events)] == [f.Pong, f.Accepted, f.Accepted]
    assert c.in_flight == 0


def test_a_client_that_did_not_select_bundles_refuses_one_and_closes() -> None:
    c, _ = ready_pair(bundles=False)
    (event,) = c.receive_data(bundle(f.Ping(nonce=b"x")))
    assert isinstance(event, ErrorEvent)
    assert event.code is ErrorCode.UNEXPECTED_FRAME
    assert c.state is ClientState.CLOSED


def test_a_client_refuses_a_bundle_before_ready_even_one_that_holds_ready() -> None:
    c, s = client(), server()
    c.use_bundles()
    s.use_bundles()
    pump(c, s)
    assert c.state.value == "await_ready"
    ready = f.Ready(session_id=U2, device_id=U1, user_id=U3, version=1, server_time=T0,
                    heartbeat=30, expires_at=T0 + 60, limits=f.Limits())
    (event,) = c.receive_data(bundle(ready, f.Ping(nonce=b"x")))
    assert isinstance(event, ErrorEvent)
    assert event.code is ErrorCode.UNEXPECTED_FRAME
    assert c.state is ClientState.CLOSED


@pytest.mark.parametrize("inner", [b"\xc1", enc(f.Bundle(frames=[enc(f.Ping(nonce=b""))])),
                                   enc(f.Ack(delivery_ids=[U1]))])
def test_a_client_closes_on_a_bad_frame_inside_a_bundle_and_handles_nothing_after_it(
        inner: bytes) -> None:
    c, _ = ready_pair(bundles=True)
    events = c.receive_data(bundle(f.Ping(nonce=b"before"), inner, f.Ping(nonce=b"after")))
    assert received(events) == [f.Ping(nonce=b"before")]
    assert isinstance(events[-1], ErrorEvent)
    assert c.state is ClientState.CLOSED


def test_a_client_does_not_bundle_its_handshake_nor_send_a_bundle_by_hand() -> None:
    c = client()
    c.use_bundles()
    (hello,) = c.data_to_send()
    assert isinstance(f.decode_frame(hello), f.Hello)
    c2, _ = ready_pair(bundles=True)
    with pytest.raises(ProtocolError):
        c2.send(f.Bundle(frames=[enc(f.Ping(nonce=b""))]))


# --- the example of docs/PROTOCOL.md §3.6 ---------------------------------------------------------


def test_the_example_bytes_of_the_protocol_document_are_what_the_codec_writes() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
    section = text.split("### 3.6 Bundles", 1)[1].split("\n## ", 1)[0]
    ping, pong = (bytes.fromhex(h) for h in re.findall(r"is `([0-9a-f ]{50,})`", section))
    (block,) = re.findall(r"```\n([0-9a-f \n]+)```", section)
    example = bytes.fromhex(block.replace("\n", " "))
    assert ping == enc(f.Ping(nonce=b"\x01\x02"))
    assert pong == enc(f.Pong(nonce=b"\x01\x02"))
    assert f.pack_bundles([ping, pong], f.DEFAULT_MAX_FRAME) == [example]
    assert len(example) == 58
