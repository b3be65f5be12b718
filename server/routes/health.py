"""Operational endpoints: liveness, readiness, metrics, the OpenAPI document, and version
negotiation for clients that want the relay's protocol version and limits before connecting."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from protocol.errors import ErrorCode
from protocol.model import PROTOCOL_VERSION, SUPPORTED_VERSIONS
from server import migrations
from server.api import Endpoint, json_response, read_json
from server.db import Database
from server.errors import RelayError
from server.metrics import CONTENT_TYPE, Metrics
from server.problems import problem_response
from server.settings import Settings

__all__ = ["HealthRoutes", "Negotiation", "NegotiationResult", "Status"]

log = logging.getLogger("lightbox.health")


class Status(msgspec.Struct, omit_defaults=True):
    status: str
    schema: str | None = None


class Negotiation(msgspec.Struct, forbid_unknown_fields=True):
    versions: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=65535)]],
                        msgspec.Meta(min_length=1, max_length=16)]
    client: Annotated[str, msgspec.Meta(max_length=64)] = ""


class Limits(msgspec.Struct):
    max_body_bytes: int


class NegotiationResult(msgspec.Struct):
    version: int
    supported: list[int]
    server_time: int
    limits: Limits


class HealthRoutes:
    def __init__(self, *, db: Database, metrics: Metrics, settings: Settings,
                 openapi: Callable[[], dict[str, Any]],
                 clock: Callable[[], float] = time.time) -> None:
        self.db, self.metrics, self.settings = db, metrics, settings
        self._openapi = openapi
        self._openapi_bytes: bytes | None = None
        self.clock = clock

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/healthz", self.healthz, "The process is alive.",
                     response=Status, tag="operations"),
            Endpoint("GET", "/readyz", self.readyz,
                     "The database is reachable and its schema is at head.",
                     response=Status, errors=[ErrorCode.NOT_READY], tag="operations"),
            Endpoint("GET", "/metrics", self.prometheus, "Prometheus metrics.",
                     media_type=CONTENT_TYPE, tag="operations"),
            Endpoint("GET", "/openapi.json", self.openapi,
                     "This OpenAPI 3.1 document.", tag="operations"),
            Endpoint("POST", "/v1/negotiate", self.negotiate,
                     "Agree a protocol version and learn the relay's limits.",
                     request=Negotiation, response=NegotiationResult,
                     errors=[ErrorCode.UNSUPPORTED_VERSION], tag="protocol"),
        ]

    async def healthz(self, request: Request) -> Response:
        return json_response(Status(status="ok"))

    async def readyz(self, request: Request) -> Response:
        try:
            async with asyncio.timeout(self.db.timeout):
                async with self.db.pool.acquire() as conn:
                    await migrations.ensure_at_head(conn)
                    current = await migrations.current_revision(conn)
        except migrations.SchemaNotAtHead:
            return problem_response(ErrorCode.NOT_READY, "database schema is not at head")
        except Exception as exc:  # any failure to reach the database means "not ready"
            log.warning("readiness check failed", extra={"error_type": type(exc).__name__})
            return problem_response(ErrorCode.NOT_READY, "database unreachable")
        return json_response(Status(status="ready", schema=current))

    async def prometheus(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        if self._openapi_bytes is None:
            self._openapi_bytes = msgspec.json.encode(self._openapi())
        return Response(self._openapi_bytes, media_type="application/json")

    async def negotiate(self, request: Request) -> Response:
        body = await read_json(request, Negotiation, self.settings.max_body_bytes)
        common = sorted(set(body.versions) & set(SUPPORTED_VERSIONS))
        if not common:
            raise RelayError(ErrorCode.UNSUPPORTED_VERSION,
                             f"this relay speaks protocol versions {list(SUPPORTED_VERSIONS)}")
        return json_response(NegotiationResult(
            version=common[-1], supported=list(SUPPORTED_VERSIONS),
            server_time=int(self.clock()),
            limits=Limits(max_body_bytes=self.settings.max_body_bytes),
        ))


assert PROTOCOL_VERSION in SUPPORTED_VERSIONS
