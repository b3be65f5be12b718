"""The relay's edge: request ids, size limits, client address, access log and metrics.

A pure ASGI middleware (no per-request task or body buffering). It refuses oversize header
sets (431) and declared bodies over the hard cap (413) before the application sees them, caps
streamed bodies too, and turns any unexpected exception into a problem+json 500 that names only
the request id, while the log records the exception type.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import ClientDisconnect

from protocol.errors import ErrorCode
from server.audit import AUDIT_CONTEXT, AuditContext
from server.errors import LimitError
from server.logs import REQUEST_ID
from server.metrics import Metrics
from server.problems import problem_response
from server.settings import IPNetwork

__all__ = ["EdgeMiddleware", "client_address"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("lightbox.http")
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def client_address(scope: Scope, trusted_proxy_hops: int,
                   trusted_proxies: tuple[IPNetwork, ...] = ()) -> str | None:
    """The client's address: the socket peer, unless the peer is a trusted reverse proxy.

    Then the X-Forwarded-For entry added by the outermost of ``trusted_proxy_hops`` trusted
    proxies is the client (the rightmost entries are the proxies' own; anything to their left
    is what the client claimed and is never believed). Every X-Forwarded-For field of the
    request is read as one list, in order (RFC 9110 §5.3). A list shorter than the trusted
    hops, or an entry that is not an IP address, leaves the peer's address: a forged header
    can never make one client look like many, to the lockouts, the rate limits or the audit
    trail (docs/SECURITY.md "Client addresses")."""
    peer = scope.get("client")
    addr: str | None = _address(str(peer[0])) if peer else None
    if trusted_proxy_hops <= 0 or addr is None:
        return addr
    peer_ip = ipaddress.ip_address(addr)
    if not any(peer_ip in net for net in trusted_proxies):
        return addr
    hops: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            text = bytes(value).decode("latin-1")
            hops.extend(h.strip() for h in text.split(",") if h.strip())
    if len(hops) < trusted_proxy_hops:
        return addr
    return _address(hops[-trusted_proxy_hops]) or addr


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_header_bytes: int,
                 body_hard_cap: int, trusted_proxy_hops: int = 0,
                 trusted_proxies: tuple[IPNetwork, ...] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.max_header_bytes = max_header_bytes
        self.body_hard_cap = body_hard_cap
        self.trusted_proxy_hops = trusted_proxy_hops
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in {"http", "websocket"}:
            await self.app(scope, receive, send)
            return
        request_id = self._request_id(scope)
        rid_token = REQUEST_ID.set(request_id)
        ctx_token = AUDIT_CONTEXT.set(AuditContext(
            request_id=request_id,
            client_ip=client_address(scope, self.trusted_proxy_hops, self.trusted_proxies),
        ))
        try:
            if scope["type"] == "websocket":
                await self.app(scope, receive, send)
            else:
                await self._http(scope, receive, send, request_id)
        finally:
            AUDIT_CONTEXT.reset(ctx_token)
            REQUEST_ID.reset(rid_token)

    @staticmethod
    def _request_id(scope: Scope) -> str:
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate = bytes(value).decode("latin-1")
                if _SAFE_REQUEST_ID.match(candidate):
                    return candidate
                break
        return uuid.uuid4().hex

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        start = time.perf_counter()
        status_box = [500]
        started = [False]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
                status_box[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"cache-control", b"no-store"))
                headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = headers
            await send(message)

        try:
            early = self._early_rejection(scope)
            if early is not None:
                await early(scope, receive, send_wrapper)
                return
            await self.app(scope, self._capped(receive), send_wrapper)
        except ClientDisconnect:
            # The client went away mid-request (a cut upload): nothing to answer, nothing was
            # stored from the partial body, and it is not a fault of ours. 499 in the metrics,
            # as proxies count it.
            status_box[0] = 499
        except Exception:
            log.exception("unhandled error", extra={"route": scope.get("lightbox.route")})
            if not started[0]:
                resp = problem_response(ErrorCode.INTERNAL_ERROR, request_id=request_id)
                await resp(scope, receive, send_wrapper)
        finally:
            route = scope.get("lightbox.route", "unmatched")
            elapsed = time.perf_counter() - start
            method = scope.get("method", "")
            self.metrics.http_requests.labels(route, method, str(status_box[0])).inc()
            self.metrics.http_latency.labels(route, method).observe(elapsed)
            log.info("request", extra={"method": method, "route": route,
                                       "status": status_box[0],
                                       "duration_ms": round(elapsed * 1000, 2)})

    def _early_rejection(self, scope: Scope) -> Any:
        headers = scope.get("headers", ())
        if sum(len(k) + len(v) + 4 for k, v in headers) > self.max_header_bytes:
            return problem_response(ErrorCode.HEADER_TOO_LARGE,
                                    f"request headers over {self.max_header_bytes} bytes")
        for name, value in headers:
            if name == b"content-length":
                if not value.isdigit():
                    return problem_response(ErrorCode.BAD_REQUEST, "invalid Content-Length")
                if int(value) > self.body_hard_cap:
                    return problem_response(ErrorCode.PAYLOAD_TOO_LARGE,
                                            f"body over {self.body_hard_cap} bytes")
        return None

    def _capped(self, receive: Receive) -> Receive:
        seen = [0]
        cap = self.body_hard_cap

        async def capped() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > cap:
                    raise LimitError(ErrorCode.PAYLOAD_TOO_LARGE, f"body over {cap} bytes")
            return message

        return capped
