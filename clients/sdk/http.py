"""The relay's HTTP API (docs/PROTOCOL.md §11) for clients: one async method per route.

Bodies are the structs of :mod:`protocol.api`, encoded and decoded with msgspec (strictly:
an answer with unknown fields is a :class:`RelayResponseError`). Errors come back as RFC 9457
problem documents and are raised as :class:`RelayRequestError` with their stable ``code``.

Device requests carry ``Authorization: Bearer <access token>`` and ``Lightbox-Proof:
<unix seconds>.<b64url nonce>.<b64url Ed25519 signature over
protocol.api.request_proof_input(...)>`` made with the device's signing key (a DPoP-like proof
of possession, RFC 9449), over the request exactly as it is sent: method, target with its
query, body, time and a fresh nonce, so the relay accepts it once, for that request only.
The access token is refreshed through ``/v1/auth/refresh`` shortly before it expires, or
once after a ``token_expired`` answer; every new token pair is handed to ``on_tokens`` so the
caller can persist the rotated refresh token.

Refresh is *single flight*: however many requests (and websocket reconnections) find the token
stale at once, one refresh goes to the relay and every caller waits for it and uses the pair it
brings. Presenting the same refresh token twice would otherwise look like a stolen copy to the
relay, which then ends the session (docs/SECURITY.md "Identity and sessions").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from clients.sdk.errors import FlowError, RelayRequestError, RelayResponseError, RelayUnavailable
from protocol import api
from protocol.canonical import b64url_encode
from protocol.directory import PendingUsers, Renewed, RenewPending, SignedPending, SignPending
from protocol.errors import ErrorCode
from protocol.keys import Ed25519KeyPair, random_bytes
from protocol.sso import SsoChallenge, SsoConfig, SsoEnrolComplete, SsoLogin

__all__ = [
    "ProvisionResults",
    "RelayHTTP",
    "Signer",
    "SingleFlight",
    "is_loopback",
    "parse_problem",
    "require_tls",
]

T = TypeVar("T")
Signer = Ed25519KeyPair
TokenCallback = Callable[[api.TokenPair], Awaitable[None] | None]

_SESSION_ENDED = frozenset({"token_invalid", "token_expired", "refresh_reused"})
REFRESH_MARGIN = 60  # seconds before expiry at which a device refreshes its access token
MAX_RESPONSE_BYTES = 8 * 1024 * 1024


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this computer (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_tls(url: str, what: str) -> None:
    """Refuse an address that would carry passwords, tokens or proofs in the clear: https://,
    or http:// to this computer only (a local TLS proxy, a test bench). RFC 6750 §5.3."""
    parsed = httpx.URL(url)
    if parsed.scheme == "https" or (parsed.scheme == "http" and is_loopback(parsed.host)):
        return
    raise FlowError(f"{what} must start with https:// (plain http:// only to this computer: "
                    f"localhost or 127.0.0.1), not {url!r}", code=ErrorCode.BAD_REQUEST.value)


class SingleFlight(Generic[T]):
    """At most one run of an async operation at a time: callers arriving while it runs wait for
    that run and share its result or its exception. The run is shielded, so a caller that is
    cancelled does not cancel it for the others (a refresh whose answer is lost would leave
    the device holding a rotated-away token)."""

    def __init__(self) -> None:
        self._task: asyncio.Future[T] | None = None

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        if self._task is None:
            task = asyncio.ensure_future(operation())
            self._task = task
            task.add_done_callback(self._done)
        return await asyncio.shield(self._task)

    def _done(self, task: asyncio.Future[T]) -> None:
        if self._task is task:
            self._task = None
        if not task.cancelled():
            task.exception()  # retrieved here too: every caller may have gone meanwhile


class ProvisionResults(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Answer of ``POST /v1/admin/users``: one result per provisioned user, in order."""

    results: list[api.ProvisionResult]


def parse_problem(response: httpx.Response) -> RelayRequestError:
    """A :class:`RelayRequestError` from an error response (problem+json, or anything else)."""
    code, detail, retry_after, extra = f"http_{response.status_code}", None, None, None
    try:
        doc = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        doc = None
    if isinstance(doc, dict):
        code = str(doc.get("code") or code)
        detail = doc.get("detail") if isinstance(doc.get("detail"), str) else None
        ra = doc.get("retry_after")
        retry_after = float(ra) if isinstance(ra, int | float) else None
        extra = doc.get("extra") if isinstance(doc.get("extra"), dict) else None
    if retry_after is None and response.headers.get("retry-after", "").isdigit():
        retry_after = float(response.headers["retry-after"])
    return RelayRequestError(code, response.status_code, detail, retry_after, extra)


class RelayHTTP:
    """Async client of one relay. Use as ``async with RelayHTTP(url) as relay: ...``.

    ``device`` (the device's Ed25519 signing key) and ``tokens`` enable device routes;
    ``admin_token`` enables admin routes. ``login_again`` (password and device signature)
    replaces a refresh the relay refuses because the session ended. ``now`` is injectable for
    tests.
    """

    def __init__(
        self,
        base_url: str,
        *,
        device: Signer | None = None,
        tokens: api.TokenPair | None = None,
        admin_token: str | None = None,
        on_tokens: TokenCallback | None = None,
        login_again: Callable[[], Awaitable[api.TokenPair]] | None = None,
        client: httpx.AsyncClient | None = None,
        timeout: float = 15.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        require_tls(self.base_url, "the relay address")
        self.device = device
        self.tokens = tokens
        self.admin_token = admin_token
        self._on_tokens = on_tokens
        self._login_again = login_again
        self._now = now
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout, headers={"User-Agent": "lightbox-sdk/0.1"}, follow_redirects=False
        )
        self._refreshing: SingleFlight[api.TokenPair] = SingleFlight()

    async def __aenter__(self) -> RelayHTTP:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # --- plumbing -------------------------------------------------------------------------

    async def _send(
        self, method: str, path: str, *, body: msgspec.Struct | None = None,
        params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
        raw: bytes | None = None, prove: bool = False,
    ) -> httpx.Response:
        content = raw if body is None else msgspec.json.encode(body)
        hdrs = dict(headers or {})
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        elif raw is not None:
            hdrs["Content-Type"] = "application/octet-stream"
        request = self._client.build_request(
            method, self.base_url + path, content=content, params=params, headers=hdrs
        )
        if prove:
            # Signed over the request as built (its encoded target and its body bytes).
            request.headers.update(self._device_headers(request))
        try:
            response = await self._client.send(request)
        except httpx.HTTPError as exc:
            raise RelayUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise RelayResponseError(f"{method} {path}: answer too large")
        return response

    @staticmethod
    def _decode(response: httpx.Response, cls: type[T]) -> T:
        if response.status_code >= 400:
            raise parse_problem(response)
        try:
            return msgspec.json.decode(response.content, type=cls)
        except msgspec.DecodeError as exc:
            raise RelayResponseError(
                f"{response.request.method} {response.request.url.path}: answer is not a "
                f"valid {cls.__name__}: {exc}"
            ) from exc

    @staticmethod
    def _expect(response: httpx.Response, *statuses: int) -> None:
        if response.status_code >= 400:
            raise parse_problem(response)
        if response.status_code not in statuses:
            raise RelayResponseError(
                f"{response.request.method} {response.request.url.path}: unexpected status "
                f"{response.status_code}"
            )

    def _admin_headers(self) -> dict[str, str]:
        if not self.admin_token:
            raise RelayRequestError("unauthenticated", 401, "no admin session: log in first")
        return {"Authorization": f"Bearer {self.admin_token}"}

    def proof_header(self, method: str, target: str, body: bytes, access_token: str) -> str:
        """``Lightbox-Proof`` for one request: ``<seconds>.<b64url nonce>.<b64url signature>``.

        ``target`` is the path and query as sent; every call draws a fresh nonce."""
        if self.device is None:
            raise RelayRequestError("unauthenticated", 401, "no device key loaded")
        seconds = int(self._now())
        nonce = random_bytes(api.PROOF_NONCE_BYTES)
        signature = self.device.sign(
            api.request_proof_input(method, target, seconds, nonce, body, access_token))
        return f"{seconds}.{b64url_encode(nonce)}.{b64url_encode(signature)}"

    async def _device(
        self, method: str, path: str, *, body: msgspec.Struct | None = None,
        params: dict[str, str] | None = None, raw: bytes | None = None,
    ) -> httpx.Response:
        await self._fresh_token()
        response = await self._device_once(method, path, body=body, params=params, raw=raw)
        if response.status_code == 401 and parse_problem(response).code == "token_expired":
            assert self.tokens is not None
            await self._refresh_if_stale(self.tokens)
            response = await self._device_once(method, path, body=body, params=params, raw=raw)
        return response

    async def _fresh_token(self) -> None:
        if self.tokens is None:
            raise RelayRequestError("unauthenticated", 401, "not logged in")
        if self._now() >= self.tokens.expires_at - REFRESH_MARGIN:
            await self._refresh_if_stale(self.tokens)

    def _device_headers(self, request: httpx.Request) -> dict[str, str]:
        assert self.tokens is not None
        token = self.tokens.access_token
        target = request.url.raw_path.decode("ascii")
        return {"Authorization": f"Bearer {token}",
                "Lightbox-Proof": self.proof_header(request.method, target, request.content,
                                                    token)}

    async def _device_once(
        self, method: str, path: str, *, body: msgspec.Struct | None,
        params: dict[str, str] | None, raw: bytes | None = None,
    ) -> httpx.Response:
        return await self._send(method, path, body=body, params=params, raw=raw, prove=True)

    async def _refresh_if_stale(self, seen: api.TokenPair) -> None:
        if self.tokens is not seen:  # another caller refreshed meanwhile: use its pair
            return
        await self.refresh()

    async def _set_tokens(self, tokens: api.TokenPair) -> api.TokenPair:
        self.tokens = tokens
        if self._on_tokens is not None:
            result = self._on_tokens(tokens)
            if result is not None:
                await result
        return tokens

    # --- admin ----------------------------------------------------------------------------

    async def admin_login(self, login: str, password: str) -> api.AdminToken:
        r = await self._send("POST", "/v1/admin/login",
                             body=api.AdminLogin(login=login, password=password))
        token = self._decode(r, api.AdminToken)
        self.admin_token = token.token
        return token

    async def provision_users(self, body: api.ProvisionUsers) -> list[api.ProvisionResult]:
        r = await self._send("POST", "/v1/admin/users", body=body, headers=self._admin_headers())
        return self._decode(r, ProvisionResults).results

    async def list_users(self, q: str | None = None, status: str | None = None) -> api.UserList:
        params = {k: v for k, v in {"q": q, "status": status}.items() if v}
        r = await self._send("GET", "/v1/admin/users", params=params,
                             headers=self._admin_headers())
        return self._decode(r, api.UserList)

    async def get_user(self, user_id: str) -> api.UserDetail:
        r = await self._send("GET", f"/v1/admin/users/{quote(user_id, safe='')}",
                             headers=self._admin_headers())
        return self._decode(r, api.UserDetail)

    async def renew_certificate(self, user_id: str, user_certificate: str) -> api.UserSummary:
        r = await self._send(
            "PUT", f"/v1/admin/users/{quote(user_id, safe='')}/certificate",
            body=api.CertificateRenewal(user_certificate=user_certificate),
            headers=self._admin_headers(),
        )
        return self._decode(r, api.UserSummary)

    async def reissue_enrolment(self, user_id: str,
                                body: api.EnrolmentReissue) -> api.EnrolmentReissued:
        r = await self._send("POST", f"/v1/admin/users/{quote(user_id, safe='')}/enrolment",
                             body=body, headers=self._admin_headers())
        return self._decode(r, api.EnrolmentReissued)

    async def upload_revocations(self, revocation_list: str) -> Any:
        r = await self._send("POST", "/v1/admin/revocations",
                             body=api.RevocationUpload(revocation_list=revocation_list),
                             headers=self._admin_headers())
        return self._decode(r, object)

    async def directory_pending(self) -> PendingUsers:
        """Directory (SCIM) users waiting for IT's signature (protocol/directory.py)."""
        r = await self._send("GET", "/v1/admin/directory/pending",
                             headers=self._admin_headers())
        return self._decode(r, PendingUsers)

    async def sign_pending(self, directory_id: str, body: SignPending) -> SignedPending:
        r = await self._send("POST", f"/v1/admin/directory/pending/{quote(directory_id, safe='')}",
                             body=body, headers=self._admin_headers())
        return self._decode(r, SignedPending)

    async def renew_pending(self, user_id: str, body: RenewPending) -> Renewed:
        """A certificate renewed as the directory or the IdP asked (protocol/directory.py)."""
        r = await self._send("POST", f"/v1/admin/directory/renewals/{quote(user_id, safe='')}",
                             body=body, headers=self._admin_headers())
        return self._decode(r, Renewed)

    # --- public ---------------------------------------------------------------------------

    async def revocations(self) -> api.RevocationLists:
        return self._decode(await self._send("GET", "/v1/revocations"), api.RevocationLists)

    async def enrol_fetch(self, enrolment_token: bytes) -> api.EnrolPackage:
        r = await self._send("POST", "/v1/enrol/fetch",
                             body=api.EnrolFetch(enrolment_token=b64url_encode(enrolment_token)))
        return self._decode(r, api.EnrolPackage)

    async def enrol_complete(self, body: api.EnrolComplete) -> api.Enrolled:
        return self._decode(await self._send("POST", "/v1/enrol/complete", body=body),
                            api.Enrolled)

    async def enrol_complete_sso(self, body: SsoEnrolComplete) -> api.Enrolled:
        return self._decode(await self._send("POST", "/v1/enrol/complete-sso", body=body),
                            api.Enrolled)

    async def sso_config(self, org_id: str) -> SsoConfig:
        return self._decode(await self._send("GET", f"/v1/auth/sso/{quote(org_id, safe='')}"),
                            SsoConfig)

    async def sso_challenge(self) -> SsoChallenge:
        return self._decode(await self._send("POST", "/v1/auth/sso/challenge"), SsoChallenge)

    async def sso_login(self, body: SsoLogin) -> api.TokenPair:
        tokens = self._decode(await self._send("POST", "/v1/auth/sso/login", body=body),
                              api.TokenPair)
        return await self._set_tokens(tokens)

    async def pairing_offer(self, body: api.PairingOffer) -> None:
        self._expect(await self._send("POST", "/v1/pairing", body=body), 200, 201, 204)

    async def pairing_result(self, token_hash: str, token: bytes) -> api.PairingResult | None:
        """The pairing result, or None while the enrolled device has not answered (202)."""
        r = await self._send("POST", f"/v1/pairing/{token_hash}/result",
                             body=api.PairingClaim(pairing_token=b64url_encode(token)))
        if r.status_code == 202:
            return None
        return self._decode(r, api.PairingResult)

    async def challenge(self) -> api.LoginChallenge:
        return self._decode(await self._send("POST", "/v1/auth/challenge"), api.LoginChallenge)

    async def login(self, body: api.LoginRequest) -> api.TokenPair:
        tokens = self._decode(await self._send("POST", "/v1/auth/login", body=body),
                              api.TokenPair)
        return await self._set_tokens(tokens)

    async def refresh(self) -> api.TokenPair:
        """A new token pair for the refresh token held; concurrent callers share one request
        and its answer (single flight)."""
        return await self._refreshing.run(self._refresh)

    async def refresh_if_stale(self, seen: api.TokenPair) -> api.TokenPair:
        """Refresh unless the pair changed since the caller saw ``seen`` (then: the new one)."""
        await self._refresh_if_stale(seen)
        assert self.tokens is not None
        return self.tokens

    async def _refresh(self) -> api.TokenPair:
        if self.tokens is None:
            raise RelayRequestError("unauthenticated", 401, "not logged in")
        r = await self._send("POST", "/v1/auth/refresh",
                             body=api.RefreshRequest(refresh_token=self.tokens.refresh_token))
        if r.status_code == 401 and self._login_again is not None \
                and parse_problem(r).code in _SESSION_ENDED:
            # The session ended (logout elsewhere, revocation, expiry): a client that can
            # log in again does, once for all the callers waiting on this refresh; a
            # revoked device is refused there with device_revoked, which is what it is told.
            return await self._login_again()
        return await self._set_tokens(self._decode(r, api.TokenPair))

    async def logout(self) -> None:
        if self.tokens is None:
            return
        r = await self._send("POST", "/v1/auth/logout",
                             body=api.RefreshRequest(refresh_token=self.tokens.refresh_token))
        self._expect(r, 200, 204)
        self.tokens = None

    # --- device ---------------------------------------------------------------------------

    async def pairing_pending(self, token_hash: str) -> api.PairingPending:
        return self._decode(await self._device("GET", f"/v1/pairing/{token_hash}"),
                            api.PairingPending)

    async def pairing_certificate(self, token_hash: str, body: api.PairingCertificate) -> None:
        r = await self._device("POST", f"/v1/pairing/{token_hash}/certificate", body=body)
        self._expect(r, 200, 201, 204)

    async def user_devices(self, user_id: str) -> api.UserDevices:
        r = await self._device("GET", f"/v1/users/{quote(user_id, safe='')}/devices")
        return self._decode(r, api.UserDevices)

    async def claim_keys(self, device_ids: list[str]) -> api.ClaimedKeys:
        r = await self._device("POST", "/v1/keys/claim", body=api.KeyClaim(devices=device_ids))
        return self._decode(r, api.ClaimedKeys)

    async def upload_one_time_prekeys(self, prekeys: list[str]) -> api.PrekeyCount:
        r = await self._device("POST", "/v1/keys/one-time", body=api.PrekeyUpload(prekeys=prekeys))
        return self._decode(r, api.PrekeyCount)

    async def upload_signed_prekey(self, signed_prekey: str) -> None:
        r = await self._device("PUT", "/v1/keys/signed-prekey",
                               body=api.SignedPrekeyUpload(signed_prekey=signed_prekey))
        self._expect(r, 200, 204)

    async def prekey_count(self) -> api.PrekeyCount:
        return self._decode(await self._device("GET", "/v1/keys/count"), api.PrekeyCount)

    async def directory(self, q: str = "", *, login: str | None = None) -> api.DirectoryResult:
        """A directory search (``q``), or the one user whose login is exactly ``login``."""
        params = {"q": q} if login is None else {"login": login}
        return self._decode(await self._device("GET", "/v1/directory", params=params),
                            api.DirectoryResult)

    # --- attachments (PROTOCOL §12) ---------------------------------------------------------

    async def create_upload(self, size: int) -> api.UploadStatus:
        r = await self._device("POST", "/v1/attachments", body=api.UploadCreate(size=size))
        return self._decode(r, api.UploadStatus)

    async def upload_status(self, attachment_id: str) -> api.UploadStatus:
        r = await self._device("GET", f"/v1/attachments/{quote(attachment_id, safe='')}/upload")
        return self._decode(r, api.UploadStatus)

    async def put_chunk(self, attachment_id: str, offset: int, data: bytes) -> api.UploadStatus:
        r = await self._device("PUT", f"/v1/attachments/{quote(attachment_id, safe='')}/upload",
                               params={"offset": str(offset)}, raw=data)
        return self._decode(r, api.UploadStatus)

    async def finalise_upload(self, attachment_id: str, sha256_hex: str) -> api.UploadStatus:
        r = await self._device("POST",
                               f"/v1/attachments/{quote(attachment_id, safe='')}/finalise",
                               body=api.UploadFinalise(sha256=sha256_hex))
        return self._decode(r, api.UploadStatus)

    @contextlib.asynccontextmanager
    async def download_stream(self, attachment_id: str, *, start: int = 0
                              ) -> AsyncIterator[httpx.Response]:
        """Stream an attachment's ciphertext from byte ``start`` (a Range request when > 0).
        A transfer that breaks raises :class:`RelayUnavailable`; resume from what arrived."""
        path = f"/v1/attachments/{quote(attachment_id, safe='')}"
        await self._fresh_token()
        request = self._client.build_request(
            "GET", self.base_url + path, headers={"Range": f"bytes={start}-"} if start else None)
        request.headers.update(self._device_headers(request))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise RelayUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        try:
            if response.status_code >= 400:
                await response.aread()
                raise parse_problem(response)
            if response.status_code != (206 if start else 200):
                raise RelayResponseError(f"GET {path}: unexpected status "
                                         f"{response.status_code}")
            yield response
        except httpx.HTTPError as exc:
            raise RelayUnavailable(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        finally:
            await response.aclose()

    # --- consent (PROTOCOL §13) ---------------------------------------------------------------

    async def register_consent(self, token: str) -> api.ConsentInfo:
        r = await self._device("POST", "/v1/consents", body=api.ConsentRegister(token=token))
        return self._decode(r, api.ConsentInfo)

    async def get_consent(self, consent_id: str) -> api.ConsentInfo:
        r = await self._device("GET", f"/v1/consents/{quote(consent_id, safe='')}")
        return self._decode(r, api.ConsentInfo)

    async def revoke_consent(self, consent_id: str, reason: str = "") -> api.ConsentRevoked:
        r = await self._device("POST", f"/v1/consents/{quote(consent_id, safe='')}/revoke",
                               body=api.ConsentRevoke(reason=reason) if reason else None)
        return self._decode(r, api.ConsentRevoked)

    async def my_consents(self) -> api.ConsentList:
        """The consents this user captured, newest first."""
        return self._decode(await self._device("GET", "/v1/consents"), api.ConsentList)

    async def admin_consent(self, consent_id: str) -> api.ConsentWithdrawal:
        """The privacy office's view of a consent (admin session)."""
        r = await self._send("GET", f"/v1/admin/consents/{quote(consent_id, safe='')}",
                             headers=self._admin_headers())
        return self._decode(r, api.ConsentWithdrawal)

    async def admin_revoke_consent(self, consent_id: str, reason: str) -> api.ConsentRevoked:
        """Withdraw a consent for the privacy office (admin session; the reason is audited)."""
        r = await self._send("POST", f"/v1/admin/consents/{quote(consent_id, safe='')}/revoke",
                             body=api.ConsentRevoke(reason=reason),
                             headers=self._admin_headers())
        return self._decode(r, api.ConsentRevoked)

    async def report_consent_mismatch(self, consent_id: str, body: api.ConsentMismatch) -> None:
        r = await self._device("POST", f"/v1/consents/{quote(consent_id, safe='')}/mismatch",
                               body=body)
        self._expect(r, 204)

    # --- break-glass (PROTOCOL §17) -------------------------------------------------------------

    async def break_glass_pending(self) -> api.BreakGlassList:
        """This user's emergency messages still waiting for a consent or a reason."""
        return self._decode(await self._device("GET", "/v1/break-glass"), api.BreakGlassList)

    async def break_glass_follow_up(self, case_id: str,
                                    body: api.BreakGlassFollowUp) -> api.BreakGlassCase:
        r = await self._device("POST", f"/v1/break-glass/{quote(case_id, safe='')}/follow-up",
                               body=body)
        return self._decode(r, api.BreakGlassCase)

    async def admin_break_glass(self, *, status: str = "open", since: int | None = None,
                                until: int | None = None) -> api.BreakGlassList:
        """The privacy office's review queue (admin session)."""
        r = await self._send("GET", "/v1/admin/break-glass", headers=self._admin_headers(),
                             params=_window({"status": status}, since, until))
        return self._decode(r, api.BreakGlassList)

    async def admin_break_glass_case(self, case_id: str) -> api.BreakGlassCase:
        r = await self._send("GET", f"/v1/admin/break-glass/{quote(case_id, safe='')}",
                             headers=self._admin_headers())
        return self._decode(r, api.BreakGlassCase)

    async def admin_close_break_glass(self, case_id: str,
                                      body: api.BreakGlassClose) -> api.BreakGlassCase:
        r = await self._send("POST", f"/v1/admin/break-glass/{quote(case_id, safe='')}/close",
                             body=body, headers=self._admin_headers())
        return self._decode(r, api.BreakGlassCase)

    async def admin_break_glass_report(self, *, since: int | None = None,
                                       until: int | None = None) -> api.BreakGlassReport:
        r = await self._send("GET", "/v1/admin/break-glass/report",
                             headers=self._admin_headers(), params=_window({}, since, until))
        return self._decode(r, api.BreakGlassReport)

    # --- threads (PROTOCOL §11) ------------------------------------------------------------------

    async def create_thread(self, body: api.ThreadCreate) -> api.ThreadInfo:
        return self._decode(await self._device("POST", "/v1/threads", body=body), api.ThreadInfo)

    async def threads(self) -> api.ThreadList:
        return self._decode(await self._device("GET", "/v1/threads"), api.ThreadList)

    async def thread_recipients(self, thread_id: str) -> api.ThreadRecipients:
        r = await self._device("GET", f"/v1/threads/{quote(thread_id, safe='')}/recipients")
        return self._decode(r, api.ThreadRecipients)

    async def mark_thread_read(self, thread_id: str, seq: int) -> None:
        r = await self._device("POST", f"/v1/threads/{quote(thread_id, safe='')}/read",
                               body=api.ReadMark(seq=seq))
        self._expect(r, 204)

    # --- on-call, receipts and escalations (PROTOCOL §16) ----------------------------------------

    async def on_call(self, role: str, at: int | None = None) -> api.OnCall:
        """Who is on call for a role of my organisation (now, or at ``at``)."""
        params = None if at is None else {"at": str(at)}
        r = await self._device("GET", f"/v1/oncall/{quote(role, safe='')}", params=params)
        return self._decode(r, api.OnCall)

    async def thread_receipts(self, thread_id: str, message_id: str | None = None
                              ) -> api.ReceiptList:
        params = None if message_id is None else {"message_id": message_id}
        r = await self._device("GET", f"/v1/threads/{quote(thread_id, safe='')}/receipts",
                               params=params)
        return self._decode(r, api.ReceiptList)

    async def thread_escalations(self, thread_id: str) -> api.EscalationList:
        r = await self._device("GET", f"/v1/threads/{quote(thread_id, safe='')}/escalations")
        return self._decode(r, api.EscalationList)

    def _oncall_path(self, org_id: str, role: str) -> str:
        return f"/v1/admin/oncall/{quote(org_id, safe='')}/{quote(role, safe='')}"

    async def oncall_roles(self) -> api.OncallRoleList:
        r = await self._send("GET", "/v1/admin/oncall", headers=self._admin_headers())
        return self._decode(r, api.OncallRoleList)

    async def set_oncall_role(self, org_id: str, role: str, body: api.OncallRoleSet
                              ) -> api.OncallRoleInfo:
        r = await self._send("PUT", self._oncall_path(org_id, role), body=body,
                             headers=self._admin_headers())
        return self._decode(r, api.OncallRoleInfo)

    async def add_shifts(self, org_id: str, role: str, body: api.ShiftsUpload
                         ) -> api.ShiftResults:
        r = await self._send("POST", self._oncall_path(org_id, role) + "/shifts", body=body,
                             headers=self._admin_headers())
        return self._decode(r, api.ShiftResults)

    async def shifts(self, org_id: str, role: str, *, current: bool = False) -> api.ShiftList:
        r = await self._send("GET", self._oncall_path(org_id, role) + "/shifts",
                             params={"current": "1"} if current else None,
                             headers=self._admin_headers())
        return self._decode(r, api.ShiftList)

    async def delete_shift(self, org_id: str, role: str, shift_id: str) -> None:
        r = await self._send(
            "DELETE", self._oncall_path(org_id, role) + f"/shifts/{quote(shift_id, safe='')}",
            headers=self._admin_headers())
        self._expect(r, 204)


def _window(params: dict[str, str], since: int | None, until: int | None) -> dict[str, str]:
    """Query parameters with an optional [since, until) period in seconds since 1970."""
    out = dict(params)
    if since is not None:
        out["since"] = str(since)
    if until is not None:
        out["until"] = str(until)
    return out
