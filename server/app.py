"""The app factory: the one place where the relay is assembled.

Settings, the database, metrics, the websocket hub and every route module are built here and
passed explicitly to whatever needs them (no service locator, no global state). Error mapping
to problem+json happens here too, in one set of exception handlers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from protocol.errors import ErrorCode
from server import migrations
from server.api import Endpoint, openapi_document, starlette_routes
from server.db import Database
from server.errors import RelayError
from server.hub import Hub
from server.logs import REQUEST_ID
from server.metrics import Metrics
from server.middleware import EdgeMiddleware
from server.problems import problem_response, relay_error_response
from server.routes.health import HealthRoutes
from server.settings import Settings

__all__ = ["Relay", "create_app"]

log = logging.getLogger("lightbox.app")
VERSION = "0.1.0"


@dataclasses.dataclass
class Relay:
    """The assembled relay: the ASGI app and the parts tests and the runner need to reach."""

    app: Starlette
    settings: Settings
    db: Database
    metrics: Metrics
    hub: Hub
    endpoints: list[Endpoint]


def create_app(settings: Settings, *, dsn: str, clock: Callable[[], float] = time.time,
               check_schema: bool = True) -> Relay:
    db = Database(dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
                  timeout=settings.db_timeout)
    metrics = Metrics()
    hub = Hub()
    endpoints: list[Endpoint] = []

    def openapi() -> dict[str, Any]:
        return openapi_document(endpoints, title="Lightbox relay", version=VERSION)

    health = HealthRoutes(db=db, metrics=metrics, settings=settings, openapi=openapi,
                          clock=clock)
    endpoints += health.endpoints()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await db.open()
        try:
            if check_schema:
                async with db.pool.acquire() as conn:
                    await migrations.ensure_at_head(conn)
            log.info("relay started")
            yield
        finally:
            await hub.close_all()
            await db.close()
            log.info("relay stopped")

    app = Starlette(routes=starlette_routes(endpoints), lifespan=lifespan,
                    exception_handlers={
                        RelayError: _relay_error,
                        HTTPException: _http_exception,
                        Exception: _unexpected,
                    })
    body_cap = max([settings.max_body_bytes] + [e.body_limit or 0 for e in endpoints])
    app.add_middleware(EdgeMiddleware, metrics=metrics,
                       max_header_bytes=settings.max_header_bytes, body_hard_cap=body_cap,
                       trusted_proxy_hops=settings.trusted_proxy_hops)
    return Relay(app=app, settings=settings, db=db, metrics=metrics, hub=hub,
                 endpoints=endpoints)


_HTTP_CODES = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED,
               413: ErrorCode.PAYLOAD_TOO_LARGE, 400: ErrorCode.BAD_REQUEST}


async def _relay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RelayError)
    return relay_error_response(exc, REQUEST_ID.get())


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, ErrorCode.BAD_REQUEST)
    headers = dict(exc.headers or {})
    return problem_response(code, request_id=REQUEST_ID.get(), headers=headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc,
              extra={"route": request.scope.get("lightbox.route")})
    return problem_response(ErrorCode.INTERNAL_ERROR, request_id=REQUEST_ID.get())
