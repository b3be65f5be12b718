"""HTTP plumbing shared by the route modules: endpoint declarations, bounded JSON bodies,
JSON responses, and the OpenAPI 3.1 document built from the same declarations.

A route is declared once, as an :class:`Endpoint` carrying its request and response types
(msgspec structs) and the error codes it may answer with; the router and the OpenAPI document
are both built from that list, so the document cannot forget a route (a test also checks it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from protocol.api import B64Key, OncallRole
from protocol.certs import OrgId
from protocol.errors import ErrorCode
from server.errors import InvalidInput, LimitError, RelayError
from server.problems import HTTP_STATUS, ProblemDocument

__all__ = [
    "PATH_PARAMETERS",
    "Endpoint",
    "Handler",
    "QueryParameter",
    "json_response",
    "openapi_document",
    "read_body",
    "read_json",
    "read_json_batch",
    "starlette_routes",
]

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]

# Errors any route may answer with, listed once in every operation of the document.
COMMON_ERRORS = (ErrorCode.PAYLOAD_TOO_LARGE, ErrorCode.HEADER_TOO_LARGE,
                 ErrorCode.INTERNAL_ERROR)


_UUID = {"type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                                      "[0-9a-f]{12}$"}
# What each path parameter must look like (the relay answers 404 for anything else).
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "attachment_id": _UUID, "consent_id": _UUID, "shift_id": _UUID, "thread_id": _UUID,
    "user_id": _UUID,
    "token_hash": msgspec.json.schema(B64Key),
    "org_id": msgspec.json.schema(OrgId),
    "role": msgspec.json.schema(OncallRole),
}


@dataclasses.dataclass(frozen=True)
class QueryParameter:
    """A documented query parameter: its name, JSON schema and whether it must be given."""

    name: str
    schema: Mapping[str, Any]
    required: bool = False


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One HTTP operation: method, path template, handler and its documented contract."""

    method: str
    path: str
    handler: Handler
    summary: str
    request: type[Any] | None = None
    response: type[Any] | None = None
    status: int = 200
    errors: Sequence[ErrorCode] = ()
    tag: str = "relay"
    auth: str | None = None  # None, "device" (access token) or "admin"
    media_type: str = "application/json"
    request_media_type: str = "application/json"
    body_limit: int | None = None  # overrides the global max body size (e.g. chunks)
    query: Sequence[QueryParameter] = ()


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(obj), status_code=status, headers=headers,
                    media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RelayError(ErrorCode.BAD_REQUEST, "invalid Content-Length")
        if int(declared) > limit:
            raise LimitError(ErrorCode.PAYLOAD_TOO_LARGE, f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LimitError(ErrorCode.PAYLOAD_TOO_LARGE, f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# Integers follow the JSON Schema 2020-12 the OpenAPI document declares (§6.1.1 of its
# validation vocabulary): 2.0 is the integer 2. Beyond 2**53 a float no longer spells one
# integer exactly, so it stays a float and an integer field refuses it.
_EXACT = 2**53


def _whole_floats_as_ints(value: Any) -> Any:
    """Whole floats as integers; a string holding U+0000 (which no Postgres text column can
    store) refused as validation_failed wherever it is, key or value."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and -_EXACT <= value <= _EXACT else value
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(ErrorCode.VALIDATION_FAILED, "strings may not contain U+0000")
        return value
    if isinstance(value, list):
        return [_whole_floats_as_ints(v) for v in value]
    if isinstance(value, dict):
        return {_whole_floats_as_ints(k): _whole_floats_as_ints(v) for k, v in value.items()}
    return value


async def _json_body(request: Request, limit: int) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RelayError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "expected application/json")
    body = await read_body(request, limit)
    try:
        return _whole_floats_as_ints(msgspec.json.decode(body))
    except msgspec.DecodeError as exc:
        raise RelayError(ErrorCode.MALFORMED_JSON, "request body is not valid JSON") from exc


def _typed(raw: Any, type_: type[T]) -> T:
    try:
        return msgspec.convert(raw, type=type_, strict=True)
    except msgspec.ValidationError as exc:
        # msgspec's message names the field and the expectation, never the value.
        raise InvalidInput(ErrorCode.VALIDATION_FAILED, str(exc)) from exc


async def read_json(request: Request, type_: type[T], limit: int) -> T:
    """Decode a JSON body strictly into ``type_`` (unknown fields, wrong types and fractions
    where an integer belongs refused; ``validation_failed``)."""
    return _typed(await _json_body(request, limit), type_)


async def read_json_batch(request: Request, type_: type[T], limit: int, *, field: str,
                          max_items: int, code: ErrorCode) -> T:
    """Like :func:`read_json`, but a list ``field`` longer than ``max_items`` is refused with
    its own ``code`` (e.g. prekey_batch_too_large) rather than as a validation failure."""
    raw = await _json_body(request, limit)
    if isinstance(raw, dict) and isinstance(raw.get(field), list) and \
            len(raw[field]) > max_items:
        raise LimitError(code, f"at most {max_items} items in {field}")
    return _typed(raw, type_)


def starlette_routes(endpoints: Sequence[Endpoint]) -> list[Route]:
    """Group endpoints by path into Starlette routes (one route, several methods)."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for ep in endpoints:
        methods = by_path.setdefault(ep.path, {})
        if ep.method in methods:
            raise ValueError(f"duplicate endpoint {ep.method} {ep.path}")
        methods[ep.method] = ep
    routes = []
    for path, methods in by_path.items():
        routes.append(Route(path, _dispatch(path, methods), methods=list(methods)))
    return routes


def _dispatch(path: str, methods: dict[str, Endpoint]) -> Handler:
    async def endpoint(request: Request) -> Response:
        ep = methods.get(request.method) or methods.get("GET")  # HEAD falls back to GET
        assert ep is not None
        request.scope["lightbox.route"] = path
        if ep.body_limit is not None:
            request.scope["lightbox.body_limit"] = ep.body_limit
        return await ep.handler(request)

    endpoint.__name__ = "endpoint_" + path.strip("/").replace("/", "_").replace("{", "").replace(
        "}", "")
    return endpoint


# --- OpenAPI 3.1 ------------------------------------------------------------------------------


def _schema_ref(type_: type[Any], components: dict[str, Any]) -> dict[str, Any]:
    (schema,), defs = msgspec.json.schema_components(
        [type_], ref_template="#/components/schemas/{name}")
    components.update(defs)
    return schema


def openapi_document(endpoints: Sequence[Endpoint], *, title: str, version: str) -> dict[str, Any]:
    components: dict[str, Any] = {}
    problem = _schema_ref(ProblemDocument, components)
    paths: dict[str, Any] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": f"{ep.method.lower()}_{ep.path.strip('/').replace('/', '_')}"
            .replace("{", "").replace("}", "") or "root",
            "tags": [ep.tag],
            "responses": {},
        }
        params = [seg[1:-1] for seg in ep.path.split("/") if seg.startswith("{")]
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True,
                 "schema": PATH_PARAMETERS.get(p, {"type": "string"})}
                for p in params
            ]
        if ep.query:
            op.setdefault("parameters", []).extend(
                {"name": q.name, "in": "query", "required": q.required, "schema": dict(q.schema)}
                for q in ep.query)
        if ep.auth == "device":
            op["security"] = [{"accessToken": []}]
        elif ep.auth == "admin":
            op["security"] = [{"adminToken": []}]
        if ep.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {ep.request_media_type: {"schema": _schema_ref(ep.request, components)}},
            }
        elif ep.request_media_type != "application/json":
            op["requestBody"] = {
                "required": True,
                "content": {ep.request_media_type: {"schema": {"type": "string",
                                                               "format": "binary"}}},
            }
        ok: dict[str, Any] = {"description": "Success"}
        if ep.response is not None:
            ok["content"] = {ep.media_type: {"schema": _schema_ref(ep.response, components)}}
        elif ep.media_type != "application/json":
            ok["content"] = {ep.media_type: {"schema": {"type": "string"}}}
        op["responses"][str(ep.status)] = ok
        codes = list(dict.fromkeys([*ep.errors, *COMMON_ERRORS]))
        if ep.request is not None:
            codes += [ErrorCode.MALFORMED_JSON, ErrorCode.VALIDATION_FAILED,
                      ErrorCode.UNSUPPORTED_MEDIA_TYPE]
        if ep.auth is not None:
            codes += [ErrorCode.UNAUTHENTICATED]
        by_status: dict[int, list[str]] = {}
        for code in dict.fromkeys(codes):
            by_status.setdefault(HTTP_STATUS[code], []).append(code.value)
        for status, names in sorted(by_status.items()):
            op["responses"][str(status)] = {
                "description": "Problem: " + ", ".join(names),
                "content": {"application/problem+json": {"schema": problem}},
            }
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "accessToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "adminToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }
