"""Single sign-on from a native client: the OpenID Connect Authorization Code flow with PKCE
and a loopback redirect (RFC 8252 §7.3, RFC 7636, RFC 9700 §2.1.1).

The client asks the relay which IdP and client id its organisation uses and for a single-use
challenge, which becomes the OpenID ``nonce``; it listens on ``http://127.0.0.1:<any port>``,
shows (and, where there is a browser, opens) the IdP's authorization URL, checks ``state`` on
the redirect (RFC 6749 §10.12), and exchanges the code with its PKCE verifier at the token
endpoint. The ID token goes to the relay, which verifies it (server/oidc.py); the client does
not need to, and trusts nothing in it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import html
import json
import secrets
import webbrowser
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from clients.sdk.addresses import tls_context
from clients.sdk.errors import FlowError, RelayRequestError, SDKError
from clients.sdk.http import RelayHTTP
from clients.sdk.transport import KEEPALIVE_EXPIRY

__all__ = ["SignedIn", "SignedInAsSomeoneElse", "sign_in", "someone_else"]

_PAGE = ("<!doctype html><title>Lightbox</title><p>{message}</p>"
         "<p>You can close this window and return to Lightbox.</p>")


@dataclasses.dataclass(frozen=True)
class SignedIn:
    id_token: str
    nonce: str  # b64url: the relay's challenge, which the device signs


class SignedInAsSomeoneElse(SDKError):
    """The user signed in at the identity provider as another person than this device's user,
    and the relay refused the sign-in: nothing changed."""

    def __init__(self, login: str) -> None:
        self.login = login
        super().__init__(f"you signed in at the hospital's sign-on as someone else than "
                         f"{login}; nothing changed: sign in there as {login}")


# Claims an IdP names its user by (OpenID Connect Core 1.0 §5.1; ``upn``: Microsoft Entra ID).
_NAME_CLAIMS = ("preferred_username", "email", "upn")


def someone_else(refused: RelayRequestError, signed_in: SignedIn, login: str
                 ) -> SignedInAsSomeoneElse | None:
    """The error to tell when the relay refused the sign-in because the ID token names another
    person than ``login`` (the relay found no such user, invalid_credentials, or one this device
    is not, challenge_failed), else None. The token's claims are read without verifying it,
    only to choose the words: the relay verified it and decided (server/oidc.py)."""
    if refused.code not in {"invalid_credentials", "challenge_failed"}:
        return None
    try:
        payload = signed_in.id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    if not isinstance(claims, dict):
        return None
    names = {str(claims[c]).lower() for c in _NAME_CLAIMS if isinstance(claims.get(c), str)}
    names |= {n.split("@", 1)[0] for n in names}
    if not names or login.lower() in names:
        return None  # not evidently someone else: the relay's own refusal says what
    return SignedInAsSomeoneElse(login)


def _pkce() -> tuple[str, str]:
    """RFC 7636 §4.1-4.2: a 43-128 character verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _Loopback:
    """A one-shot HTTP listener on 127.0.0.1 for the redirect (RFC 8252 §7.3)."""

    def __init__(self) -> None:
        self.result: asyncio.Future[dict[str, str]] = \
            asyncio.get_running_loop().create_future()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/callback"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = (await asyncio.wait_for(reader.readline(), 10)).decode("latin-1")
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.split()
            target = urlsplit(parts[1]) if len(parts) == 3 else None
            if target is None or target.path != "/callback" or self.result.done():
                status, message = "404 Not Found", "Not found."
            else:
                query = {k: v[0] for k, v in parse_qs(target.query).items()}
                self.result.set_result(query)
                status, message = "200 OK", ("Signed in." if "code" in query
                                             else "Sign-in did not complete.")
            body = _PAGE.format(message=html.escape(message)).encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n"
                         f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _discover(http: httpx.AsyncClient, issuer: str) -> dict[str, Any]:
    response = await http.get(issuer.rstrip("/") + "/.well-known/openid-configuration")
    response.raise_for_status()
    metadata: dict[str, Any] = response.json()
    if metadata.get("issuer") != issuer:  # OpenID Connect Discovery 1.0 §4.3
        raise FlowError("the identity provider's discovery document names another issuer",
                        code="sso_failed")
    return metadata


async def sign_in(relay: RelayHTTP, org_id: str, *, show: Callable[[str], None],
                  open_browser: bool = True, timeout: float = 300.0) -> SignedIn:
    """Run the flow for ``org_id`` and return the ID token and the nonce it carries.

    ``show`` is given the authorization URL (the CLI prints it); with ``open_browser`` it is
    also handed to the system's browser, when there is one."""
    config = await relay.sso_config(org_id)
    challenge = await relay.sso_challenge()
    verifier, code_challenge = _pkce()
    state = secrets.token_urlsafe(32)
    loopback = _Loopback()
    redirect_uri = await loopback.start()
    try:
        async with httpx.AsyncClient(  # idle while the user is at the IdP's page
                timeout=30, follow_redirects=False, verify=tls_context(),
                limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY)) as http:
            try:
                metadata = await _discover(http, config.issuer)
            except (httpx.HTTPError, ValueError) as exc:
                raise FlowError(f"the identity provider is unreachable: {type(exc).__name__}",
                                code="sso_failed") from exc
            url = metadata["authorization_endpoint"] + "?" + urlencode({
                "response_type": "code", "client_id": config.client_id,
                "redirect_uri": redirect_uri, "scope": " ".join(config.scopes),
                "state": state, "nonce": challenge.nonce, "code_challenge": code_challenge,
                "code_challenge_method": "S256"})
            show(url)
            if open_browser:
                try:
                    webbrowser.open(url)
                except webbrowser.Error:
                    pass  # no browser here: the URL is shown
            try:
                query = await asyncio.wait_for(loopback.result, timeout)
            except TimeoutError as exc:
                raise FlowError("no answer from the sign-in page in time",
                                code="sso_failed") from exc
            if not secrets.compare_digest(query.get("state", ""), state):
                raise FlowError("the sign-in answer is not for this request (state)",
                                code="sso_failed")
            if "code" not in query:
                raise FlowError(f"the identity provider refused: {query.get('error', '?')}",
                                code="sso_failed")
            response = await http.post(metadata["token_endpoint"], data={
                "grant_type": "authorization_code", "code": query["code"],
                "redirect_uri": redirect_uri, "client_id": config.client_id,
                "code_verifier": verifier})
            if response.status_code != 200:
                raise FlowError(f"the identity provider refused the code "
                                f"(HTTP {response.status_code})", code="sso_failed")
            id_token = response.json().get("id_token")
            if not isinstance(id_token, str):
                raise FlowError("the identity provider sent no ID token", code="sso_failed")
    finally:
        await loopback.close()
    return SignedIn(id_token=id_token, nonce=challenge.nonce)
