"""``lightbox desktop``: the specialist's client as a local web page (ARCHITECTURE.md §3).

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
| ``GET /api/state`` | unlocked?, who, connected?, replaced?, ``ended`` (see below), ``notices`` |
| ``POST /api/unlock`` ``{password}`` | unlock the vault, log in, connect (403/410 ``ended``) |
| ``POST /api/lock`` | lock the vault, disconnect |
| ``POST /api/notice/dismiss`` ``{ids?}`` | forget these problems the client reported (or all) |
| ``POST /api/threads/{id}/dropped/dismiss`` ``{ids}`` | forget these dropped messages' marks |
| | (``left_inbox``: nothing else of the consult here, so the inbox leaves it out) |
| ``GET /api/threads`` | the inbox: urgent consults first, then newest |
| ``GET /api/threads/{id}`` | a thread: messages, images, filed study, consent, record data, |
| | ``patients_warning`` (its record data names two patients, :func:`patients_warning`) |
| ``POST /api/threads/{id}/reply`` ``{text, reply_to?, confirmed?}`` | reply (see below) |
| ``POST /api/threads/{id}/read`` | mark read (signed read receipts) |
| ``POST /api/messages/{id}/ack`` | acknowledge: "I'm on it", answered with the relay's answer |
| | (202 ``kept``: not sent yet; 202 ``unanswered``: the relay has not answered yet; |
| | 400 for the user's own message, as ``lightbox ack``) |
| ``GET /api/messages/{id}/consent.pdf`` | the patient's copy of its consent (PDF, see below) |
| ``GET /api/images/{id}`` | image bytes from the vault (410 + record reference once shredded; |
| | ``no-store`` like every answer; the page drops it on the ``expired`` event) |
| ``GET /api/events`` | server-sent events: message, image, receipt, escalation, status... |

Clinical safety (CLINICAL_SAFETY.md):

* **A reply** is sealed for every device of the thread with the purpose of the message it
  answers (``reply_to``, else the thread's latest incoming message), under that message's
  consent and, for an external consult, its clinical-necessity statement. When that
  purpose leaves direct care and the text holds an exact age, a date of birth, an MRN-like
  number or a date of service, nothing is sent until the clinician confirms: 409
  ``{"error": "text_guard", "purpose", "findings": [{kind, text, suggestion}], "suggestion"}``
  (``suggestion``: the text with exact ages turned into ranges); ``"confirmed": true`` sends it
  as written.
* **The patient's consent form** (CLINICAL_SAFETY.md: "the desktop client shows it"): the
  one-page PDF of the consent a message carries, rendered here from the token's claims (never
  sent anywhere); 404 ``{"error": "consent_not_found"}`` for a message that carries none or an
  unreadable one.
* **A photo of a film or monitor**: each image's ``study`` lists the ``originals`` the
  record gateway found in PACS (newest first, http(s) links only); the page links to them.
* **A computer the relay no longer serves** is never shown as connected: once the relay ends
  its access, ``ended`` says how, ``{"ended": "wiped"|"revoked"|"suspended"|"stopped",
  "message"}``, in ``/api/state``, in the ``status`` event ``ended``, and in a refused unlock
  (410 once wiped, 403 otherwise, nothing from the vault shown).
* **A suspension lifted** (docs/USER_GUIDE.md "Specialists"): the relay ends the session
  when IT suspends the user; the page says suspended and offers *Try again*, which locks
  the vault and asks for the password; unlocking opens the profile afresh and, once IT has
  resumed the account, signs in again with that password by itself (:func:`_signed_in_again`:
  the relay ended the session it held), as a restart does; while still suspended, the unlock
  says so.
* **A logout in a terminal** (``lightbox logout`` on this computer's profile): the vault
  locks within a second, as after inactivity, and the ``status`` event ``locked`` carries
  ``reason``, the sentence the unlock screen shows (:data:`LOGGED_OUT`); unlocking opens the
  profile afresh and signs in again (clients/sdk/profile.py).
* **Another program of this device connected** (a ``lightbox`` command on the same profile):
  the relay keeps one connection per device and gives it to the newer one. Not a loss, so
  not "reconnecting": ``replaced`` is true (in ``/api/state`` and the ``status`` event
  ``disconnected``) and the page says the connection is in use by another Lightbox command;
  the client connects again once it is done (clients/sdk/connection.py) and shows what
  arrived meanwhile.
* **Every dropped message is named** (docs/HAZARD_LOG.md HAZ-10): each problem the client
  reports is kept in ``notices`` (one line each, with when) until the specialist dismisses
  it, never only the latest; a message dropped because its sender's device was revoked or
  their account suspended also marks its consult (``dropped`` in ``/api/threads`` and
  ``/api/threads/{id}``: who sent it and when), so the specialist can ask about each one.
  Such a drop is kept in the vault (clients/desktop/dropped.py): its problem line until
  dismissed, its consult's mark until dismissed in the consult, also across a restart; so is
  every other problem line. A consult of which this computer holds only such drops is named
  by why it is empty (:func:`clients.desktop.dropped.title`), never "(no subject yet)"; once
  they are dismissed, nothing of it is left and it leaves the inbox until more of it arrives.
* **Escalation steps that came while the desktop was closed** (docs/PROTOCOL.md §16): once
  unlocked and connected, it asks the relay for the steps of the on-call consults it holds
  and shows those no notice brought.
* **A consult handed over at a shift change** is listed at its author's time, as its message
  says (docs/PROTOCOL.md §16.4), not at the handover's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import secrets
import signal
import socket
import threading
import time
import webbrowser
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from clients.desktop import dropped as drops
from clients.desktop.views import (
    ACK_UNANSWERED,
    ACK_UNCONFIRMED,
    KEPT_ACK,
    consent_claims,
    known_name,
    learn_names,
    message_json,
    message_times,
    one_acknowledgement,
    reply_plan,
    send_reply,
    thread_info,
)
from clients.desktop.web import Refused, checked_uuid, password_message, read_json
from clients.sdk.acking import (
    AcknowledgementUnconfirmed,
    acknowledged_at,
    acknowledgement_answer,
    connections_ended,
    offered_under,
    opening_run,
    why_not_acknowledgeable,
)
from clients.sdk.client import (
    AcknowledgementEvent,
    ClientEvent,
    EscalationEvent,
    ExpiredEvent,
    FiledEvent,
    ImageEvent,
    LightboxClient,
    MessageEvent,
    MessageView,
    NotReceivedEvent,
    OutboxEvent,
    ReceiptEvent,
    StatusEvent,
    WithdrawnEvent,
)
from clients.sdk.connection import ConnectionStopped
from clients.sdk.consent_pdf import ConsentFormDisplay, FormCopy, patient_label, render_consent_pdf
from clients.sdk.errors import (
    DeviceWiped,
    FlowError,
    KeyStoreError,
    LoggedOut,
    RelayRequestError,
    RelayUnavailable,
    SDKError,
)
from clients.sdk.patients import patient_labels, patients_of
from clients.sdk.profile import ProfileDevice, open_profile
from clients.sdk.session import CUT_OFF, SESSION_ENDED
from clients.sdk.textguard import TextGuardWarning, guard_text
from clients.sdk.timefmt import format_time
from clients.sdk.vault import ImageShredded, ItemNotFound, Vault, VaultError, VaultLocked
from protocol import api, certs
from protocol.canonical import peek_compact
from protocol.errors import CloseCode, ErrorCode, ProtocolError
from protocol.frames import Deliver
from protocol.model import Priority

__all__ = ["DesktopServer", "run_desktop"]

log = logging.getLogger("lightbox.desktop")
STATIC = Path(__file__).parent / "static"
COOKIE = "lightbox_desktop"
# A reply the relay could not take now (out of reach, or not answering in time).
KEPT_REPLY = ("Not sent yet: Lightbox cannot reach the relay. Your reply is kept on this "
              "computer and goes as soon as the relay can be reached again; do not send it "
              "again.")
# How long an acknowledgement may take to go to a connected relay before it counts as kept,
# and how long "I'm on it" waits for the relay's answer (kept or refused) before it says it
# has none yet (ACK_UNANSWERED).
ACK_WAIT = 5.0
# How long the desktop goes on asking for that answer, sending the receipt again whenever it
# gets the connection back (clients/sdk/acking.py), before it says it has none
# (ACK_UNCONFIRMED): twice the longest a replaced connection waits to come back
# (clients/sdk/connection.py REPLACED_WAIT_MAX).
ACK_FOLLOW = 120.0
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
# A consult's name when no message on this computer gives it a subject (its first message
# dropped or on its way, or sent without one): the same words as `lightbox threads`, never
# another message's text (a gateway's receipt is no subject).
NO_SUBJECT = "(no subject yet)"
# A consult made before this computer was linked, of which it holds nothing: its messages were
# sealed for the user's devices of that time, so none will ever reach it (docs/PROTOCOL.md §6:
# a message is sealed for the recipient devices the sender verified when it sent it).
BEFORE_LINK = "(sent before this computer was linked)"
# Why a delivery was dropped, by the error code the client reported it with.
_DROPPED_BECAUSE = {ErrorCode.CERTIFICATE_REVOKED.value: "revoked",
                    ErrorCode.USER_SUSPENDED.value: "suspended"}
MAX_NOTICES = 200  # problem lines kept until dismissed; the oldest go first beyond that


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
        self.replaced = False  # not connected: another program of this device has the relay
        # How this computer's access ended, once it has (``ended``, ``message``): revoked or
        # suspended by the relay, or erased by IT's wipe order (docs/PROTOCOL.md §15 "Wipe").
        # The page says so, never "connected" nor an unlock form for a vault that is gone.
        self.ended: dict[str, str] | None = None
        # Every problem the client reported in this launch and the specialist has not
        # dismissed (a message it dropped, a notice it could not handle), each with an id and
        # when: the page says them all, also those from before it was listening (the unlock),
        # and again after a lock (the vault locking itself when idle is no dismissal).
        self.notices: list[dict[str, Any]] = []
        # The messages the client dropped because their sender's device was revoked or their
        # account suspended, by line id (who sent it, when it reached the relay, why): each
        # consult says so, in the list and when opened, until the specialist dismisses it
        # there. Kept in the vault, so a restart shows them again, problem lines undismissed
        # included (clients/desktop/dropped.py). Both are shown only while unlocked, and
        # forgotten with the vault when IT's wipe order erases it.
        self.drops: dict[str, drops.DroppedMessage] = {}
        # The consults left with nothing on this computer once their dropped messages were
        # dismissed: the inbox leaves them out until something more of them arrives (kept in
        # the vault too, clients/desktop/dropped.py).
        self.emptied: set[str] = set()
        # The client whose consults' escalation steps were asked of the relay (once each
        # unlock, at its first connection: :meth:`_steps_from_relay`), and those tasks.
        self._steps_asked: LightboxClient | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # "I'm on it" whose answer the relay has not given yet (ACK_UNANSWERED) or never gave
        # (ACK_UNCONFIRMED), by message id: said under the message instead of "You
        # acknowledged this" (:meth:`ack`).
        self._ack_unanswered: dict[str, str] = {}
        # Messages the relay's receipts (signed by their device) say this user acknowledged on
        # another of their devices: once known, never asked again (:meth:`_kept_receipts`).
        self._acked_elsewhere: set[str] = set()
        self._acks_asking: asyncio.Task[None] | None = None  # :meth:`_ask_acked_elsewhere`
        self._linked_at: int | None = None  # this computer's device certificate, issued at
        self._listeners: list[asyncio.Queue[tuple[str, dict[str, Any]]]] = []
        self._unlock_lock = asyncio.Lock()
        self._server: uvicorn.Server | None = None
        self._idle_task: asyncio.Task[None] | None = None
        self._quitting = False  # this launch is ending (:meth:`_quit`): no unlock any more

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
                                lifespan="off", server_header=False, ws="none",
                                timeout_graceful_shutdown=QUIT_GRACE_SECONDS)
        self._server = _LocalServer(config, self._quit)
        self._server_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._server_task.done():
                self._server_task.result()
            await asyncio.sleep(0.01)
        self._idle_task = asyncio.create_task(self._watch_idle())

    async def stop(self) -> None:
        """Quit as Ctrl-C does (:meth:`_quit`, run by the server as it shuts down)."""
        if self._server is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._server_task
        await self._quit()  # also when the server never started (nothing done twice)

    async def _quit(self) -> None:
        """This launch ends (Ctrl-C or SIGTERM in its terminal, :meth:`stop`), nothing new
        reaching it any more (:class:`_LocalServer`): every open page's event stream ends, so
        the page finds nothing answering and clears itself ("Lightbox has closed", static/app.js
        ``showGone``), and the vault locks, an unlock still under way included (:meth:`unlock`).
        Done first, not once the page's connections have ended: the page keeps its event
        stream open, so that would wait for the page to ask something, with the consults on
        screen and the keys in memory (docs/USER_GUIDE.md "Starting it": Ctrl-C quits and
        locks)."""
        self._quitting = True
        if self._idle_task is not None:
            self._idle_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_task
        for queue in self._listeners:
            queue.put_nowait(("bye", {}))
        await self._lock()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server_task

    async def _watch_idle(self) -> None:
        """The vault locks itself after inactivity, and when the user logs out on this
        computer (``lightbox logout`` in a terminal, clients/sdk/profile.py): then disconnect
        and tell the page. Unlocking again opens the profile afresh and signs in again. A
        vault a wipe order locked (and erased, its logout mark with it) is neither idle nor
        logged out: the client confirms the wipe to the relay and then says so
        (clients/sdk/notices.py ``_wipe``), and the page shows it erased. Locking here would
        close the connection before the confirmation, and offer to unlock a vault that is
        gone."""
        while True:
            await asyncio.sleep(1.0)
            if self.device is None or self._wiped():
                continue
            if self.device.logged_out():
                await self._lock()
                self._broadcast("status", {"state": "locked", "detail": "logged out",
                                           "reason": LOGGED_OUT})
            elif self.device.vault.lock_if_idle():
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
            Route("/api/notice/dismiss", self.dismiss_notice, methods=["POST"]),
            Route("/api/threads/{thread_id}/dropped/dismiss", self.dismiss_dropped,
                  methods=["POST"]),
            Route("/api/threads", self.threads),
            Route("/api/threads/{thread_id}", self.thread),
            Route("/api/threads/{thread_id}/reply", self.reply, methods=["POST"]),
            Route("/api/threads/{thread_id}/read", self.read, methods=["POST"]),
            Route("/api/messages/{message_id}/ack", self.ack, methods=["POST"]),
            Route("/api/messages/{message_id}/consent.pdf", self.consent_pdf),
            Route("/api/images/{attachment_id}", self.image),
            Route("/api/events", self.events),
        ]
        app = Starlette(routes=routes)
        app.add_middleware(_Guard, server=self)
        return app

    def check(self, request: Request) -> None:
        """Host, session cookie and, for state changes, Origin and CSRF token."""
        if request.headers.get("host") != f"127.0.0.1:{self.port}":
            raise Refused(421, "wrong host")
        if request.url.path == "/" and "k" in request.query_params:
            return  # the launch address: checked in index()
        cookie = request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(cookie.encode(), self.session.encode()):
            raise Refused(403, "open the address that `lightbox desktop` printed")
        if request.method not in {"GET", "HEAD"}:
            origin = request.headers.get("origin")
            if origin is not None and origin != self.origin:
                raise Refused(403, "cross-origin request refused")
            token = request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(token.encode(), self.csrf.encode()):
                raise Refused(403, "missing or wrong CSRF token")

    async def index(self, request: Request) -> Response:
        given = request.query_params.get("k")
        if given is not None:
            if not hmac.compare_digest(given.encode(), self.secret.encode()):
                raise Refused(403, "this address is not valid any more: run lightbox desktop")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, self.session, httponly=True, samesite="strict",
                                path="/")
            return response
        html = (STATIC / "index.html").read_text().replace("{{CSRF}}", self.csrf)
        return Response(html, media_type="text/html; charset=utf-8")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_TYPES:
            raise Refused(404, "not found")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_TYPES[name])

    # -- session -----------------------------------------------------------------------------

    @property
    def _erased(self) -> dict[str, str] | None:
        """How IT's wipe order ended this computer, once it erased the vault (nothing is left
        to unlock); else None."""
        return self.ended if self.ended is not None and self.ended["ended"] == "wiped" else None

    def _client(self) -> LightboxClient:
        if self.client is None or self.device is None or not self.device.vault.is_unlocked:
            raise Refused(423, "locked")
        return self.client

    def _sending_client(self) -> LightboxClient:
        """The client, for what goes to the relay (a reply, "I'm on it"): refused in words once
        the relay has ended this computer's access, never kept as "not sent yet" for a
        relay that will not take it (docs/HAZARD_LOG.md HAZ-02)."""
        client = self._client()
        if self.ended is not None:
            raise Refused(403, self.ended["message"], ended=self.ended)
        return client

    async def state(self, request: Request) -> Response:
        if (erased := self._erased) is not None:
            return JSONResponse({"unlocked": False, "ended": erased})
        if self.client is None or self.device is None or not self.device.vault.is_unlocked:
            return JSONResponse({"unlocked": False})
        st = self.client.state
        user = peek_compact(st.user_certificate, certs.UserCertificate,
                            max_length=certs.MAX_CERTIFICATE_LENGTH)
        return JSONResponse({"unlocked": True, "login": st.login, "user_id": st.user_id,
                             "display_name": user.display_name, "roles": user.roles,
                             "device_kind": st.device_kind, "connected": self.connected,
                             "replaced": self.replaced, "ended": self.ended,
                             "notices": self.notices})

    async def unlock(self, request: Request) -> Response:
        body = await read_json(request)
        password = body.get("password")
        if not isinstance(password, str) or not password:
            raise Refused(400, "enter your password")
        async with self._unlock_lock:
            if (erased := self._erased) is not None:
                raise Refused(410, erased["message"], ended=erased)
            if self.client is not None and self.device is not None \
                    and self.device.vault.is_unlocked:
                return JSONResponse({"unlocked": True})
            await self._lock()
            try:
                device = await asyncio.to_thread(self.opener, self.profile_dir, password)
            except (KeyStoreError, VaultError) as exc:
                raise Refused(401, password_message(exc)) from exc
            client = device.client(**self.client_options)
            client.on_event(lambda event: self._on_client_event(event, client))
            try:
                # The relay out of reach does not keep the specialist from the consults this
                # computer holds: unlocked with the password alone (the vault's own check),
                # the page says it is reconnecting, and the client connects when it can.
                await _signed_in_again(client)
                await client.start(offline=True)
                with contextlib.suppress(RelayUnavailable):
                    await client.threads()
            except SDKError as exc:
                refused = exc.code if isinstance(exc, RelayRequestError) \
                    and exc.code in CUT_OFF else None
                ended = await self._end_heard(client, refused) if refused else None
                await client.close()
                device.vault.lock()
                if ended is None:
                    raise Refused(502, f"cannot reach the relay: {exc}") from exc
                self.ended = ended
                if ended["ended"] == "wiped":
                    self.notices, self.drops, self.emptied = [], {}, set()
                raise Refused(410 if ended["ended"] == "wiped" else 403, ended["message"],
                              ended=ended) from exc
            if self._quitting:  # the launch ended meanwhile: its vault stays locked
                await client.close(drain=0)
                device.vault.lock()
                raise Refused(503, "Lightbox has closed")
            self.device, self.client, self.ended = device, client, None
            self._restore_drops(device)
        return JSONResponse({"unlocked": True})

    def _restore_drops(self, device: ProfileDevice) -> None:
        """What the vault kept of the messages dropped in earlier launches (or reported
        while it was being unlocked): each consult marked again, and each problem line not
        yet dismissed said again (the other problems' too), after those of this launch the
        page was shown; the consults emptied by a dismissal left out of the inbox again."""
        try:
            kept = drops.kept(device.vault)
        except VaultError as exc:  # the rest of the vault is still shown
            log.warning("dropped message lines not read from the vault: %s",
                        type(exc).__name__)
            kept = []
        try:
            lines, emptied = drops.problems(device.vault), drops.emptied(device.vault)
        except VaultError as exc:
            log.warning("problem lines not read from the vault: %s", type(exc).__name__)
            lines, emptied = [], set()
        self.drops = {**{d.id: d for d in kept}, **self.drops}
        self.emptied |= emptied
        shown = {n["id"] for n in self.notices}
        restored = [d.notice() for d in kept if not d.line_dismissed and d.id not in shown]
        restored += [p.notice() for p in lines if p.id not in shown]
        self.notices = sorted([*self.notices, *restored], key=lambda n: n["at"])[-MAX_NOTICES:]

    def _marks(self, thread_id: str) -> list[dict[str, Any]]:
        """The consult's dropped messages not dismissed there, oldest first."""
        return [d.mark() for d in sorted(self.drops.values(), key=lambda d: (d.at, d.sent_at))
                if d.thread_id == thread_id]

    def _keep_drop(self, dropped: drops.DroppedMessage | None, line_id: str) -> None:
        """Write a drop's line to the vault (``dropped``), or forget it (None)."""
        def write(vault: Vault) -> None:
            if dropped is None:
                drops.forget(vault, line_id)
            else:
                drops.keep(vault, dropped)
        self._in_vault(write, line_id)

    def _in_vault(self, write: Callable[[Vault], None], line_id: str) -> None:
        """Write what the desktop keeps in the vault (clients/desktop/dropped.py). A vault
        that cannot be written now leaves it on screen for this launch, said in the log by
        id."""
        vault = self.device.vault if self.device is not None else None
        if vault is None or not vault.is_unlocked:
            return
        try:
            write(vault)
        except VaultError as exc:
            log.warning("problem line %s not kept in the vault: %s", line_id,
                        type(exc).__name__)

    async def _end_heard(self, client: LightboxClient, code: str) -> dict[str, str]:
        """The relay refused this computer (revoked, suspended: ``code``) at unlock, before the
        page showed anything: its connection, begun with the last access token, hears IT's
        wipe order if one waits (the vault is then erased) or is closed by the relay. How its
        access ended; nothing is shown from the vault either way."""
        # FlowError: not started (refused at the sign-in before it: no token to listen with)
        with contextlib.suppress(DeviceWiped, ConnectionStopped, TimeoutError, FlowError):
            await client.wait_synced(timeout=UNLOCK_HEARING_SECONDS)
        return _ended_by(client) or _ending(
            "revoked" if code == ErrorCode.DEVICE_REVOKED.value else "suspended")

    async def dismiss_notice(self, request: Request) -> Response:
        """Forget the problem lines the page showed (``ids``), or all of them: one that
        arrived after the page drew its list stays until it has been seen."""
        body = await read_json(request) if await request.body() else {}
        ids = body.get("ids")
        if ids is None:
            ids = [n["id"] for n in self.notices]
        elif not isinstance(ids, list):
            raise Refused(400, "ids must be a list")
        self.notices = [n for n in self.notices if n["id"] not in ids]
        # A dropped message's line dismissed stays dismissed after a restart; its consult
        # stays marked until dismissed there (:meth:`dismiss_dropped`).
        for line_id in ids:
            if not isinstance(line_id, str):
                continue
            d = self.drops.get(line_id)
            if d is not None and not d.line_dismissed:
                self.drops[line_id] = msgspec.structs.replace(d, line_dismissed=True)
                self._keep_drop(self.drops[line_id], line_id)
            elif d is None:  # any other problem line: forgotten for good
                self._in_vault(functools.partial(drops.forget, line_id=line_id,
                                                 kind=drops.PROBLEM_KIND),
                               line_id)
        return JSONResponse({"dismissed": True})

    async def dismiss_dropped(self, request: Request) -> Response:
        """Forget dropped messages of this consult (``ids``: those the page showed): its mark
        goes, with the problem line of each if it was still said, here and in the vault. A
        consult left with nothing on this computer leaves the inbox (``left_inbox``), until
        something more of it arrives."""
        client = self._client()
        thread_id = checked_uuid(request.path_params["thread_id"])
        ids = (await read_json(request)).get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise Refused(400, "ids must be a list")
        gone = [i for i in ids if i in self.drops and self.drops[i].thread_id == thread_id]
        for line_id in gone:
            del self.drops[line_id]
            self._keep_drop(None, line_id)
        self.notices = [n for n in self.notices if n["id"] not in gone]
        left = bool(gone) and self._nothing_of(client, thread_id)
        if left:
            self.emptied.add(thread_id)
            self._in_vault(lambda vault: drops.keep_emptied(vault, thread_id), thread_id)
        self._broadcast("dropped", {"thread_id": thread_id})
        return JSONResponse({"dismissed": len(gone), "left_inbox": left})

    def _nothing_of(self, client: LightboxClient, thread_id: str) -> bool:
        """Nothing of the consult on this computer: no message, no send waiting, no dropped
        message's mark."""
        return not client.vault.messages(thread_id) and not self._marks(thread_id) \
            and not any(r.thread_id == thread_id for r in client.pending_sends())

    async def lock(self, request: Request) -> Response:
        await self._lock()
        self._broadcast("status", {"state": "locked", "detail": "locked"})
        return JSONResponse({"unlocked": False})

    def _wiped(self) -> bool:
        """The client obeyed a wipe order (its vault is locked and erased)."""
        return self.client is not None and self.client.wiped is not None

    async def _lock(self) -> None:
        client, device = self.client, self.device
        self.client = self.device = None
        for task in self._tasks:  # nothing more is asked of the relay for a locked vault
            task.cancel()
        self._ack_unanswered, self._acked_elsewhere, self._linked_at = {}, set(), None
        self.connected = self.replaced = False
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
        every = {t.thread_id: client.thread_messages(t.thread_id)
                 for t in client.cached_threads()}
        await learn_names(client, [v for views in every.values() for v in views])
        # "I'm on it" said on another device of this user, as the opened consult says it
        # (:meth:`thread`): asked of the relay beside the listing, never before it (a listing
        # does not wait on the relay), and the page told when it learns of one.
        if self.connected and self._acks_asking is None:
            self._acks_asking = asyncio.get_running_loop().create_task(
                self._ask_acked_elsewhere(client, every))
            self._tasks.add(self._acks_asking)
            self._acks_asking.add_done_callback(self._tasks.discard)
        waiting = {r.thread_id for r in client.pending_sends()}
        for t in client.cached_threads():
            views = every[t.thread_id]
            marks = self._marks(t.thread_id)
            if t.thread_id in self.emptied and not views and not marks \
                    and t.thread_id not in waiting:
                continue  # its dropped messages dismissed, nothing else of it here
            last = views[-1] if views else None
            # A consult handed over at a shift change: its author, and when they sent it, as
            # the message says (docs/PROTOCOL.md §16.4), not when it was resealed.
            author = client.authorship(last.message, last.body) if last else None
            incoming = [v for v in views if not v.message.outgoing]
            # acknowledged here (and not waiting for the relay's answer), or on another device
            # of this user (verified, :meth:`_kept_receipts`), as the opened consult says it
            here = any(v.acknowledged_by_me and v.message.message_id not in self._ack_unanswered
                       for v in incoming)
            elsewhere = any(v.message.message_id in self._acked_elsewhere for v in incoming)
            out.append({
                "thread_id": t.thread_id, "priority": t.priority,
                "urgent": t.priority == "urgent"
                or any(v.message.priority == "urgent" for v in incoming),
                "subject": self._subject(t, views, waiting),
                "dropped": marks,
                "unread": client.unread(t.thread_id),
                "roles": t.roles, "members": len(t.members),
                # when its last message was sent, as that message and every participant's
                # screen say it (docs/USER_GUIDE.md, "Times")
                "last_at": message_times(last.message, author)[0]
                if last and author else t.created_at,
                "last_from": client.display_name(author.author_user_id) if author else "",
                "has_image": any(v.images for v in views),
                "acknowledged": bool(here or elsewhere),
                "acknowledged_elsewhere": not here and elsewhere,  # the list says where
                "acknowledgement_waiting": any(v.acknowledgement_waiting for v in incoming),
            })
        out.sort(key=lambda x: (not x["urgent"], -float(str(x["last_at"]))))
        return JSONResponse({"threads": out})

    async def thread(self, request: Request) -> Response:
        client = self._client()
        thread_id = checked_uuid(request.path_params["thread_id"])
        info = next((t for t in client.cached_threads() if t.thread_id == thread_id), None)
        if info is None:
            raise Refused(404, "no such thread")
        views = client.thread_messages(thread_id)
        await learn_names(client, views)
        # The gateway's filing receipts in this thread, by the image they file (CLINICAL_SAFETY.md):
        # the study reference is shown with the image; the desktop never calls the PACS.
        receipts = {v.body.filing.attachment_id: v.body.filing for v in views
                    if v.body.filing is not None}
        # Withdrawn consents (docs/PROTOCOL.md §13): what the relay told this device, kept in
        # the vault (so after a restart too), and asked of the relay for the rest.
        consents = [c for v in views if (c := consent_claims(v.body)) is not None]
        withdrawals = await client.refresh_consents([c.jti for c in consents])
        gateways = await client.record_gateways(
            [v.message.sender_user_id for v in views if not v.message.outgoing])
        messages = [message_json(client, v, receipts, withdrawals, gateways, views)
                    for v in views]
        kept = await self._kept_receipts(client, thread_id, views)
        # "I'm on it" said on another device of this user (their phone, `lightbox ack`): that
        # receipt goes to the consult's sender, never here; the relay keeps it (as `lightbox
        # ack` asks it): noted by _kept_receipts
        never_here = _never_here(client, views, kept)
        for m in messages:
            if not m["acknowledged_by_me"] and m["message_id"] in self._acked_elsewhere:
                m["acknowledged_by_me"] = m["acknowledged_elsewhere"] = True
            elif m["acknowledged_by_me"] and m["message_id"] in self._ack_unanswered:
                note = self._ack_unanswered[m["message_id"]]
                m["acknowledgement_note"] = note
                # not "You acknowledged this" while the relay has not said so; and, once it
                # never did, the button again
                m["acknowledgement_waiting"] = note == ACK_UNANSWERED
                m["acknowledged_by_me"] = note == ACK_UNANSWERED
            for img in m["images"]:
                img["never_here"] = img["attachment_id"] in never_here
        # "I'm on it" once per consult, under the last message of its opening run held here,
        # acknowledged whichever of them it was said to (clients/sdk/acking.py)
        one_acknowledgement(messages, offered_under(opening_run(client, views, gateways), views))
        # This device's sends the relay has not stored yet (the outbox, docs/PROTOCOL.md §3.5):
        # shown as not sent yet, until the client sends them once it reaches the relay.
        shown = {v.message.message_id for v in views}
        pending_sends = [r for r in client.pending_sends()
                         if r.thread_id == thread_id and r.message_id not in shown]
        pending = [{"message_id": r.message_id, "text": client.pending_body(r).text,
                    "created_at": r.created_at} for r in pending_sends]
        return JSONResponse({"thread_id": thread_id, "priority": info.priority,
                             "roles": info.roles, "messages": messages, "pending": pending,
                             "subject": self._subject(info, views,
                                                      {r.thread_id for r in pending_sends}),
                             "patients_warning": patients_warning(views),
                             "dropped": self._marks(thread_id),
                             # made before this computer was linked: nothing of it comes
                             "before_link": not messages and not pending
                             and self._before_link(info),
                             # nothing left of it here once its dropped messages were dismissed
                             "emptied": thread_id in self.emptied and not messages
                             and not pending and not self._marks(thread_id)})

    async def _ask_acked_elsewhere(self, client: LightboxClient,
                                   every: dict[str, list[MessageView]]) -> None:
        """The consults that may have been acknowledged on another device of this user, asked
        at once (:meth:`_kept_receipts`); when one was, the page lists the inbox again (an
        ``acknowledgement`` event). One such question at a time."""
        try:
            known = len(self._acked_elsewhere)
            await asyncio.gather(*(self._kept_receipts(client, tid, views, shredded=False)
                                   for tid, views in every.items()))
            if len(self._acked_elsewhere) > known and self.client is client:
                self._broadcast("acknowledgement", {"state": "elsewhere"})
        finally:
            self._acks_asking = None

    async def _kept_receipts(self, client: LightboxClient, thread_id: str,
                             views: list[MessageView], *, shredded: bool = True
                             ) -> list[api.ReceiptInfo] | None:
        """The receipts the relay keeps of this consult (docs/PROTOCOL.md §16.6), asked only
        when the page needs them (:meth:`thread`, :meth:`threads`): while a colleague's
        message here is not acknowledged from this computer, nor known to be on another
        device of this user (acknowledged there? noted in ``_acked_elsewhere``), or, when
        ``shredded``, a received image is shredded (did it ever reach this computer?). None
        when not asked or when the relay cannot say."""
        mine = client.user_id
        unacked = any(not (v.acknowledged_by_me or v.message.outgoing
                           or v.message.sender_user_id == mine
                           or v.message.message_id in self._acked_elsewhere) for v in views)
        gone = shredded and any(not v.message.outgoing and i.state == "shredded"
                                for v in views for i in v.images)
        if not unacked and not gone:
            return None
        try:  # only receipts their devices signed: the relay cannot hide "I'm on it"
            kept = await client.verified_receipts(thread_id)
        except (RelayRequestError, RelayUnavailable):
            return None
        self._acked_elsewhere |= {r.message_id for r in kept
                                  if r.kind == "acknowledged" and r.user_id == mine}
        return kept

    def _subject(self, info: api.ThreadInfo, views: list[MessageView], waiting: set[str]
                 ) -> str:
        """A consult's name: the first subject a message here gives it; when all this computer
        has of it is dropped messages, why it is empty (:func:`drops.title`); when it holds
        nothing of a consult made before it was linked, :data:`BEFORE_LINK`; else
        :data:`NO_SUBJECT`."""
        subject = next((v.body.subject for v in views if v.body.subject), None)
        if subject:
            return subject
        dropped = [d for d in self.drops.values() if d.thread_id == info.thread_id]
        if dropped and not views and info.thread_id not in waiting:
            return drops.title(sorted(dropped, key=lambda d: (d.at, d.sent_at)))
        if not views and info.thread_id not in waiting and self._before_link(info):
            return BEFORE_LINK
        return NO_SUBJECT

    def _before_link(self, info: api.ThreadInfo) -> bool:
        """Whether a consult was made before this computer's device was linked (its device
        certificate issued): whatever it holds of it, the messages sent before then were not
        sealed for it and never come."""
        if self.client is None:
            return False
        if self._linked_at is None:
            st = self.client.state
            try:
                self._linked_at = certs.verify_chain(
                    st.user_certificate, st.device_certificate, trusted_orgs=st.trusted_orgs(),
                    at=int(time.time()), revocations=None).device.issued_at
            except ProtocolError:
                self._linked_at = 0  # cannot tell: not said
        return 0 < info.created_at < self._linked_at

    async def image(self, request: Request) -> Response:
        client = self._client()
        aid = checked_uuid(request.path_params["attachment_id"])
        try:
            stored = client.vault.get_image(aid)
        except ImageShredded as exc:
            return JSONResponse({"error": "expired",
                                 "record_ref": exc.tombstone.record_reference}, status_code=410)
        except ItemNotFound as exc:
            raise Refused(404, "not on this device") from exc
        return Response(stored.data, media_type=stored.info.media_type)

    async def consent_pdf(self, request: Request) -> Response:
        """The patient's copy of the consent this message carries (CLINICAL_SAFETY.md: "the
        desktop client shows it"): the one-page form of :mod:`clients.sdk.consent_pdf`, rendered
        here from the token's claims (decoded, not verified, as the panel beside it: the copy
        shows what the capturing clinician recorded), labelled with the patient's name from
        the sealed record data. Nothing is stored or sent; ``no-store`` like every answer."""
        client = self._client()
        message_id = checked_uuid(request.path_params["message_id"])
        try:
            view = client.view(client.vault.message(message_id))
        except ItemNotFound as exc:
            raise Refused(404, "no such message") from exc
        claims = consent_claims(view.body)
        if claims is None:
            raise Refused(404, "consent_not_found",
                           detail="this message carries no consent that can be read")
        record = view.body.record
        await learn_names(client, [view])
        display = ConsentFormDisplay(
            withdrawn_at=client.consent_withdrawn_at(claims.jti),
            patient_label=patient_label(record.patient_name) if record is not None else "",
            clinician_name=known_name(client, claims.iss) or "",
            user_names={u: name for u in claims.recipients.users
                        if (name := known_name(client, u)) is not None})
        pdf = await asyncio.to_thread(render_consent_pdf, claims, display, copy=FormCopy.PATIENT)
        return Response(pdf, media_type="application/pdf", headers={
            "Content-Disposition": f'inline; filename="consent-{claims.jti}.pdf"'})

    # -- acting ------------------------------------------------------------------------------

    async def reply(self, request: Request) -> Response:
        """Send a reply with the purpose of what it answers (:func:`reply_plan`), after the
        free-text guard for that purpose (CLINICAL_SAFETY.md): findings and no ``confirmed``
        answer 409 ``text_guard`` and nothing is sealed."""
        client = self._sending_client()
        thread_id = checked_uuid(request.path_params["thread_id"])
        body = await read_json(request)
        text = body.get("text")
        reply_to = body.get("reply_to")
        confirmed = body.get("confirmed", False)
        if not isinstance(text, str) or not text.strip():
            raise Refused(400, "write a reply first")
        if not isinstance(confirmed, bool):
            raise Refused(400, "confirmed must be true or false")
        if reply_to is not None:
            reply_to = checked_uuid(str(reply_to))
        info = await thread_info(client, thread_id)
        text = text.strip()
        plan = reply_plan(client.thread_messages(thread_id), reply_to)
        try:
            guard_text(text, plan.purpose, confirmed=confirmed)
        except TextGuardWarning as warning:
            return JSONResponse({
                "error": "text_guard", "purpose": plan.purpose.value,
                "findings": [{"kind": f.kind.value, "text": f.text, "suggestion": f.suggestion}
                             for f in warning.findings],
                "suggestion": warning.suggestion}, status_code=409)
        try:
            sent = await send_reply(client, thread_id, text, reply_to=reply_to, plan=plan,
                                     priority=Priority(info.priority))
        except RelayUnavailable:
            # Kept in the outbox: the client sends it as soon as it is connected again
            # (docs/PROTOCOL.md §3.5 "Outbox"). Not an error to act on: sent again by hand, it
            # would reach the sender twice.
            return JSONResponse({"kept": True, "detail": KEPT_REPLY}, status_code=202)
        except (SDKError, ProtocolError) as exc:
            raise Refused(502, f"not sent: {exc}") from exc
        return JSONResponse({"message_id": sent.message_id, "thread_seq": sent.thread_seq,
                             "purpose": plan.purpose.value})

    async def read(self, request: Request) -> Response:
        client = self._client()
        count = await client.mark_read(checked_uuid(request.path_params["thread_id"]))
        return JSONResponse({"marked": count})

    async def ack(self, request: Request) -> Response:
        """"I'm on it". 200 once the relay answered: ``acknowledged`` true once it keeps the
        receipt, false with ``refused`` (its words, also under the message: ``not_on_ladder``)
        when it refused it; 202 ``kept`` when the relay is out of reach (it goes once
        connected again; the thread shows it as not sent yet); 202 ``unanswered`` when the
        relay has not answered in :data:`ACK_WAIT` seconds (another program of this profile
        took the connection: the desktop sends it again once it has it back, and says what
        the relay answered, :meth:`_ack_followed`); 404 and 400 (your own message, the record
        gateway's) refuse it. A consult the relay already keeps this user's acknowledgement
        of (of this or another message of its opening run, from any of their devices) is not
        acknowledged again: 200 ``acknowledged`` and ``already`` true, ``at`` when it was."""
        client = self._sending_client()
        message_id = checked_uuid(request.path_params["message_id"])
        try:
            held = client.vault.message(message_id)
            sender = held.sender_user_id
            if held.outgoing or sender == client.user_id:  # as `lightbox ack` refuses it
                raise Refused(400, f"message {message_id} is yours: only a consult a colleague "
                                   "sent you can be acknowledged")
            if await client.record_gateways([sender]):  # its receipt would go to the gateway
                raise Refused(400, "the record gateway's message answers a consult: "
                                   "acknowledge the consult itself")
            # a reply, a note: as `lightbox ack` refuses it (clients/sdk/acking.py)
            view = client.view(held)
            thread = client.thread_messages(held.thread_id)
            gateways = await client.record_gateways({v.message.sender_user_id for v in thread})
            what = why_not_acknowledgeable(client, view, thread, gateways)
            if what is not None:
                raise Refused(400, f"message {message_id} {what}: not a consult for you to "
                                   "acknowledge, so nothing is sent; reply instead")
            # Said to one message of the consult's opening run, it is said to the consult
            # (clients/sdk/acking.py): the relay keeping this user's receipt of any of them,
            # from any of their devices, nothing is sent again, as `lightbox ack` says it.
            kept = await acknowledged_at(client, [view, *opening_run(client, thread, gateways)])
            if kept is not None:
                return JSONResponse({"acknowledged": True, "already": True, "at": kept})
            self._ack_unanswered.pop(message_id, None)
            answers = client.subscribe()  # before it goes: the relay's refusal is one of them
            went_on = connections_ended(client)
            try:
                sent = await client.acknowledge(message_id, wait=ACK_WAIT)
            except BaseException:
                client.unsubscribe(answers)
                raise
        except ItemNotFound as exc:
            raise Refused(404, "no such message on this computer") from exc
        except FlowError as exc:
            raise Refused(400, str(exc)) from exc
        if not sent:
            client.unsubscribe(answers)
            return JSONResponse({"kept": True, "detail": KEPT_ACK}, status_code=202)
        followed = asyncio.get_running_loop().create_task(
            self._ack_followed(client, message_id, held.thread_id, answers, went_on))
        self._tasks.add(followed)
        followed.add_done_callback(self._tasks.discard)
        done, _ = await asyncio.wait({followed}, timeout=ACK_WAIT)
        if not done:  # it goes on: the page says so until the relay answers
            self._ack_unanswered.setdefault(message_id, ACK_UNANSWERED)
            return JSONResponse({"unanswered": True, "detail": ACK_UNANSWERED},
                                status_code=202)
        if followed.cancelled():  # the vault locked meanwhile (:meth:`_lock`)
            raise Refused(423, "locked")
        refused = followed.result()
        if refused is not None:
            return JSONResponse({"acknowledged": False, "refused": refused})
        return JSONResponse({"acknowledged": True})

    async def _ack_followed(self, client: LightboxClient, message_id: str, thread_id: str,
                            answers: asyncio.Queue[ClientEvent], went_on: int) -> str | None:
        """The relay's answer to "I'm on it" (:func:`clients.sdk.acking.acknowledgement_answer`,
        as ``lightbox ack`` asks it): None once it keeps the receipt, else its refusal (which
        the client keeps, and the page shows, as ``acknowledgement_refused``). When it gives
        none in :data:`ACK_FOLLOW` seconds, the page says so (:data:`ACK_UNCONFIRMED`), never
        "You acknowledged this"; the page is told either way."""
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ACK_FOLLOW
            while True:
                try:
                    refused = await acknowledgement_answer(
                        client, message_id, thread_id, answers, went_on,
                        wait=max(0.0, deadline - loop.time()))
                    break
                except (RelayRequestError, RelayUnavailable):
                    if loop.time() >= deadline:
                        raise AcknowledgementUnconfirmed(message_id) from None
                    await asyncio.sleep(1.0)  # the relay cannot be asked now: again soon
        except AcknowledgementUnconfirmed:
            self._ack_unanswered[message_id] = ACK_UNCONFIRMED
            refused = None
        else:
            self._ack_unanswered.pop(message_id, None)
        finally:
            client.unsubscribe(answers)
        self._broadcast("acknowledgement", {"thread_id": thread_id, "message_id": message_id,
                                            "state": "answered"})
        return refused

    # -- live updates (server-sent events) ---------------------------------------------------

    def _broadcast(self, kind: str, data: dict[str, Any]) -> None:
        for queue in self._listeners:
            queue.put_nowait((kind, data))

    def _on_client_event(self, event: ClientEvent, client: LightboxClient) -> None:
        if isinstance(event, MessageEvent):
            m = event.message
            self._broadcast("message", {"thread_id": m.thread_id, "message_id": m.message_id,
                                        "urgent": m.priority == "urgent"})
        elif isinstance(event, ImageEvent):
            self._broadcast("image", {"thread_id": event.thread_id, "status": event.status,
                                      "attachment_id": event.attachment_id})
        elif isinstance(event, ReceiptEvent):
            self._broadcast("receipt", {"message_id": event.message_id, "kind": event.kind})
        elif isinstance(event, EscalationEvent):
            self._broadcast("escalation", {"thread_id": event.thread_id,
                                           "message_id": event.message_id, "kind": event.kind})
        elif isinstance(event, ExpiredEvent):
            # Before the SDK confirms the order: the page drops the image it shows (the <img>,
            # the viewer's canvas); the image route answers 410 from now on and every answer
            # is no-store, so the browser keeps no copy (docs/PROTOCOL.md §15).
            self._broadcast("expired", {"thread_id": event.thread_id,
                                        "attachment_id": event.attachment_id})
            if event.reason == "consent_revoked":
                # a recipient learns of a withdrawn consent by its copies' expiry orders
                self._broadcast("withdrawn", {"thread_id": event.thread_id})
        elif isinstance(event, OutboxEvent):
            self._broadcast("outbox", {"thread_id": event.thread_id, "state": event.state})
        elif isinstance(event, AcknowledgementEvent):
            self._broadcast("acknowledgement", {"thread_id": event.thread_id,
                                                "message_id": event.message_id,
                                                "state": event.state})
        elif isinstance(event, FiledEvent | WithdrawnEvent):
            kind = "filed" if isinstance(event, FiledEvent) else "withdrawn"
            self._broadcast(kind, {"thread_id": event.thread_id})
        elif isinstance(event, NotReceivedEvent):  # docs/PROTOCOL.md §15 "Never received"
            self._broadcast("not_received", {"thread_id": event.thread_id,
                                             "message_id": event.message_id})
        elif isinstance(event, StatusEvent):
            if event.state in {"connected", "disconnected", "stopped", "wiped"}:
                self.connected = event.state == "connected"
                self.replaced = event.state == "disconnected" and event.replaced
            if event.state == "connected" and client is not self._steps_asked:
                self._steps_asked = client
                task = asyncio.get_running_loop().create_task(self._steps_from_relay(client))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            ended = _ended_by(client) if event.state in {"stopped", "wiped"} else None
            if ended is not None:
                self.ended = ended
                if ended["ended"] == "wiped":
                    self.notices, self.drops, self.emptied = [], {}, set()
                self._broadcast("status", {"state": "ended", **ended})
                return
            if event.state == "error":
                now = time.time()
                line = drops.ProblemLine(id=secrets.token_hex(8), detail=event.detail,
                                         code=event.code, at=int(now), noted=now)
                notice = line.notice()
                frame = event.dropped
                if frame is not None and event.code in _DROPPED_BECAUSE:
                    notice["thread_id"] = frame.message.header.thread_id
                    self._note_dropped(client, frame, notice)
                else:  # kept until dismissed too, across a restart (clients/desktop/dropped.py)
                    self._in_vault(functools.partial(drops.keep, line=line), line.id)
                self.notices = [*self.notices, notice][-MAX_NOTICES:]
                self._broadcast("status", {"state": "error", **notice})
                return
            self._broadcast("status", {"state": event.state, "detail": event.detail,
                                       "replaced": self.replaced})

    def _note_dropped(self, client: LightboxClient, frame: Deliver,
                      notice: dict[str, Any]) -> None:
        """Mark the consult of a message the client dropped (its sender's device revoked, or
        their account suspended): who sent it, when it reached the relay (the relay's time,
        as the problem line says), why; kept in the vault with its problem line ``notice``
        before the client acknowledges the delivery. The client learned the sender's name,
        when it can be known, before it reported the drop (clients/sdk/receiving.py)."""
        thread_id = frame.message.header.thread_id
        dropped = drops.DroppedMessage(
            id=notice["id"], thread_id=thread_id, detail=notice["detail"], code=notice["code"],
            at=notice["at"], sender=known_name(client, frame.message.header.sender_user_id),
            sent_at=frame.received_at, because=_DROPPED_BECAUSE[notice["code"]],
            urgent=frame.priority is Priority.URGENT)
        self.drops[dropped.id] = dropped
        try:
            drops.keep(client.vault, dropped)
        except VaultError as exc:
            log.warning("dropped message line %s not kept in the vault: %s", dropped.id,
                        type(exc).__name__)
        self._broadcast("dropped", {"thread_id": thread_id})

    async def _steps_from_relay(self, client: LightboxClient) -> None:
        """The on-call escalation steps the relay holds for the consults on this computer
        (docs/PROTOCOL.md §16: ``GET /v1/threads/{id}/escalations``), asked once each unlock at
        its first connection: a step whose notice never reached this device (it came while
        the desktop was closed and went to another connection, or before the consult reached
        the specialist) is shown all the same. Each is noted in the vault like a notice the
        client heard (said once, kept across a restart), and the page told of its consult."""
        try:  # the backlog in first: the consults this computer holds
            await client.wait_synced(timeout=STEPS_AFTER_SECONDS)
        except (DeviceWiped, ConnectionStopped):
            return
        except TimeoutError:
            pass  # a long backlog: what is held by now is asked about
        with contextlib.suppress(SDKError):
            await client.threads()
        for t in client.cached_threads():
            # only a consult sent to a role escalates; only one this computer holds is shown
            if not t.roles or client is not self.client:
                continue
            try:
                if not client.vault.messages(t.thread_id):
                    continue
                # [] when the relay cannot be asked (not a participant, out of reach): the
                # next step comes anyway, as a notice
                steps = await client.thread_escalation_steps(t.thread_id)
                new = [step for step in steps if client.memory.note_step(step)]
            except (VaultError, ConnectionStopped):
                return  # locked meanwhile: the next unlock asks again
            if new:
                self._broadcast("escalation", {"thread_id": t.thread_id,
                                               "message_id": new[-1].message_id,
                                               "kind": new[-1].kind})

    async def events(self, request: Request) -> Response:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._listeners.append(queue)

        # The current connection state goes first: the page read /api/state before it opened
        # this stream, and a change in between would otherwise never reach it.
        current: dict[str, Any] = {"state": "ended", **self.ended} if self.ended else {
            "state": "connected" if self.connected else "disconnected", "detail": "",
            "replaced": self.replaced}

        unlocked = self.device is not None and self.device.vault.is_unlocked

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 1000\n\n"
                yield f"event: status\ndata: {json.dumps(current)}\n\n".encode()
                for notice in self.notices if unlocked else []:  # reported before it listened
                    notice = {"state": "error", **notice}
                    yield f"event: status\ndata: {json.dumps(notice)}\n\n".encode()
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


# What the unlock screen says once the user logged out on this computer (the vault locked).
LOGGED_OUT = ("You logged out of Lightbox on this computer (lightbox logout): nothing more "
              "is received here until you unlock it and sign in again.")
UNLOCK_HEARING_SECONDS = 10.0  # a revoked computer's wait, at unlock, for a wipe order
# How long a quitting launch waits for the requests it is still answering (its vault already
# locked, its pages' event streams ended): then they are cancelled and it exits.
QUIT_GRACE_SECONDS = 3
STEPS_AFTER_SECONDS = 30.0  # the longest wait for the backlog before asking for the steps

_ENDINGS = {
    "revoked": "This computer has been revoked by IT: it can no longer send or receive "
               "consults. Ask IT if you did not expect this.",
    "suspended": "Your account is suspended by your organisation (or your licence has "
                 "expired): this computer can no longer send or receive consults. Ask IT.",
    "stopped": "The connection to the relay has stopped and will not be tried again by "
               "itself: choose Try again, and tell IT if it happens again.",
}


def patients_warning(views: list[MessageView]) -> str:
    """The warning over a consult whose record data names more than one patient (images of two
    patients in one consult: docs/HAZARD_LOG.md HAZ-01, a wrong patient; senders refuse
    to add such a photo now, but consults sent before may hold them), else "". Patients are
    told apart by the rule every client uses (clients/sdk/patients.py), named as
    ``lightbox send`` names them."""
    found = patients_of([v.body.record for v in views if v.body.record is not None])
    if len(found) < 2:
        return ""
    names = patient_labels(found)
    count = "two" if len(names) == 2 else str(len(names))
    listed = ", ".join(names[:-1]) + " and " + names[-1]
    return f"WARNING: this consult holds images of {count} patients: {listed}: check before acting"


def _never_here(client: LightboxClient, views: list[MessageView],
                kept: list[api.ReceiptInfo] | None) -> set[str]:
    """The shredded images of these messages never shown here, as `lightbox inbox` says them
    (:meth:`LightboxClient.never_here` over the relay's receipts ``kept``); empty when the
    relay could not say (``kept`` None)."""
    if kept is None:
        return set()
    return {aid for v in views for aid in client.never_here(v, kept)}


async def _signed_in_again(client: LightboxClient) -> None:
    """At unlock, before the connection starts: when the relay ended the session this profile
    holds (IT suspended the user, and has resumed them since; docs/PROTOCOL.md §4.5), sign in
    again with the password just given, as `lightbox login` does, instead of a connection
    refused for good ("stopped"). A command keeps asking for `lightbox login` itself
    (clients/sdk/session.py); here the password was typed a moment ago. A device revoked or a
    user suspended meanwhile is raised as the relay's refusal (the unlock says it); the relay
    out of reach is left to the client's start, which says it as before; so is a device that
    signs in at its identity provider."""
    if not client.session.can_log_in:
        return
    try:
        await client.relay.prekey_count()  # a device request: is the session still alive?
        return
    except RelayRequestError as exc:
        if exc.code not in SESSION_ENDED:
            return
    except RelayUnavailable:
        return
    client.relay.tokens = None
    try:
        await client.ensure_login()
    except RelayUnavailable:
        pass
    except RelayRequestError as exc:
        # Revoked or suspended since this computer last held a session (it may hold none at
        # all: the revocation ended it while the desktop ran): said as the relay says it now,
        # by the unlock (``CUT_OFF``), never as "not logged in".
        if exc.code in CUT_OFF:
            raise


def _ending(kind: str, revoked_at: int | None = None) -> dict[str, str]:
    """How this computer's access ended, in words (``kind``: wiped, revoked, suspended,
    stopped; ``revoked_at`` for a wipe, from the organisation-signed list)."""
    if kind == "wiped":
        message = (f"This computer was revoked by your organisation on "
                   f"{format_time(revoked_at or 0)}; its Lightbox data has been erased.")
    else:
        message = _ENDINGS[kind]
    return {"ended": kind, "message": message}


def _ended_by(client: LightboxClient) -> dict[str, str] | None:
    """Whether the relay ended ``client``'s access for good (docs/PROTOCOL.md §15: a wipe
    obeyed, closed as revoked or suspended, or stopped otherwise with nothing to retry); None
    while it runs or once it was stopped here (locked, closed)."""
    if client.wiped is not None:
        return _ending("wiped", client.wiped.revoked_at)
    connection = client.connection
    if connection is None or not connection.stopped.done():
        return None
    stopped = connection.stopped.result()
    if stopped.reason in {ErrorCode.USER_SUSPENDED.value, ErrorCode.LICENCE_EXPIRED.value} \
            or stopped.code == CloseCode.USER_SUSPENDED:
        return _ending("suspended")
    if stopped.code == CloseCode.DEVICE_REVOKED:
        return _ending("revoked")
    if stopped.stopped_here or isinstance(stopped.__cause__, LoggedOut):
        # stopped here, the vault locked itself, or the user logged out on this computer:
        # the vault locks (_watch_idle says so)
        return None
    return _ending("stopped")


class _LocalServer(uvicorn.Server):
    """uvicorn's server, which on Ctrl-C or SIGTERM (its own signal handling) or ``should_exit``
    first stops taking connections and requests, then runs ``quitting``
    (:meth:`DesktopServer._quit`: the page's event streams end, the vault locks), and only then
    waits, at most :data:`QUIT_GRACE_SECONDS`, for the requests still being answered. A
    second Ctrl-C ends that wait (uvicorn's ``force_exit``)."""

    def __init__(self, config: uvicorn.Config,
                 quitting: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._quitting = quitting

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # As uvicorn's own first steps (repeated there, harmlessly): the page's next request,
        # also on a connection it keeps open, finds nothing, so the page says it has closed.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        await self._quitting()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handling of Ctrl-C and SIGTERM (``handle_exit``: shut down; a second
        Ctrl-C, at once), without raising them again once shut down, which uvicorn does for
        the program around it: here, :func:`run_desktop` ends by itself once this returns.
        Raised again, a SIGTERM killed the process before :func:`run_desktop` had ended, and a
        second Ctrl-C met ``asyncio.run``'s own handler, which raises KeyboardInterrupt inside
        a task: the process could then hang as it exited (an AnyIO worker thread of the page's
        server left running)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signals are only for the main thread
            return
        before = {sig: signal.signal(sig, self.handle_exit)
                  for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


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
        except Refused as exc:
            await JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)(
                scope, receive, send_with_headers)
        except VaultLocked:
            await JSONResponse({"error": "locked"}, status_code=423)(
                scope, receive, send_with_headers)


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
