"""The app factory: the one place where the relay is assembled.

Settings, the database, metrics, the websocket hub and every route module are built here and
passed explicitly to whatever needs them (no service locator, no global state). Error mapping
to problem+json happens here too, in one set of exception handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, WebSocketRoute

from protocol.errors import ErrorCode
from server import migrations
from server.acks import AckPipeline
from server.api import Endpoint, openapi_document, starlette_routes
from server.attachments import AttachmentLimits, AttachmentService
from server.authn import Authenticator
from server.blobs import BlobStore, PostgresBlobStore
from server.breakglass import BreakGlassService
from server.consents import ConsentPolicies, ConsentService
from server.db import Database
from server.enrolment import EnrolmentService
from server.errors import RelayError
from server.events import Announcer, EventBus
from server.expiry import ExpiryPolicy, FilingService
from server.hub import Hub
from server.keydir import KeyDirectory
from server.login import LoginService
from server.logs import REQUEST_ID
from server.metrics import Metrics
from server.middleware import EdgeMiddleware
from server.oidc import OidcService
from server.oncall import OncallService
from server.orgidentity import IdentitySettings
from server.passwords import Passwords
from server.prekeys import PrekeyService
from server.problems import problem_response, relay_error_response
from server.provisioning import ProvisioningService
from server.purge import CiphertextPurge
from server.reads import DeliveryReader
from server.receipts import ReceiptService
from server.routes.admin import AdminRoutes
from server.routes.attachments import AttachmentRoutes
from server.routes.auth import AuthRoutes
from server.routes.breakglass import BreakGlassRoutes
from server.routes.consents import ConsentRoutes
from server.routes.enrol import EnrolRoutes
from server.routes.filing import FilingRoutes
from server.routes.health import HealthRoutes
from server.routes.keys import KeyRoutes
from server.routes.oncall import OncallRoutes
from server.routes.sso import SsoRoutes
from server.routes.threads import ThreadRoutes
from server.scim.pending import PendingRoutes
from server.scim.routes import PREFIX as SCIM_PREFIX
from server.scim.routes import ScimRoutes
from server.scim.service import DirectoryService
from server.sends import SendPipeline
from server.settings import Settings
from server.socketauth import DeviceSocketAuthenticator
from server.tokens import TokenService, ensure_token_key, load_token_key
from server.trust import Trust
from server.wipes import WipeService
from server.ws import SocketConfig, WebSocketRelay

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
    tokens: TokenService  # the websocket handshake: tokens.verify_access(token, now=...)
    authn: Authenticator  # ... then authn.check_device(conn, claims, now=...)
    trust: Trust
    pipeline: SendPipeline
    attachments: AttachmentService
    consents: ConsentService
    filing: FilingService | None = None
    oncall: OncallService | None = None
    purge: CiphertextPurge | None = None


def create_app(settings: Settings, *, dsn: str, clock: Callable[[], float] = time.time,
               check_schema: bool = True, blobs: BlobStore | None = None,
               oncall_clock: Callable[[], float] | None = None) -> Relay:
    """``oncall_clock`` (default ``clock``) times rotas and escalations alone, so tests can run
    an escalation ladder in simulated minutes while tokens and proofs keep real time."""
    db = Database(dsn, min_size=settings.db_pool_min, max_size=settings.db_pool_max,
                  timeout=settings.db_timeout)
    metrics = Metrics()
    hub = Hub()
    metrics.add_refresh(lambda: metrics.queue_depth_connected.set(hub.unacknowledged()))
    endpoints: list[Endpoint] = []

    def openapi() -> dict[str, Any]:
        return openapi_document(endpoints, title="Lightbox relay", version=VERSION)

    health = HealthRoutes(db=db, metrics=metrics, settings=settings, openapi=openapi,
                          clock=clock)
    endpoints += health.endpoints()

    # Identity (PROTOCOL.md §11). The token key is read at start-up (lifespan), not here.
    tokens = TokenService(None, access_ttl=settings.access_token_ttl,
                          admin_ttl=settings.admin_token_ttl, clock=clock,
                          clock_skew=settings.proof_clock_skew)
    trust = Trust.from_file(settings.trusted_orgs_path)
    passwords = Passwords(settings.argon2_profile)
    if settings.argon2_profile == "cheap":
        log.warning("LIGHTBOX_ARGON2_PROFILE=cheap: password hashes are weak (tests only)")
    authn = Authenticator(db=db, tokens=tokens, proof_skew=settings.proof_clock_skew,
                          clock=clock)
    # Per-organisation directory and single sign-on settings (server/orgidentity.py): an
    # organisation that signs on with its IdP may refuse its clinicians' relay passwords.
    identity = IdentitySettings.from_file(settings.identity_file)
    login = LoginService(db=db, tokens=tokens, passwords=passwords, settings=settings,
                         identity=identity, clock=clock)
    provisioning = ProvisioningService(db=db, trust=trust, settings=settings, clock=clock)
    enrolment = EnrolmentService(db=db, trust=trust, passwords=passwords, settings=settings,
                                 identity=identity, clock=clock)
    prekey_service = PrekeyService(db=db, settings=settings, clock=clock)
    keydir = KeyDirectory(db=db, trust=trust, settings=settings, prekeys=prekey_service,
                          clock=clock)
    body = settings.max_body_bytes
    endpoints += AdminRoutes(db=db, authn=authn, login=login, provisioning=provisioning,
                             max_body=body, clock=clock).endpoints()
    endpoints += EnrolRoutes(enrolment=enrolment, authn=authn, max_body=body,
                             prekey_batch_max=settings.prekey_batch_max).endpoints()
    endpoints += AuthRoutes(login=login, max_body=body).endpoints()
    endpoints += KeyRoutes(keydir=keydir, authn=authn, max_body=body,
                           prekey_batch_max=settings.prekey_batch_max).endpoints()
    # The hospital's directory over SCIM 2.0 (server/scim/): requests for identities that IT's
    # workstation signs, and suspensions and removals that take effect at once.
    directory = DirectoryService(db=db, trust=trust, identity=identity,
                                 max_results=settings.scim_max_results, clock=clock)
    scim = ScimRoutes(service=directory, max_body=body)
    endpoints += PendingRoutes(db=db, authn=authn, provisioning=provisioning, identity=identity,
                               max_body=body, clock=clock).endpoints()
    # Single sign-on with the hospital's OpenID provider (server/oidc.py): the ID token is the
    # first factor, the device key the second, as with a password.
    oidc = OidcService(db=db, identity=identity, login=login, enrolment=enrolment,
                       settings=settings, clock=clock)
    endpoints += SsoRoutes(service=oidc, max_body=body,
                           prekey_batch_max=settings.prekey_batch_max).endpoints()

    # The relay (ARCHITECTURE.md §8): threads over HTTP, messages over the websocket, group commit,
    # cross-process wake-ups over LISTEN/NOTIFY.
    # On-call (PROTOCOL.md §16): rotas, role addressing, escalation timers in Postgres, receipts.
    oncall = OncallService(db=db, clock=oncall_clock or clock,
                           sweep_interval=settings.oncall_sweep_interval,
                           sweep_batch=settings.oncall_sweep_batch)
    endpoints += ThreadRoutes(db=db, settings=settings, require_device=authn.require_device,
                              now=oncall.at).endpoints()
    endpoints += OncallRoutes(db=db, service=oncall, require_device=authn.require_device,
                              require_admin=authn.require_admin,
                              max_body=settings.max_body_bytes).endpoints()
    bus = EventBus(dsn)
    bus.subscribe("deliver", hub.on_deliver)
    bus.subscribe("session", hub.on_session)
    bus.subscribe("revoked", hub.on_revoked)
    bus.subscribe("keys_low", hub.on_keys_low)
    # Attachments and consent (ARCHITECTURE.md §5): ciphertext blobs behind a BlobStore (Postgres by
    # default), consent registration and withdrawal, and the consent policy every send passes.
    consents = ConsentService(db=db, trust=trust,
                              policies=ConsentPolicies.from_file(settings.consent_policy_file),
                              clock=clock)
    attachment_service = AttachmentService(
        db=db, blobs=blobs or PostgresBlobStore(db),
        limits=AttachmentLimits(max_bytes=settings.attachment_max_bytes,
                                chunk_bytes=settings.attachment_chunk_bytes,
                                quota_bytes=settings.attachment_quota_bytes,
                                unreferenced_ttl=settings.attachment_unreferenced_ttl,
                                janitor_interval=settings.attachment_janitor_interval),
        clock=clock)
    endpoints += AttachmentRoutes(service=attachment_service, require_device=authn.require_device,
                                  max_body=body).endpoints()
    endpoints += ConsentRoutes(service=consents, require_device=authn.require_device,
                               require_admin=authn.require_admin, max_body=body).endpoints()
    pipeline = SendPipeline(db, metrics, policy=consents,
                            max_message_bytes=settings.max_message_bytes,
                            max_batch=settings.send_batch,
                            verify_signatures=settings.verify_sender_signatures,
                            now=consents.now)  # the relay's clock decides a consent's expiry
    pipeline.local = hub  # stored deliveries handed to connections here after COMMIT
    announcer = Announcer(lambda: db.pool)  # ... and its takeover rule (server/hub.py)
    hub.announce = announcer.announce
    # Break-glass: emergency messages without a consent, their review queue and follow-up.
    break_glass = BreakGlassService(db, daily_limit=settings.break_glass_daily_limit,
                                    clock=clock)
    pipeline.break_glass = break_glass
    endpoints += BreakGlassRoutes(service=break_glass, require_device=authn.require_device,
                                  require_admin=authn.require_admin, max_body=body).endpoints()
    acks = AckPipeline(db, linger=settings.ack_linger)
    # Filing and expiry (PROTOCOL.md §15): filing statements, expiry orders and confirmations, the
    # timer sweeper, the gateway requirement on images, wipe orders, where every copy went.
    filing = FilingService(
        db=db, blobs=attachment_service.blobs, trust=trust, clock=clock,
        policy=ExpiryPolicy(grace=settings.expiry_grace, hard_limit=settings.expiry_hard_limit,
                            sweep_interval=settings.expiry_sweep_interval,
                            filing_required=settings.filing_required,
                            optional_orgs=frozenset(
                                o.strip() for o in settings.filing_optional_orgs.split(",")
                                if o.strip())))
    pipeline.filing = filing
    attachment_service.on_fetched = filing.fetched
    endpoints += FilingRoutes(db=db, service=filing, authn=authn,
                              require_device=authn.require_device).endpoints()
    ws_relay = WebSocketRelay(
        db=db, hub=hub, pipeline=pipeline, acks=acks, metrics=metrics,
        reader=DeliveryReader(db, metrics=metrics),
        authenticator=DeviceSocketAuthenticator(db=db, tokens=tokens, authenticator=authn,
                                                clock=clock),
        config=SocketConfig(
            auth_timeout=settings.ws_auth_timeout, heartbeat=settings.ws_heartbeat,
            heartbeat_timeout=settings.ws_heartbeat_timeout,
            idle_timeout=settings.ws_idle_timeout,
            session_lifetime=settings.ws_session_lifetime, send_window=settings.ws_send_window,
            max_frame=settings.ws_max_frame, ack_timeout=settings.ws_ack_timeout,
            messages_per_minute=settings.rate_messages_per_minute,
            bytes_per_minute=settings.rate_bytes_per_minute,
            write_timeout=settings.ws_write_timeout),
        prekeys=prekey_service, clock=clock)
    ws_relay.filing = filing
    ws_relay.wipes = WipeService(db=db, trust=trust, clock=clock)
    # The ciphertext of messages no delivery is queued for any more (server/purge.py).
    purge = CiphertextPurge(db, metrics, interval=settings.ciphertext_purge_interval)
    pipeline.routing = oncall
    ws_relay.receipts = ReceiptService(db=db, clock=clock, check=oncall)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ensure_token_key(settings.token_key_path)
        tokens.load(load_token_key(settings.token_key_path))
        await db.open()
        # What has started, stopped in this order whatever stopped the start: a schema not at
        # head refuses before anything else starts, and must be told as itself.
        tasks: list[asyncio.Task[Any]] = []
        stops: list[Callable[[], Awaitable[None]]] = []
        try:
            if check_schema:
                async with db.pool.acquire() as conn:
                    await migrations.ensure_at_head(conn)
            await bus.start()
            stops.append(bus.stop)
            await pipeline.start()
            stops.insert(0, pipeline.stop)
            await acks.start()
            stops.insert(1, acks.stop)
            stops.insert(2, announcer.stop)  # after the last batch, before the database
            tasks.append(asyncio.create_task(_queue_gauges(db, metrics), name="queue-gauges"))
            if metrics.shared:
                tasks.append(asyncio.create_task(metrics.publish_every(), name="metrics-publish"))
            tasks.append(asyncio.create_task(attachment_service.janitor(),
                                             name="attachment-janitor"))
            tasks.append(asyncio.create_task(filing.sweeper(), name="expiry-sweeper"))
            tasks.append(asyncio.create_task(oncall.run(), name="escalation-sweeper"))
            tasks.append(asyncio.create_task(purge.run(), name="ciphertext-purge"))
            log.info("relay started")
            yield
        finally:
            await hub.close_all()
            for task in tasks:
                task.cancel()
            for stop in stops:  # the pipeline, the acknowledgements, then the bus
                await stop()
            await db.close()
            log.info("relay stopped")

    routes: list[BaseRoute] = [*starlette_routes(endpoints),
                               WebSocketRoute("/v1/ws", ws_relay.endpoint),
                               Mount(SCIM_PREFIX, app=scim.app())]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={
                        RelayError: _relay_error,
                        HTTPException: _http_exception,
                        Exception: _unexpected,
                    })
    body_cap = max([settings.max_body_bytes] + [e.body_limit or 0 for e in endpoints])
    app.add_middleware(EdgeMiddleware, metrics=metrics,
                       max_header_bytes=settings.max_header_bytes, body_hard_cap=body_cap,
                       trusted_proxy_hops=settings.trusted_proxy_hops,
                       trusted_proxies=settings.trusted_proxy_networks)
    if settings.phone_origin_list:
        # The phone app is served by its own process from another origin (docs/SECURITY.md
        # "Who serves the phone app"): its browser may call the HTTP API from there, and from
        # nowhere else. Outermost, so a preflight is answered before the edge checks.
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.phone_origin_list),
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["authorization", "content-type", "lightbox-proof",
                                          "range"],
                           expose_headers=["content-range"], max_age=600)
    return Relay(app=app, settings=settings, db=db, metrics=metrics, hub=hub,
                 endpoints=endpoints, tokens=tokens, authn=authn, trust=trust,
                 pipeline=pipeline, attachments=attachment_service, consents=consents,
                 filing=filing, oncall=oncall, purge=purge)


async def _queue_gauges(db: Database, metrics: Metrics, every: float = 15.0) -> None:
    """Refresh the queue-depth gauge (one cheap aggregate query) for /metrics."""
    while True:
        try:
            async with db.pool.acquire() as conn:
                metrics.queue_depth.set(await conn.fetchval(
                    "SELECT count(*) FROM deliveries WHERE NOT held"))
        except Exception as exc:  # a scrape gauge must never take the relay down
            log.warning("queue gauge failed", extra={"error_type": type(exc).__name__})
        await asyncio.sleep(every)


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
