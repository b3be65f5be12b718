r"""Canonical bytes for signing, base64url, and the compact signed-artefact format.

Why: a signature is only meaningful over one agreed byte string. Lightbox signs the RFC 8785
(JCS) canonical JSON of a body, restricted to the types that have a single obvious encoding
(strings, integers within +-(2**53 - 1), booleans, null, arrays, objects): keys sorted by
UTF-16 code units, no whitespace, UTF-8, minimal string escapes. Floats are refused outright.
Binary values inside bodies are base64url strings without padding (RFC 4648 §5).

A signed artefact (certificate, prekey, revocation list, statement) travels as the compact
string ``b64url(body) "." b64url(signature)`` where the Ed25519 signature (RFC 8032) is over
``label || 0x00 || body`` and ``label`` is one of the distinct ASCII domain labels below, so a
signature made for one artefact type can never be replayed as another (docs/PROTOCOL.md §1).

Decoding is strict: exact alphabet, no padding, canonical trailing bits, exact lengths, size
limits, and the body must be byte-for-byte canonical (one body, one encoding).

Two encoders give the same bytes. The pure-Python one (:func:`_pure_canonical_json`) is the
reference and handles every input. The compiled one (:func:`_fast_canonical_json`, msgspec's
JSON encoder) is used when the value lies in a domain where its output provably equals RFC 8785:

* the value is built only from ``dict`` with ``str`` keys, ``list``/``tuple``, ``str``, ``int``
  within +-(2**53 - 1), ``bool`` and ``None`` (exact types: no subclass, no float), at most as deep
  as the pure encoder allows; anything else falls back to the pure encoder, which encodes it or
  raises its own error;
* strings (RFC 8785 §3.2.2.2): msgspec escapes exactly ``"``, ``\``, the five short forms
  ``\b \t \n \f \r`` and every other control character below U+0020 as ``\u00xx`` with
  lowercase hex, and writes every other code point (U+007F, U+2028, U+2029, non-ASCII) as
  UTF-8, as the pure encoder does; tests/protocol/test_canonical_conformance.py checks this for
  every code point. A lone surrogate makes msgspec fail, and the pure encoder then refuses it;
* integers (§3.2.2.3): inside the safe range an integer's shortest decimal form is its ECMAScript
  number form, which is what both write;
* key order (§3.2.3): msgspec's ``order="sorted"`` sorts by code point. Where every key is in the
  Basic Multilingual Plane a key's UTF-16 code units are its code points, so the orders agree.
  When some key lies above U+FFFF, every object is re-inserted in UTF-16 order first and
  encoded in insertion order.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, Protocol, TypeVar

import msgspec

from protocol import _sodium
from protocol.errors import DecodeError, LimitExceeded, VerificationError

__all__ = [
    "LABELS",
    "LABEL_DEVICE_CERTIFICATE",
    "LABEL_EXPIRY_CONFIRMATION",
    "LABEL_FILING_STATEMENT",
    "LABEL_ONE_TIME_PREKEY",
    "LABEL_RECEIPT_STATEMENT",
    "LABEL_REVOCATION_LIST",
    "LABEL_SEALED_MESSAGE",
    "LABEL_SIGNED_PREKEY",
    "LABEL_USER_CERTIFICATE",
    "LABEL_WIPE_CONFIRMATION",
    "MAX_COMPACT_LENGTH",
    "MAX_SAFE_INTEGER",
    "UUID_RE",
    "Bytes32",
    "Signer",
    "Timestamp",
    "UuidStr",
    "b64url_decode",
    "b64url_encode",
    "canonical_json",
    "decode_struct",
    "encode_struct",
    "open_compact",
    "peek_compact",
    "sign_compact",
    "signing_input",
    "split_compact",
]

T = TypeVar("T")

# Domain labels: one per signed artefact type. Append only; never reuse a label.
LABEL_USER_CERTIFICATE = b"lightbox/v1/user-certificate"
LABEL_DEVICE_CERTIFICATE = b"lightbox/v1/device-certificate"
LABEL_SIGNED_PREKEY = b"lightbox/v1/signed-prekey"
LABEL_ONE_TIME_PREKEY = b"lightbox/v1/one-time-prekey"
LABEL_REVOCATION_LIST = b"lightbox/v1/revocation-list"
LABEL_SEALED_MESSAGE = b"lightbox/v1/sealed-message"
LABEL_FILING_STATEMENT = b"lightbox/v1/filing-statement"
LABEL_EXPIRY_CONFIRMATION = b"lightbox/v1/expiry-confirmation"
LABEL_RECEIPT_STATEMENT = b"lightbox/v1/receipt-statement"
LABEL_WIPE_CONFIRMATION = b"lightbox/v1/wipe-confirmation"

LABELS: tuple[bytes, ...] = (
    LABEL_USER_CERTIFICATE,
    LABEL_DEVICE_CERTIFICATE,
    LABEL_SIGNED_PREKEY,
    LABEL_ONE_TIME_PREKEY,
    LABEL_REVOCATION_LIST,
    LABEL_SEALED_MESSAGE,
    LABEL_FILING_STATEMENT,
    LABEL_EXPIRY_CONFIRMATION,
    LABEL_RECEIPT_STATEMENT,
    LABEL_WIPE_CONFIRMATION,
)

MAX_SAFE_INTEGER = 2**53 - 1  # I-JSON (RFC 7493 §2.2): larger integers do not round-trip
MAX_COMPACT_LENGTH = 64 * 1024  # default cap on a compact artefact (a revocation list is largest)
_MAX_DEPTH = 16

# One identifier (user, device, message, thread, attachment, ...): a hyphenated UUID in the
# RFC 9562 §4 textual form, hex digits lowercase only, so that one UUID has one spelling and the
# ids that are signed, compared and stored as strings agree byte for byte (docs/PROTOCOL.md §1).
# Unanchored: callers fullmatch it, or build a pattern for several ids from ``UUID_RE.pattern``.
UUID_RE: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# Field types shared by the signed bodies (constraints are enforced when decoding).
# The length is fixed as well: msgspec searches a pattern, and ``$`` also matches before a
# final newline, so the pattern alone would take "<uuid>\n".
UuidStr = Annotated[str, msgspec.Meta(min_length=36, max_length=36,
                                      pattern=f"^{UUID_RE.pattern}$")]
"""A lowercase, hyphenated UUID string (RFC 9562 textual form)."""
Bytes32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
"""Exactly 32 bytes: a public key or a SHA-256 digest."""
Timestamp = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INTEGER)]
"""Integer seconds since the Unix epoch (UTC)."""

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_ESCAPES = {
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
    0x22: '\\"',
    0x5C: "\\\\",
}


class Signer(Protocol):
    """Anything that can make an Ed25519 signature (keys.Ed25519KeyPair and subclasses)."""

    def sign(self, message: bytes) -> bytes: ...


# --- base64url ---------------------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 §5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, length: int | None = None, max_length: int | None = None) -> bytes:
    """Strict base64url decoding: no padding, no whitespace, canonical (zero) trailing bits.

    ``length`` demands an exact decoded length, ``max_length`` caps it. DecodeError otherwise.
    """
    if not isinstance(text, str):
        raise DecodeError("base64url value is not a string")
    if max_length is not None and len(text) > (max_length * 4 + 2) // 3:
        raise LimitExceeded("base64url value too long")
    if len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        raise DecodeError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("not unpadded base64url") from exc
    if b64url_encode(data) != text:
        raise DecodeError("non-canonical base64url (trailing bits set)")
    if length is not None and len(data) != length:
        raise DecodeError(f"expected {length} bytes, got {len(data)}")
    return data


# --- RFC 8785 canonical JSON -------------------------------------------------------------------


def _string(value: str) -> str:
    out = ['"']
    for ch in value:
        cp = ord(ch)
        if cp in _ESCAPES:
            out.append(_ESCAPES[cp])
        elif cp < 0x20:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _encode(obj: object, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise DecodeError("value nested too deeply")
    if obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, int):
        if not -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:
            raise DecodeError("integer outside the I-JSON safe range")
        out.append(str(int(obj)))
    elif isinstance(obj, str):
        out.append(_string(obj))
    elif isinstance(obj, Mapping):
        out.append("{")
        items = list(obj.items())
        for key, _ in items:
            if not isinstance(key, str):
                raise DecodeError("object keys must be strings")
        items.sort(key=lambda kv: _utf16_key(kv[0]))
        for i, (key, value) in enumerate(items):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _encode(value, out, depth + 1)
        out.append("}")
    elif isinstance(obj, Sequence) and not isinstance(obj, bytes | bytearray):
        out.append("[")
        for i, value in enumerate(obj):
            if i:
                out.append(",")
            _encode(value, out, depth + 1)
        out.append("]")
    else:
        # floats, bytes and everything else have no single canonical form here
        raise DecodeError(f"type {type(obj).__name__} is not allowed in canonical JSON")


class _Outside(Exception):
    """The value lies outside the compiled encoder's proven domain (see the module docstring)."""


_SORTED_JSON = msgspec.json.Encoder(order="sorted")
_INSERTION_JSON = msgspec.json.Encoder()
_ABOVE_BMP = re.compile("[\U00010000-\U0010ffff]")


def _check_fast(obj: object, depth: int, b64: bool = False) -> bool:
    """Raise _Outside unless ``obj`` is in the compiled encoder's domain; True if some object
    key has a code point above U+FFFF (so code-point order is not UTF-16 order).

    With ``b64`` (``obj`` is a fresh ``msgspec.to_builtins`` result, owned by the caller),
    ``bytes`` inside lists and objects are replaced in place by their base64url strings, as
    :func:`_bytes_to_b64` would do, instead of being refused."""
    if depth > _MAX_DEPTH:
        raise _Outside
    kind = type(obj)
    if kind is str or kind is bool or obj is None:
        return False
    if kind is int:
        if -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:  # type: ignore[operator]
            return False
        raise _Outside
    wide = False
    if kind is dict:
        for key, value in obj.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise _Outside
            if not key.isascii() and _ABOVE_BMP.search(key):
                wide = True
            if b64 and type(value) is bytes:
                obj[key] = b64url_encode(value)  # type: ignore[index]
            elif _check_fast(value, depth + 1, b64):
                wide = True
        return wide
    if kind is list:
        for i, value in enumerate(obj):  # type: ignore[arg-type]
            if b64 and type(value) is bytes:
                obj[i] = b64url_encode(value)  # type: ignore[index]
            elif _check_fast(value, depth + 1, b64):
                wide = True
        return wide
    if kind is tuple:
        for value in obj:  # type: ignore[attr-defined]
            if _check_fast(value, depth + 1, b64):
                wide = True
        return wide
    raise _Outside


def _utf16_ordered(obj: Any) -> Any:
    """``obj`` with every object's keys re-inserted in UTF-16 code-unit order."""
    if type(obj) is dict:
        return {k: _utf16_ordered(obj[k]) for k in sorted(obj, key=_utf16_key)}
    if type(obj) is list or type(obj) is tuple:
        return [_utf16_ordered(v) for v in obj]
    return obj


def _fast_canonical_json(obj: object, *, b64: bool = False) -> bytes | None:
    """RFC 8785 canonical JSON through msgspec, or None when ``obj`` is outside the domain where
    that is proven equal to :func:`_pure_canonical_json` (module docstring). ``b64``: see
    :func:`_check_fast`."""
    try:
        wide = _check_fast(obj, 0, b64)
    except _Outside:
        return None
    try:
        if wide:
            return _INSERTION_JSON.encode(_utf16_ordered(obj))
        return _SORTED_JSON.encode(obj)
    except UnicodeEncodeError:  # a lone surrogate: the pure encoder refuses it
        return None


def canonical_json(obj: object) -> bytes:
    """RFC 8785 canonical JSON of ``obj`` (restricted types; floats rejected with DecodeError).

    The compiled encoder when it applies, else the pure-Python reference (same bytes)."""
    fast = _fast_canonical_json(obj)
    return fast if fast is not None else _pure_canonical_json(obj)


def _pure_canonical_json(obj: object) -> bytes:
    """The reference RFC 8785 encoder, in Python: every input, every refusal."""
    out: list[str] = []
    _encode(obj, out, 0)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates
        raise DecodeError("string is not valid Unicode") from exc


# --- structs <-> canonical bytes ---------------------------------------------------------------


def _bytes_to_b64(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return b64url_encode(obj)
    if isinstance(obj, dict):
        return {k: _bytes_to_b64(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_bytes_to_b64(v) for v in obj]
    return obj


def encode_struct(value: object) -> bytes:
    """Canonical JSON of a msgspec struct (or a list of them); ``bytes`` values become
    base64url strings, enums their values."""
    builtins = msgspec.to_builtins(value, builtin_types=(bytes,))
    fast = _fast_canonical_json(builtins, b64=True)
    return fast if fast is not None else canonical_json(_bytes_to_b64(builtins))


def _b64_to_bytes(obj: Any, info: msgspec.inspect.Type) -> Any:
    """Turn base64url strings back into bytes wherever ``info`` expects bytes."""
    mi = msgspec.inspect
    if isinstance(info, mi.BytesType) and isinstance(obj, str):
        return b64url_decode(obj, max_length=info.max_length)
    if isinstance(info, mi.StructType) and isinstance(obj, dict):
        fields = {f.encode_name: f.type for f in info.fields}
        return {k: (_b64_to_bytes(v, fields[k]) if k in fields else v) for k, v in obj.items()}
    if isinstance(info, mi.ListType) and isinstance(obj, list):
        return [_b64_to_bytes(v, info.item_type) for v in obj]
    if isinstance(info, mi.UnionType):
        for member in info.types:
            if (isinstance(member, mi.BytesType) and isinstance(obj, str)) or (
                isinstance(member, mi.StructType) and isinstance(obj, dict)
            ):
                return _b64_to_bytes(obj, member)
    return obj


def decode_struct(data: bytes, cls: type[T], *, max_length: int = MAX_COMPACT_LENGTH) -> T:
    """Parse canonical JSON bytes into ``type`` strictly. DecodeError (or LimitExceeded) if the
    bytes are oversize, not JSON, not canonical, or do not match the struct exactly."""
    if len(data) > max_length:
        raise LimitExceeded("body too large")
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8
        raise DecodeError("body is not JSON") from exc
    if canonical_json(raw) != data:
        raise DecodeError("body is not in canonical form")
    converted = _b64_to_bytes(raw, msgspec.inspect.type_info(cls))
    try:
        value = msgspec.convert(converted, cls, builtin_types=(bytes,), strict=True)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"body does not match {cls.__name__}: {exc}") from exc
    if encode_struct(value) != data:  # e.g. a defaulted field left out: one body, one encoding
        raise DecodeError("body is not the canonical encoding of its value")
    return value


# --- compact signed artefacts ------------------------------------------------------------------


def signing_input(label: bytes, body: bytes) -> bytes:
    """The exact bytes an artefact's Ed25519 signature covers: ``label || 0x00 || body``."""
    if label not in LABELS:
        raise ValueError("unknown domain label")
    return label + b"\x00" + body


def sign_compact(label: bytes, body: bytes, signer: Signer) -> str:
    """Compact artefact ``b64url(body) "." b64url(sig)``, sig over :func:`signing_input`."""
    signature = signer.sign(signing_input(label, body))
    return f"{b64url_encode(body)}.{b64url_encode(signature)}"


def split_compact(token: str, *, max_length: int = MAX_COMPACT_LENGTH) -> tuple[bytes, bytes]:
    """Split a compact artefact into (body, 64-byte signature) without verifying it."""
    if not isinstance(token, str):
        raise DecodeError("artefact is not a string")
    if len(token) > max_length:
        raise LimitExceeded("artefact too large")
    parts = token.split(".")
    if len(parts) != 2:
        raise DecodeError("artefact must have exactly two parts")
    body = b64url_decode(parts[0])
    signature = b64url_decode(parts[1], length=_sodium.ED25519_SIGNATURE_BYTES)
    return body, signature


def open_compact(
    label: bytes,
    token: str,
    cls: type[T],
    public_key: bytes,
    *,
    max_length: int = MAX_COMPACT_LENGTH,
) -> T:
    """Verify a compact artefact under ``public_key`` and decode its body.

    Malformed input raises DecodeError; a bad signature raises VerificationError. The signature
    is checked before the body is parsed into a struct.
    """
    body, signature = split_compact(token, max_length=max_length)
    if not _sodium.ed25519_verify(public_key, signing_input(label, body), signature):
        raise VerificationError(f"bad signature on {label.decode()}")
    return decode_struct(body, cls, max_length=max_length)


def peek_compact(token: str, cls: type[T], *, max_length: int = MAX_COMPACT_LENGTH) -> T:
    """Decode a compact artefact's body WITHOUT verifying it (to find which key to verify
    with, e.g. the org id of a certificate). Never trust the result before verifying."""
    body, _signature = split_compact(token, max_length=max_length)
    return decode_struct(body, cls, max_length=max_length)
