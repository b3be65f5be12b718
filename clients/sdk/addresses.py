"""Which relay and record addresses a client may talk to: https://, or plain http:// to this
computer only (a local TLS proxy, a test bench), so that passwords, tokens and proofs never
cross a network in the clear (RFC 6750 §5.3; docs/SECURITY.md "Identity and sessions")."""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl

import certifi
import httpx

from clients.sdk.errors import FlowError
from protocol.errors import ErrorCode

__all__ = ["is_loopback", "require_tls", "tls_context"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this computer (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_tls(url: str, what: str) -> None:
    """Refuse an address that would carry passwords, tokens or proofs in the clear: https://,
    or http:// to this computer only (a local TLS proxy, a test bench). RFC 6750 §5.3."""
    parsed = httpx.URL(url)
    if parsed.scheme == "https" or (parsed.scheme == "http" and is_loopback(parsed.host)):
        return
    raise FlowError(f"{what} must start with https:// (plain http:// only to this computer: "
                    f"localhost or 127.0.0.1), not {url!r}", code=ErrorCode.BAD_REQUEST.value)


def tls_context() -> ssl.SSLContext:
    """How every client checks the relay's (and the identity provider's) TLS certificate, over
    HTTPS and over the websocket alike, made once a process: host names and chains checked
    (RFC 9110 §4.3.4, RFC 6125). The CAs trusted: those of ``SSL_CERT_FILE`` or
    ``SSL_CERT_DIR`` when set (as OpenSSL and httpx read them), else the computer's own
    store, where a hospital puts its own CA, and the certifi bundle (Mozilla's) beside it
    (docs/OPERATIONS.md "Deployment"). Before, HTTPS checked against certifi's bundle only,
    the websocket against the computer's store only, and each HTTP client made read the
    bundle again, about 28 ms of CPU."""
    return _tls_context(os.environ.get("SSL_CERT_FILE") or None,
                        os.environ.get("SSL_CERT_DIR") or None)


@functools.cache
def _tls_context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    if cafile is not None or capath is not None:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    context = ssl.create_default_context()  # the computer's store
    context.load_verify_locations(cafile=certifi.where())
    return context
