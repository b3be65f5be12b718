"""Tests of protocol/frames.py: catalogue, round trips, exact error codes, codec fuzzing."""

from __future__ import annotations

import hashlib
import re
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import frames as f
from protocol.errors import DecodeError, ErrorCode, LimitExceeded
from protocol.model import Priority
from tests.protocol.frame_samples import T0, U1, sample_frames, sealed


def raw(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


def as_map(frame: f.Frame) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.msgpack.decode(f.encode_frame(frame))
    return decoded


def code_of(data: bytes, **kw: Any) -> ErrorCode:
    with pytest.raises(DecodeError) as info:
        f.decode_frame(data, **kw)
    return info.value.code


# --- catalogue -------------------------------------------------------------------------------


def test_direction_table_covers_exactly_the_frame_union() -> None:
    union = set(typing.get_args(f.Frame))
    assert set(f.DIRECTION) == union
    assert {type(frame) for frame in sample_frames()} == union


def test_frame_tags_are_unique_short_snake_case() -> None:
    assert len(f.FRAME_TYPES) == len(f.DIRECTION)
    for tag in f.FRAME_TYPES:
        assert re.fullmatch(r"[a-z][a-z_]{1,23}", tag)


def test_only_ping_pong_and_bundle_travel_both_ways() -> None:
    both = {cls for cls, d in f.DIRECTION.items() if d is f.Direction.BOTH}
    assert both == {f.Ping, f.Pong, f.Bundle}
    assert f.DIRECTION[f.Hello] is f.Direction.CLIENT_TO_SERVER
    assert f.DIRECTION[f.Deliver] is f.Direction.SERVER_TO_CLIENT


@pytest.mark.parametrize("frame", sample_frames(), ids=lambda fr: type(fr).__name__)
def test_every_frame_type_round_trips(frame: f.Frame) -> None:
    data = f.encode_frame(frame)
    assert f.decode_frame(data) == frame
    assert as_map(frame)["t"] == type(frame).__struct_config__.tag


def test_frames_are_frozen() -> None:
    ping = f.Ping(nonce=b"x")
    with pytest.raises(AttributeError):
        ping.nonce = b"y"  # type: ignore[misc]


# --- exact error codes -------------------------------------------------------------------------


def test_unknown_frame_type_is_reported_as_unknown() -> None:
    assert code_of(raw({"t": "teleport", "x": 1})) is ErrorCode.UNKNOWN_FRAME_TYPE


def test_extra_field_is_malformed() -> None:
    bad = as_map(f.Ping(nonce=b"x")) | {"extra": 1}
    assert code_of(raw(bad)) is ErrorCode.MALFORMED_FRAME


def test_missing_field_is_malformed() -> None:
    bad = as_map(f.Challenge(version=1, nonce=b"\x01" * 32, server_time=T0))
    del bad["nonce"]
    assert code_of(raw(bad)) is ErrorCode.MALFORMED_FRAME


def test_wrong_type_is_malformed() -> None:
    bad = as_map(f.Ack(delivery_ids=[U1])) | {"delivery_ids": "not-a-list"}
    assert code_of(raw(bad)) is ErrorCode.MALFORMED_FRAME


def test_bad_enum_value_is_malformed_not_unknown_type() -> None:
    bad = as_map(sample_frames()[15]) | {"reason": "whim"}
    assert bad["t"] == "expire_order"
    assert code_of(raw(bad)) is ErrorCode.MALFORMED_FRAME


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", raw([1, 2]), raw("hello"), raw({"x": 1}), raw({"t": 5}), raw({1: "ping"})],
    ids=["empty", "invalid-opcode", "array", "string", "no-tag", "int-tag", "int-key"],
)
def test_non_frames_are_malformed(data: bytes) -> None:
    assert code_of(data) is ErrorCode.MALFORMED_FRAME


def test_trailing_bytes_after_a_frame_are_malformed() -> None:
    assert code_of(f.encode_frame(f.Ping(nonce=b"x")) + b"\x00") is ErrorCode.MALFORMED_FRAME


def test_text_input_is_malformed() -> None:
    assert code_of("ping") is ErrorCode.MALFORMED_FRAME  # type: ignore[arg-type]


def test_oversize_frame_is_rejected_before_decoding() -> None:
    with pytest.raises(LimitExceeded) as info:
        f.decode_frame(b"\xc1" * 101, max_frame_size=100)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


def test_frame_at_exactly_the_limit_is_accepted() -> None:
    data = f.encode_frame(f.Ping(nonce=b"x"))
    assert f.decode_frame(data, max_frame_size=len(data)) == f.Ping(nonce=b"x")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("access_token", "x" * (f.MAX_ACCESS_TOKEN + 1)),
        ("versions", list(range(1, f.MAX_VERSIONS + 2))),
        ("device_id", "a" * 37),
        ("client", "c" * (f.MAX_CLIENT_NAME + 1)),
    ],
)
def test_oversize_hello_field_is_field_too_large(field: str, value: Any) -> None:
    bad = as_map(sample_frames()[0]) | {field: value}
    with pytest.raises(LimitExceeded) as info:
        f.decode_frame(raw(bad))
    assert info.value.code is ErrorCode.FIELD_TOO_LARGE


def test_oversize_ack_batch_is_field_too_large() -> None:
    bad = {"t": "ack", "delivery_ids": [U1] * (f.MAX_ACK_BATCH + 1)}
    assert code_of(raw(bad)) is ErrorCode.FIELD_TOO_LARGE


def test_oversize_ping_nonce_and_error_detail_are_field_too_large() -> None:
    assert code_of(raw({"t": "ping", "nonce": b"x" * 33})) is ErrorCode.FIELD_TOO_LARGE
    bad = {"t": "error", "code": "bad_request", "detail": "d" * (f.MAX_DETAIL + 1)}
    assert code_of(raw(bad)) is ErrorCode.FIELD_TOO_LARGE


def test_oversize_sealed_ciphertext_is_field_too_large() -> None:
    frame = f.Send(req_id="r", message=sealed(ciphertext=b"c" * (f.MAX_CIPHERTEXT + 1)))
    with pytest.raises(LimitExceeded) as info:
        f.decode_frame(f.encode_frame(frame), max_frame_size=2 * f.MAX_CIPHERTEXT)
    assert info.value.code is ErrorCode.FIELD_TOO_LARGE


def test_too_many_recipient_devices_is_field_too_large() -> None:
    frame = f.Deliver(
        delivery_id=U1,
        thread_seq=1,
        priority=Priority.ROUTINE,
        received_at=T0,
        message=sealed(devices=f.MAX_DEVICE_LIST + 1),
    )
    assert code_of(f.encode_frame(frame)) is ErrorCode.FIELD_TOO_LARGE


def test_too_short_fixed_size_value_is_malformed() -> None:
    assert code_of(raw({"t": "auth", "signature": b"s" * 63})) is ErrorCode.MALFORMED_FRAME


def test_non_uuid_identifier_is_malformed() -> None:
    bad = as_map(sample_frames()[0]) | {"device_id": "G" * 36}
    assert code_of(raw(bad)) is ErrorCode.MALFORMED_FRAME


def test_out_of_range_number_is_malformed_not_too_large() -> None:
    bad = as_map(sample_frames()[0]) | {"versions": [70000]}
    assert code_of(raw(bad)) is ErrorCode.MALFORMED_FRAME
    assert (
        code_of(raw({"t": "keys_low", "remaining": -1, "target": 5})) is ErrorCode.MALFORMED_FRAME
    )


def test_deeply_nested_input_is_malformed_not_a_crash() -> None:
    deep = b"\x82\xa1t\xa4ping\xa1z" + b"\x91" * 100_000 + b"\x01"
    assert code_of(deep) is ErrorCode.MALFORMED_FRAME


# --- negotiation and the challenge -----------------------------------------------------------


def test_negotiate_picks_the_highest_common_version() -> None:
    assert f.negotiate([1, 2, 3], supported=(1, 2)) == 2
    assert f.negotiate([1]) == 1


def test_negotiate_without_common_version_is_unsupported_version() -> None:
    with pytest.raises(DecodeError) as info:
        f.negotiate([2, 3], supported=(1,))
    assert info.value.code is ErrorCode.UNSUPPORTED_VERSION


def test_challenge_signing_bytes_are_label_nonce_and_token_hash() -> None:
    nonce = bytes(range(32))
    out = f.challenge_signing_bytes(nonce, "tok")
    assert out == b"lightbox/ws-auth/v1\x00" + nonce + hashlib.sha256(b"tok").digest()
    assert len(out) == 84
    assert f.challenge_signing_bytes(nonce, "tok2") != out


def test_challenge_signing_bytes_refuses_a_short_nonce() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        f.challenge_signing_bytes(b"\x00" * 31, "tok")


def test_peek_req_id_finds_the_request_of_a_malformed_frame() -> None:
    assert f.peek_req_id(raw({"t": "send", "req_id": "abc", "message": 1})) == "abc"
    assert f.peek_req_id(b"\xc1") is None
    assert f.peek_req_id(raw({"t": "send", "req_id": 5})) is None


# --- fuzzing -----------------------------------------------------------------------------------

FUZZ = settings(max_examples=100, deadline=None)
VALID = [f.encode_frame(frame) for frame in sample_frames()]


ALLOWED_CODES = {
    ErrorCode.MALFORMED_FRAME,
    ErrorCode.UNKNOWN_FRAME_TYPE,
    ErrorCode.FIELD_TOO_LARGE,
    ErrorCode.FRAME_TOO_LARGE,
}


def assert_only_decode_error(data: bytes) -> None:
    """Either a frame of the catalogue, or a DecodeError with a frame code; nothing else."""
    outcome: object
    try:
        outcome = f.decode_frame(data)
    except DecodeError as exc:
        outcome = exc.code
    if isinstance(outcome, ErrorCode):
        assert outcome in ALLOWED_CODES
    else:
        assert type(outcome) in f.DIRECTION


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_raise_nothing_but_decode_error(data: bytes) -> None:
    assert_only_decode_error(data)


@FUZZ
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_valid_frames_raise_nothing_but_decode_error(
    data: bytes, edits: list[tuple[int, int]]
) -> None:
    buf = bytearray(data)
    for position, value in edits:
        buf[position % len(buf)] = value
    assert_only_decode_error(bytes(buf))


@FUZZ
@given(st.sampled_from(VALID), st.integers(0, 10_000))
def test_truncated_valid_frames_are_malformed(data: bytes, cut: int) -> None:
    assert code_of(data[: cut % len(data)]) is ErrorCode.MALFORMED_FRAME


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    st.sampled_from(sorted(f.FRAME_TYPES)),
    st.dictionaries(
        st.sampled_from(["req_id", "message", "nonce", "versions", "code", "statement", "id", "x"]),
        _values,
        max_size=6,
    ),
)
def test_structured_garbage_with_valid_tags_raises_nothing_but_decode_error(
    tag: str, fields: dict[str, Any]
) -> None:
    assert_only_decode_error(raw({"t": tag, **fields}))


def test_encode_deliver_matches_encode_frame_byte_for_byte() -> None:
    from protocol.envelope import encode_sealed
    from protocol.frames import Deliver, encode_deliver, encode_frame
    from tests.protocol.frame_samples import sealed as sample_sealed

    sealed = sample_sealed(devices=3)
    raw = encode_sealed(sealed)
    frame = Deliver(delivery_id="00000000-0000-4000-8000-000000000001", thread_seq=7,
                    priority=sealed.header.priority, received_at=1767225600,
                    message=sealed)
    assert encode_deliver(delivery_id=frame.delivery_id, thread_seq=7,
                          priority=frame.priority, received_at=1767225600,
                          sealed=raw) == encode_frame(frame)
