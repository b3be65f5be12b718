"""``lightbox-phone``: serves the built phone app (``clients/phone/dist``), never the relay.

Why a process of its own (docs/SECURITY.md "Who serves the phone app"): whoever serves a web
app's code can change it to read what it shows, so the relay, which must stay blind, never
serves it. This server only hands out static files that IT can pin by their SHA-256:

* a strict Content-Security-Policy (CSP Level 3): scripts, styles, workers and the manifest from
  this origin only, no inline script or style, ``wasm-unsafe-eval`` for libsodium's WebAssembly
  (it allows compiling WebAssembly, not ``eval`` of JavaScript), ``connect-src`` this origin
  (``config.json``) and the relay alone (HTTP and websocket), and, for an organisation that
  signs in with its identity provider, that IdP's origin (``--idp``: its discovery document and
  token endpoint, where the app exchanges the sign-in's code, docs/SECURITY.md "On the phone"),
  no framing, no forms, no base URI;
* Subresource Integrity (W3C SRI) on the page's script and style, written by the build;
* ``nosniff``, no referrer, ``no-store`` on the page and ``config.json``, camera allowed to
  this origin only (Permissions-Policy);
* the bundle's SHA-256 (SHA-256 of ``MANIFEST.sha256``, which lists every file's SHA-256) is
  printed at start and served at ``/MANIFEST.sha256``, the same value ``node build.mjs``
  prints, so a reproducible build can be checked against what is served.

    lightbox-phone --relay https://relay.example.org [--idp https://login.example.org/tenant]
                   [--host 127.0.0.1] [--port 8443]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

__all__ = ["DIST", "PhoneConfig", "bundle_sha256", "content_security_policy", "main",
           "make_app"]

DIST: Final = Path(__file__).with_name("dist")
_TYPES: Final = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                 ".webmanifest": "application/manifest+json", ".sha256": "text/plain"}
_FILES: Final = ("index.html", "app.js", "worker.js", "sw.js", "app.css",
                 "manifest.webmanifest", "icon.svg", "MANIFEST.sha256", "sso-callback.html",
                 "sso-callback.js")


class PhoneConfig:
    """What the app is told at start (``/config.json``): the relay's URL, the vault's Argon2id
    profile (``cheap`` only for tests) and the inactivity before it locks itself. ``idps``:
    the issuers of the organisations' identity providers the app may call (their origins go
    into ``connect-src``)."""

    def __init__(self, relay: str, *, kdf: str = "interactive", autolock_seconds: int = 120,
                 idps: tuple[str, ...] = ()):
        parts = urlsplit(relay)
        if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path.strip("/") \
                or parts.query or parts.fragment:
            raise ValueError(f"--relay must be the relay's origin, like https://relay.example.org"
                             f" (got {relay!r})")
        self.idp_origins: tuple[str, ...] = tuple(dict.fromkeys(_idp_origin(i) for i in idps))
        if kdf not in {"interactive", "cheap"}:
            raise ValueError("kdf must be interactive or cheap")
        if not 10 <= autolock_seconds <= 3600:
            raise ValueError("--autolock must be between 10 and 3600 seconds")
        self.relay = f"{parts.scheme}://{parts.netloc}"
        self.kdf = kdf
        self.autolock_seconds = autolock_seconds

    @property
    def relay_ws(self) -> str:
        return self.relay.replace("http", "ws", 1)


def _idp_origin(issuer: str) -> str:
    """The origin of an IdP's issuer URL (OpenID Connect Discovery 1.0 §4: https, no query or
    fragment; http only on the loopback, for tests)."""
    parts = urlsplit(issuer)
    loopback = parts.hostname in {"127.0.0.1", "localhost", "::1"}
    if not parts.netloc or parts.query or parts.fragment or not (
            parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise ValueError(f"--idp must be the identity provider's issuer URL, like "
                         f"https://login.example.org/tenant (got {issuer!r})")
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(config: PhoneConfig) -> str:
    return "; ".join([
        "default-src 'none'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "worker-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "media-src 'self' blob: mediastream:",
        " ".join(["connect-src 'self'", config.relay, config.relay_ws, *config.idp_origins]),
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


def bundle_sha256(dist: Path = DIST) -> str:
    """SHA-256 of the build's MANIFEST.sha256: one value pins every file of the bundle."""
    return hashlib.sha256((dist / "MANIFEST.sha256").read_bytes()).hexdigest()


def make_app(config: PhoneConfig, dist: Path = DIST) -> Starlette:
    if not (dist / "index.html").is_file() or not (dist / "MANIFEST.sha256").is_file():
        raise FileNotFoundError(f"{dist} holds no built phone app: run make install "
                                "(npm ci and node build.mjs in clients/phone)")
    headers = {
        "content-security-policy": content_security_policy(config),
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "permissions-policy": "camera=(self), microphone=(), geolocation=()",
        "cross-origin-opener-policy": "same-origin",
        "x-frame-options": "DENY",
    }

    def secured(response: Response, *, no_store: bool) -> Response:
        response.headers.update(headers)
        response.headers["cache-control"] = "no-store" if no_store else "no-cache"
        return response

    async def page(request: Request) -> Response:
        return secured(FileResponse(dist / "index.html", media_type=_TYPES[".html"]),
                       no_store=True)

    async def config_json(request: Request) -> Response:
        return secured(JSONResponse({"relay": config.relay, "kdf": config.kdf,
                                     "autolock_seconds": config.autolock_seconds}),
                       no_store=True)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _FILES:
            return secured(PlainTextResponse("not found", status_code=404), no_store=True)
        return secured(FileResponse(dist / name, media_type=_TYPES[Path(name).suffix]),
                       no_store=False)

    return Starlette(routes=[
        Route("/", page),
        Route("/config.json", config_json),
        Route("/{name:str}", static),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lightbox-phone", description="Serve the Lightbox phone app (never the relay).")
    parser.add_argument("--relay", required=True, help="the relay's origin, https://host[:port]")
    parser.add_argument("--idp", action="append", default=[], metavar="ISSUER",
                        help="the issuer URL of an organisation's identity provider (single "
                             "sign-on); repeat for several")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--dist", type=Path, default=DIST,
                        help="the built app (default: %(default)s)")
    parser.add_argument("--autolock", type=int, default=120,
                        help="seconds of inactivity before the app locks itself")
    parser.add_argument("--insecure-fast-kdf", action="store_true",
                        help="tests only: the cheapest Argon2id for the phone's vault")
    args = parser.parse_args(argv)
    try:
        config = PhoneConfig(args.relay, kdf="cheap" if args.insecure_fast_kdf else "interactive",
                             autolock_seconds=args.autolock, idps=tuple(args.idp))
        app = make_app(config, args.dist)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"phone app bundle sha256 {bundle_sha256(args.dist)}")
    print(f"serving the phone app on http://{args.host}:{args.port}/ for the relay {config.relay}")
    print(json.dumps({"content-security-policy": content_security_policy(config)}))
    sys.stdout.flush()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
