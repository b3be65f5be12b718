"""RFC 8785 (JCS) conformance of both canonical JSON encoders, byte for byte.

protocol.canonical has a pure-Python reference encoder and a compiled one (msgspec) used where
its output is proven equal (the module docstring). Every vector here runs through both; the
compiled one must produce the bytes itself (not decline) for every value in its domain, and must
decline (so the reference refuses) every value that has no canonical form.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import canonical, envelope
from protocol.errors import DecodeError
from protocol.model import MessageHeader, Priority, Purpose

FAST = settings(max_examples=150, deadline=None)
SAFE = canonical.MAX_SAFE_INTEGER


def _fast(value: object) -> bytes:
    out = canonical._fast_canonical_json(value)
    assert out is not None, "the compiled encoder declined a value in its domain"
    return out


ENCODERS: dict[str, Callable[[object], bytes]] = {
    "pure": canonical._pure_canonical_json,
    "compiled": _fast,
    "canonical_json": canonical.canonical_json,
}


def _nested(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


VECTORS: list[tuple[str, object, bytes]] = [
    # RFC 8785 §3.2.2.2: the string example of the RFC
    (
        "rfc8785-string-example",
        "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        b'"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"',
    ),
    # RFC 8785 §3.2.3: the sorting example of the RFC (keys compared as UTF-16 code units)
    (
        "rfc8785-sorting-example",
        {
            "\u20ac": "Euro Sign",
            "\r": "Carriage Return",
            "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One",
            "\U0001f600": "Emoji: Grinning Face",
            "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis",
        },
        (
            '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
            '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
            '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
        ).encode(),
    ),
    ("short-escapes", '\b\t\n\f\r"\\', b'"\\b\\t\\n\\f\\r\\"\\\\"'),
    ("control-characters", "\x00\x01\x1f", b'"\\u0000\\u0001\\u001f"'),
    ("del-and-slash-unescaped", "\x7f/", b'"\x7f/"'),
    ("non-ascii-as-utf8", "é€\U0001f600", '"é€\U0001f600"'.encode()),
    ("line-and-paragraph-separators-unescaped", "\u2028\u2029", '"\u2028\u2029"'.encode()),
    # keys sort by their code units, not by their escaped form
    ("escapes-in-keys", {"\n": 1, '"': 2, "\x01": 3}, b'{"\\u0001":3,"\\n":1,"\\"":2}'),
    (
        "key-above-bmp-sorts-before-private-use",
        {"\ue000": 1, "\U00010000": 2, "a": 3},
        '{"a":3,"\U00010000":2,"\ue000":1}'.encode(),
    ),
    (
        "keys-above-bmp-in-nested-objects",
        [{"z": {"\uffff": 1, "\U0010ffff": 2}, "\U0001f600": [{"\ufffd": 0, "\U0001d11e": 1}]}],
        '[{"z":{"\U0010ffff":2,"\uffff":1},"\U0001f600":[{"\U0001d11e":1,"\ufffd":0}]}]'.encode(),
    ),
    ("key-prefix-sorts-first", {"ab": 1, "a": 2, "": 3}, b'{"":3,"a":2,"ab":1}'),
    ("largest-safe-integer", SAFE, b"9007199254740991"),
    ("smallest-safe-integer", -SAFE, b"-9007199254740991"),
    ("integers", [0, -1, 1, 10, -(2**31), 2**32], b"[0,-1,1,10,-2147483648,4294967296]"),
    ("literals", [True, False, None], b"[true,false,null]"),
    ("empty-object", {}, b"{}"),
    ("empty-array", [], b"[]"),
    ("empty-string", "", b'""'),
    ("empties-nested", {"a": {}, "b": [[]], "c": ""}, b'{"a":{},"b":[[]],"c":""}'),
    ("tuple-is-an-array", (1, "x"), b'[1,"x"]'),
    (
        "nested",
        {"b": [1, {"d": None, "c": [True]}], "a": {"y": "é", "x": -5}},
        '{"a":{"x":-5,"y":"é"},"b":[1,{"c":[true],"d":null}]}'.encode(),
    ),
    ("deepest-allowed", _nested(16), b"[" * 17 + b"]" * 17),
]

REFUSED: list[tuple[str, object]] = [
    ("lone-high-surrogate", "\ud800"),
    ("lone-low-surrogate", "a\udfffb"),
    ("lone-surrogate-in-key", {"\ud83d": 1}),
    ("surrogate-pair-as-two-code-points", "\ud83d\ude00"),
    ("integer-above-safe", SAFE + 1),
    ("integer-below-safe", -SAFE - 1),
    ("integer-deep-above-safe", {"a": [2**64]}),
    ("float", 1.0),
    ("float-integral-in-object", {"a": 3.0}),
    ("nan", float("nan")),
    ("bytes", b"raw"),
    ("non-string-key", {1: "x"}),
    ("set", {"s": {1}}),
    ("too-deep", _nested(17)),
]


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize(("name", "value", "expected"), VECTORS, ids=[v[0] for v in VECTORS])
def test_every_encoder_writes_the_rfc8785_bytes(
    encoder: str, name: str, value: object, expected: bytes
) -> None:
    assert ENCODERS[encoder](value) == expected


@pytest.mark.parametrize(("name", "value"), REFUSED, ids=[v[0] for v in REFUSED])
def test_values_without_a_canonical_form_are_refused_and_the_compiled_encoder_declines_them(
    name: str, value: object
) -> None:
    assert canonical._fast_canonical_json(value) is None
    with pytest.raises(DecodeError):
        canonical._pure_canonical_json(value)
    with pytest.raises(DecodeError):
        canonical.canonical_json(value)


def test_subclasses_of_the_json_types_are_left_to_the_reference_encoder() -> None:
    value = OrderedDict([("b", 1), ("a", Priority.URGENT)])
    assert canonical._fast_canonical_json(value) is None
    assert canonical.canonical_json(value) == b'{"a":"urgent","b":1}'


def _spec_escape(cp: int) -> str:
    """RFC 8785 §3.2.2.2 for one code point, written from the RFC's rules."""
    short = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
    if cp in (0x22, 0x5C):
        return "\\" + chr(cp)
    if cp in short:
        return short[cp]
    if cp < 0x20:
        return f"\\u{cp:04x}"
    return chr(cp)


SCALARS = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]


def test_every_unicode_scalar_value_is_escaped_identically_by_both_encoders() -> None:
    text = "".join(map(chr, SCALARS))
    expected = ('"' + "".join(map(_spec_escape, SCALARS)) + '"').encode()
    assert canonical._pure_canonical_json(text) == expected
    assert _fast(text) == expected


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-SAFE, SAFE)
    | st.text(st.characters(blacklist_categories=["Cs"]), max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(blacklist_categories=["Cs"]), max_size=4), children, max_size=5
        )
    ),
    max_leaves=25,
)


@FAST
@given(json_values)
def test_compiled_encoder_equals_the_reference_on_any_json_value(value: object) -> None:
    assert _fast(value) == canonical._pure_canonical_json(value)


def _header(**changes: object) -> MessageHeader:
    base = MessageHeader(
        v=1,
        message_id="0b7c1f7e-8a5d-4c3e-9a1b-2f6d8e4c0a11",
        thread_id="3c9e2d1a-5b4f-4e6a-8c7d-9f0a1b2c3d4e",
        sender_user_id="5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d",
        sender_device_id="7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b",
        sent_at=1_700_000_000,
        purpose=Purpose.DIRECT_CARE,
        priority=Priority.ROUTINE,
        consent_id=None,
        attachment_ids=[],
        recipient_devices=["9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"],
    )
    return msgspec.structs.replace(base, **changes)


@pytest.mark.parametrize(
    "header",
    [
        _header(),
        _header(consent_id="c0ffee00-0000-4000-8000-000000000000", attachment_ids=["a", "b"]),
        _header(external=True, priority=Priority.URGENT, body_size=SAFE),
    ],
)
def test_the_signed_header_takes_the_compiled_path_and_gives_the_reference_bytes(
    header: MessageHeader,
) -> None:
    builtins = msgspec.to_builtins(header)
    assert _fast(builtins) == canonical._pure_canonical_json(builtins)
    assert envelope.header_bytes(header) == canonical._pure_canonical_json(builtins)


def test_a_header_with_an_unsafe_integer_is_still_refused() -> None:
    with pytest.raises(DecodeError):
        envelope.header_bytes(_header(sent_at=SAFE + 1))


def test_wrapped_keys_with_bytes_take_the_compiled_path_and_give_the_reference_bytes() -> None:
    from tests.protocol.test_envelope import _sealed

    keys = _sealed().keys
    reference = canonical._pure_canonical_json(
        canonical._bytes_to_b64(msgspec.to_builtins(keys, builtin_types=(bytes,)))
    )
    fast = canonical._fast_canonical_json(
        msgspec.to_builtins(keys, builtin_types=(bytes,)), b64=True
    )
    assert fast == reference
    assert canonical.encode_struct(keys) == reference
