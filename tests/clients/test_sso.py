"""clients/sdk/sso.py, the native client's side of OpenID Connect sign-in (RFC 8252 §7.3,
RFC 7636, RFC 6749 §10.12), against a real relay configured for a real IdP (tests/idp_world.py).
Here the "browser" is the test itself, answering on the client's loopback redirect as an IdP
or an attacker would: the authorization request carries the relay's challenge as the nonce
and an S256 PKCE challenge; an answer for another request (state), an IdP's refusal and a
code the IdP does not know each end the sign-in with a sentence, and the loopback answers
nothing but its callback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from clients.sdk.errors import FlowError
from clients.sdk.http import RelayHTTP
from clients.sdk.sso import sign_in
from tests.helpers import seconds
from tests.idp_world import CLIENT_ID
from tests.server.test_oidc import SSO_ORG, SsoWorld, sso

__all__ = ["sso"]  # the relay and IdP of tests/server/test_oidc.py

ORG = SSO_ORG


@pytest.fixture
async def relay(sso: SsoWorld) -> AsyncIterator[RelayHTTP]:
    async with RelayHTTP(sso.world.relay.base_url) as http:
        yield http


class Browser:
    """Takes the authorization URL the client shows and answers its redirect with
    ``answer(request query)``; what the loopback said is kept."""

    def __init__(self, answer: Callable[[dict[str, str]], dict[str, str]]) -> None:
        self.answer, self.request = answer, dict[str, str]()
        self.pages: list[httpx.Response] = []
        self.task: asyncio.Task[None] | None = None

    def __call__(self, url: str) -> None:
        self.request = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        self.task = asyncio.create_task(self._visit())

    async def _visit(self) -> None:
        redirect = self.request["redirect_uri"]
        async with httpx.AsyncClient(timeout=seconds(10)) as http:
            self.pages.append(await http.get(redirect.replace("/callback", "/elsewhere")))
            self.pages.append(await http.get(
                redirect + "?" + urlencode(self.answer(self.request))))


async def _refused(relay: RelayHTTP, browser: Browser) -> str:
    with pytest.raises(FlowError) as err:
        await sign_in(relay, ORG, show=browser, open_browser=False, timeout=seconds(30))
    assert err.value.code == "sso_failed"
    assert browser.task is not None
    await browser.task
    return str(err.value)


async def test_an_answer_for_another_request_is_refused(relay: RelayHTTP) -> None:
    browser = Browser(lambda q: {"code": "stolen-code", "state": "another-state"})
    assert await _refused(relay, browser) == "the sign-in answer is not for this request (state)"
    request = browser.request
    assert request["code_challenge_method"] == "S256" and len(request["code_challenge"]) == 43
    assert request["response_type"] == "code" and request["client_id"] == CLIENT_ID
    assert urlsplit(request["redirect_uri"]).hostname == "127.0.0.1"
    assert request["nonce"] and len(request["state"]) >= 43
    elsewhere, callback = browser.pages
    assert elsewhere.status_code == 404  # the loopback answers nothing but its callback
    assert callback.status_code == 200


async def test_the_identity_provider_s_refusal_is_told(relay: RelayHTTP) -> None:
    browser = Browser(lambda q: {"error": "access_denied", "state": q["state"]})
    assert await _refused(relay, browser) == "the identity provider refused: access_denied"
    assert "Sign-in did not complete." in browser.pages[1].text


async def test_a_code_the_identity_provider_does_not_know_is_refused(relay: RelayHTTP) -> None:
    browser = Browser(lambda q: {"code": "not-a-code-it-issued", "state": q["state"]})
    message = await _refused(relay, browser)
    assert message.startswith("the identity provider refused the code (HTTP 4")


async def test_each_sign_in_asks_with_a_fresh_nonce_state_and_pkce(relay: RelayHTTP) -> None:
    requests = []
    for _ in range(2):
        browser = Browser(lambda q: {"error": "access_denied", "state": q["state"]})
        await _refused(relay, browser)
        requests.append(browser.request)
    for field in ("nonce", "state", "code_challenge"):
        assert requests[0][field] != requests[1][field]
