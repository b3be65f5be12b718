"""How a client sends a request to the relay's HTTP API (docs/PROTOCOL.md §11): the one place
that builds, authenticates, sends and retries it. The routes themselves are a list in
:mod:`clients.sdk.http`; the answer mapping is :mod:`clients.sdk.answers`; the proof of
possession is :mod:`clients.sdk.proof`.

Device requests carry ``Authorization: Bearer <access token>`` and a ``Lightbox-Proof`` signed
over the request exactly as it is sent (its encoded target and its body bytes). The access
token is refreshed through ``/v1/auth/refresh`` shortly before it expires, or once after a
``token_expired`` answer; every new token pair is handed to ``on_tokens`` so the caller can
persist the rotated refresh token.

Refresh is *single flight* (:mod:`clients.sdk.singleflight`): however many requests (and
websocket reconnections) find the token stale at once, one refresh goes to the relay and every
caller waits for it and uses the pair it brings. Presenting the same refresh token twice would
otherwise look like a stolen copy to the relay, which then ends the session (docs/SECURITY.md
"Identity and sessions"). Across the programs of one profile (``shared``), each refresh is
made under the profile's lock from the newest pair the profile holds
(:mod:`clients.sdk.sharedtokens`). A refresh refused because the session ended is replaced,
once, by ``login_again`` where the caller can log in again.
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import httpx
import msgspec

from clients.sdk.addresses import require_tls, tls_context
from clients.sdk.answers import MAX_RESPONSE_BYTES, decode_answer, expect_status, parse_problem
from clients.sdk.errors import (
    RelayRequestError,
    RelayResponseError,
    RelayUnavailable,
    SessionEnded,
    causes,
)
from clients.sdk.proof import proof_header
from clients.sdk.sharedtokens import SharedTokens
from clients.sdk.singleflight import SingleFlight
from protocol import api
from protocol.keys import Ed25519KeyPair

__all__ = ["KEEPALIVE_EXPIRY", "REFRESH_MARGIN", "RelayTransport", "Signer", "TokenCallback",
           "certificate_refusal", "gateway_unavailable", "unreachable"]

T = TypeVar("T")


def unreachable(method: str, path: str, exc: httpx.HTTPError) -> RelayUnavailable:
    """RelayUnavailable for a request that never got its answer: the technical detail in
    ``str()`` (for logs; httpx's own text is often empty), a plain cause as ``reason``."""
    if isinstance(exc, httpx.ConnectTimeout):
        reason = "the connection timed out"
    elif isinstance(exc, httpx.TimeoutException):
        reason = "it did not answer in time"
    elif isinstance(exc, httpx.ConnectError):
        reason = _tls_refusal(exc) or "no connection could be made"
    elif isinstance(exc, httpx.TransportError):
        reason = "the connection broke before it answered"
    else:
        reason = "the request could not be sent"
    detail = f": {exc}" if str(exc) else ""
    return RelayUnavailable(f"{method} {path}: {type(exc).__name__}{detail}", reason=reason)


def certificate_refusal(error: ssl.SSLCertVerificationError) -> str:
    """A certificate that does not verify (its path, RFC 5280 §6, or its name, RFC 6125 §6),
    in words."""
    return f"its TLS certificate does not verify: {error.verify_message}"


def _tls_refusal(exc: BaseException) -> str | None:
    """Why TLS failed, in words, when it did: a certificate that does not verify, or an answer
    that is not TLS at all (an ``https://`` address for a server that speaks plain HTTP,
    OpenSSL's ``WRONG_VERSION_NUMBER``)."""
    for cause in causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return certificate_refusal(cause)
        if isinstance(cause, ssl.SSLError) and cause.reason == "WRONG_VERSION_NUMBER":
            return ("it did not answer in TLS: if it serves plain http:// (a relay without its "
                    "TLS proxy, on this computer), write the address with http://")
    return None


def gateway_unavailable(method: str, path: str,
                        response: httpx.Response) -> RelayUnavailable | None:
    """RelayUnavailable for an answer not from the relay: 502, 503 or 504 with no problem
    document of the relay's (RFC 9110 §15.6.3-15.6.5: a gateway or proxy in front of it that
    cannot reach it, say while it restarts), the same as a relay out of reach, and tried again
    as one; None otherwise (the relay's own 503 says what it means: not_ready, queue_full)."""
    status = response.status_code
    if status not in {502, 503, 504} or parse_problem(response).code != f"http_{status}":
        return None
    return RelayUnavailable(f"{method} {path}: HTTP {status} without a problem document",
                            reason=f"HTTP {status} from a proxy in front of it: the relay may "
                                   "be restarting")


Signer = Ed25519KeyPair
TokenCallback = Callable[[api.TokenPair], Awaitable[None] | None]

_SESSION_ENDED = frozenset({"token_invalid", "token_expired", "refresh_reused"})
REFRESH_MARGIN = 60  # seconds before expiry at which a device refreshes its access token
# Seconds an idle connection is kept for reuse: below the servers' own idle timeouts (the
# relay's uvicorn and Node's HTTP server, the test IdP's, close after 5 s). A request sent on a
# connection the server is closing at that moment gets no answer (RFC 9112 §9.6), which the
# client can only report as an unreachable relay; a login's single-use nonce cannot be resent.
KEEPALIVE_EXPIRY = 2.0


class RelayTransport:
    """Async sender of requests to one relay. Use as ``async with ...(url) as relay: ...``.

    ``device`` (the device's Ed25519 signing key) and ``tokens`` enable device requests;
    ``admin_token`` enables admin requests. ``login_again`` (password and device signature)
    replaces a refresh the relay refuses because the session ended. ``sso``: the device signs
    in at its organisation's identity provider (``DeviceState.sso``). ``shared``: the session
    of a profile other programs may be using too. ``now`` is injectable for tests.
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
        sso: bool = False,
        shared: SharedTokens | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        require_tls(self.base_url, "the relay address")
        self.device = device
        self.tokens = tokens
        self.admin_token = admin_token
        self._on_tokens = on_tokens
        self._login_again = login_again
        self._now = now
        self.sso = sso
        self._shared = shared
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=timeout, headers={"User-Agent": "lightbox-sdk/0.1"}, follow_redirects=False,
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY), verify=tls_context(),
        )
        self._refreshing: SingleFlight[api.TokenPair] = SingleFlight()

    async def __aenter__(self) -> RelayTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # --- sending ----------------------------------------------------------------------------

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
            raise unreachable(method, path, exc) from exc
        if len(response.content) > MAX_RESPONSE_BYTES:
            raise RelayResponseError(f"{method} {path}: answer too large")
        if (unavailable := gateway_unavailable(method, path, response)) is not None:
            raise unavailable
        return response

    @staticmethod
    def _decode(response: httpx.Response, cls: type[T]) -> T:
        return decode_answer(response, cls)

    @staticmethod
    def _expect(response: httpx.Response, *statuses: int) -> None:
        expect_status(response, *statuses)

    def _admin_headers(self) -> dict[str, str]:
        if not self.admin_token:
            raise RelayRequestError("unauthenticated", 401, "no admin session: log in first")
        return {"Authorization": f"Bearer {self.admin_token}"}

    def proof_header(self, method: str, target: str, body: bytes, access_token: str) -> str:
        """``Lightbox-Proof`` for one request with this device's key, at the injected time."""
        if self.device is None:
            raise RelayRequestError("unauthenticated", 401, "no device key loaded")
        return proof_header(self.device, method, target, body, access_token,
                            seconds=int(self._now()))

    async def _device(
        self, method: str, path: str, *, body: msgspec.Struct | None = None,
        params: dict[str, str] | None = None, raw: bytes | None = None,
    ) -> httpx.Response:
        """A device request; after a ``token_expired`` answer, refreshed and sent once more, as
        after a session the relay ended for a client that can log in again (below). A session
        the relay ended (token_invalid) of a device that signs in at its identity
        provider (``sso``) is :class:`SessionEnded`: only the user can sign in again."""
        await self._fresh_token()
        response = await self._send(method, path, body=body, params=params, raw=raw, prove=True)
        if response.status_code == 401 and self.sso \
                and (code := parse_problem(response).code) in _SESSION_ENDED - {"token_expired"}:
            raise SessionEnded(code, sso=True)
        refused = parse_problem(response).code if response.status_code == 401 else None
        if refused == "token_expired" or (refused in _SESSION_ENDED
                                          and self._login_again is not None):
            # Expired: refreshed. Ended by the relay (a suspension since lifted, the session
            # ended as stolen) while the access token had time left: the refresh is refused
            # too, and a client that can log in again does (:meth:`_exchange`), once for all
            # the callers waiting; then the request goes once more.
            assert self.tokens is not None
            await self._refresh_if_stale(self.tokens)
            response = await self._send(method, path, body=body, params=params, raw=raw,
                                        prove=True)
        return response

    @contextlib.asynccontextmanager
    async def _device_stream(self, path: str, *, headers: dict[str, str] | None,
                             expect: int) -> AsyncIterator[httpx.Response]:
        """A device GET whose body is streamed; a transfer that breaks raises
        :class:`RelayUnavailable` (resume from what arrived)."""
        await self._fresh_token()
        request = self._client.build_request("GET", self.base_url + path, headers=headers)
        request.headers.update(self._device_headers(request))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise unreachable("GET", path, exc) from exc
        try:
            if response.status_code >= 400:
                await response.aread()
                raise gateway_unavailable("GET", path, response) or parse_problem(response)
            if response.status_code != expect:
                raise RelayResponseError(f"GET {path}: unexpected status "
                                         f"{response.status_code}")
            yield response
        except httpx.HTTPError as exc:
            raise unreachable("GET", path, exc) from exc
        finally:
            await response.aclose()

    def _device_headers(self, request: httpx.Request) -> dict[str, str]:
        assert self.tokens is not None
        token = self.tokens.access_token
        target = request.url.raw_path.decode("ascii")
        return {"Authorization": f"Bearer {token}",
                "Lightbox-Proof": self.proof_header(request.method, target, request.content,
                                                    token)}

    # --- tokens -----------------------------------------------------------------------------

    async def _fresh_token(self) -> None:
        if self.tokens is None:
            raise RelayRequestError("unauthenticated", 401, "not logged in")
        if self._now() >= self.tokens.expires_at - REFRESH_MARGIN:
            await self._refresh_if_stale(self.tokens)

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
        if self._shared is None:
            return await self._exchange()
        async with self._shared.lock():  # clients/sdk/sharedtokens.py
            stored = self._shared.stored()
            if stored is not None and self.tokens is not None \
                    and stored.refresh_token != self.tokens.refresh_token \
                    and stored.expires_at >= self.tokens.expires_at:  # issued since ours
                # Another program of this profile rotated the refresh token (or logged in)
                # since this one read it: presenting the rotated-out token again would be
                # reuse, which ends the session of every program (RFC 9700 §4.14.2). Its pair
                # is taken instead, and refreshed only if stale itself.
                self.tokens = stored
                if self._now() < stored.expires_at - REFRESH_MARGIN:
                    return stored
            return await self._exchange()

    async def _exchange(self) -> api.TokenPair:
        """The held refresh token for a new pair (saved through ``on_tokens``)."""
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
        return await self._set_tokens(decode_answer(r, api.TokenPair))
