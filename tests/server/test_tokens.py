"""Access and admin tokens (server/tokens.py): exact codes for every forged or stale token."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid
from pathlib import Path

import jwt
import pytest

from protocol.api import ADMIN_TOKEN_AUDIENCE, key_thumbprint
from protocol.errors import ErrorCode
from server.errors import Unauthorized
from server.tokens import TokenService, ensure_token_key, load_token_key

NOW = 1_800_000_000
SEED = bytes(range(32))
USER, DEVICE, FAMILY = (str(uuid.uuid4()) for _ in range(3))
DEVICE_KEY = bytes(32)


def service(seed: bytes = SEED) -> TokenService:
    return TokenService(seed, access_ttl=600, admin_ttl=1800, clock=lambda: NOW)


def access(svc: TokenService | None = None, now: int = NOW) -> str:
    token, _ = (svc or service()).issue_access(user_id=USER, device_id=DEVICE,
                                               family_id=FAMILY, signing_key=DEVICE_KEY,
                                               now=now)
    return token


def code_of(token: str, *, now: int = NOW, admin: bool = False) -> ErrorCode:
    svc = service()
    verify = svc.verify_admin if admin else svc.verify_access
    with pytest.raises(Unauthorized) as info:
        verify(token, now=now)
    return info.value.code


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_access_token_round_trips_with_its_binding() -> None:
    claims = service().verify_access(access(), now=NOW + 599)
    assert (claims.user_id, claims.device_id, claims.family_id) == (USER, DEVICE, FAMILY)
    assert claims.jkt == key_thumbprint(DEVICE_KEY)
    assert claims.expires_at == NOW + 600
    payload = jwt.decode(access(), options={"verify_signature": False})
    assert payload["aud"] == "lightbox-relay" and payload["iss"] == "lightbox-relay"
    assert set(payload["cnf"]) == {"jkt"}
    assert jwt.get_unverified_header(access())["alg"] == "EdDSA"


def test_expired_token_is_token_expired() -> None:
    assert code_of(access(), now=NOW + 600) is ErrorCode.TOKEN_EXPIRED


def test_alg_none_is_token_invalid() -> None:
    payload = jwt.decode(access(), options={"verify_signature": False})
    forged = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(payload)}."
    assert code_of(forged) is ErrorCode.TOKEN_INVALID


def test_hs256_keyed_with_the_public_key_is_token_invalid() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = Ed25519PrivateKey.from_private_bytes(SEED).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    payload = jwt.decode(access(), options={"verify_signature": False})
    forged = jwt.encode(payload, public + b"\x00" * 32, algorithm="HS256")
    assert code_of(forged) is ErrorCode.TOKEN_INVALID


def test_token_from_another_key_and_garbage_are_token_invalid() -> None:
    assert code_of(access(service(os.urandom(32)))) is ErrorCode.TOKEN_INVALID
    assert code_of("not.a.jwt") is ErrorCode.TOKEN_INVALID
    assert code_of("") is ErrorCode.TOKEN_INVALID
    head, body, sig = access().split(".")
    # A changed first character always changes the signature (the last two may not: one in
    # 256 signatures already ends in "AA").
    other = "B" if sig[0] == "A" else "A"
    assert code_of(f"{head}.{body}.{other}{sig[1:]}") is ErrorCode.TOKEN_INVALID


def test_admin_token_as_access_token_and_back_is_token_audience() -> None:
    svc = service()
    admin, _ = svc.issue_admin(USER, now=NOW)
    assert code_of(admin) is ErrorCode.TOKEN_AUDIENCE
    assert code_of(access(), admin=True) is ErrorCode.TOKEN_AUDIENCE
    assert svc.verify_admin(admin, now=NOW).admin_id == USER
    payload = jwt.decode(admin, options={"verify_signature": False})
    assert payload["aud"] == ADMIN_TOKEN_AUDIENCE


def test_token_with_a_foreign_audience_is_token_audience() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    payload = jwt.decode(access(), options={"verify_signature": False})
    payload["aud"] = "someone-else"
    forged = jwt.encode(payload, Ed25519PrivateKey.from_private_bytes(SEED), algorithm="EdDSA")
    assert code_of(forged) is ErrorCode.TOKEN_AUDIENCE


def test_token_missing_the_binding_is_token_invalid() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    payload = jwt.decode(access(), options={"verify_signature": False})
    del payload["cnf"]
    forged = jwt.encode(payload, Ed25519PrivateKey.from_private_bytes(SEED), algorithm="EdDSA")
    assert code_of(forged) is ErrorCode.TOKEN_INVALID


def _resigned(token: str, **changes: object) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    payload = jwt.decode(token, options={"verify_signature": False})
    payload.update(changes)
    return jwt.encode(payload, Ed25519PrivateKey.from_private_bytes(SEED), algorithm="EdDSA")


@pytest.mark.parametrize("admin", [False, True])
def test_a_token_issued_in_the_future_beyond_the_skew_is_token_invalid(admin: bool) -> None:
    """RFC 7519 §4.1.6: ``iat`` later than now (beyond the clock skew) is not a token this
    relay issued at a time it can vouch for."""
    svc = service()
    token = svc.issue_admin(USER, now=NOW)[0] if admin else access()
    assert code_of(_resigned(token, iat=NOW + 61), now=NOW, admin=admin) \
        is ErrorCode.TOKEN_INVALID
    # Within the skew it is accepted.
    verify = svc.verify_admin if admin else svc.verify_access
    verify(_resigned(token, iat=NOW + 60), now=NOW)


@pytest.mark.parametrize(("nbf", "ok"), [(NOW + 61, False), (NOW + 60, True), ("soon", False)])
def test_a_token_not_valid_yet_is_token_invalid(nbf: object, ok: bool) -> None:
    """RFC 7519 §4.1.5: ``nbf`` beyond the clock skew."""
    token = _resigned(access(), nbf=nbf)
    if ok:
        service().verify_access(token, now=NOW)
    else:
        assert code_of(token) is ErrorCode.TOKEN_INVALID


def test_token_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "token-key"
    ensure_token_key(path)
    first = load_token_key(path)
    ensure_token_key(path)
    assert load_token_key(path) == first and len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["token-key"]
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        load_token_key(path)
