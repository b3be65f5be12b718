"""The ``Lightbox-Proof`` header of a device request (docs/PROTOCOL.md §11): proof that the
sender holds the device's Ed25519 signing key, in the manner of DPoP (RFC 9449 §4.2).

The header is ``<unix seconds>.<b64url nonce>.<b64url signature>``; the signature covers
``protocol.api.request_proof_input(...)``: the method, the target exactly as sent (path and
query), the time, a fresh nonce, the body and the access token, so the relay accepts it once,
for that request only."""

from __future__ import annotations

from collections.abc import Callable

from protocol import api
from protocol.canonical import b64url_encode
from protocol.keys import Ed25519KeyPair, random_bytes

__all__ = ["proof_header"]


def proof_header(device: Ed25519KeyPair, method: str, target: str, body: bytes,
                 access_token: str, *, seconds: int,
                 rng: Callable[[int], bytes] = random_bytes) -> str:
    """``Lightbox-Proof`` for one request made at ``seconds``; every call draws a fresh nonce
    from ``rng``."""
    nonce = rng(api.PROOF_NONCE_BYTES)
    signature = device.sign(
        api.request_proof_input(method, target, seconds, nonce, body, access_token))
    return f"{seconds}.{b64url_encode(nonce)}.{b64url_encode(signature)}"
