"""The phone app's world for its browser tests: the app served by ``lightbox-phone``'s Starlette
app on a loopback port (never by the relay), a relay that lets that origin call it, a user
provisioned with a real sealed enrolment package (so the code on the handout opens it), a
fake camera fed from a Y4M video (a QR code of the handout, or anything else), and a phone:
Debian's Chromium in mobile emulation (a phone's viewport, touch) driven by Playwright."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import segno
import uvicorn
from PIL import Image

from clients.phone.serve import PhoneConfig, make_app
from clients.sdk.client import ClientEvent
from protocol import api
from protocol.canonical import b64url_encode, encode_struct
from protocol.keys import CHEAP_PROFILE, seal_with_passphrase
from tests.browser import ARGS, CHROMIUM, browser_context
from tests.clinician_world import Clinician, enrol_clinician
from tests.consent_world import xray_png
from tests.helpers import (
    ROOT,
    TcpProxy,
    eventually,
    make_settings,
    page_problems,
    running_relay,
    seconds,
)
from tests.identity_world import User, World, identity_world
from tests.phone.node import build

__all__ = ["ARGS", "CHROMIUM", "ORTHO", "PASSPHRASE", "PHONE_VIEWPORT", "PHOTO_KEPT",
           "PHOTO_KEPT_NOTE", "SHOTS", "RelayRequests", "TcpProxy",
           "axe_violations", "beyond_refused",
           "bound_socket", "camera_started", "confirmed", "consent_of", "enrol_by_code",
           "enrolled_phone", "fetch_value", "film", "idb_records",
           "intern_and_specialist", "listening_specialist", "next_event", "on_call_rota",
           "phone_device_id",
           "phone_page", "phone_world", "photo_consult", "photo_from_phone", "photo_records",
           "photo_shown_kept", "photo_with_consent",
           "provision_with_package", "provisioned_intern", "proxied_phone_world", "qr_image",
           "relay_back", "relay_stopped", "running_phone", "sent_from_phone", "space_taken",
           "still_video", "stored_under",
           "vault_names"]

PHONE_VIEWPORT: Any = {"width": 390, "height": 844}  # a mid-size phone, CSS pixels
SHOTS = ROOT / "test-artefacts" / "phone"
ORTHO = "orthopaedics_oncall"
PASSPHRASE = "amber kettle nightshift wrist"
# A photo kept while the relay cannot be reached, a new consult's or one added to a consult:
# the line under it as it is kept, and the consult's line under the photo (after a restart too):
# one sentence for one cause.
PHOTO_KEPT = ("Not sent yet: this phone is not connected to the relay. The photo is kept on this "
              "phone, encrypted, and sent by itself when the relay can be reached; it shows as "
              "sent then.")
PHOTO_KEPT_NOTE = PHOTO_KEPT


def bound_socket() -> tuple[socket.socket, int]:
    """A listening loopback socket on a free port (known before the relay starts, which must
    name the phone's origin)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, sock.getsockname()[1]


@contextlib.asynccontextmanager
async def phone_world(db_dsn: str, tmp: Path, *, autolock_seconds: int = 60,
                      sock: socket.socket | None = None, idps: tuple[str, ...] = (),
                      **settings: Any) -> AsyncIterator[tuple[World, str]]:
    """A relay that lets the phone's origin call it (``settings`` are the relay's), and the
    phone app served on that origin (the cheapest Argon2id for its vault; ``sock``: a socket
    of :func:`bound_socket` when the origin must be known before, ``idps``: the IdPs it may
    call); yields both."""
    if sock is None:
        sock, _port = bound_socket()
    origin = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with identity_world(db_dsn, tmp, phone_origins=origin, **settings) as world:
        config = PhoneConfig(world.relay.base_url, kdf="cheap",
                             autolock_seconds=autolock_seconds, idps=idps)
        async with running_phone(config, sock) as served:
            yield world, served


@contextlib.asynccontextmanager
async def proxied_phone_world(db_dsn: str, tmp: Path, *, autolock_seconds: int = 600
                              ) -> AsyncIterator[tuple[World, str, TcpProxy]]:
    """:func:`phone_world` with the phone reaching the relay through a :class:`TcpProxy`,
    which the test can have drop or hold back what passes; yields the world, the phone's
    origin and the proxy."""
    sock, port = bound_socket()
    async with identity_world(db_dsn, tmp, phone_origins=f"http://127.0.0.1:{port}") as world:
        proxy = TcpProxy(int(world.relay.base_url.rsplit(":", 1)[1]))
        async with proxy.running() as relay_via_proxy, running_phone(
                PhoneConfig(relay_via_proxy, kdf="cheap", autolock_seconds=autolock_seconds),
                sock) as origin:
            yield world, origin, proxy


@contextlib.asynccontextmanager
async def running_phone(config: PhoneConfig, sock: socket.socket) -> AsyncIterator[str]:
    """The built app served on ``sock``; yields its origin."""
    dist = build().parent / "dist"
    server = uvicorn.Server(uvicorn.Config(make_app(config, dist), log_level="warning",
                                           access_log=False, lifespan="off", ws="none"))
    async with serving(server, sock) as origin:
        yield origin


@contextlib.asynccontextmanager
async def serving(server: uvicorn.Server, sock: socket.socket) -> AsyncIterator[str]:
    """``server`` serving on ``sock`` in this event loop until the block ends; yields its
    origin. A server that fails to start raises here."""
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def provision_with_package(world: World, user: User) -> None:
    """Provision ``user`` as IT's tool does: the identity key and the organisation key sealed
    under the enrolment code (PROTOCOL §4.7; the cheapest Argon2id, tests only)."""
    bundle = api.EnrolmentBundle(user_id=user.user_id, login=user.login, org_id=user.org.org_id,
                                 org_public_key=user.org.public_b64,
                                 identity_seed=b64url_encode(user.identity.seed.reveal()))
    sealed = seal_with_passphrase(encode_struct(bundle), user.code,
                                  opslimit=CHEAP_PROFILE.opslimit,
                                  memlimit=CHEAP_PROFILE.memlimit)
    (result,) = await world.provision(user, sealed_identity=b64url_encode(sealed))
    assert result["ok"], result


async def provisioned_intern(world: World, **user: Any) -> User:
    """The intern Dr Ada Intern, provisioned with a package: the phone enrols with her code.
    ``user``: more of her certificate (:meth:`Org.user`), her licence's end, say."""
    intern = world.org.user("intern", roles=("intern",), display_name="Dr Ada Intern", **user)
    await provision_with_package(world, intern)
    return intern


async def listening_specialist(world: World, tmp_path: Path
                               ) -> tuple[Clinician, asyncio.Queue[ClientEvent]]:
    """The orthopaedic on-call specialist Dr Bo Ortho as a started SDK client, and his events
    (subscribed before the start, so none is missed). The caller closes the client."""
    specialist = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                       display_name="Dr Bo Ortho")
    events = specialist.client.subscribe()
    await specialist.client.start(wait_connected=seconds(10))
    return specialist, events


@contextlib.asynccontextmanager
async def intern_and_specialist(world: World, tmp: Path, **user: Any
                                ) -> AsyncIterator[tuple[User, Clinician, asyncio.Queue[Any]]]:
    """The intern (provisioned with a sealed package, to enrol on the phone; ``user``: as
    :func:`provisioned_intern`) and the on-call orthopaedic specialist (a started SDK client);
    yields both and the specialist's events."""
    intern = await provisioned_intern(world, **user)
    specialist, events = await listening_specialist(world, tmp)
    try:
        yield intern, specialist, events
    finally:
        specialist.client.unsubscribe(events)
        await specialist.client.close()


@contextlib.asynccontextmanager
async def enrolled_phone(world: World, tmp: Path, origin: str, *, video: Path | None = None,
                         **user: Any
                         ) -> AsyncIterator[tuple[User, Clinician, asyncio.Queue[Any], Any,
                                                  list[str]]]:
    """:func:`intern_and_specialist` (``user``: more of the intern's certificate), with the
    intern's phone enrolled by code in a phone-sized page (its fake camera fed from
    ``video``): yields the intern, the specialist, his events, the page and its problems."""
    async with intern_and_specialist(world, tmp, **user) as (intern, specialist, events), \
            phone_page(video=video) as (page, problems):
        await enrol_by_code(page, origin, intern.code)
        yield intern, specialist, events, page, problems


async def on_call_rota(world: World, ladder: list[str]) -> None:
    """The orthopaedic on-call role's rota: one shift, now, with ``ladder`` (logins), so a
    consult to the role escalates along it and whoever acknowledges it is in the consult from
    then on (PROTOCOL §16.3)."""
    org, now = world.org.org_id, int(time.time())
    r = await world.http.put(f"/v1/admin/oncall/{org}/{ORTHO}", headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    r = await world.http.post(
        f"/v1/admin/oncall/{org}/{ORTHO}/shifts", headers=world.admin_headers(),
        json={"shifts": [{"starts_at": now - 3600, "ends_at": now + 8 * 3600,
                          "ladder": ladder}]})
    assert r.status_code == 200 and all(x["ok"] for x in r.json()["results"]), r.text


async def relay_stopped(world: World, page: Any) -> None:
    """The relay's process stops (gracefully, as on SIGTERM); the phone says it is offline."""
    await asyncio.to_thread(world.relay.stop)  # off this loop: its clients answer the close
    await page.locator("#conn", has_text="offline").wait_for()


def relay_back(world: World, tmp_path: Path, origin: str
               ) -> contextlib.AbstractAsyncContextManager[Any]:
    """The stopped relay started again where it was, for the same phone origin."""
    settings = make_settings(trusted_orgs_file=tmp_path / "trusted-orgs.json",
                             port=int(world.relay.base_url.rsplit(":", 1)[1]),
                             phone_origins=origin)
    return running_relay(world.dsn, settings)


class RelayRequests:
    """The phone's HTTP requests to the relay, as Chromium sends them (the worker's included),
    counted from when :meth:`count` is called."""

    def __init__(self, page: Any, relay: str) -> None:
        self.relay = relay
        self.seen: list[str] = []
        self.counting = False
        page.context.on("request", self._request)

    def _request(self, request: Any) -> None:
        if self.counting and request.url.startswith(self.relay):
            self.seen.append(f"{request.method} {request.url[len(self.relay):]}")

    def count(self) -> None:
        self.seen.clear()
        self.counting = True

    def of(self, said: str) -> int:
        return sum(1 for s in self.seen if s.startswith(said))


def beyond_refused(problems: list[str]) -> list[str]:
    """The page's problems but the refused connections to the stopped relay, which Chromium
    logs itself."""
    return [p for p in problems if "net::ERR_CONNECTION_REFUSED" not in p
            and "WebSocket connection to" not in p]


def still_video(path: Path, image: Image.Image, *, frames: int = 6,
                size: tuple[int, int] = (640, 480)) -> Path:
    """A Y4M (YUV4MPEG2, 4:2:0) video of one still picture, for Chromium's fake camera
    (``--use-file-for-fake-video-capture``)."""
    w, h = size
    canvas = Image.new("RGB", (w, h), "white")
    img = image.convert("RGB")
    img.thumbnail((w - 40, h - 40))
    canvas.paste(img, ((w - img.width) // 2, (h - img.height) // 2))
    y, cb, cr = canvas.convert("YCbCr").split()
    half = (w // 2, h // 2)
    planes = y.tobytes() + cb.resize(half).tobytes() + cr.resize(half).tobytes()
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            out.write(b"FRAME\n" + planes)
    return path


def qr_image(text: str) -> Image.Image:
    """The QR code of ``text`` as the handout prints it (segno, error correction M, quiet zone)."""
    out = io.BytesIO()
    segno.make(text, error="m").save(out, kind="png", scale=8, border=4)
    out.seek(0)
    return Image.open(out).convert("L")


@contextlib.asynccontextmanager
async def phone_page(*, video: Path | None = None, camera: bool = True
                     ) -> AsyncIterator[tuple[Any, list[str]]]:
    """A phone-sized page in a real Chromium (touch, mobile) in a context of its own
    (tests/browser.py), with a fake camera fed from ``video``; ``camera=False``: the camera
    permission is refused. Yields the page and the console and page errors it reports."""
    extra: list[str] = []
    if video is not None:
        extra += ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                  f"--use-file-for-fake-video-capture={video}"]
    async with browser_context(
            extra, viewport=PHONE_VIEWPORT, device_scale_factor=2, is_mobile=True,
            has_touch=True, locale="en-GB", timezone_id="Europe/London",
            user_agent="Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 "
                       "(KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
            permissions=["camera"] if camera else []) as context:
        page = await context.new_page()
        page.set_default_timeout(seconds(30) * 1000)
        yield page, page_problems(page)


async def axe_violations(page: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations on the page as it is (axe-core from npm,
    evaluated through the DevTools protocol, so the page's CSP stays as served)."""
    source = (ROOT / "clients" / "phone" / "node_modules" / "axe-core" / "axe.min.js").read_text()
    await page.evaluate(f"() => {{ {source}\n; window.__axe = axe; }}")
    result: dict[str, Any] = await page.evaluate(
        "async () => await window.__axe.run(document, {resultTypes: ['violations']})")
    assert result["testEngine"]["name"] == "axe-core" and result["passes"] is not None
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


async def space_taken(page: Any, selector: str) -> float:
    """The vertical space an element takes on the page: its height and its margins."""
    taken: float = await page.locator(selector).evaluate(
        "(e) => { const s = getComputedStyle(e); return e.getBoundingClientRect().height"
        " + parseFloat(s.marginTop) + parseFloat(s.marginBottom); }")
    return taken


async def idb_records(page: Any) -> list[bytes]:
    """Every value in the app's IndexedDB, its byte strings concatenated (what a thief who
    copies the phone's storage gets)."""
    dumped: list[str] = await page.evaluate("""async () => {
      const names = (await indexedDB.databases()).map((d) => d.name);
      if (!names.includes("lightbox-phone")) return [];
      const db = await new Promise((ok, ko) => {
        const r = indexedDB.open("lightbox-phone"); r.onsuccess = () => ok(r.result);
        r.onerror = () => ko(r.error); });
      const out = [];
      const flat = (v) => v instanceof Uint8Array ? [v] : (v && typeof v === "object")
        ? Object.values(v).flatMap(flat) : [new TextEncoder().encode(String(v))];
      for (const store of db.objectStoreNames) {
        const all = await new Promise((ok) => {
          const r = db.transaction(store).objectStore(store).getAll();
          r.onsuccess = () => ok(r.result); });
        for (const value of all) {
          let s = "";
          for (const part of flat(value)) for (const b of part) s += String.fromCharCode(b);
          out.push(btoa(s));
        }
      }
      db.close();
      return out;
    }""")
    return [base64.b64decode(d) for d in dumped]


async def vault_names(page: Any) -> list[str]:
    """The names of the records in the app's vault (IndexedDB keys: ``upload:<id>``,
    ``image:<id>``, ``thread:<id>``...), which are not sealed; their values are."""
    names: list[str] = await page.evaluate("""async () => {
      if (!(await indexedDB.databases()).some((d) => d.name === "lightbox-phone")) return [];
      const db = await new Promise((ok, ko) => {
        const r = indexedDB.open("lightbox-phone"); r.onsuccess = () => ok(r.result);
        r.onerror = () => ko(r.error); });
      const keys = await new Promise((ok) => {
        const r = db.transaction("records").objectStore("records").getAllKeys();
        r.onsuccess = () => ok(r.result); });
      db.close();
      return keys.map(String);
    }""")
    return sorted(names)


async def photo_records(page: Any) -> list[str]:
    """The vault's records of a photo on its way or sent: its upload job, its image, its
    consult, its outbox record (a photo kept while the relay could not be reached is one), a
    kept photo refused to send again (``photo:``)."""
    return [n for n in await vault_names(page)
            if n.split(":")[0] in ("upload", "image", "thread", "outbox", "photo")]


def film(width: int, height: int) -> Image.Image:
    """A generated x-ray (tests/consent_world.py), as the fake camera shows it."""
    return Image.open(io.BytesIO(xray_png(width, height)))


async def photo_shown_kept(page: Any, status: Any, screen: str, message: Any) -> None:
    """A photo just kept while the relay cannot be reached, as the intern sees it: ``status``
    (the line that said what became of it) says it is kept, on ``screen`` (where the app went
    back to), and its ``message`` in the consult is marked sending, with why."""
    assert await status.inner_text() == PHOTO_KEPT
    assert await page.is_visible(screen)
    await message.locator(".meta", has_text="sending").wait_for()
    assert await message.locator(".meta.kept").inner_text() == PHOTO_KEPT_NOTE


async def camera_started(page: Any) -> None:
    """Wait until the viewfinder shows frames (polled through the DevTools protocol: the page's
    CSP forbids the string evaluation wait_for_function uses)."""
    async with asyncio.timeout(seconds(20)):
        while not await page.evaluate("() => document.getElementById('viewfinder').videoWidth"):
            await asyncio.sleep(0.1)


async def photo_with_consent(page: Any, *, start: str = "#capture") -> None:
    """Take a photo with the fake camera (from the button ``start``: *Photograph a film*, or a
    consult's *Add a photo to this consult*), use it, and tick both consent statements shown to
    the patient: the consent screen is then ready for the record data."""
    await page.tap(start)
    await camera_started(page)
    await page.tap("#take")
    await page.tap("#use-photo")
    await page.check("#st-permanence")
    await page.check("#st-no-effect")


async def enrol_by_code(page: Any, origin: str, code: str) -> None:
    await page.goto(origin)
    await page.fill("#code", code)
    await page.tap("#enrol-next")
    await page.tap("#fp-match")
    await page.fill("#new-pass", PASSPHRASE)
    await page.fill("#new-pass2", PASSPHRASE)
    await page.tap("#enrol-finish")
    await page.locator("#conn", has_text="connected").wait_for()


async def xray_sent_for_filing(page: Any, origin: str, code: str) -> None:
    """The intern enrols by ``code``, photographs the x-ray with the patient's consent, names
    the patient (Doe^Jane, MRN123) and sends it: the photo is on the relay."""
    await enrol_by_code(page, origin, code)
    await photo_with_consent(page)
    await page.fill("#patient-name", "Doe^Jane")
    await page.fill("#patient-id", "MRN123")
    await page.fill("#img-text", "Query scaphoid fracture, film attached.")
    await page.tap("#consent-send")
    await page.locator("#photo-status", has_text="Photo sent").wait_for()


async def next_event(queue: asyncio.Queue[Any], kind: type, match: Any) -> Any:
    async with asyncio.timeout(seconds(30)):
        while True:
            event = await queue.get()
            if isinstance(event, kind) and match(event):
                return event


async def sent_from_phone(page: Any, events: asyncio.Queue[Any], text: str) -> Any:
    """Send ``text`` as a consult from the phone's home screen; the specialist's MessageEvent."""
    from clients.sdk.client import MessageEvent
    await page.fill("#text", text)
    await page.tap("#send")
    return await next_event(events, MessageEvent, lambda e: text in e.body.text)


async def fetch_value(world: World, query: str, *args: Any) -> Any:
    """The first column of the first row ``query`` finds in the relay's database."""
    conn = await world.db()
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def phone_device_id(world: World, user_id: str) -> uuid.UUID:
    """The device id of the user's one device (the phone)."""
    found: uuid.UUID = await fetch_value(
        world, "SELECT device_id FROM devices WHERE user_id = $1", uuid.UUID(user_id))
    return found


async def consent_of(world: World, user_id: str) -> uuid.UUID:
    """The id of the one consent the user registered."""
    found: uuid.UUID = await fetch_value(
        world, "SELECT consent_id FROM consents WHERE issuer_user_id = $1", uuid.UUID(user_id))
    return found


async def stored_under(world: World, consent_id: uuid.UUID) -> int:
    """How many messages the relay stored under the consent."""
    count: int = await fetch_value(
        world, "SELECT count(*) FROM messages WHERE consent_id = $1", consent_id)
    return count


async def confirmed(world: World, device_id: uuid.UUID, attachment_id: str) -> bool:
    """Wait until the device has confirmed the expiry order of ``attachment_id``."""
    async def confirmed_at() -> bool:
        return await fetch_value(
            world, "SELECT confirmed_at FROM expiry_orders WHERE device_id = $1 AND "
            "attachment_id = $2", device_id, uuid.UUID(attachment_id)) is not None
    return await eventually(confirmed_at, timeout=20)


async def photo_from_phone(page: Any, *, text: str, refused: bool = False) -> None:
    """From the home screen: photograph the film the fake camera shows, show both statements,
    record the patient's decision (agreed, or ``refused``) and send; waits for the outcome."""
    await photo_consult(page, text=text, refused=refused)
    await page.locator("#photo-status", has_text="refusal is recorded" if refused
                       else "Photo sent").wait_for()


async def photo_consult(page: Any, *, text: str, subject: str = "", refused: bool = False,
                        teaching_only: bool = False) -> None:
    """:func:`photo_from_phone` up to the tap on the consent screen's button (with ``subject``;
    ``teaching_only``: the consent names teaching, not direct care), without waiting."""
    await page.tap("#capture")
    await camera_started(page)
    await page.tap("#take")
    await page.locator("#screen-review").wait_for()
    await page.tap("#use-photo")
    await page.locator("#screen-consent").wait_for()
    await page.fill("#patient-name", "Doe^Jane")
    await page.fill("#patient-id", "MRN123")
    await page.fill("#img-text", text)
    if subject:
        await page.fill("#img-subject", subject)
    await page.check("#st-permanence")
    await page.check("#st-no-effect")
    if refused:
        await page.check("#refused")
    if teaching_only:
        await page.uncheck("#p-direct")
        await page.check("#p-teaching")
    await page.tap("#consent-send")


async def lost_overnight(world: World, page: Any, origin: str, user: User, *, wipe: bool
                         ) -> tuple[Any, str]:
    """The phone of ``page`` (enrolled and connected) is switched off, IT revokes it (with
    ``wipe``), and the relay's clock moves on six hours, past every token it holds; whoever
    finds it opens the app again. Returns that new page (on the unlock screen) and the
    phone's device id."""
    device_id = await world.device_of(user.user_id)
    context = page.context
    await page.close()
    r = await world.revoke(user.org, 1, devices=(device_id,), wipe=wipe)
    assert r.status_code == 200, r.text
    world.clock.advance(6 * 3600)
    found = await context.new_page()
    await found.goto(origin)
    return found, device_id


# Seconds the tests of an account state only IT can change (a suspension, an expired licence)
# count the app's requests for: its checks come 2, 6 and 14 s after it heard of it, where the app
# before worker.ts heardHold asked for a refresh and a connection every second (15 or so).
HELD_WINDOW = 15.0


async def held_and_said_once(page: Any, requests: RelayRequests, *, banner: str, conn: str,
                             once: str) -> None:
    """The app, told the account is held (suspended, licence expired: worker.ts heardHold),
    leaves the relay alone for :data:`HELD_WINDOW` seconds, never asking once a second, and
    says why once, on its banner and in its header. ``requests``: counting from before the
    app could hear of it (the caller's :meth:`RelayRequests.count`)."""
    await page.wait_for_timeout(HELD_WINDOW * 1000)
    seen = list(requests.seen)
    # A check at 2, 6 and 14 s (the relay refuses each, 403): never one a second.
    assert 1 <= requests.of("POST /v1/auth/refresh") <= 4, seen
    assert len(seen) <= 6, seen
    assert await page.locator("#banner").is_visible()
    assert await page.inner_text("#banner") == banner
    assert await page.inner_text("#conn") == conn
    assert (await page.inner_text("body")).count(once) == 1


async def kept_while_held(page: Any, world: World, *, subject: str, text: str, kept: str,
                          shot: str) -> Any:
    """A consult written while the account is held: kept, encrypted on the phone, said so,
    and nothing of it at the relay (which holds the one message sent before). Its consult's
    locator; a screenshot ``shot`` in :data:`SHOTS`."""
    await page.fill("#subject", subject)
    await page.fill("#text", text)
    await page.tap("#send")
    await page.locator("#send-status", has_text=kept).wait_for()
    consult = page.locator(".thread", has_text=subject)
    await consult.locator(".message.mine .meta", has_text="sending").wait_for()
    assert len([n for n in await vault_names(page) if n.startswith("outbox:")]) == 1
    assert await fetch_value(world, "SELECT count(*) FROM messages") == 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / shot), full_page=True)
    return consult
