"""A small identity world for the relay's tests: organisations with keys, users with signed
certificates and enrolment codes, devices with certificates and prekeys, and an HTTP driver
that provisions, enrols and logs in through a real relay (proofs of possession included).

Everything is made with protocol/ functions, as IT's tool and the clients make it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from clients.sdk.addresses import tls_context
from clients.sdk.transport import KEEPALIVE_EXPIRY
from protocol.api import (
    PROOF_NONCE_BYTES,
    enrolment_token,
    login_signing_input,
    request_proof_input,
)
from protocol.canonical import b64url_decode, b64url_encode
from protocol.certs import (
    AccountKind,
    DeviceCertificate,
    Licence,
    OneTimePrekey,
    RevocationEntry,
    RevocationList,
    RevocationSubject,
    SignedPrekey,
    UserCertificate,
    issue_device_certificate,
    issue_one_time_prekey,
    issue_revocation_list,
    issue_signed_prekey,
    issue_user_certificate,
)
from protocol.keys import (
    DeviceKeys,
    IdentityKey,
    OrganisationKey,
    X25519KeyPair,
    generate_enrolment_code,
    normalise_enrolment_code,
)
from protocol.model import DeviceKind
from server.passwords import Passwords
from server.store import admins
from tests.helpers import (
    RunningRelay,
    ShiftedClock,
    make_settings,
    running_relay,
    session_dir,
)

__all__ = ["PASSWORD", "Device", "Org", "User", "World", "identity_world"]

PASSWORD = "correct horse battery staple"
ADMIN_PASSWORD = "admin passphrase for tests"
DAY = 86400


def _now() -> int:
    return int(time.time())


@dataclasses.dataclass
class Org:
    org_id: str
    key: OrganisationKey = dataclasses.field(default_factory=OrganisationKey.generate)

    @property
    def public_b64(self) -> str:
        return b64url_encode(self.key.public)

    def user(self, login: str, *, display_name: str = "Dr Test User",
             roles: tuple[str, ...] = ("orthopaedics_oncall",), specialty: str | None = None,
             department: str | None = None, licence_expires_at: int | None = None,
             not_before: int | None = None, not_after: int | None = None,
             signer: OrganisationKey | None = None, user_id: str | None = None,
             account_kind: AccountKind = AccountKind.CLINICIAN) -> User:
        now = _now()
        identity = IdentityKey.generate()
        licence = None if account_kind is AccountKind.SERVICE else Licence(
            type="GMC", number="1234567", jurisdiction="UK",
            expires_at=licence_expires_at or now + 365 * DAY)
        body = UserCertificate(
            v=1, serial=str(uuid.uuid4()), user_id=user_id or str(uuid.uuid4()),
            org_id=self.org_id, display_name=display_name, account_kind=account_kind,
            roles=list(roles), specialty=specialty, department=department, licence=licence,
            identity_key=identity.public, not_before=not_before or now - 60,
            not_after=not_after or now + 2 * 365 * DAY, issued_at=now - 60)
        cert = issue_user_certificate(body, signer or self.key)
        return User(org=self, login=login, body=body, cert=cert, identity=identity,
                    code=normalise_enrolment_code(generate_enrolment_code()))

    def revocation_list(self, number: int, *, devices: tuple[str, ...] = (),
                        users: tuple[str, ...] = (), wipe: bool = False) -> str:
        entries = [RevocationEntry(subject=RevocationSubject.DEVICE, id=d, revoked_at=_now(),
                                   reason="lost", wipe=wipe) for d in devices]
        entries += [RevocationEntry(subject=RevocationSubject.USER, id=u, revoked_at=_now(),
                                    reason="suspended", wipe=False) for u in users]
        return issue_revocation_list(RevocationList(v=1, org_id=self.org_id, number=number,
                                                    issued_at=_now(), entries=entries), self.key)


@dataclasses.dataclass
class User:
    org: Org
    login: str
    body: UserCertificate
    cert: str
    identity: IdentityKey
    code: str

    @property
    def user_id(self) -> str:
        return self.body.user_id

    @property
    def token_b64(self) -> str:
        return b64url_encode(enrolment_token(self.code))

    @property
    def token_hash_b64(self) -> str:
        return b64url_encode(hashlib.sha256(enrolment_token(self.code)).digest())

    def provision_row(self, *, expires_in: int = 72 * 3600) -> dict[str, Any]:
        return {"login": self.login, "user_certificate": self.cert,
                "enrolment_token_hash": self.token_hash_b64,
                "sealed_identity": b64url_encode(b"LBPW" + secrets.token_bytes(80)),
                "enrolment_expires_at": _now() + expires_in}

    def device(self, kind: DeviceKind = DeviceKind.MOBILE, *,
               signer: IdentityKey | None = None) -> Device:
        device_id = str(uuid.uuid4())
        keys = DeviceKeys.generate(device_id)
        body = DeviceCertificate(v=1, device_id=device_id, user_id=self.user_id,
                                 org_id=self.org.org_id, kind=kind,
                                 signing_key=keys.signing.public, dh_key=keys.dh.public,
                                 issued_at=_now() - 60, not_after=_now() + 365 * DAY)
        return Device(user=self, keys=keys,
                      cert=issue_device_certificate(body, signer or self.identity), kind=kind)


@dataclasses.dataclass
class Device:
    user: User
    keys: DeviceKeys
    cert: str
    kind: DeviceKind
    access_token: str | None = None
    refresh_token: str | None = None

    @property
    def device_id(self) -> str:
        return self.keys.device_id

    def signed_prekey(self, prekey_id: int = 1) -> str:
        return issue_signed_prekey(SignedPrekey(device_id=self.device_id, prekey_id=prekey_id,
                                                public=X25519KeyPair.generate().public,
                                                created_at=_now()), self.keys.signing)

    def one_time(self, first: int, count: int) -> list[str]:
        return [issue_one_time_prekey(OneTimePrekey(device_id=self.device_id, prekey_id=i,
                                                    public=X25519KeyPair.generate().public),
                                      self.keys.signing) for i in range(first, first + count)]

    def proof(self, method: str, target: str, token: str, *, body: bytes = b"",
              at: int | None = None, signer: DeviceKeys | None = None,
              nonce: bytes | None = None) -> dict[str, str]:
        """``Authorization`` and ``Lightbox-Proof`` for one request (target: path and query)."""
        ts = _now() if at is None else at
        nonce = secrets.token_bytes(PROOF_NONCE_BYTES) if nonce is None else nonce
        sig = (signer or self.keys).sign(
            request_proof_input(method, target, ts, nonce, body, token))
        return {"authorization": f"Bearer {token}",
                "lightbox-proof": f"{ts}.{b64url_encode(nonce)}.{b64url_encode(sig)}"}


@dataclasses.dataclass
class World:
    """Drives a running relay over HTTP."""

    relay: RunningRelay
    http: httpx.AsyncClient
    dsn: str
    orgs: dict[str, Org]
    admin_token: str = ""
    clock: ShiftedClock = dataclasses.field(default_factory=ShiftedClock)  # the relay's

    @property
    def org(self) -> Org:
        return next(iter(self.orgs.values()))

    def admin_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin_token}"}

    async def provision(self, *users: User, **row: Any) -> list[dict[str, Any]]:
        r = await self.http.post("/v1/admin/users", headers=self.admin_headers(), json={
            "users": [{**u.provision_row(), **row} for u in users]})
        assert r.status_code == 200, r.text
        results: list[dict[str, Any]] = r.json()["results"]
        return results

    async def enrol(self, device: Device, *, password: str = PASSWORD, prekeys: int = 5,
                    token: str | None = None) -> httpx.Response:
        return await self.http.post("/v1/enrol/complete", json={
            "enrolment_token": token or device.user.token_b64,
            "device_certificate": device.cert, "signed_prekey": device.signed_prekey(),
            "one_time_prekeys": device.one_time(1, prekeys), "password": password})

    async def login_response(self, device: Device, *, password: str = PASSWORD,
                             login: str | None = None, signer: DeviceKeys | None = None,
                             headers: dict[str, str] | None = None) -> httpx.Response:
        """A login with ``device``'s id, signed by ``signer`` (default: the device) for
        ``login`` (default: the device's user); ``headers`` on both requests (e.g. a
        forwarded address behind a trusted proxy)."""
        nonce_b64 = (await self.http.post("/v1/auth/challenge",
                                          headers=headers)).json()["nonce"]
        name = login or device.user.login
        sig = (signer or device.keys).sign(
            login_signing_input(b64url_decode(nonce_b64), name, device.device_id))
        return await self.http.post("/v1/auth/login", headers=headers, json={
            "login": name, "password": password, "device_id": device.device_id,
            "nonce": nonce_b64, "signature": b64url_encode(sig)})

    async def login(self, device: Device, **kw: Any) -> dict[str, Any]:
        r = await self.login_response(device, **kw)
        assert r.status_code == 200, r.text
        pair: dict[str, Any] = r.json()
        device.access_token, device.refresh_token = pair["access_token"], pair["refresh_token"]
        return pair

    async def onboard(self, user: User, kind: DeviceKind = DeviceKind.MOBILE, *,
                      prekeys: int = 5) -> Device:
        """Provision, enrol and log in: a ready device."""
        (result,) = await self.provision(user)
        assert result["ok"], result
        device = user.device(kind)
        r = await self.enrol(device, prekeys=prekeys)
        assert r.status_code == 200, r.text
        await self.login(device)
        return device

    def signed(self, device: Device, method: str, path: str, *,
               headers: dict[str, str] | None = None, **kw: Any) -> httpx.Request:
        """A request with the device's proof over it exactly as built (target and body),
        dated by the relay's clock (which a test may have moved on)."""
        assert device.access_token is not None
        request = self.http.build_request(method, path, headers=headers, **kw)
        request.headers.update(device.proof(method, request.url.raw_path.decode(),
                                            device.access_token, body=request.content,
                                            at=int(self.clock())))
        return request

    async def call(self, device: Device, method: str, path: str, **kw: Any) -> httpx.Response:
        return await self.http.send(self.signed(device, method, path, **kw))

    async def revoke(self, org: Org, number: int, **kw: Any) -> httpx.Response:
        return await self.http.post("/v1/admin/revocations", headers=self.admin_headers(),
                                    json={"revocation_list": org.revocation_list(number, **kw)})

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsn)

    async def device_of(self, user_id: str) -> str:
        """The id of the user's device (of one who has enrolled one device)."""
        conn = await self.db()
        try:
            return str(await conn.fetchval("SELECT device_id FROM devices WHERE user_id = $1",
                                           uuid.UUID(user_id)))
        finally:
            await conn.close()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """The rows ``query`` finds in the relay's database, on a connection of its own."""
        conn = await self.db()
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def execute(self, query: str, *args: Any) -> None:
        """One SQL statement on a connection of its own (to stage a state, e.g. an expiry)."""
        conn = await self.db()
        try:
            await conn.execute(query, *args)
        finally:
            await conn.close()


def write_trusted_orgs(path: Path, *orgs: Org) -> Path:
    path.write_text(json.dumps({"orgs": {o.org_id: o.public_b64 for o in orgs}}))
    return path


@contextlib.asynccontextmanager
async def identity_world(dsn: str, tmp: Path, *, orgs: tuple[str, ...] = ("st-elsewhere",),
                         oncall_clock: Callable[[], float] | None = None,
                         clock: ShiftedClock | None = None,
                         **settings: Any) -> AsyncIterator[World]:
    """A relay trusting fresh organisations, with an IT administrator logged in; ``clock``
    (``world.clock``) is the relay's, a test moves it forward."""
    clock = clock or ShiftedClock()
    org_objs = {o: Org(o) for o in orgs}
    trusted = write_trusted_orgs(tmp / "trusted-orgs.json", *org_objs.values())
    s = make_settings(trusted_orgs_file=trusted,
                      token_key_file=session_dir() / "token-key", **settings)
    conn = await asyncpg.connect(dsn)
    try:
        await admins.create_admin(conn, "it-admin",
                                  Passwords("cheap").hash_sync(ADMIN_PASSWORD))
    finally:
        await conn.close()
    # Idle connections kept shorter than the relay's own idle timeout, as the SDK keeps them
    # (clients/sdk/transport.py KEEPALIVE_EXPIRY): a request sent on a connection uvicorn is
    # closing gets no answer (httpx.ReadError), which failed a withdrawal once in CI.
    async with running_relay(dsn, s, oncall_clock=oncall_clock, clock=clock) as relay, \
            httpx.AsyncClient(base_url=relay.base_url, verify=tls_context(),
                              limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY)) as c:
        world = World(relay=relay, http=c, dsn=dsn, orgs=org_objs, clock=clock)
        r = await c.post("/v1/admin/login", json={"login": "it-admin",
                                                  "password": ADMIN_PASSWORD})
        assert r.status_code == 200, r.text
        world.admin_token = r.json()["token"]
        yield world
