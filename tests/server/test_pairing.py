"""Linking a second device to an enrolled one (server/enrolment.py, pairing)."""

from __future__ import annotations

import hashlib
import secrets

import httpx

from protocol.canonical import b64url_encode
from protocol.certs import DeviceCertificate, issue_device_certificate
from protocol.keys import DeviceKeys
from protocol.model import DeviceKind
from tests.identity_world import DAY, Device, World
from tests.server.test_http_edge import assert_problem


def _offer(device: Device) -> tuple[bytes, dict[str, object]]:
    token = secrets.token_bytes(32)
    return token, {
        "pairing_token_hash": b64url_encode(hashlib.sha256(token).digest()),
        "keys": {"device_id": device.device_id, "kind": device.kind.value,
                 "signing_key": b64url_encode(device.keys.signing.public),
                 "dh_key": b64url_encode(device.keys.dh.public)},
        "mac": b64url_encode(secrets.token_bytes(32))}


async def pair(world: World, enrolled: Device, kind: DeviceKind,
               new: Device | None = None) -> httpx.Response:
    """Offer a new device, certify it from ``enrolled``; the certify response."""
    new = new or enrolled.user.device(kind)
    _token, offer = _offer(new)
    assert (await world.http.post("/v1/pairing", json=offer)).status_code == 201
    th = offer["pairing_token_hash"]
    return await world.call(enrolled, "POST", f"/v1/pairing/{th}/certificate", json={
        "device_certificate": new.cert, "org_public_key": world.org.public_b64,
        "mac": b64url_encode(b"m" * 32)})


async def test_pairing_links_a_desktop_that_can_then_log_in(world: World) -> None:
    amy = world.org.user("amy.ortho")
    phone = await world.onboard(amy)
    desktop = amy.device(DeviceKind.DESKTOP)
    token, offer = _offer(desktop)
    th = offer["pairing_token_hash"]
    assert (await world.http.post("/v1/pairing", json=offer)).status_code == 201
    claim = {"pairing_token": b64url_encode(token)}
    assert (await world.http.post(f"/v1/pairing/{th}/result", json=claim)).status_code == 202
    # Any enrolled device can read the offer (it checks the MAC itself).
    ben = await world.onboard(world.org.user("ben.ortho"))
    r = await world.call(ben, "GET", f"/v1/pairing/{th}")
    assert r.status_code == 200 and r.json()["keys"] == offer["keys"]
    # ...but a certificate signed by another user's identity key is refused.
    forged = amy.device(DeviceKind.DESKTOP, signer=ben.user.identity)
    r = await world.call(ben, "POST", f"/v1/pairing/{th}/certificate", json={
        "device_certificate": forged.cert, "org_public_key": world.org.public_b64,
        "mac": b64url_encode(b"m" * 32)})
    assert_problem(r, 422, "certificate_invalid")
    # A certificate for other keys than those offered is refused too.
    r = await world.call(phone, "POST", f"/v1/pairing/{th}/certificate", json={
        "device_certificate": amy.device(DeviceKind.DESKTOP).cert,
        "org_public_key": world.org.public_b64, "mac": b64url_encode(b"m" * 32)})
    assert_problem(r, 422, "certificate_invalid")
    r = await world.call(phone, "POST", f"/v1/pairing/{th}/certificate", json={
        "device_certificate": desktop.cert, "org_public_key": world.org.public_b64,
        "mac": b64url_encode(b"r" * 32)})
    assert r.status_code == 204, r.text
    wrong = {"pairing_token": b64url_encode(secrets.token_bytes(32))}
    assert_problem(await world.http.post(f"/v1/pairing/{th}/result", json=wrong), 400,
                   "pairing_code_invalid")
    r = await world.http.post(f"/v1/pairing/{th}/result", json=claim)
    assert r.status_code == 200, r.text
    assert r.json() == {"user_certificate": amy.cert, "device_certificate": desktop.cert,
                        "org_public_key": world.org.public_b64,
                        "mac": b64url_encode(b"r" * 32), "login": "amy.ortho"}
    assert_problem(await world.call(phone, "GET", f"/v1/pairing/{th}"), 400,
                   "pairing_code_invalid")
    await world.login(desktop)
    r = await world.call(desktop, "POST", "/v1/keys/one-time",
                         json={"prekeys": desktop.one_time(1, 3)})
    assert r.status_code == 200, r.text


async def test_unknown_pairing_codes_are_refused(world: World) -> None:
    phone = await world.onboard(world.org.user("amy.ortho"))
    th = b64url_encode(hashlib.sha256(b"nothing").digest())
    assert_problem(await world.call(phone, "GET", f"/v1/pairing/{th}"), 400,
                   "pairing_code_invalid")
    assert_problem(await world.call(phone, "GET", "/v1/pairing/not-base64!"), 400,
                   "pairing_code_invalid")
    r = await world.http.post(f"/v1/pairing/{th}/result", json={
        "pairing_token": b64url_encode(hashlib.sha256(b"another pairing").digest())})
    assert_problem(r, 400, "pairing_code_invalid")
    # A pairing token is 32 bytes (protocol/pairing.py); anything else is not one at all.
    r = await world.http.post(f"/v1/pairing/{th}/result",
                              json={"pairing_token": b64url_encode(b"nothing")})
    assert_problem(r, 422, "validation_failed")


async def test_a_gateway_certificate_for_a_clinician_is_refused(world: World) -> None:
    amy = world.org.user("amy.ortho")
    phone = await world.onboard(amy)
    keys = DeviceKeys.generate(amy.device().device_id)
    import time

    cert = issue_device_certificate(DeviceCertificate(
        v=1, device_id=keys.device_id, user_id=amy.user_id, org_id=amy.org.org_id,
        kind=DeviceKind.GATEWAY, signing_key=keys.signing.public, dh_key=keys.dh.public,
        issued_at=int(time.time()) - 5, not_after=int(time.time()) + DAY), amy.identity)
    new = Device(user=amy, keys=keys, cert=cert, kind=DeviceKind.GATEWAY)
    assert_problem(await pair(world, phone, DeviceKind.GATEWAY, new), 422,
                   "certificate_invalid")
