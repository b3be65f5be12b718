"""Enrolment handouts: the code as text, a QR code in the terminal, and a PNG per user.

The QR code encodes ``lightbox://enrol?server=<url>&code=<code>`` so a phone can enrol by
scanning it. A handout carries a secret (the enrolment code opens the user's identity key for
72 hours by default): files are written 0600 and should be printed and deleted.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

import segno

__all__ = ["enrol_uri", "print_handout", "save_handout_png"]


def enrol_uri(server: str, code: str) -> str:
    return f"lightbox://enrol?server={quote(server, safe='')}&code={quote(code, safe='-')}"


def print_handout(
    out: TextIO, *, name: str, login: str, code: str, server: str, expires_at: int,
    org_fingerprint: str, qr: bool = True,
) -> None:
    """Write a handout to ``out`` (the terminal)."""
    until = dt.datetime.fromtimestamp(expires_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"--- Lightbox enrolment: {name} ({login}) ---", file=out)
    print(f"  server:           {server}", file=out)
    print(f"  enrolment code:   {code}", file=out)
    print(f"  valid until:      {until} (single use)", file=out)
    print(f"  organisation key: {org_fingerprint}", file=out)
    print(f"  on the phone:     lightbox enroll --server {server} --code {code}", file=out)
    if qr:
        buf = io.StringIO()
        segno.make(enrol_uri(server, code), error="m").terminal(out=buf, compact=True)
        out.write(buf.getvalue())
    out.flush()


def save_handout_png(directory: Path, login: str, server: str, code: str) -> Path:
    """``<directory>/<login>.png``, mode 0600: the QR code of :func:`enrol_uri`."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{login}.png"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as f:
        segno.make(enrol_uri(server, code), error="m").save(f, kind="png", scale=6, border=4)
    return path
