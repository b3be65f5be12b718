"""The OpenAPI document describes every HTTP route the relay serves, with bodies and errors."""

from __future__ import annotations

import re

import httpx
from starlette.routing import Mount, Route, WebSocketRoute

from server.app import create_app
from server.problems import HTTP_STATUS
from server.scim.routes import PREFIX as SCIM_PREFIX
from tests.helpers import RunningRelay, make_settings


def _served_operations() -> set[tuple[str, str]]:
    relay = create_app(make_settings(), dsn="postgresql://unused@/unused")
    ops = set()
    for route in relay.app.routes:
        if isinstance(route, WebSocketRoute):
            continue  # the websocket protocol is specified in docs/PROTOCOL.md §3
        if isinstance(route, Mount) and route.path == SCIM_PREFIX:
            continue  # SCIM 2.0 (RFC 7644) describes itself: /Schemas, /ResourceTypes
        assert isinstance(route, Route), f"undocumentable route type {type(route).__name__}"
        for method in route.methods or ():
            if method != "HEAD":
                ops.add((method.lower(), route.path))
    return ops


async def test_every_served_route_is_described(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        doc = (await c.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    served = _served_operations()
    assert served, "the app serves no routes?"
    assert served - described == set(), "routes missing from the OpenAPI document"
    assert described - served == set(), "the document describes routes that do not exist"


async def test_operations_document_bodies_and_problem_responses(relay: RunningRelay) -> None:
    async with httpx.AsyncClient(base_url=relay.base_url) as c:
        doc = (await c.get("/openapi.json")).json()
    neg = doc["paths"]["/v1/negotiate"]["post"]
    schema_ref = neg["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    name = schema_ref.rsplit("/", 1)[1]
    assert "versions" in doc["components"]["schemas"][name]["properties"]
    assert "200" in neg["responses"]
    assert neg["responses"]["400"]["content"]["application/problem+json"]
    assert "unsupported_version" in neg["responses"]["400"]["description"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            statuses = {int(s) for s in op["responses"]}
            assert any(200 <= s < 300 for s in statuses), (method, path)
            assert 500 in statuses, (method, path)
            for p in re.findall(r"{(\w+)}", path):
                assert p in {x["name"] for x in op.get("parameters", [])}


def test_every_error_code_has_an_http_status() -> None:
    from protocol.errors import DESCRIPTIONS, ErrorCode

    assert set(HTTP_STATUS) == set(ErrorCode)
    assert set(DESCRIPTIONS) == set(ErrorCode)
    assert all(400 <= s <= 599 for s in HTTP_STATUS.values())
