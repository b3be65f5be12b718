"""Who is calling (server/authn.py), the Authenticator called directly on real requests'
scopes, beside a running relay that enrolled the devices (its tokens, its database), with the
clock injected: a device request needs its bearer token and a ``Lightbox-Proof`` by the key the
token is bound to, over this method, target and body, within the clock skew, used once; then
the device, user and session must still stand (docs/PROTOCOL.md §11). An admin request needs an
admin token of an account that is not disabled."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable

import pytest
from starlette.requests import Request

from protocol.api import PROOF_NONCE_BYTES
from protocol.canonical import b64url_encode
from protocol.errors import ErrorCode
from server.audit import AUDIT_CONTEXT, AuditContext
from server.authn import AdminPrincipal, Authenticator
from server.db import Database
from server.errors import RelayError
from server.tokens import TokenService, load_token_key
from tests.helpers import session_dir
from tests.identity_world import Device, World
from tests.server.test_escalation import SimClock

SKEW = 60
SOME_TIME = 1_800_000_000  # in headers that fail to decode before their time is read


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def authn(relay_db: Database, clock: SimClock) -> Authenticator:
    tokens = TokenService(load_token_key(session_dir() / "token-key"), access_ttl=600,
                          admin_ttl=1800, clock=clock, clock_skew=SKEW)
    return Authenticator(db=relay_db, tokens=tokens, proof_skew=SKEW, clock=clock)


def request(method: str, target: str, headers: dict[str, str], body: bytes = b"") -> Request:
    path, _, query = target.partition("?")
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": query.encode(),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    sent = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, object]:
        return sent.pop(0) if sent else {"type": "http.disconnect"}

    return Request(scope, receive)


def signed(device: Device, clock: SimClock, method: str = "POST", target: str = "/v1/things?x=1",
           body: bytes = b'{"a": 1}', **proof: object) -> Request:
    """A request proven by ``device``, dated ``at`` (default: the clock's time)."""
    assert device.access_token is not None
    headers = device.proof(method, target, device.access_token, body=body,
                           at=int(proof.pop("at", clock.now)),  # type: ignore[call-overload]
                           **proof)  # type: ignore[arg-type]
    return request(method, target, headers, body)


async def refused(call: Awaitable[object]) -> tuple[ErrorCode, str | None]:
    with pytest.raises(RelayError) as info:
        await call
    return info.value.code, info.value.detail


async def test_a_proven_request_is_its_devices_principal(
        world: World, authn: Authenticator, clock: SimClock) -> None:
    amy = await world.onboard(world.org.user("amy.ortho", roles=("orthopaedics_oncall",)))
    token = AUDIT_CONTEXT.set(AuditContext())
    try:
        p = await authn.require_device(signed(amy, clock))
        assert (p.user_id, p.device_id, p.org_id, p.device_kind, p.roles) == (
            amy.user.user_id, amy.device_id, world.org.org_id, "mobile",
            ("orthopaedics_oncall",))
        assert p.signing_key == amy.keys.signing.public
        actor = AUDIT_CONTEXT.get()
        assert (actor.actor_kind, actor.actor_id) == ("device", amy.device_id)
    finally:
        AUDIT_CONTEXT.reset(token)


@pytest.mark.parametrize("authorization", [None, "", "Bearer ", "Basic dXNlcjpwYXNz",
                                           "bearer"])
async def test_a_request_without_a_bearer_token_is_unauthenticated(
        authn: Authenticator, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    assert await refused(authn.require_device(request("GET", "/v1/x", headers))) == (
        ErrorCode.UNAUTHENTICATED, "a bearer token is required")


async def test_a_token_the_relay_did_not_sign_is_token_invalid(authn: Authenticator) -> None:
    code, _ = await refused(authn.require_device(request(
        "GET", "/v1/x", {"authorization": "Bearer not.a.jwt"})))
    assert code == ErrorCode.TOKEN_INVALID


@pytest.mark.parametrize("proof", [
    None, "", "1.2", "a.b.c.d", "12x.AAAA.BBBB", "1234567890123.AAAA.BBBB",
    f"{SOME_TIME}.{b64url_encode(bytes(15))}.{b64url_encode(bytes(64))}",
    f"{SOME_TIME}.{b64url_encode(bytes(16))}.{b64url_encode(bytes(63))}",
    f"{SOME_TIME}.not base64!.{b64url_encode(bytes(64))}"])
async def test_a_missing_or_malformed_proof_header_is_token_device_mismatch(
        world: World, authn: Authenticator, proof: str | None) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    headers = {"authorization": f"Bearer {amy.access_token}"}
    if proof is not None:
        headers["lightbox-proof"] = proof
    assert await refused(authn.require_device(request("GET", "/v1/x", headers))) == (
        ErrorCode.TOKEN_DEVICE_MISMATCH, "a valid Lightbox-Proof header is required")


async def test_a_proof_dated_outside_the_clock_skew_is_refused_and_inside_accepted(
        world: World, authn: Authenticator, clock: SimClock) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    for at in (int(clock.now) - SKEW - 1, int(clock.now) + SKEW + 1):
        assert await refused(authn.require_device(signed(amy, clock, at=at))) == (
            ErrorCode.TOKEN_DEVICE_MISMATCH, "proof timestamp out of range")
    for at in (int(clock.now) - SKEW, int(clock.now) + SKEW):
        assert (await authn.require_device(signed(amy, clock, at=at))).device_id == amy.device_id


async def test_a_proof_by_another_key_is_refused(
        world: World, authn: Authenticator, clock: SimClock) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    ben = await world.onboard(world.org.user("ben.ortho"))
    assert await refused(authn.require_device(signed(amy, clock, signer=ben.keys))) == (
        ErrorCode.TOKEN_DEVICE_MISMATCH,
        "proof not signed by the device the token is bound to")


@pytest.mark.parametrize(("method", "target", "body"), [
    ("PUT", "/v1/things?x=1", b'{"a": 1}'), ("POST", "/v1/things?x=2", b'{"a": 1}'),
    ("POST", "/v1/other?x=1", b'{"a": 1}'), ("POST", "/v1/things?x=1", b'{"a": 2}')])
async def test_a_proof_over_another_method_target_or_body_is_refused(
        world: World, authn: Authenticator, clock: SimClock, method: str, target: str, body: bytes,
        ) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    genuine = signed(amy, clock)
    forged = request(method, target, dict(genuine.headers), body)
    code, _ = await refused(authn.require_device(forged))
    assert code == ErrorCode.TOKEN_DEVICE_MISMATCH


async def test_a_proof_is_accepted_once(
        world: World, authn: Authenticator, clock: SimClock) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    nonce = secrets.token_bytes(PROOF_NONCE_BYTES)
    await authn.require_device(signed(amy, clock, nonce=nonce))
    assert await refused(authn.require_device(signed(amy, clock, nonce=nonce))) == (
        ErrorCode.PROOF_REPLAYED, "this proof was used before")


@pytest.mark.parametrize(("change", "code", "detail"), [
    ("UPDATE devices SET status = 'revoked' WHERE device_id = $1",
     ErrorCode.DEVICE_REVOKED, "this device was revoked"),
    ("UPDATE users SET status = 'suspended' WHERE user_id = (SELECT user_id FROM devices "
     "WHERE device_id = $1)", ErrorCode.USER_SUSPENDED, "the user is suspended"),
    ("UPDATE refresh_tokens SET revoked_at = now() WHERE device_id = $1",
     ErrorCode.TOKEN_INVALID, "session ended; log in again"),
], ids=["device revoked", "user suspended", "session ended"])
async def test_a_device_user_or_session_that_no_longer_stands_is_refused_at_once(
        world: World, authn: Authenticator, clock: SimClock, change: str, code: ErrorCode,
        detail: str) -> None:
    """The token is still unexpired: the state is read on every request."""
    amy = await world.onboard(world.org.user("amy.ortho"))
    await authn.require_device(signed(amy, clock))
    await world.execute(change, uuid.UUID(amy.device_id))
    assert await refused(authn.require_device(signed(amy, clock))) == (code, detail)


async def test_a_user_whose_licence_has_lapsed_is_refused(
        world: World, authn: Authenticator, clock: SimClock) -> None:
    amy = await world.onboard(world.org.user("amy.ortho", licence_expires_at=int(clock.now) + 30))
    clock.advance(31)
    assert await refused(authn.require_device(signed(amy, clock))) == (
        ErrorCode.LICENCE_EXPIRED, "the user's licence has expired")


async def test_a_token_naming_a_device_of_another_user_is_refused(
        world: World, authn: Authenticator, clock: SimClock) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    ben = await world.onboard(world.org.user("ben.ortho"))
    await world.execute("UPDATE devices SET user_id = $2 WHERE device_id = $1",
                        uuid.UUID(amy.device_id), uuid.UUID(ben.user.user_id))
    assert await refused(authn.require_device(signed(amy, clock))) == (
        ErrorCode.TOKEN_INVALID, "token names an unknown device")


async def test_an_administrators_token_is_their_principal(
        world: World, authn: Authenticator) -> None:
    admin = await authn.require_admin(request("GET", "/v1/admin/x", world.admin_headers()))
    assert isinstance(admin, AdminPrincipal) and admin.login


async def test_a_disabled_administrators_token_is_refused(
        world: World, authn: Authenticator) -> None:
    await world.execute("UPDATE admins SET disabled_at = now()")
    assert await refused(authn.require_admin(
        request("GET", "/v1/admin/x", world.admin_headers()))) == (
        ErrorCode.TOKEN_INVALID, "administrator unknown or disabled")


async def test_a_device_token_is_not_an_admin_token(world: World, authn: Authenticator) -> None:
    amy = await world.onboard(world.org.user("amy.ortho"))
    code, _ = await refused(authn.require_admin(
        request("GET", "/v1/admin/x", {"authorization": f"Bearer {amy.access_token}"})))
    assert code == ErrorCode.TOKEN_AUDIENCE
