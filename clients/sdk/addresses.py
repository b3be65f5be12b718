"""Which relay and record addresses a client may talk to: https://, or plain http:// to this
computer only (a local TLS proxy, a test bench), so that passwords, tokens and proofs never
cross a network in the clear (RFC 6750 §5.3; docs/SECURITY.md "Identity and sessions")."""

from __future__ import annotations

import ipaddress

import httpx

from clients.sdk.errors import FlowError
from protocol.errors import ErrorCode

__all__ = ["is_loopback", "require_tls"]


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
