"""A reverse proxy that signs what passes through it, so that a tool knowing nothing of
Lightbox (schemathesis) can call the relay as an enrolled device or as IT.

A request carrying ``Authorization: Bearer {SIGN_ME}`` is signed: to ``/v1/admin/...`` with
the administrator's bearer token, elsewhere with the device's access token and a
``Lightbox-Proof`` over exactly the method, target (path and query, as sent) and body that are
forwarded (docs/PROTOCOL.md §11). Any other request (no credentials, or made-up ones: the
tool's authentication checks) passes as it came. Answers come back as they are. It runs on a
real uvicorn on a free loopback port, in its own thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.helpers import seconds
from tests.identity_world import Device

__all__ = ["SIGN_ME", "signing_proxy"]

SIGN_ME = "lightbox-sign-me"

_HOP = {"host", "content-length", "authorization", "lightbox-proof", "connection",
        "transfer-encoding", "accept-encoding"}


def _app(relay_url: str, device: Device, admin_token: str) -> ASGIApp:
    async def forward(request: Request) -> Response:
        body = await request.body()
        raw_path = request.scope["raw_path"].decode("ascii")
        query = request.scope["query_string"].decode("ascii")
        target = raw_path + (f"?{query}" if query else "")
        sign = request.headers.get("authorization") == f"Bearer {SIGN_ME}"
        headers = {k: v for k, v in request.headers.items()
                   if k not in _HOP or (k in {"authorization", "lightbox-proof"} and not sign)}
        if sign and raw_path.startswith("/v1/admin/"):
            headers["authorization"] = f"Bearer {admin_token}"
        elif sign:
            assert device.access_token is not None
            headers.update(device.proof(request.method, target, device.access_token, body=body))
        url = httpx.URL(relay_url).copy_with(raw_path=target.encode("ascii"))
        async with httpx.AsyncClient(timeout=30.0) as client:
            answer = await client.send(client.build_request(request.method, url,
                                                            headers=headers, content=body))
        out = {k: v for k, v in answer.headers.items()
               if k not in {"content-length", "transfer-encoding", "content-encoding",
                            "connection"}}
        return Response(answer.content, status_code=answer.status_code, headers=out)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # Plain ASGI, no router: every target reaches the relay, even one no route pattern
        # of the proxy's own would match (a newline in a path segment).
        if scope["type"] == "http":
            await (await forward(Request(scope, receive)))(scope, receive, send)

    return app


@contextlib.contextmanager
def signing_proxy(relay_url: str, device: Device, admin_token: str) -> Iterator[str]:
    """The proxy's base URL while the context is open."""
    config = uvicorn.Config(_app(relay_url, device, admin_token), host="127.0.0.1", port=0,
                            log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="signing-proxy", daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds(20)
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the signing proxy did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(seconds(30))
