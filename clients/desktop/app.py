"""``lightbox desktop``: the specialist's client as a local web page (issue 8 item 4).

Why a page served by the client process: the keys, the vault and every decrypted image stay in
this Python process; the browser only ever receives what is on screen, over loopback.

Protection of the local server (a web page on the same machine must not be able to drive it):

* it listens on 127.0.0.1 only, on a random port, and refuses any other ``Host`` header (DNS
  rebinding);
* the address it opens carries a per-launch secret (``/?k=...``); presenting it sets an
  HttpOnly, ``SameSite=Strict`` session cookie and redirects to ``/``, so the secret leaves the
  address bar; every other request needs that cookie;
* every state-changing request (POST) must carry the per-launch CSRF token (``X-CSRF-Token``,
  from the page's ``<meta name="csrf">``), compared in constant time, and a same-origin
  ``Origin`` when the browser sends one;
* a strict Content-Security-Policy (no inline script or style, nothing from elsewhere),
  ``no-store`` caching, ``nosniff``, no referrer, no framing.

Endpoints (JSON unless said otherwise):

| method and path | what |
|---|---|
| ``GET /?k=SECRET`` | sets the session cookie, redirects to ``/`` |
| ``GET /`` | the page (``static/index.html`` with the CSRF token) |
| ``GET /static/{app.js,app.css}`` | the script and style |
| ``GET /api/state`` | unlocked?, who, connected? |
| ``POST /api/unlock`` ``{password}`` | unlock the vault, log in, connect |
| ``POST /api/lock`` | lock the vault, disconnect |
| ``GET /api/threads`` | the inbox: urgent consults first, then newest |
| ``GET /api/threads/{id}`` | a thread: messages, images, filed study, consent, record data |
| ``POST /api/threads/{id}/reply`` ``{text, reply_to?}`` | reply (sealed for every device) |
| ``POST /api/threads/{id}/read`` | mark read (signed read receipts) |
| ``POST /api/messages/{id}/ack`` | acknowledge: "I'm on it" |
| ``GET /api/images/{id}`` | image bytes from the vault (410 + record reference once shredded) |
| ``GET /api/events`` | server-sent events: message, image, receipt, filed, expired, status |
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import socket
import webbrowser
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from clients.clinician import ProfileDevice, open_profile
from clients.sdk.client import (
    ClientEvent,
    ExpiredEvent,
    FiledEvent,
    ImageEvent,
    LightboxClient,
    MessageEvent,
    MessageView,
    ReceiptEvent,
    StatusEvent,
    WithdrawnEvent,
)
from clients.sdk.errors import FlowError, KeyStoreError, SDKError
from clients.vault import ImageShredded, ItemNotFound, VaultError, VaultLocked
from protocol import certs
from protocol.body import CaptureKind, FilingReceipt
from protocol.canonical import peek_compact
from protocol.consent import peek_consent_token_unverified
from protocol.errors import ProtocolError

__all__ = ["DesktopServer", "run_desktop"]

log = logging.getLogger("lightbox.desktop")
STATIC = Path(__file__).parent / "static"
COOKIE = "lightbox_desktop"
MAX_JSON = 64 * 1024
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
    "Cache-Control": "no-store", "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}

Opener = Callable[[Path, str], ProfileDevice]


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class DesktopServer:
    """One launch of the desktop client for one profile directory."""

    def __init__(self, profile_dir: Path, *, opener: Opener = open_profile,
                 client_options: dict[str, Any] | None = None) -> None:
        self.profile_dir = profile_dir
        self.opener = opener
        self.client_options = client_options or {}
        self.secret = secrets.token_urlsafe(32)  # in the address opened, once per launch
        self.session = secrets.token_urlsafe(32)  # the cookie it is exchanged for
        self.csrf = secrets.token_urlsafe(32)
        self.port = 0
        self.device: ProfileDevice | None = None
        self.client: LightboxClient | None = None
        self.connected = False
        self._listeners: list[asyncio.Queue[tuple[str, dict[str, Any]]]] = []
        self._unlock_lock = asyncio.Lock()
        self._server: uvicorn.Server | None = None
        self._idle_task: asyncio.Task[None] | None = None

    # -- address and lifecycle ---------------------------------------------------------------

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def launch_url(self) -> str:
        return f"{self.origin}/?k={self.secret}"

    async def start(self) -> None:
        """Listen on a random loopback port (``self.port``)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", access_log=False,
                                lifespan="off", server_header=False, ws="none")
        self._server = uvicorn.Server(config)
        self._server_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._server_task.done():
                self._server_task.result()
            await asyncio.sleep(0.01)
        self._idle_task = asyncio.create_task(self._watch_idle())

    async def stop(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_task
        await self._lock()
        for queue in self._listeners:
            queue.put_nowait(("bye", {}))
        if self._server is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._server_task

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server_task

    async def _watch_idle(self) -> None:
        """The vault locks itself after inactivity: then disconnect and tell the page."""
        while True:
            await asyncio.sleep(1.0)
            if self.device is not None and self.device.vault.lock_if_idle():
                await self._lock()
                self._broadcast("status", {"state": "locked",
                                           "detail": "locked after inactivity"})

    # -- the app -----------------------------------------------------------------------------

    def app(self) -> Starlette:
        routes = [
            Route("/", self.index),
            Route("/static/{name}", self.static),
            Route("/favicon.ico", lambda request: Response(status_code=204)),
            Route("/api/state", self.state),
            Route("/api/unlock", self.unlock, methods=["POST"]),
            Route("/api/lock", self.lock, methods=["POST"]),
            Route("/api/threads", self.threads),
            Route("/api/threads/{thread_id}", self.thread),
            Route("/api/threads/{thread_id}/reply", self.reply, methods=["POST"]),
            Route("/api/threads/{thread_id}/read", self.read, methods=["POST"]),
            Route("/api/messages/{message_id}/ack", self.ack, methods=["POST"]),
            Route("/api/images/{attachment_id}", self.image),
            Route("/api/events", self.events),
        ]
        app = Starlette(routes=routes)
        app.add_middleware(_Guard, server=self)
        return app

    def check(self, request: Request) -> None:
        """Host, session cookie and, for state changes, Origin and CSRF token."""
        if request.headers.get("host") != f"127.0.0.1:{self.port}":
            raise _Refused(421, "wrong host")
        if request.url.path == "/" and "k" in request.query_params:
            return  # the launch address: checked in index()
        cookie = request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(cookie.encode(), self.session.encode()):
            raise _Refused(403, "open the address that `lightbox desktop` printed")
        if request.method not in {"GET", "HEAD"}:
            origin = request.headers.get("origin")
            if origin is not None and origin != self.origin:
                raise _Refused(403, "cross-origin request refused")
            token = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(token.encode(), self.csrf.encode()):
                raise _Refused(403, "missing or wrong CSRF token")

    async def index(self, request: Request) -> Response:
        given = request.query_params.get("k")
        if given is not None:
            if not hmac.compare_digest(given.encode(), self.secret.encode()):
                raise _Refused(403, "this address is not valid any more: run lightbox desktop")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self.session, httponly=True, samesite="strict",
                                path="/")
            return response
        html = (STATIC / "index.html").read_text().replace("{{CSRF}}", self.csrf)
        return Response(html, media_type="text/html; charset=utf-8")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_TYPES:
            raise _Refused(404, "not found")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_TYPES[name])

    # -- session -----------------------------------------------------------------------------

    def _client(self) -> LightboxClient:
        if self.client is None or self.device is None or not self.device.vault.is_unlocked:
            raise _Refused(423, "locked")
        return self.client

    async def state(self, request: Request) -> Response:
        if self.client is None or self.device is None or not self.device.vault.is_unlocked:
            return JSONResponse({"unlocked": False})
        st = self.client.state
        user = peek_compact(st.user_certificate, certs.UserCertificate,
                            max_length=certs.MAX_CERTIFICATE_LENGTH)
        return JSONResponse({"unlocked": True, "login": st.login, "user_id": st.user_id,
                             "display_name": user.display_name, "roles": user.roles,
                             "device_kind": st.device_kind, "connected": self.connected})

    async def unlock(self, request: Request) -> Response:
        body = await _json(request)
        password = body.get("password")
        if not isinstance(password, str) or not password:
            raise _Refused(400, "enter your password")
        async with self._unlock_lock:
            if self.client is not None and self.device is not None \
                    and self.device.vault.is_unlocked:
                return JSONResponse({"unlocked": True})
            await self._lock()
            try:
                device = await asyncio.to_thread(self.opener, self.profile_dir, password)
            except (KeyStoreError, VaultError) as exc:
                raise _Refused(401, _password_message(exc)) from exc
            client = device.client(**self.client_options)
            client.on_event(self._on_client_event)
            try:
                await client.start()
                await client.threads()
            except SDKError as exc:
                await client.close()
                device.vault.lock()
                raise _Refused(502, f"cannot reach the relay: {exc}") from exc
            self.device, self.client = device, client
        return JSONResponse({"unlocked": True})

    async def lock(self, request: Request) -> Response:
        await self._lock()
        self._broadcast("status", {"state": "locked", "detail": "locked"})
        return JSONResponse({"unlocked": False})

    async def _lock(self) -> None:
        client, device = self.client, self.device
        self.client = self.device = None
        self.connected = False
        if client is not None:
            await client.close()
        if device is not None:
            device.vault.lock()

    # -- reading -----------------------------------------------------------------------------

    async def threads(self, request: Request) -> Response:
        client = self._client()
        with contextlib.suppress(SDKError):
            await client.threads()
        out = []
        for t in client.cached_threads():
            views = client.thread_messages(t.thread_id)
            last = views[-1] if views else None
            subject = next((v.body.subject for v in views if v.body.subject), None)
            incoming = [v for v in views if not v.message.outgoing]
            out.append({
                "thread_id": t.thread_id, "priority": t.priority,
                "urgent": t.priority == "urgent"
                or any(v.message.priority == "urgent" for v in incoming),
                "subject": subject or (last.body.text[:80] if last else "New consult"),
                "unread": sum(1 for v in incoming if not v.message.read),
                "roles": t.roles, "members": len(t.members),
                "last_at": last.message.sent_at if last else t.created_at,
                "last_from": client.display_name(last.message.sender_user_id) if last else "",
                "has_image": any(v.images for v in views),
                "acknowledged": any(v.acknowledged_by_me for v in incoming),
            })
        out.sort(key=lambda x: (not x["urgent"], -float(str(x["last_at"]))))
        return JSONResponse({"threads": out})

    async def thread(self, request: Request) -> Response:
        client = self._client()
        thread_id = _uuid(request.path_params["thread_id"])
        info = next((t for t in client.cached_threads() if t.thread_id == thread_id), None)
        if info is None:
            raise _Refused(404, "no such thread")
        views = client.thread_messages(thread_id)
        # The gateway's filing receipts in this thread, by the image they file (issue 10 item
        # 7): the study reference is shown with the image; the desktop never calls the PACS.
        receipts = {v.body.filing.attachment_id: v.body.filing for v in views
                    if v.body.filing is not None}
        messages = [_message_json(client, v, receipts) for v in views]
        return JSONResponse({"thread_id": thread_id, "priority": info.priority,
                             "roles": info.roles, "messages": messages})

    async def image(self, request: Request) -> Response:
        client = self._client()
        aid = _uuid(request.path_params["attachment_id"])
        try:
            stored = client.vault.get_image(aid)
        except ImageShredded as exc:
            return JSONResponse({"error": "expired",
                                 "record_ref": exc.tombstone.record_reference}, status_code=410)
        except ItemNotFound as exc:
            raise _Refused(404, "not on this device") from exc
        return Response(stored.data, media_type=stored.info.media_type)

    # -- acting ------------------------------------------------------------------------------

    async def reply(self, request: Request) -> Response:
        client = self._client()
        thread_id = _uuid(request.path_params["thread_id"])
        body = await _json(request)
        text = body.get("text")
        reply_to = body.get("reply_to")
        if not isinstance(text, str) or not text.strip():
            raise _Refused(400, "write a reply first")
        if reply_to is not None:
            reply_to = _uuid(str(reply_to))
        try:
            sent = await client.send_text(thread_id, text.strip(), reply_to=reply_to,
                                          timeout=30.0)
        except (SDKError, ProtocolError) as exc:
            raise _Refused(502, f"not sent: {exc}") from exc
        return JSONResponse({"message_id": sent.message_id, "thread_seq": sent.thread_seq})

    async def read(self, request: Request) -> Response:
        client = self._client()
        count = await client.mark_read(_uuid(request.path_params["thread_id"]))
        return JSONResponse({"marked": count})

    async def ack(self, request: Request) -> Response:
        client = self._client()
        try:
            await client.acknowledge(_uuid(request.path_params["message_id"]))
        except ItemNotFound as exc:
            raise _Refused(404, "no such message") from exc
        except FlowError as exc:
            raise _Refused(400, str(exc)) from exc
        return JSONResponse({"acknowledged": True})

    # -- live updates (server-sent events) ---------------------------------------------------

    def _broadcast(self, kind: str, data: dict[str, Any]) -> None:
        for queue in self._listeners:
            queue.put_nowait((kind, data))

    def _on_client_event(self, event: ClientEvent) -> None:
        if isinstance(event, MessageEvent):
            m = event.message
            self._broadcast("message", {"thread_id": m.thread_id, "message_id": m.message_id,
                                        "urgent": m.priority == "urgent"})
        elif isinstance(event, ImageEvent):
            self._broadcast("image", {"thread_id": event.thread_id, "status": event.status,
                                      "attachment_id": event.attachment_id})
        elif isinstance(event, ReceiptEvent):
            self._broadcast("receipt", {"message_id": event.message_id, "kind": event.kind})
        elif isinstance(event, FiledEvent | ExpiredEvent | WithdrawnEvent):
            kind = {FiledEvent: "filed", ExpiredEvent: "expired",
                    WithdrawnEvent: "withdrawn"}[type(event)]
            self._broadcast(kind, {"thread_id": event.thread_id})
        elif isinstance(event, StatusEvent):
            if event.state in {"connected", "disconnected", "stopped"}:
                self.connected = event.state == "connected"
            self._broadcast("status", {"state": event.state, "detail": event.detail})

    async def events(self, request: Request) -> Response:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._listeners.append(queue)

        # The current connection state goes first: the page read /api/state before it opened
        # this stream, and a change in between would otherwise never reach it.
        current = {"state": "connected" if self.connected else "disconnected", "detail": ""}

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 1000\n\n"
                yield f"event: status\ndata: {json.dumps(current)}\n\n".encode()
                while True:
                    try:
                        kind, data = await asyncio.wait_for(queue.get(), timeout=15.0)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if kind == "bye":
                        return
                    yield f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
            finally:
                with contextlib.suppress(ValueError):
                    self._listeners.remove(queue)

        return StreamingResponse(stream(), media_type="text/event-stream")


class _Guard:
    """ASGI middleware: the checks of :meth:`DesktopServer.check`, refusals as JSON, the
    security headers on every answer, and locked-vault errors as 423."""

    def __init__(self, app: Any, server: DesktopServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.decode().lower() not in {h.lower() for h in SECURITY_HEADERS}]
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        try:
            self.server.check(Request(scope))
            await self.app(scope, receive, send_with_headers)
        except _Refused as exc:
            await JSONResponse({"error": exc.message}, status_code=exc.status)(
                scope, receive, send_with_headers)
        except VaultLocked:
            await JSONResponse({"error": "locked"}, status_code=423)(
                scope, receive, send_with_headers)


async def _json(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0] != "application/json":
        raise _Refused(415, "send JSON")
    raw = await request.body()
    if len(raw) > MAX_JSON:
        raise _Refused(413, "too large")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _Refused(400, "malformed JSON") from exc
    if not isinstance(data, dict):
        raise _Refused(400, "malformed JSON")
    return data


def _uuid(value: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise _Refused(404, "not found") from exc


def _password_message(exc: Exception) -> str:
    text = str(exc)
    if "password" in text.lower() or "passphrase" in text.lower():
        return "wrong password"
    return text


def _study_json(receipt: FilingReceipt | None, message_id: str) -> dict[str, str] | None:
    """The original study in the PACS, from the gateway's filing receipt for this image of
    this message: its Study Instance UID and, when the PACS gave one, an http(s) retrieve URL
    (anything else is dropped rather than turned into a link)."""
    if receipt is None or receipt.message_id != message_id:
        return None
    url = receipt.retrieve_url
    if urlsplit(url).scheme.lower() not in {"http", "https"}:
        url = ""
    return {"study_uid": receipt.study_instance_uid, "retrieve_url": url}


def _message_json(client: LightboxClient, view: MessageView,
                  receipts: Mapping[str, FilingReceipt] | None = None) -> dict[str, Any]:
    receipts = receipts or {}
    m, body = view.message, view.body
    consent = None
    if body.consent_token:
        with contextlib.suppress(ProtocolError):
            c = peek_consent_token_unverified(body.consent_token)
            consent = {
                "consent_id": c.jti, "decision": c.decision.value,
                "purposes": [p.value for p in c.purposes],
                "users": [client.display_name(u) for u in c.recipients.users],
                "roles": c.recipients.roles, "orgs": c.recipients.orgs,
                "external": c.recipients.external, "expires_at": c.exp,
                "form_version": c.form_version,
            }
    record = None
    if body.record is not None:
        r = body.record
        record = {"patient_name": r.patient_name.replace("^", ", "), "patient_id": r.patient_id,
                  "issuer": r.issuer_of_patient_id, "birth_date": r.birth_date,
                  "sex": r.sex.value, "accession": r.accession_number,
                  "region": r.anatomic_region, "capture": r.capture.value,
                  # a photo of a film or monitor is not the study itself (issue 10 item 7)
                  "not_diagnostic": r.capture is CaptureKind.FILM}
    return {
        "message_id": m.message_id, "mine": m.outgoing,
        "sender": client.display_name(m.sender_user_id), "sent_at": m.sent_at,
        "priority": m.priority, "purpose": m.purpose, "read": m.read, "text": body.text,
        "subject": body.subject, "reply_to": body.reply_to, "kind": body.kind.value,
        "necessity": body.necessity, "quality_warnings": body.quality_warnings,
        "images": [{"attachment_id": i.attachment_id, "state": i.state, "reason": i.reason,
                    "record_ref": i.record_ref, "width": i.width, "height": i.height,
                    "filed_at": i.filed_at, "expires_at": i.expires_at,
                    "study": _study_json(receipts.get(i.attachment_id), m.message_id)}
                   for i in view.images],
        "consent": consent, "record": record,
        "receipts": [{"name": r.display_name, "kind": r.kind, "at": r.at}
                     for r in view.receipts],
        "acknowledged_by_me": view.acknowledged_by_me,
        "filing": None if body.filing is None else {
            "study": body.filing.study_instance_uid, "record_ref": body.filing.record_ref,
            "filed_at": body.filing.filed_at},
    }


def run_desktop(profile_dir: Path, *, open_browser: bool = True) -> int:
    """Serve the desktop client until interrupted; opens the browser at the launch address."""

    async def main() -> None:
        server = DesktopServer(profile_dir)
        await server.start()
        print(f"Lightbox desktop: {server.launch_url}", flush=True)
        print("(keep this window open; Ctrl-C to quit and lock)", flush=True)
        if open_browser:
            await asyncio.to_thread(webbrowser.open, server.launch_url)
        try:
            await server.serve_forever()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0
