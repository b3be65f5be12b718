"""``lightbox-phone`` serves the built app (never the relay) with a strict Content-Security-
Policy whose ``connect-src`` names only the relay, Subresource Integrity on the page's script
and style, and the bundle's SHA-256, which a second build reproduces byte for byte."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from clients.phone.serve import PhoneConfig, bundle_sha256, main, make_app
from tests.phone.node import PHONE, build, node

RELAY = "https://relay.example.org:8443"


@pytest.fixture(scope="module")
def dist() -> Path:
    return build().parent / "dist"


async def test_every_answer_carries_the_csp_naming_only_the_relay(dist: Path) -> None:
    app = make_app(PhoneConfig(RELAY), dist)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://phone.test") as http:
        for path in ("/", "/app.js", "/worker.js", "/app.css", "/config.json", "/nope.js"):
            r = await http.get(path)
            csp = r.headers["content-security-policy"]
            directives = dict(d.split(" ", 1) for d in csp.split("; "))
            assert directives["default-src"] == "'none'"
            assert directives["script-src"] == "'self' 'wasm-unsafe-eval'"
            assert directives["connect-src"] == f"'self' {RELAY} wss://relay.example.org:8443"
            assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
        assert (await http.get("/nope.js")).status_code == 404
        assert (await http.get("/../serve.py")).status_code == 404
        config = (await http.get("/config.json")).json()
        assert config == {"relay": RELAY, "kdf": "interactive", "autolock_seconds": 120}
        page = await http.get("/")
        assert page.headers["cache-control"] == "no-store"
        assert "<script>" not in page.text and "style=" not in page.text
        for name in ("app.js", "app.css"):
            digest = base64.b64encode(hashlib.sha384((dist / name).read_bytes()).digest())
            assert re.search(rf'"{name}" integrity="sha384-{re.escape(digest.decode())}"',
                             page.text), name
        manifest = await http.get("/MANIFEST.sha256")
        assert hashlib.sha256(manifest.content).hexdigest() == bundle_sha256(dist)


def test_a_relay_that_is_not_an_origin_is_refused_with_a_sentence(
        capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("relay.example.org", "https://relay.example.org/v1", "ftp://relay"):
        assert main(["--relay", bad]) == 2
        assert "--relay must be the relay's origin" in capsys.readouterr().err


async def test_the_csp_adds_only_the_idps_origin_and_the_callback_page_has_sri(
        dist: Path) -> None:
    idp = "https://login.example.org/tenant-1/v2.0"
    app = make_app(PhoneConfig(RELAY, idps=(idp, idp + "/other")), dist)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://phone.test") as http:
        for path in ("/", "/worker.js", "/sso-callback.html", "/sso-callback.js"):
            r = await http.get(path)
            assert r.status_code == 200, path
            directives = dict(d.split(" ", 1) for d in
                              r.headers["content-security-policy"].split("; "))
            assert directives["connect-src"] == (
                f"'self' {RELAY} wss://relay.example.org:8443 https://login.example.org")
            assert directives["form-action"] == "'none'"
        page = (await http.get("/sso-callback.html")).text
        assert "<script>" not in page and "style=" not in page
        digest = base64.b64encode(hashlib.sha384((dist / "sso-callback.js").read_bytes())
                                  .digest()).decode()
        assert f'"sso-callback.js" integrity="sha384-{digest}"' in page


def test_an_idp_that_is_not_an_issuer_url_is_refused_with_a_sentence(
        capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("login.example.org", "http://login.example.org", "https://idp/?tenant=1",
                "https://idp/#x"):
        assert main(["--relay", RELAY, "--idp", bad]) == 2
        assert "--idp must be the identity provider's issuer URL" in capsys.readouterr().err


def test_an_unbuilt_app_is_refused_with_a_sentence(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--relay", RELAY, "--dist", str(tmp_path)]) == 2
    assert "holds no built phone app: run make install" in capsys.readouterr().err


def test_the_build_is_reproducible_and_prints_the_bundle_sha256(dist: Path,
                                                                tmp_path: Path) -> None:
    first = bundle_sha256(dist)
    copy = tmp_path / "phone"
    def outputs(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(folder) == PHONE and n in ("dist", "dist-test")]

    shutil.copytree(PHONE, copy, ignore=outputs, symlinks=True)
    done = subprocess.run([node(), "build.mjs"], cwd=copy, capture_output=True, text=True,
                          timeout=120, check=True)
    assert f"phone app bundle sha256 {first}" in done.stdout
    assert (copy / "dist" / "MANIFEST.sha256").read_bytes() == (dist / "MANIFEST.sha256"
                                                                 ).read_bytes()
