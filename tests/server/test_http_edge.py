"""The relay's HTTP edge: health, readiness, problem+json for every kind of bad input, and the
server keeps serving afterwards."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import RunningRelay

PROBLEM = "application/problem+json"


def assert_problem(resp: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = resp.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["type"].endswith("/" + code)
    assert body["title"]
    assert resp.headers["x-request-id"]
    return body


async def test_healthz_answers_ok(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_reports_ready_with_schema_at_head(relay: RunningRelay) -> None:
    from server.migrations import head_revision

    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "schema": head_revision()}


async def test_readyz_answers_503_when_schema_falls_behind_head(relay: RunningRelay,
                                                                 db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = 'older'")
        async with httpx.AsyncClient(base_url=relay.base_url) as c:
            r = await c.get("/readyz")
        body = assert_problem(r, 503, "not_ready")
        assert "schema" in str(body["detail"])
    finally:
        await conn.execute("UPDATE alembic_version SET version_num = $1",
                           __import__("server.migrations").migrations.head_revision())
        await conn.close()


async def test_unknown_route_is_a_404_problem(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        assert_problem(await c.get("/v1/no-such-thing"), 404, "not_found")


async def test_wrong_method_is_a_405_problem_with_allow(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.delete("/healthz")
    assert_problem(r, 405, "method_not_allowed")
    assert "GET" in r.headers["allow"]


async def test_malformed_json_is_a_400_problem(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.post("/v1/negotiate", content=b'{"versions": [1',
                         headers={"content-type": "application/json"})
    body = assert_problem(r, 400, "malformed_json")
    assert "versions" not in str(body.get("detail"))  # never echoes the input


async def test_unknown_field_is_a_422_validation_problem(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.post("/v1/negotiate", json={"versions": [1], "admin": True})
    assert_problem(r, 422, "validation_failed")


async def test_wrong_type_is_a_422_validation_problem(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.post("/v1/negotiate", json={"versions": "1"})
    assert_problem(r, 422, "validation_failed")


async def test_non_json_content_type_is_a_415_problem(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.post("/v1/negotiate", content=b"versions=1",
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert_problem(r, 415, "unsupported_media_type")


async def test_no_common_version_is_a_400_unsupported_version(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.post("/v1/negotiate", json={"versions": [99, 100]})
    assert_problem(r, 400, "unsupported_version")


async def test_a_whole_float_is_the_integer_it_spells_and_a_fraction_is_refused(
        relay: RunningRelay) -> None:
    """JSON Schema 2020-12, which the OpenAPI document declares: 1.0 is the integer 1."""
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.post("/v1/negotiate", json={"versions": [1.0], "client": "test"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 1
        for bad in (1.5, 2.0**60, "1"):
            assert_problem(await c.post("/v1/negotiate", json={"versions": [bad]}),
                           422, "validation_failed")


async def test_a_string_holding_u0000_is_a_422_wherever_it_is(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        for body in ({"versions": [1], "client": "a\u0000b"}, {"versions": [1], "\u0000": 1}):
            r = await c.post("/v1/negotiate", content=json.dumps(body),
                             headers={"content-type": "application/json"})
            body_ = assert_problem(r, 422, "validation_failed")
            assert "U+0000" in str(body_["detail"])


async def test_negotiation_picks_highest_common_version(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.post("/v1/negotiate", json={"versions": [1, 7], "client": "test"})
    assert r.status_code == 200
    assert r.json()["version"] == 1
    assert r.json()["limits"]["max_body_bytes"] == relay.relay.settings.max_body_bytes


async def test_declared_oversize_body_is_a_413_problem(relay: RunningRelay) -> None:
    big = b"x" * (relay.relay.settings.max_body_bytes + 1)
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.post("/v1/negotiate", content=big, headers={"content-type": "application/json"})
    assert_problem(r, 413, "payload_too_large")


async def test_streamed_oversize_body_without_length_is_a_413_problem(relay: RunningRelay) -> None:
    limit = relay.relay.settings.max_body_bytes

    # Chunked transfer encoding: no Content-Length to check up front.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.post("/v1/negotiate", content=chunks(),
                         headers={"content-type": "application/json"})
    assert_problem(r, 413, "payload_too_large")


async def test_oversize_headers_are_a_431_problem(relay: RunningRelay) -> None:
    limit = relay.relay.settings.max_header_bytes
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.get("/healthz", headers={"x-padding": "a" * (limit + 10)})
    assert_problem(r, 431, "header_too_large")


async def test_relay_keeps_serving_after_every_kind_of_bad_input(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        await c.post("/v1/negotiate", content=b"\xff\xfe garbage",
                     headers={"content-type": "application/json"})
        await c.get("/healthz", headers={"x-padding": "a" * 100_000})
        await c.post("/v1/negotiate", content=b"x" * 5_000_000,
                     headers={"content-type": "application/json"})
        r = await c.get("/healthz")
    assert r.status_code == 200


async def test_request_id_is_echoed_when_safe_and_replaced_when_not(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        ok = await c.get("/healthz", headers={"x-request-id": "abc-123"})
        bad = await c.get("/healthz", headers={"x-request-id": "<script>alert(1)</script>"})
    assert ok.headers["x-request-id"] == "abc-123"
    assert bad.headers["x-request-id"] != "<script>alert(1)</script>"
    assert len(bad.headers["x-request-id"]) == 32


async def test_metrics_count_requests_by_route_template(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        await c.get("/healthz")
        await c.get("/v1/unknown/123")
        r = await c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'lightbox_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'route="unmatched",status="404"' in text
    assert "/v1/unknown/123" not in text  # raw paths never become labels
    assert "lightbox_http_request_duration_seconds_bucket" in text


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/metrics"])
async def test_security_headers_on_every_response(relay: RunningRelay, path: str) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        r = await c.get(path)
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "server" not in r.headers
