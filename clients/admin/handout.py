"""Enrolment handouts: on the terminal, and per user a printable PDF and a PNG for screens.

A handout gives a clinician everything the first enrolment needs (docs/USER_GUIDE.md,
"Handouts"): their name and login, the relay's address, the phone app's address (IT's
``LIGHTBOX_PHONE_APP``: the relay never serves the app, docs/SECURITY.md "Who serves the phone
app", so its address cannot be derived from the relay's), the enrolment code as text, when it
expires, the organisation key's fingerprint to compare with what the device pins, a QR code of
``lightbox://enrol?server=<url>&code=<code>``, and the exact first command. The PDF (one A4
page, fpdf2 with DejaVu like the consent form) and the PNG (Pillow, 150 dpi) come from one
layout, so they show the same thing.

A handout carries a secret (the enrolment code opens the user's identity key until it
expires): files are written 0600 in a 0700 folder and should be printed and deleted.

Exceptions::

    HandoutError    the handouts cannot be written (``str()``: one sentence for IT)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol, TextIO
from urllib.parse import quote, urlsplit

import segno
from PIL import Image, ImageDraw, ImageFont

from clients.sdk.consent_pdf import font_path
from clients.sdk.keystore import write_private_file

__all__ = [
    "EXPIRED_NOTE",
    "FINGERPRINT_NOTE",
    "GATEWAY_NOTE",
    "INVALID_NOTE",
    "PHONE_APP_RULE",
    "Handout",
    "HandoutError",
    "HandoutFiles",
    "enrol_uri",
    "expiry_text",
    "phone_app_address",
    "prepare_directory",
    "print_handout",
    "render_handout_pdf",
    "render_handout_png",
    "save_handout",
]

FINGERPRINT_NOTE: Final = (
    "Compare the key: when you enrol, lightbox prints \"key fingerprint ...\"; it must match "
    "the organisation key above character for character. If it does not, stop and call IT.")
EXPIRED_NOTE: Final = (
    "Code expired (lightbox says enrolment_code_expired)? Do not try again: ask IT for a new "
    "enrolment code. A code works once.")
INVALID_NOTE: Final = (
    "Code refused as invalid (lightbox says enrolment_code_invalid)? Check it is typed as "
    "printed. IT may have replaced this handout with a newer one: only the newest code works, "
    "so ask IT for the newest handout.")
CONFIDENTIAL_NOTE: Final = (
    "Personal and confidential. The code opens your Lightbox identity: keep it to yourself and "
    "destroy this sheet once you have enrolled.")
GATEWAY_NOTE: Final = (
    "This is the record gateway's service account: enrol it on the gateway host (the server "
    "that runs lightbox-gateway), never on a phone. Type this first command there, on one "
    "line:")
PNG_DPI: Final = 150
_NBSP: Final = "\u00a0"
_PAGE_W, _PAGE_H, _MARGIN = 210.0, 297.0, 20.0  # A4, in millimetres
_PT: Final = 25.4 / 72  # millimetres per point
# Faces by role, DejaVu from Debian's fonts-dejavu-core (the consent form's font).
_FACES: Final = {"regular": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf",
                 "mono": "DejaVuSansMono.ttf", "mono-bold": "DejaVuSansMono-Bold.ttf"}


class HandoutError(Exception):
    """The handouts cannot be written; the message is one sentence for IT."""


@dataclasses.dataclass(frozen=True, slots=True)
class Handout:
    """What one user's handout says. ``expires_at``: the code's expiry (Unix seconds)."""

    name: str
    login: str
    server: str
    code: str
    expires_at: int
    org_fingerprint: str
    gateway: bool = False  # a service account: the record gateway, enrolled on its host
    phone_app: str = ""  # where a phone's browser opens the app (:func:`phone_app_address`)

    def uri(self) -> str:
        return enrol_uri(self.server, self.code)

    def first_command(self, *, keep: str = " ") -> str:
        """The first command to type; ``keep`` joins each option to its value (a no-break
        space keeps them on one line when the sheet wraps the command). The record gateway's
        is docs/USER_GUIDE.md "The record gateway" §2: ``--kind gateway`` puts the device in
        the profile ``lightbox-gateway`` reads."""
        kind = f" --kind{keep}gateway" if self.gateway else ""
        return (f"lightbox{keep}enroll{kind} --server{keep}{self.server} "
                f"--code{keep}{self.code}")

    @property
    def where(self) -> str:
        """Where the first command is typed."""
        return "on the gateway host" if self.gateway else "on the phone"


@dataclasses.dataclass(frozen=True, slots=True)
class HandoutFiles:
    pdf: Path
    png: Path


PHONE_APP_RULE: Final = ("LIGHTBOX_PHONE_APP must be the phone app's https address, such as "
                         "https://phone.example.org")
# http only on the loopback, for a test: the rule lightbox-phone applies to the addresses it
# names (clients/phone/serve.py).
_LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def web_origin(address: str) -> str:
    """The web origin of an address :func:`phone_app_address` accepted, as a browser sends it
    (RFC 6454 §6.2: scheme, host and a port other than the scheme's default)."""
    parts = urlsplit(address)
    port = parts.port
    default = {"https": 443, "http": 80}[parts.scheme]
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def phone_app_address(environ: Mapping[str, str] = os.environ) -> str:
    """The phone app's address for the handouts: ``LIGHTBOX_PHONE_APP`` on IT's workstation
    (such as ``https://phone.example.org``, one of the relay's ``LIGHTBOX_PHONE_ORIGINS``,
    docs/OPERATIONS.md); empty when unset, and the handout then names none. Anything but an
    absolute https URL (http for localhost) raises HandoutError (:data:`PHONE_APP_RULE`):
    a phone's browser could not open it from the handout."""
    address = environ.get("LIGHTBOX_PHONE_APP", "").strip().rstrip("/")
    if not address:
        return ""
    try:
        parts = urlsplit(address)
        host = parts.hostname
        parts.port  # noqa: B018 - a port that is not a number raises ValueError
    except ValueError:
        raise HandoutError(PHONE_APP_RULE) from None
    if (not host or any(c.isspace() for c in address) or parts.username is not None
            or parts.query or parts.fragment
            or not (parts.scheme == "https"
                    or (parts.scheme == "http" and host in _LOOPBACK_HOSTS))):
        raise HandoutError(PHONE_APP_RULE)
    return address


def enrol_uri(server: str, code: str) -> str:
    return f"lightbox://enrol?server={quote(server, safe='')}&code={quote(code, safe='-')}"


def expiry_text(expires_at: int, tz: dt.tzinfo | None = None) -> str:
    """``2026-12-06 14:05 CET (UTC+01:00)``: ISO-like date, 24-hour time, the zone (``tz``,
    default this computer's local zone), its offset unless the zone is UTC itself."""
    t = dt.datetime.fromtimestamp(expires_at, dt.UTC).astimezone(tz)
    offset = t.utcoffset() or dt.timedelta(0)
    name = t.tzname() or ""
    if not offset and name in {"UTC", "GMT", ""}:
        return f"{t:%Y-%m-%d %H:%M} UTC"
    sign = "-" if offset < dt.timedelta(0) else "+"
    hours, minutes = divmod(abs(int(offset.total_seconds())) // 60, 60)
    zone = f"UTC{sign}{hours:02d}:{minutes:02d}"
    if not name or name[0] in "+-":  # a zone without an abbreviation names its offset
        return f"{t:%Y-%m-%d %H:%M} {zone}"
    return f"{t:%Y-%m-%d %H:%M} {name} ({zone})"


def print_handout(out: TextIO, handout: Handout, *, qr: bool = True,
                  tz: dt.tzinfo | None = None) -> None:
    """Write a handout to ``out`` (IT's terminal)."""
    h = handout
    print(f"--- Lightbox enrolment: {h.name} ({h.login}) ---", file=out)
    print(f"  server:           {h.server}", file=out)
    if h.phone_app and not h.gateway:
        print(f"  phone app:        {h.phone_app}", file=out)
    print(f"  enrolment code:   {h.code}", file=out)
    print(f"  valid until:      {expiry_text(h.expires_at, tz)} (single use)", file=out)
    print(f"  organisation key: {h.org_fingerprint}", file=out)
    print(f"  {h.where + ':':<17} {h.first_command()}", file=out)
    if qr and not h.gateway:  # the QR code enrols a phone (the app): never the gateway
        buf = io.StringIO()
        segno.make(h.uri(), error="m").terminal(out=buf, compact=True)
        out.write(buf.getvalue())
    out.flush()


# --- one layout, two renderers ----------------------------------------------------------------


class _Canvas(Protocol):
    """Where the layout draws; coordinates in millimetres from the page's top left."""

    def measure(self, text: str, face: str, size: float) -> float: ...

    def text(self, x: float, baseline: float, text: str, face: str, size: float) -> None: ...

    def rule(self, x: float, y: float, width: float) -> None: ...

    def qr(self, x: float, y: float, size: float, matrix: Sequence[Sequence[int]]) -> None: ...


def _wrap(canvas: _Canvas, text: str, face: str, size: float, width: float) -> list[str]:
    """Greedy word wrap at spaces (not at no-break spaces); a word wider than the line (a long
    URL) is broken between letters."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if canvas.measure(candidate, face, size) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for ch in word:
            if line and canvas.measure(line + ch, face, size) > width:
                lines.append(line)
                line = ""
            line += ch
    lines.append(line)
    return lines


def _layout(canvas: _Canvas, h: Handout, tz: dt.tzinfo | None, scale: float = 1.0) -> float:
    """Draw the handout; returns the y (mm) below the last thing drawn."""
    left, width = _MARGIN, _PAGE_W - 2 * _MARGIN
    y = _MARGIN

    def para(text: str, face: str, size: float, *, x: float = left, w: float = width,
             after: float = 0.0) -> None:
        nonlocal y
        step = size * scale * _PT * 1.35
        for line in _wrap(canvas, text, face, size * scale, w):
            y += step
            canvas.text(x, y - step * 0.25, line.replace(_NBSP, " "), face, size * scale)
        y += after

    para("Lightbox enrolment", "bold", 22, after=1.5)
    para(f"for {h.name}", "bold", 14, after=1.5)
    para(CONFIDENTIAL_NOTE, "regular", 10, after=3)
    canvas.rule(left, y, width)
    y += 4
    label_w = 52.0
    fields = [("Name", h.name, "regular", 12.0),
              ("Login", h.login, "mono-bold", 12.0),
              ("Relay address", h.server, "mono", 11.0),
              *([("Phone app", h.phone_app, "mono", 11.0)]
                if h.phone_app and not h.gateway else []),
              ("Enrolment code", h.code, "mono-bold", 15.0),
              ("Valid until", f"{expiry_text(h.expires_at, tz)}, single use", "regular", 12.0),
              ("Organisation key", h.org_fingerprint, "mono-bold", 12.0)]
    for label, value, face, size in fields:
        top = y
        para(value, face, size, x=left + label_w, w=width - label_w)
        canvas.text(left, top + size * scale * _PT * 1.35 * 0.75, label, "bold", 11 * scale)
        y += 2.5
    if h.gateway:  # no QR code: the app would enrol the account as a phone
        y += 4
        para(GATEWAY_NOTE, "regular", 11, after=1.5)
    else:
        side = 62.0 * scale
        qr = segno.make(h.uri(), error="m")
        quiet = 4 * side / len(qr.matrix)  # the quiet zone scanners need (ISO/IEC 18004)
        y += quiet
        canvas.qr(left + (width - side) / 2, y, side, [list(row) for row in qr.matrix])
        y += side + quiet
        opened = ("Open the phone app's address above in your phone's browser and scan the "
                  "QR code with it" if h.phone_app else "Scan the QR code with the Lightbox app")
        para(f"{opened}, or type this first command on your phone, on one line:", "regular",
             11, after=1.5)
    para(h.first_command(keep=_NBSP), "mono-bold", 11, x=left + 4, w=width - 4, after=4)
    canvas.rule(left, y, width)
    y += 2
    para(FINGERPRINT_NOTE, "regular", 10, after=1.5)
    para(EXPIRED_NOTE, "regular", 10, after=1.5)
    para(INVALID_NOTE, "regular", 10)
    return y


class _PdfCanvas:
    def __init__(self) -> None:
        from fpdf import FPDF  # a client-only dependency; imported where it is used

        self.pdf = FPDF(format="A4", unit="mm")
        self.pdf.set_auto_page_break(False)
        self.pdf.set_title("Lightbox enrolment handout")
        self.families: dict[str, tuple[str, str]] = {}
        for face, file in _FACES.items():
            path = font_path(file)
            if path is None:  # the PDF core fonts, Latin-1 only
                core = "Courier" if face.startswith("mono") else "Helvetica"
                self.families[face] = (core, "B" if face.endswith("bold") else "")
            else:
                self.pdf.add_font(face, "", str(path))
                self.families[face] = (face, "")
        self.pdf.add_page()

    def _font(self, face: str, size: float) -> str:
        family, style = self.families[face]
        self.pdf.set_font(family, style, size)
        return family

    def _clean(self, family: str, text: str) -> str:
        if family in {"Courier", "Helvetica"}:
            return text.encode("latin-1", "replace").decode("latin-1")
        return text

    def measure(self, text: str, face: str, size: float) -> float:
        family = self._font(face, size)
        return float(self.pdf.get_string_width(self._clean(family, text)))

    def text(self, x: float, baseline: float, text: str, face: str, size: float) -> None:
        family = self._font(face, size)
        self.pdf.text(x, baseline, self._clean(family, text))

    def rule(self, x: float, y: float, width: float) -> None:
        self.pdf.set_line_width(0.3)
        self.pdf.line(x, y, x + width, y)

    def qr(self, x: float, y: float, size: float, matrix: Sequence[Sequence[int]]) -> None:
        module = size / len(matrix)
        self.pdf.set_fill_color(0)
        for r, row in enumerate(matrix):  # one rectangle per run of dark modules
            c = 0
            while c < len(row):
                if row[c]:
                    start = c
                    while c < len(row) and row[c]:
                        c += 1
                    self.pdf.rect(x + start * module, y + r * module, (c - start) * module,
                                  module, style="F")
                else:
                    c += 1


class _PngCanvas:
    def __init__(self) -> None:
        self.px = PNG_DPI / 25.4  # pixels per millimetre
        self.image = Image.new("L", (round(_PAGE_W * self.px), round(_PAGE_H * self.px)), 255)
        self.draw = ImageDraw.Draw(self.image)
        self._fonts: dict[tuple[str, float], ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}

    def _font(self, face: str, size: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        key = (face, size)
        if key not in self._fonts:
            px = size * _PT * self.px
            path = font_path(_FACES[face])
            self._fonts[key] = (ImageFont.load_default(px) if path is None
                                else ImageFont.truetype(str(path), round(px)))
        return self._fonts[key]

    def measure(self, text: str, face: str, size: float) -> float:
        return float(self.draw.textlength(text, font=self._font(face, size))) / self.px

    def text(self, x: float, baseline: float, text: str, face: str, size: float) -> None:
        self.draw.text((x * self.px, baseline * self.px), text, fill=0,
                       font=self._font(face, size), anchor="ls")

    def rule(self, x: float, y: float, width: float) -> None:
        self.draw.line([(x * self.px, y * self.px), ((x + width) * self.px, y * self.px)],
                       fill=0, width=max(1, round(0.3 * self.px)))

    def qr(self, x: float, y: float, size: float, matrix: Sequence[Sequence[int]]) -> None:
        module = max(1, int(size * self.px) // len(matrix))  # whole pixels: crisp edges
        x0 = round(x * self.px + (size * self.px - module * len(matrix)) / 2)
        y0 = round(y * self.px)
        for r, row in enumerate(matrix):
            for c, dark in enumerate(row):
                if dark:
                    self.draw.rectangle([x0 + c * module, y0 + r * module,
                                         x0 + (c + 1) * module - 1, y0 + (r + 1) * module - 1],
                                        fill=0)


def render_handout_pdf(h: Handout, *, tz: dt.tzinfo | None = None) -> bytes:
    """The handout as a one-page A4 PDF (type shrinks until a long name or address fits)."""
    for scale in (1.0, 0.9, 0.8, 0.7, 0.6):
        canvas = _PdfCanvas()
        if _layout(canvas, h, tz, scale) <= _PAGE_H - _MARGIN / 2:
            return bytes(canvas.pdf.output())
    raise HandoutError(f"the handout for {h.login} does not fit on one page")


def render_handout_png(h: Handout, *, tz: dt.tzinfo | None = None) -> bytes:
    """The handout as a PNG for screens (150 dpi, cropped below the last line)."""
    canvas = _PngCanvas()
    bottom = min(_PAGE_H, _layout(canvas, h, tz) + _MARGIN / 2)
    out = io.BytesIO()
    canvas.image.crop((0, 0, canvas.image.width, round(bottom * canvas.px))).save(
        out, format="PNG", optimize=True, dpi=(PNG_DPI, PNG_DPI))
    return out.getvalue()


def _why(exc: OSError) -> str:
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return "that path, or one above it, is a file, not a folder"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return (exc.strerror or type(exc).__name__).lower()


def prepare_directory(directory: Path) -> Path:
    """Create ``directory`` (0700) if needed and check that files can be written in it, before
    any user is provisioned. Raises HandoutError with one sentence."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = directory / f".handout-probe-{os.getpid()}"
        write_private_file(probe, b"")
        probe.unlink()
    except OSError as exc:
        raise HandoutError(f"cannot write handouts in {directory}: {_why(exc)}") from None
    return directory


def save_handout(directory: Path, h: Handout, *, tz: dt.tzinfo | None = None) -> HandoutFiles:
    """``<directory>/<login>.pdf`` and ``<login>.png``, mode 0600. Raises HandoutError."""
    files = HandoutFiles(pdf=directory / f"{h.login}.pdf", png=directory / f"{h.login}.png")
    try:
        write_private_file(files.pdf, render_handout_pdf(h, tz=tz))
        write_private_file(files.png, render_handout_png(h, tz=tz))
    except OSError as exc:
        raise HandoutError(f"cannot write the handout for {h.login} in {directory}: "
                           f"{_why(exc)}") from None
    return files
