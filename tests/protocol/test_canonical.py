"""protocol.canonical: RFC 8785 canonical JSON, strict base64url, compact signed artefacts."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import canonical
from protocol.canonical import (
    b64url_decode,
    b64url_encode,
    canonical_json,
    decode_struct,
    encode_struct,
    open_compact,
    sign_compact,
    split_compact,
)
from protocol.errors import DecodeError, LimitExceeded, VerificationError
from protocol.keys import Ed25519KeyPair

FAST = settings(max_examples=60, deadline=None)


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    count: int
    key: canonical.Bytes32
    note: str | None = None


KEY = Ed25519KeyPair.from_seed(bytes(range(32)))
BODY = Body(name="x", count=3, key=bytes(32))


def test_canonical_json_sorts_keys_and_has_no_whitespace() -> None:
    assert canonical_json({"b": [1, True, None], "a": {"d": "x", "c": False}}) == (
        b'{"a":{"c":false,"d":"x"},"b":[1,true,null]}'
    )


def test_canonical_json_sorts_keys_by_utf16_code_units_not_code_points() -> None:
    # U+1F600 is D83D DE00 in UTF-16, so it sorts before U+FFFD (RFC 8785 §3.2.3).
    assert canonical_json({"\ufffd": 1, "\U0001f600": 2}) == (
        '{"\U0001f600":2,"\ufffd":1}'.encode()
    )


def test_canonical_json_escapes_only_quote_backslash_and_controls() -> None:
    assert canonical_json('"\\\b\f\n\r\t\x01\x7fé€') == (
        '"\\"\\\\\\b\\f\\n\\r\\t\\u0001\x7fé€"'.encode()
    )


@pytest.mark.parametrize(
    "value", [1.0, float("nan"), 2**53, -(2**53), b"raw", {1: "x"}, {"s": {1.5}}, "\ud800"]
)
def test_canonical_json_rejects_values_without_one_canonical_form(value: object) -> None:
    with pytest.raises(DecodeError):
        canonical_json(value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(st.characters(blacklist_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(max_codepoint=0xD7FF), max_size=6), children, max_size=4
        )
    ),
    max_leaves=20,
)


@FAST
@given(json_values)
def test_canonical_json_matches_sorted_compact_json_for_bmp_keys(value: object) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_json(value) == expected.encode()
    assert json.loads(canonical_json(value)) == value


@FAST
@given(st.binary(max_size=100))
def test_b64url_round_trips_without_padding(data: bytes) -> None:
    text = b64url_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text) == data


@pytest.mark.parametrize("text", ["AA==", "A+8", "A/8", "AP 8", "A", "AB", "AP9", "é"])
def test_b64url_decode_rejects_padding_wrong_alphabet_and_non_canonical_bits(text: str) -> None:
    with pytest.raises(DecodeError):
        b64url_decode(text)


def test_b64url_decode_enforces_exact_and_maximum_lengths() -> None:
    with pytest.raises(DecodeError):
        b64url_decode(b64url_encode(bytes(31)), length=32)
    with pytest.raises(LimitExceeded):
        b64url_decode(b64url_encode(bytes(100)), max_length=10)


def test_encode_struct_writes_bytes_as_b64url_and_decode_struct_inverts_it() -> None:
    data = encode_struct(BODY)
    assert data == b'{"count":3,"key":"' + b"A" * 43 + b'","name":"x","note":null}'
    assert decode_struct(data, Body) == BODY


@pytest.mark.parametrize(
    "data",
    [
        b'{ "count":3,"key":"' + b"A" * 43 + b'","name":"x","note":null}',  # whitespace
        b'{"key":"' + b"A" * 43 + b'","count":3,"name":"x","note":null}',  # unsorted
        b'{"count":3,"key":"' + b"A" * 43 + b'","name":"\\u0078","note":null}',  # escape
        b'{"count":3.0,"key":"' + b"A" * 43 + b'","name":"x","note":null}',  # float
        b'{"count":3,"key":"' + b"A" * 42 + b'","name":"x","note":null}',  # short key
        b'{"count":3,"extra":1,"key":"' + b"A" * 43 + b'","name":"x","note":null}',
        b'{"count":3,"key":"' + b"A" * 43 + b'","name":"x"}',  # missing default field
        b"not json",
    ],
)
def test_decode_struct_rejects_non_canonical_or_mismatched_bodies(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_struct(data, Body)


def test_compact_artefact_round_trips_and_signature_covers_label_and_body() -> None:
    body = encode_struct(BODY)
    token = sign_compact(canonical.LABEL_FILING_STATEMENT, body, KEY)
    assert open_compact(canonical.LABEL_FILING_STATEMENT, token, Body, KEY.public) == BODY
    body_bytes, signature = split_compact(token)
    assert body_bytes == body
    assert signature == KEY.sign(canonical.LABEL_FILING_STATEMENT + b"\x00" + body)


def test_compact_artefact_signed_for_one_label_is_rejected_under_another() -> None:
    token = sign_compact(canonical.LABEL_FILING_STATEMENT, encode_struct(BODY), KEY)
    with pytest.raises(VerificationError):
        open_compact(canonical.LABEL_RECEIPT_STATEMENT, token, Body, KEY.public)


def test_compact_artefact_under_another_key_is_rejected() -> None:
    token = sign_compact(canonical.LABEL_FILING_STATEMENT, encode_struct(BODY), KEY)
    other = Ed25519KeyPair.from_seed(bytes(32))
    with pytest.raises(VerificationError):
        open_compact(canonical.LABEL_FILING_STATEMENT, token, Body, other.public)


@pytest.mark.parametrize("token", ["", "a", "a.b.c", "AAAA.", ".AAAA", "AAAA.AAAA"])
def test_split_compact_rejects_malformed_tokens(token: str) -> None:
    with pytest.raises(DecodeError):
        split_compact(token)


def test_split_compact_rejects_oversize_tokens_before_decoding() -> None:
    with pytest.raises(LimitExceeded):
        split_compact("A" * 100, max_length=99)


def test_domain_labels_are_distinct_and_none_is_a_prefix_of_another() -> None:
    labels = canonical.LABELS
    assert len(set(labels)) == len(labels)
    for a in labels:
        for b in labels:
            assert a == b or not b.startswith(a + b"\x00")
            assert a == b or not b.startswith(a)


def test_signing_input_refuses_unknown_labels() -> None:
    with pytest.raises(ValueError):
        canonical.signing_input(b"lightbox/v1/unknown", b"{}")


class WithId(msgspec.Struct, kw_only=True):
    id: canonical.UuidStr


@pytest.mark.parametrize("text", [
    "0b9e6c1e-6d1b-4a1e-9f3c-2f5d8e7a1b2c\n",  # `$` alone matches before a final newline
    "0B9E6C1E-6D1B-4A1E-9F3C-2F5D8E7A1B2C",  # one UUID, one spelling: lowercase
    "0b9e6c1e6d1b4a1e9f3c2f5d8e7a1b2c",
    " 0b9e6c1e-6d1b-4a1e-9f3c-2f5d8e7a1b2c",
])
def test_a_signed_body_id_is_one_lowercase_uuid_and_nothing_around_it(text: str) -> None:
    with pytest.raises(DecodeError):
        decode_struct(encode_struct(WithId(id=text)), WithId)


def test_a_signed_body_id_in_its_one_spelling_decodes() -> None:
    body = WithId(id="0b9e6c1e-6d1b-4a1e-9f3c-2f5d8e7a1b2c")
    assert decode_struct(encode_struct(body), WithId) == body
