"""The relay's edge (server/middleware.py) called directly as ASGI around a small inner app, no
socket: request ids (a safe client id kept, anything else replaced), the headers every answer
carries, oversize headers and declared or streamed bodies refused before the app reads them,
an unexpected exception answered as a 500 that names only the request id, a client that went
away counted as 499, and every request counted by its route template.

Who the client is (X-Forwarded-For) has its own file, tests/server/test_client_address.py."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from protocol.errors import ErrorCode
from server.audit import AUDIT_CONTEXT
from server.errors import LimitError
from server.logs import REQUEST_ID
from server.metrics import Metrics
from server.middleware import EdgeMiddleware

HEADERS, CAP = 512, 100
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


class Inner:
    """An ASGI app that answers 200 after reading the body, or does what ``act`` says."""

    def __init__(self, act: str = "ok") -> None:
        self.act, self.calls = act, 0
        self.saw: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        self.calls += 1
        self.saw = {"request_id": REQUEST_ID.get(), "audit": AUDIT_CONTEXT.get()}
        scope["lightbox.route"] = "/v1/things/{id}"
        if self.act == "disconnect":
            raise ClientDisconnect
        if self.act == "boom":
            raise RuntimeError("secret detail that must not reach the client")
        try:
            while (await receive()).get("more_body"):
                pass
        except LimitError as exc:
            self.saw["limit"] = exc.code
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if self.act == "boom_after_start":
            raise RuntimeError("after the answer began")
        await send({"type": "http.response.body", "body": b"ok"})


class Exchange:
    def __init__(self) -> None:
        self.sent: list[Message] = []

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.sent[0]["headers"]}

    @property
    def body(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))
        return doc


async def call(app: Inner, *, headers: list[tuple[bytes, bytes]] | None = None,
               chunks: tuple[bytes, ...] = (b"",), metrics: Metrics | None = None,
               kind: str = "http") -> Exchange:
    edge = EdgeMiddleware(app, metrics=metrics or Metrics(), max_header_bytes=HEADERS,
                          body_hard_cap=CAP)
    scope: Scope = {"type": kind, "method": "POST", "path": "/v1/things/1",
                    "headers": headers or [], "client": ("192.0.2.1", 4000)}
    parts = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
             for i, c in enumerate(chunks)]

    async def receive() -> Message:
        return parts.pop(0)

    ex = Exchange()

    async def send(message: Message) -> None:
        ex.sent.append(message)

    await edge(scope, receive, send)
    return ex


def count(metrics: Metrics, route: str, status: str) -> float | None:
    return metrics.registry.get_sample_value(
        "lightbox_http_requests_total", {"route": route, "method": "POST", "status": status})


async def test_a_safe_request_id_from_the_client_is_kept_and_echoed() -> None:
    app = Inner()
    ex = await call(app, headers=[(b"x-request-id", b"client-req.42_a")])
    assert ex.headers["x-request-id"] == "client-req.42_a"
    assert app.saw["request_id"] == "client-req.42_a"
    assert app.saw["audit"].request_id == "client-req.42_a"


@pytest.mark.parametrize("sent", [b"has space", b"a" * 65, b"new\\nline", b"<script>", b""])
async def test_an_unsafe_request_id_is_replaced_by_a_fresh_one(sent: bytes) -> None:
    app = Inner()
    ex = await call(app, headers=[(b"x-request-id", sent)])
    assert re.fullmatch(r"[0-9a-f]{32}", ex.headers["x-request-id"])
    assert app.saw["request_id"] == ex.headers["x-request-id"]


async def test_without_a_request_id_each_request_gets_its_own() -> None:
    first, second = await call(Inner()), await call(Inner())
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_every_answer_is_uncacheable_and_not_sniffed() -> None:
    ex = await call(Inner())
    assert ex.status == 200
    assert (ex.headers["cache-control"], ex.headers["x-content-type-options"]) == (
        "no-store", "nosniff")


async def test_the_request_context_is_the_requests_alone_and_reset_after_it() -> None:
    app = Inner()
    await call(app)
    assert app.saw["audit"].client_ip == "192.0.2.1"
    assert REQUEST_ID.get() is None
    assert AUDIT_CONTEXT.get().request_id is None


async def test_a_header_set_over_the_limit_is_refused_before_the_app() -> None:
    app = Inner()
    ex = await call(app, headers=[(b"x-padding", b"p" * HEADERS)])
    assert (ex.status, ex.body["code"]) == (431, "header_too_large")
    assert ex.body["detail"] == f"request headers over {HEADERS} bytes"
    assert app.calls == 0


async def test_a_declared_body_over_the_cap_is_refused_before_the_app() -> None:
    app = Inner()
    ex = await call(app, headers=[(b"content-length", str(CAP + 1).encode())])
    assert (ex.status, ex.body["code"], ex.body["detail"]) == (
        413, "payload_too_large", f"body over {CAP} bytes")
    assert app.calls == 0


@pytest.mark.parametrize("value", [b"-1", b"12abc", b"", b"1e3"])
async def test_a_content_length_that_is_not_a_number_is_a_bad_request(value: bytes) -> None:
    app = Inner()
    ex = await call(app, headers=[(b"content-length", value)])
    assert (ex.status, ex.body["code"], ex.body["detail"]) == (
        400, "bad_request", "invalid Content-Length")
    assert app.calls == 0


async def test_a_declared_body_at_the_cap_reaches_the_app() -> None:
    ex = await call(Inner(), headers=[(b"content-length", str(CAP).encode())],
                    chunks=(b"x" * CAP,))
    assert ex.status == 200


async def test_a_streamed_body_over_the_cap_stops_its_reader() -> None:
    app = Inner()
    await call(app, chunks=(b"x" * 60, b"x" * 40, b"x"))
    assert app.saw["limit"] == ErrorCode.PAYLOAD_TOO_LARGE


async def test_an_unexpected_exception_is_a_500_naming_only_the_request_id(
        caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    with caplog.at_level(logging.ERROR, logger="lightbox.http"):
        ex = await call(Inner("boom"), headers=[(b"x-request-id", b"req-500")],
                        metrics=metrics)
    assert ex.status == 500
    assert ex.body == {"type": "https://lightbox.invalid/problems/internal_error",
                       "title": ex.body["title"], "status": 500, "code": "internal_error",
                       "request_id": "req-500"}
    assert "secret detail" not in json.dumps(ex.body)
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [RuntimeError]
    assert count(metrics, "/v1/things/{id}", "500") == 1


async def test_an_exception_after_the_answer_began_sends_no_second_answer() -> None:
    ex = await call(Inner("boom_after_start"))
    assert [m["type"] for m in ex.sent] == ["http.response.start"]
    assert ex.status == 200


async def test_a_client_that_went_away_is_answered_nothing_and_counted_as_499() -> None:
    metrics = Metrics()
    ex = await call(Inner("disconnect"), metrics=metrics)
    assert ex.sent == []
    assert count(metrics, "/v1/things/{id}", "499") == 1


async def test_requests_are_counted_by_route_template_and_status() -> None:
    metrics = Metrics()
    await call(Inner(), metrics=metrics)
    await call(Inner(), metrics=metrics)
    await call(Inner(), headers=[(b"content-length", b"999")], metrics=metrics)
    assert count(metrics, "/v1/things/{id}", "200") == 2
    assert count(metrics, "unmatched", "413") == 1
    assert b"/v1/things/1" not in metrics.render()


async def test_other_scopes_pass_through_untouched() -> None:
    app = Inner()
    ex = await call(app, kind="lifespan")
    assert app.calls == 1 and app.saw["request_id"] is None
    assert "x-request-id" not in {k.decode() for k, _ in ex.sent[0]["headers"]}
