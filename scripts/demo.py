"""``make demo`` (``python -m scripts.demo``): the whole consult journey on this machine.

It plays docs/ARCHITECTURE.md §1 end to end with the real programs, driven the way their users drive
them
(each one a subprocess with its own environment):

* the relay, ``lightbox-server``, on an embedded Postgres in a fresh demo folder
  (``.data/demo``; ``--data-dir`` or ``DEMO_DATA_DIR``), with a short expiry grace period,
  and the relay host's own commands beside it (``lightbox-server org trust``, ``admin create``,
  ``audit verify``);
* a real PACS, Debian's Orthanc with its DICOMweb plugin on loopback, when it is installed;
* hospital IT's ``lightbox-admin``: the organisation key, then, over the relay's admin API,
  three accounts (an intern, the on-call orthopaedic specialist, the record gateway's service
  account);
* each person's own device (``lightbox enroll``, each in its own ``LIGHTBOX_HOME``): the
  intern's phone, the specialist's desktop, the gateway;
* the intern captures consent and sends a synthetic x-ray (made here, with made-up patient
  data) as an urgent consult to the on-call role; the specialist sees it in ``lightbox inbox``,
  then opens ``lightbox desktop`` and replies and acknowledges through its local web API,
  exactly the requests its page makes; ``lightbox-gateway`` files the image into Orthanc and
  the receipt reaches the thread; every copy expires; ``lightbox-admin copies`` shows each copy
  destroyed and ``lightbox-server audit verify`` checks the audit trail.

Everything it starts is stopped at the end, also on Ctrl-C or an error: the clients, the
gateway, Orthanc and the relay, which stops the embedded Postgres as its last user. With
``DEMO_INTERACTIVE=1`` (or ``--interactive``) the specialist's desktop client is left running
at the end for a person to look at, until Ctrl-C.

A step the demo cannot play is never faked: without Orthanc, or while the record gateway (or
the SDK's sealing to it) is unfinished, it says which steps it skipped and why, and an
unfiled image then expires at a short hard limit instead. ``--strict`` (``DEMO_STRICT=1``)
turns any skipped step into exit status 1.

Nothing here is real patient data: the patient is ``Testpatient^Alpha``, MRN ``LBX-DEMO-0001``.
The secrets are fixed demo values, printed nowhere, and valid only inside the demo folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

__all__ = ["DemoFailed", "main", "xray_film_png"]

ROOT = Path(__file__).resolve().parent.parent
ORG = "demo-general"
ONCALL_ROLE = "orthopaedics_oncall"
PATIENT_NAME = "Testpatient^Alpha"
PATIENT_ID = "LBX-DEMO-0001"
ORG_PASSPHRASE = "demo organisation passphrase 1"  # noqa: S105 - demo folder only
ADMIN_PASSWORD = "demo-admin-lantern-71"  # noqa: S105 - demo folder only
ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
EXPIRY_GRACE = 5  # seconds after filing before every copy is ordered to expire (demo only)
HARD_LIMIT = 20  # seconds after sharing at which an unfiled image expires (demo, no filing)
T = TypeVar("T")


class DemoFailed(Exception):
    """A step did not do what it should; the message says which and where to look."""


class Person:
    """One clinician (or service) and their device: login, password, LIGHTBOX_HOME, profile."""

    def __init__(self, key: str, name: str, login: str, roles: str, password: str,
                 kind: str, home: Path, *, service: bool = False, specialty: str = "",
                 department: str = "") -> None:
        self.key, self.name, self.login, self.roles = key, name, login, roles
        self.password, self.kind, self.home, self.service = password, kind, home, service
        self.specialty, self.department = specialty, department
        self.code = ""

    @property
    def profile(self) -> str:
        return self.key


# --- the synthetic film ----------------------------------------------------------------------


def xray_film_png(width: int = 1200, height: int = 1500, seed: int = 7) -> bytes:
    """A photo of an x-ray film, made up: a dark film, the soft tissue of a forearm, the radius
    and ulna with their marrow and some trabecular texture, the carpal bones, a fracture line.
    It passes the quality checks (sharp, exposed, no glare, large enough, straight)."""
    from PIL import Image, ImageDraw, ImageFilter

    w, h = width, height
    img = Image.new("L", (w, h), 18)
    d = ImageDraw.Draw(img)
    d.rounded_rectangle((w * 0.22, -50, w * 0.78, h + 50), radius=int(w * 0.2), fill=70)
    d.rounded_rectangle((w * 0.30, h * 0.05, w * 0.46, h * 0.80), radius=40, fill=200)
    d.rounded_rectangle((w * 0.54, h * 0.05, w * 0.68, h * 0.78), radius=40, fill=185)
    d.rounded_rectangle((w * 0.35, h * 0.10, w * 0.41, h * 0.72), radius=20, fill=150)
    d.rounded_rectangle((w * 0.585, h * 0.10, w * 0.635, h * 0.70), radius=20, fill=140)
    for i, (cx, cy) in enumerate([(0.36, 0.86), (0.46, 0.87), (0.56, 0.86), (0.64, 0.88),
                                  (0.41, 0.93), (0.53, 0.94)]):
        d.ellipse((w * cx - 55, h * cy - 45, w * cx + 55, h * cy + 45), fill=195 + (i % 3) * 8)
    rnd = random.Random(seed)
    for _ in range(2500):
        x, y = rnd.uniform(w * 0.31, w * 0.67), rnd.uniform(h * 0.06, h * 0.95)
        if w * 0.46 < x < w * 0.54 and y < h * 0.8:
            continue
        d.line((x, y, x + rnd.uniform(-12, 12), y + rnd.uniform(-12, 12)),
               fill=rnd.randint(120, 245), width=2)
    d.line((w * 0.29, h * 0.70, w * 0.47, h * 0.73), fill=60, width=6)  # the fracture
    d.rectangle((w * 0.05, h * 0.04, w * 0.13, h * 0.09), fill=235)  # the film's marker
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    img = Image.blend(img, Image.effect_noise((w, h), 18).convert("L"), 0.12)
    out = io.BytesIO()
    img.convert("RGB").save(out, format="PNG")
    return out.getvalue()


# --- small helpers ---------------------------------------------------------------------------


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _program(name: str, module: str) -> list[str]:
    """The installed console script (what a user types), else ``python -m module``."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def _lightbox() -> list[str]:
    return _program("lightbox", "clients.clinician.cli")


def _orthanc_binary() -> str | None:
    found = shutil.which("Orthanc")
    for candidate in (found, "/usr/bin/Orthanc", "/usr/sbin/Orthanc"):
        if candidate and Path(candidate).exists() and ORTHANC_PLUGIN.exists():
            return candidate
    return None


def _gateway_ready() -> str | None:
    """None when ``lightbox-gateway`` can file; else why not (it is being built elsewhere)."""
    try:
        from clients.gateway import cli as gateway
    except Exception as exc:  # any import failure means "not ready"
        return f"clients/gateway/cli.py does not import ({type(exc).__name__}: {exc})"
    if not callable(getattr(gateway, "main", None)):
        return "clients/gateway/cli.py has no main() yet"
    return None


def _wait(what: str, check: Callable[[], T | None], timeout: float, *,
          alive: Callable[[], str | None] | None = None, every: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None and result is not False:
            return result
        if alive is not None and (problem := alive()):
            raise DemoFailed(f"{what}: {problem}")
        if time.monotonic() > deadline:
            raise DemoFailed(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


# --- the demo --------------------------------------------------------------------------------


class Demo:
    def __init__(self, data_dir: Path, *, interactive: bool, timeout: float,
                 out: IO[str]) -> None:
        self.data = data_dir.resolve()
        self.interactive = interactive
        self.timeout = timeout
        self.out = out
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs: list[IO[bytes]] = []
        self.relay_url = ""
        self.relay_port = 0
        self.orthanc_url = ""
        self.orthanc_auth: tuple[str, str] | None = None
        self.step_no = 0
        self.skipped: list[str] = []
        self.filing = True
        it = self.data / "it"
        self.it_dir = it
        self.people = {
            "intern": Person("intern", "Ivy Intern", "ivy.intern", "physician;intern",
                             "night-shift-lantern-42", "mobile", self.data / "intern-phone",
                             specialty="emergency medicine", department="ED"),
            "ortho": Person("ortho", "Otto Orthopod", "otto.ortho",
                            f"physician;{ONCALL_ROLE}", "plaster-cast-harbour-17", "desktop",
                            self.data / "specialist-desktop", specialty="orthopaedics",
                            department="Trauma & Orthopaedics"),
            "gateway": Person("gateway", "Record Gateway", "record.gateway", "record_gateway",
                              "gateway-filing-quarry-93", "gateway", self.data / "gateway",
                              service=True),
        }

    # -- output ------------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, text: str) -> None:
        self.step_no += 1
        self.say(f"\n[{self.step_no}] {text}")

    def detail(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            self.say(f"      {line}")

    def skip(self, text: str) -> None:
        self.skipped.append(text)
        self.say(f"      SKIPPED: {text}")

    # -- environment and processes -----------------------------------------------------------

    def env(self, person: Person | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LIGHTBOX_", "DEMO_")) or k in {
                   "LIGHTBOX_INSECURE_FAST_KDF", "LIGHTBOX_ARGON2_PROFILE"}}
        env.update({
            "LIGHTBOX_DATA_DIR": str(self.data / "relay"),
            "LIGHTBOX_ADMIN_HOME": str(self.it_dir),
            "LIGHTBOX_ORG_KEYFILE": str(self.it_dir / f"{ORG}.key"),
            "LIGHTBOX_ORG_PASSPHRASE": ORG_PASSPHRASE,
            "LIGHTBOX_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "PYTHONUNBUFFERED": "1",
        })
        if person is not None:
            env["LIGHTBOX_HOME"] = str(person.home)
            env["LIGHTBOX_PASSWORD"] = person.password
            env["LIGHTBOX_PROFILE"] = person.profile
        env.update(extra)
        return env

    def run(self, argv: Sequence[str], *, person: Person | None = None, ok: bool = True,
            timeout: float = 120.0, show: bool = True, **extra: str) -> tuple[int, str, str]:
        """Run one command to completion; print it as a user would type it."""
        if show:
            shown = shlex.join([Path(argv[0]).name, *argv[1:]])
            self.say(f"      $ {shown}")
        proc = subprocess.run(list(argv), env=self.env(person, **extra), cwd=ROOT,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              start_new_session=True)
        out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        if ok and proc.returncode != 0:
            raise DemoFailed(f"`{' '.join(argv[:4])} ...` exited {proc.returncode}:\n"
                             f"{out}{err}")
        return proc.returncode, out, err

    def lightbox(self, person: Person, *args: str, ok: bool = True) -> tuple[int, str, str]:
        return self.run([*_lightbox(), *args], person=person, ok=ok)

    def admin(self, *args: str, ok: bool = True, show: bool = True) -> tuple[int, str, str]:
        return self.run([*_program("lightbox-admin", "clients.admin.cli"), *args], ok=ok, show=show)

    def relay_host(self, *args: str) -> tuple[int, str, str]:
        """A relay-host command (``lightbox-server db|admin|org|audit``, server/manage.py)."""
        return self.run([*_program("lightbox-server", "server"), *args])

    def start(self, name: str, argv: Sequence[str], *, person: Person | None = None,
              stdout: int | None = None, env_extra: dict[str, str] | None = None,
              **extra: str) -> subprocess.Popen[bytes]:
        """A long-running process, in its own session (Ctrl-C reaches only the demo, which
        then stops everything in order); its output goes to ``<name>.log``."""
        log = (self.data / f"{name}.log").open("ab")
        self.logs.append(log)
        proc = subprocess.Popen(list(argv), env=self.env(person, **(env_extra or {}), **extra),
                                cwd=ROOT,
                                stdin=subprocess.DEVNULL,
                                stdout=log if stdout is None else stdout,
                                stderr=log, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def alive(self, name: str, proc: subprocess.Popen[bytes]) -> Callable[[], str | None]:
        def check() -> str | None:
            if proc.poll() is None:
                return None
            return f"{name} exited with {proc.returncode}; see {self.data / (name + '.log')}"
        return check

    def stop(self, name: str, *, sig: int = signal.SIGINT, grace: float = 15.0) -> None:
        for n, proc in list(self.procs):
            if n != name:
                continue
            self.procs.remove((n, proc))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def stop_all(self) -> None:
        for name, _proc in reversed(list(self.procs)):
            self.stop(name)
        for log in self.logs:
            log.close()
        self.logs.clear()
        if (self.data / "relay" / "pg" / "postmaster.pid").exists():
            self.say("      the embedded Postgres is still running: see "
                     f"{self.data / 'relay.log'}")
        elif (self.data / "relay" / "pg").exists():
            self.say("      embedded Postgres stopped (by the relay, its last user)")

    # -- setting the stage -------------------------------------------------------------------

    def fresh_folder(self) -> None:
        # A cluster a SIGKILLed run left behind is stopped by pgserver when it makes the new
        # cluster in the same place (it ends any postgres still serving that folder).
        if self.data.exists():
            shutil.rmtree(self.data)
        self.data.mkdir(parents=True)
        self.it_dir.mkdir(mode=0o700)

    def start_relay(self) -> None:
        """The relay, with a short grace period; without filing, the organisation is marked
        filing-optional and an unfiled image expires at a short hard limit instead."""
        port = self.relay_port = self.relay_port or _free_port()
        extra = {"LIGHTBOX_EXPIRY_GRACE": str(EXPIRY_GRACE),
                 "LIGHTBOX_EXPIRY_SWEEP_INTERVAL": "1"}
        if not self.filing:
            extra.update(LIGHTBOX_FILING_OPTIONAL_ORGS=ORG,
                         LIGHTBOX_EXPIRY_HARD_LIMIT=str(HARD_LIMIT))
        proc = self.start("relay", [*_program("lightbox-server", "server"), "--migrate",
                                    "--host", "127.0.0.1", "--port", str(port)], env_extra=extra)
        self.relay_url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.relay_url}/readyz", timeout=2).status_code == 200
            return False

        _wait("the relay did not become ready", ready, 60, alive=self.alive("relay", proc))

    def start_orthanc(self, binary: str) -> None:
        work = self.data / "orthanc"
        (work / "storage").mkdir(parents=True)
        (work / "index").mkdir()
        port = _free_port("")
        user, password = "lightbox-demo", secrets.token_urlsafe(18)
        config = {
            "Name": "LIGHTBOX-DEMO", "StorageDirectory": str(work / "storage"),
            "IndexDirectory": str(work / "index"), "HttpServerEnabled": True,
            "HttpPort": port, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {user: password},
            "SaveJobs": False, "ExecuteLuaEnabled": False, "Plugins": [str(ORTHANC_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        cfg = work / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=2))
        cfg.chmod(0o600)
        proc = self.start("orthanc", [binary, str(cfg)])
        self.orthanc_url = f"http://127.0.0.1:{port}"
        self.orthanc_auth = (user, password)

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.orthanc_url}/system", auth=self.orthanc_auth,
                                 timeout=2).status_code == 200
            return False

        _wait("Orthanc did not become ready", ready, 30, alive=self.alive("orthanc", proc))
        secret = work / "pacs-password"
        secret.write_text(password)
        secret.chmod(0o600)

    # -- the journey -------------------------------------------------------------------------

    def cast(self) -> list[Person]:
        """Who takes part: the gateway only when it can file."""
        return [p for p in self.people.values() if self.filing or p.key != "gateway"]

    def play(self) -> None:
        people = self.people
        intern, ortho = people["intern"], people["ortho"]
        self.say("Lightbox demo: an intern's urgent x-ray consult, from the phone to the "
                 "patient's record.")
        self.say(f"Everything lives in {self.data} (deleted and made afresh on each run). "
                 "The patient is made up.")

        self.step("Hospital IT creates the organisation's signing key (IT workstation).")
        _rc, out, _ = self.admin("org", "init", "--org-id", ORG, "--keyfile",
                                 str(self.it_dir / f"{ORG}.key"))
        fp = re.search(r"fingerprint: (\S+)", out)
        self.detail(f"organisation {ORG}, key fingerprint {fp.group(1) if fp else '?'} "
                    "(printed on every enrolment handout)")

        self.step("On the relay host: trust the organisation's public key.")
        self.relay_host("org", "trust", str(self.it_dir / f"{ORG}.pub.json"))

        self.step("Start the PACS the record gateway files into.")
        orthanc = _orthanc_binary()
        gateway_problem = _gateway_ready()
        self.filing = orthanc is not None and gateway_problem is None
        if orthanc is None:
            self.skip("Orthanc (Debian packages orthanc and orthanc-dicomweb) is not "
                      "installed; get it with `make system-deps` (as root). The gateway has "
                      "no local-folder mode, so filing is skipped; unfiled copies expire at "
                      f"the hard limit instead ({HARD_LIMIT} s here).")
        elif gateway_problem is not None:
            self.skip(f"lightbox-gateway is not ready ({gateway_problem}): filing is "
                      f"skipped; unfiled copies expire at the hard limit ({HARD_LIMIT} s here).")
        else:
            self.start_orthanc(orthanc)
            self.detail(f"Orthanc with DICOMweb on {self.orthanc_url}/dicom-web "
                        "(loopback only, password required)")

        self.step("Start the relay (blind: it only ever stores ciphertext).")
        self.start_relay()
        self.detail(f"relay on {self.relay_url}, embedded Postgres in "
                    f"{self.data / 'relay' / 'pg'}; copies expire {EXPIRY_GRACE} s after "
                    "filing (LIGHTBOX_EXPIRY_GRACE; 15 minutes by default)" if self.filing else
                    f"relay on {self.relay_url}; filing not required, unfiled copies expire "
                    f"after {HARD_LIMIT} s (LIGHTBOX_EXPIRY_HARD_LIMIT; 72 h by default)")

        self.step("On the relay host, beside the running relay: create an IT administrator.")
        self.relay_host("admin", "create", "--login", "it.admin")
        self.detail("administrator it.admin created (password stored as an Argon2id hash)")

        self.step("IT logs in and provisions the intern, the on-call orthopaedic specialist "
                  "and the record gateway's service account.")
        self.admin("login", "--server", self.relay_url, "--login", "it.admin")
        for p in self.cast():
            argv = ["user", "add", "--name", p.name, "--login", p.login, "--roles", p.roles,
                    "--no-qr"]
            if p.service:
                argv.append("--service")
            else:
                argv += ["--specialty", p.specialty, "--department", p.department,
                         "--licence-type", "MD", "--licence-number", f"DEMO-{p.login}",
                         "--jurisdiction", "UK", "--licence-expires", "2031-12-31"]
            _rc, out, _ = self.admin(*argv)
            code = re.search(r"enrolment code:\s+([0-9A-Z-]{24})", out)
            if code is None:
                raise DemoFailed(f"no enrolment code in the handout for {p.login}:\n{out}")
            p.code = code.group(1)
            self.detail(f"{p.name} ({p.login}, roles {p.roles.replace(';', ', ')}): "
                        "handout with a one-time enrolment code")

        self.step("Each enrols their own device with the code from their handout.")
        where_of = {"intern": "the intern's phone", "ortho": "the specialist's desktop",
                    "gateway": "the record gateway server"}
        for p in self.cast():
            where = where_of[p.key]
            p.home.mkdir(mode=0o700)
            _rc, out, _ = self.lightbox(p, "enroll", "--server", self.relay_url, "--code",
                                        p.code, "--kind", p.kind)
            self.detail(f"{where}: {out.splitlines()[0]}")

        film = self.data / "film.png"
        film.write_bytes(xray_film_png())
        self.step("Night shift: the intern photographs the x-ray film and captures the "
                  "patient's consent on the phone.")
        self.detail(f"the photo: {film} (a made-up wrist film; no EXIF, no GPS)")
        token = self.data / "intern-phone" / "consent.jws"
        _rc, out, _ = self.lightbox(
            intern, "consent", "capture", "--image", str(film), "--purpose", "direct_care",
            "--role", ONCALL_ROLE, "--decision", "agreed", "--statements-shown", "--yes",
            "--token-out", str(token))
        self.detail(out.strip())

        self.step("The intern sends it as an URGENT consult to the on-call orthopaedic "
                  "specialist (a role, not a name).")
        send = ["send", "--to", f"role:{ONCALL_ROLE}", "--urgent", "--image", str(film),
                "--consent-token", str(token), "--subject", "Wrist after a fall, bed 4",
                "--patient-name", PATIENT_NAME, "--patient-id", PATIENT_ID,
                "--birth-date", "1970-01-01", "--sex", "O", "--region", "wrist",
                "Displaced distal radius fracture? Please review."]
        rc, out, err = self.lightbox(intern, *send, ok=False)
        if rc != 0 and "filing_gateway_missing" in err and self.filing:
            self.detail(err.strip().splitlines()[-1])
            self.skip("the intern's client does not yet seal images to the record gateway "
                      "(clients/sdk is being finished), so the relay refuses to share it "
                      "without filing. Filing is skipped: the relay is restarted with filing "
                      f"optional for {ORG}, and unfiled copies expire at the hard limit "
                      f"({HARD_LIMIT} s here).")
            self.filing = False
            self.stop("gateway")
            self.stop("relay")
            self.start_relay()
            rc, out, err = self.lightbox(intern, *send, ok=False)
        if rc != 0:
            raise DemoFailed(f"`lightbox send` exited {rc}:\n{out}{err}")
        for line in err.splitlines():
            if line.startswith("warning:"):
                self.detail(line)
        self.detail(out.strip())
        self.detail(f"the patient's name and MRN ({PATIENT_NAME}, {PATIENT_ID}) travel only "
                    "inside the sealed body; the relay sees ciphertext")
        thread = re.search(r"in thread ([0-9a-f-]{36})", out)
        if thread is None:
            raise DemoFailed(f"no thread id in the send output:\n{out}")
        thread_id = thread.group(1)

        # The intern's phone stays online (to hear the reply, the receipt and the expiry).
        watch = self.start("intern-watch", [*_lightbox(), "watch"],
                           person=intern)

        self.step("The specialist's inbox shows the urgent consult.")
        _rc, out, _ = self.lightbox(ortho, "inbox")
        self.detail(out)
        if "URGENT" not in out:
            raise DemoFailed("the consult did not arrive as URGENT in the specialist's inbox")

        self.step("The specialist opens the desktop client (lightbox desktop), views the image, "
                  "replies and acknowledges.")
        desk = Desktop(self, ortho)
        desk.open()
        inbox = desk.get("/api/threads")["threads"]
        t = desk.get(f"/api/threads/{thread_id}")
        consult = next(m for m in t["messages"] if not m["mine"] and m["images"])
        first = inbox[0]
        self.detail(f"inbox, urgent first: {'URGENT ' if first['urgent'] else ''}"
                    f"\"{first['subject']}\" from {consult['sender']}, "
                    f"{first['unread']} unread, image attached")
        rec, consent = consult["record"] or {}, consult["consent"] or {}
        self.detail(f"patient (from the sealed body): {rec.get('patient_name')} - "
                    f"{rec.get('patient_id')}, {rec.get('region')}")
        self.detail(f"consent: {consent.get('decision')} for "
                    f"{', '.join(consent.get('purposes', []))}; may see it: role "
                    f"{', '.join(consent.get('roles', []))}")
        image = consult["images"][0]
        aid = image["attachment_id"]
        data = desk.raw(f"/api/images/{aid}")
        self.detail(f"image {aid[:8]}: {image['width']}x{image['height']}, {len(data)} bytes "
                    "decrypted in the client process (zoom, pan, window/level in the viewer)")
        desk.post(f"/api/threads/{thread_id}/read")
        desk.post(f"/api/threads/{thread_id}/reply", {
            "text": "Seen. Backslab and elevate; I will review in ED in 20 minutes.",
            "reply_to": consult["message_id"]})
        self.detail("reply sent: \"Seen. Backslab and elevate; I will review in ED in 20 "
                    "minutes.\"")
        desk.post(f"/api/messages/{consult['message_id']}/ack")
        self.detail("acknowledged: \"I'm on it\" (a signed receipt to the intern)")

        if self.filing:
            self.start_gateway()
            self.file_and_expire(desk, thread_id, aid)
        else:
            self.expire_unfiled(desk, thread_id, aid)

        self.step("On the intern's phone (lightbox watch), meanwhile:")
        self.detail(_tail(self.data / "intern-watch.log"))
        if self.alive("intern-watch", watch)() is not None:
            raise DemoFailed("the intern's `lightbox watch` stopped early; see "
                             f"{self.data / 'intern-watch.log'}")

        self.stop("intern-watch")
        self.stop("gateway")
        if not self.interactive:
            desk.close()
        self.step("On the relay host, IT checks the audit trail's hash chain "
                  "(lightbox-server audit verify).")
        _rc, out, _ = self.relay_host("audit", "verify")
        self.detail(out)
        if self.skipped:
            self.say("\nSkipped steps:")
            for s in self.skipped:
                self.say(f"  - {s}")
        if self.interactive:
            self.step("The specialist's desktop client is left running for you.")
            self.say(f"      Open {desk.launch_url}\n      (already unlocked; the password is "
                     f"{ortho.password}). Ctrl-C here stops everything.")
            with contextlib.suppress(KeyboardInterrupt):
                while desk.proc.poll() is None:
                    time.sleep(0.5)
        self.say("\nDemo complete: every step above ran against the real programs"
                 + (f"; {len(self.skipped)} skipped (listed above)." if self.skipped else "."))

    def start_gateway(self) -> None:
        gateway = self.people["gateway"]
        self.step("The record gateway comes online (lightbox-gateway); the image was "
                  "queued for it at the relay meanwhile.")
        pw = self.data / "orthanc" / "pacs-password"
        assert self.orthanc_auth is not None
        proc = self.start("gateway", [*_program("lightbox-gateway", "clients.gateway.cli"),
                                      "--retry-max", "5"], person=gateway,
                          LIGHTBOX_PACS_URL=f"{self.orthanc_url}/dicom-web",
                          LIGHTBOX_PACS_USERNAME=self.orthanc_auth[0],
                          LIGHTBOX_PACS_PASSWORD_FILE=str(pw), LOG_LEVEL="INFO")
        time.sleep(1.0)
        if proc.poll() is not None:
            raise DemoFailed(f"lightbox-gateway exited with {proc.returncode}; see "
                             f"{self.data / 'gateway.log'}")
        self.detail("every direct-care image is also sealed to it; it files each into the "
                    "PACS, reads it back, and reports the filing")

    def file_and_expire(self, desk: Desktop, thread_id: str, aid: str) -> None:
        self.step("The record gateway files the image into the PACS and the receipt "
                  "arrives in the thread.")
        gw = next(p for n, p in self.procs if n == "gateway")

        def filed() -> dict[str, Any] | None:
            t = desk.get(f"/api/threads/{thread_id}")
            receipt = next((m for m in t["messages"] if m["filing"]), None)
            img: dict[str, Any] = next((i for m in t["messages"] for i in m["images"]
                                        if i["attachment_id"] == aid), {})
            if receipt is None and not img.get("filed_at"):
                return None
            return dict(img, receipt=receipt)

        try:
            img = _wait("the gateway did not file the image", filed, self.timeout,
                        alive=self.alive("gateway", gw), every=0.5)
        except DemoFailed as exc:
            in_pacs = self.pacs_studies()
            self.detail(f"{exc}; the PACS {'holds' if in_pacs else 'does not hold'} a study "
                        f"for {PATIENT_ID}")
            self.skip(f"lightbox-gateway did not report a filing within {self.timeout:.0f} s "
                      f"(it is being finished; see {self.data / 'gateway.log'}): the filing "
                      "receipt and the expiry of copies after filing are skipped.")
            return
        receipt = img.get("receipt")
        if receipt is not None:
            self.detail(f"filing receipt from {receipt['sender']}: record reference "
                        f"{receipt['filing']['record_ref']}, study {receipt['filing']['study']}")
        if img.get("expires_at"):
            from clients.sdk.timefmt import format_time

            self.detail("the specialist's desktop shows \"Filed in the record\"; this copy "
                        "expires at "
                        f"{format_time(img['expires_at'])}")
        self.show_pacs()

        self.step(f"After the grace period ({EXPIRY_GRACE} s here) every device shreds its copy "
                  "and confirms; the relay deletes its ciphertext.")
        self.admin("copies", "--thread", thread_id)

        def destroyed() -> str | None:
            _rc, out, _ = self.admin("copies", "--thread", thread_id, show=False)
            return out if "every copy confirmed destroyed" in out else None

        out = _wait("not every copy was confirmed destroyed", destroyed, self.timeout,
                    every=1.0)
        self.detail(out)
        gone = desk.raw(f"/api/images/{aid}", expect=410)
        ref = json.loads(gone).get("record_ref")
        self.detail(f"the specialist's desktop now shows the record reference instead of the "
                    f"image: {ref}")

    def expire_unfiled(self, desk: Desktop, thread_id: str, aid: str) -> None:
        self.step(f"Not filed: at the hard limit ({HARD_LIMIT} s here) every device shreds its "
                  "copy and confirms; the relay deletes its ciphertext.")
        self.admin("copies", "--thread", thread_id)

        def destroyed() -> str | None:
            _rc, out, _ = self.admin("copies", "--thread", thread_id, show=False)
            return out if "every copy confirmed destroyed" in out else None

        out = _wait("not every copy was confirmed destroyed", destroyed,
                    self.timeout + HARD_LIMIT, every=1.0)
        self.detail(out)
        desk.raw(f"/api/images/{aid}", expect=410)
        self.detail("the specialist's desktop now shows that the image was deleted")

    def pacs_studies(self) -> list[dict[str, Any]]:
        """QIDO-RS: the studies the PACS holds for the demo patient."""
        if not self.orthanc_url or self.orthanc_auth is None:
            return []
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = httpx.get(f"{self.orthanc_url}/dicom-web/studies",
                          params={"PatientID": PATIENT_ID}, auth=self.orthanc_auth,
                          timeout=10, headers={"Accept": "application/dicom+json"})
            if r.status_code == 200:
                return list(r.json())
        return []

    def show_pacs(self) -> None:
        studies = self.pacs_studies()
        if not studies:
            raise DemoFailed(f"filed, but no study for {PATIENT_ID} in the PACS (QIDO-RS)")
        s = studies[0]
        name = s.get("00100010", {}).get("Value", [{}])[0].get("Alphabetic", "?")
        mods = s.get("00080061", {}).get("Value", [])
        self.detail(f"in the PACS (QIDO-RS): patient {name}, id {PATIENT_ID}, "
                    f"{len(studies)} study, modality {', '.join(mods) or '?'}")


class Desktop:
    """``lightbox desktop --no-browser`` for the specialist, driven through the same local web
    API its page uses: the launch address (session cookie), the CSRF token from the page."""

    def __init__(self, demo: Demo, person: Person) -> None:
        self.demo, self.person = demo, person
        self.launch_url = ""
        self.http: httpx.Client | None = None
        self.csrf = ""

    def open(self) -> None:
        self.demo.say("      $ lightbox desktop --no-browser")
        self.proc = self.demo.start("desktop", [*_lightbox(), "desktop",
                                                "--no-browser"], person=self.person,
                                    stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/\?k=\S+", line)
        if match is None:
            raise DemoFailed(f"lightbox desktop printed no address ({line!r}); see "
                             f"{self.demo.data / 'desktop.log'}")
        self.launch_url = match.group(0)
        self.http = httpx.Client(base_url=match.group(1), timeout=60)
        r = self.http.get(self.launch_url, follow_redirects=True)
        token = re.search(r'<meta name="csrf" content="([^"]+)"', r.text)
        if r.status_code != 200 or token is None:
            raise DemoFailed(f"the desktop page did not load ({r.status_code})")
        self.csrf = token.group(1)
        self.post("/api/unlock", {"password": self.person.password})
        state = self.get("/api/state")
        self.demo.detail(f"unlocked: {state['display_name']} ({', '.join(state['roles'])}), "
                         f"{'connected' if state.get('connected') else 'connecting'}")

    def get(self, path: str) -> Any:
        assert self.http is not None
        r = self.http.get(path)
        if r.status_code != 200:
            raise DemoFailed(f"desktop GET {path}: {r.status_code} {r.text[:200]}")
        return r.json()

    def raw(self, path: str, *, expect: int = 200) -> bytes:
        assert self.http is not None
        r = self.http.get(path)
        if r.status_code != expect:
            raise DemoFailed(f"desktop GET {path}: {r.status_code}, expected {expect}")
        return r.content

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        assert self.http is not None
        r = self.http.post(path, json=body or {}, headers={"X-CSRF-Token": self.csrf})
        if r.status_code != 200:
            raise DemoFailed(f"desktop POST {path}: {r.status_code} {r.text[:200]}")
        return r.json()

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        self.demo.stop("desktop")


def _tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(nothing)"
    keep = [x for x in text if x.strip()]
    return "\n".join(keep[-lines:]) or "(nothing)"


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so that everything started is stopped; Ctrl-C
    works even when the demo was started with SIGINT ignored (a background job)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.demo", description=__doc__.splitlines()[0]
                                if __doc__ else None)
    p.add_argument("--data-dir", default=os.environ.get("DEMO_DATA_DIR",
                                                        str(ROOT / ".data" / "demo")),
                   help="the demo's folder, deleted and made afresh (default .data/demo; "
                        "DEMO_DATA_DIR)")
    p.add_argument("--interactive", action="store_true",
                   default=os.environ.get("DEMO_INTERACTIVE", "") not in {"", "0"},
                   help="leave the specialist's desktop client running (DEMO_INTERACTIVE=1)")
    p.add_argument("--strict", action="store_true",
                   default=os.environ.get("DEMO_STRICT", "") not in {"", "0"},
                   help="exit 1 when any step had to be skipped (DEMO_STRICT=1)")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("DEMO_TIMEOUT", "60")),
                   help="seconds to wait for filing and for every copy to expire")
    args = p.parse_args(argv)
    demo = Demo(Path(args.data_dir), interactive=args.interactive, timeout=args.timeout,
                out=sys.stdout)
    code = 0
    with _terminate_as_interrupt():
        try:
            demo.fresh_folder()
            demo.play()
        except KeyboardInterrupt:
            demo.say("\nInterrupted.")
            code = 130
        except DemoFailed as exc:
            demo.say(f"\nDEMO FAILED: {exc}")
            code = 1
        finally:
            demo.say("\nStopping everything the demo started.")
            demo.stop_all()
    if code == 0 and args.strict and demo.skipped:
        demo.say(f"{len(demo.skipped)} steps skipped: exit status 1 (--strict)")
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
