"""The phone app is served from its own origin (docs/SECURITY.md "Who serves the phone app"):
the relay lets browsers call its HTTP API from the origins LIGHTBOX_PHONE_ORIGINS names, with
the headers a device request carries (Authorization, Lightbox-Proof), and from no other."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import SettingsError, load_settings
from tests.identity_world import identity_world

PHONE = "http://127.0.0.1:8700"


def test_phone_origins_are_parsed_and_malformed_ones_refused_naming_the_variable() -> None:
    s = load_settings({"LIGHTBOX_PHONE_ORIGINS": f" {PHONE}, https://phone.example.org "})
    assert s.phone_origin_list == (PHONE, "https://phone.example.org")
    assert load_settings({}).phone_origin_list == ()
    for bad in ("phone.example.org", "https://phone.example.org/", "ftp://x", "*",
                "https://phone.example.org/app"):
        with pytest.raises(SettingsError, match="LIGHTBOX_PHONE_ORIGINS"):
            load_settings({"LIGHTBOX_PHONE_ORIGINS": bad})


async def test_a_preflight_from_the_phone_origin_is_allowed_with_the_proof_header(
        db_dsn: str, tmp_path: Path) -> None:
    async with identity_world(db_dsn, tmp_path, phone_origins=PHONE) as world:
        r = await world.http.options("/v1/threads", headers={
            "origin": PHONE, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, lightbox-proof, content-type"})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == PHONE
        allowed = r.headers["access-control-allow-headers"].lower()
        assert "lightbox-proof" in allowed and "authorization" in allowed
        r = await world.http.get("/healthz", headers={"origin": PHONE})
        assert r.headers["access-control-allow-origin"] == PHONE
        r = await world.http.options("/v1/threads", headers={
            "origin": "http://evil.example", "access-control-request-method": "POST"})
        assert r.status_code == 400
        assert "access-control-allow-origin" not in r.headers
        r = await world.http.get("/healthz", headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_a_relay_without_phone_origins_answers_no_browser_from_elsewhere(
        db_dsn: str, tmp_path: Path) -> None:
    async with identity_world(db_dsn, tmp_path) as world:
        r = await world.http.get("/healthz", headers={"origin": PHONE})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
