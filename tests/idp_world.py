"""The hospital's identity provider for the tests: oidc-provider (an OpenID Certified
implementation, tests/idp/) run by Node with a signing key made here, so a test can also sign
tokens the IdP never would (another audience, expired) with the very key the IdP publishes.

``running_idp(accounts)`` starts it on a loopback port and stops it after; a machine without
Node, or without ``make install``'s ``npm ci``, fails with how to fix it, never a silent skip.
``IdP.set_account`` changes a user at the IdP (their groups) for the next sign-in, and
``IdP.sign_in`` runs the real Authorization Code flow with PKCE (RFC 7636) through its own
sign-in and consent pages, as a browser would, for the ID token it issues.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.helpers import ROOT, seconds

__all__ = ["CLIENT_ID", "IdP", "IdpMissing", "require_idp", "running_idp"]

IDP_DIR = ROOT / "tests" / "idp"
CLIENT_ID = "lightbox-cli"
REDIRECT_URI = "http://127.0.0.1/callback"


class IdpMissing(RuntimeError):
    pass


def require_idp() -> str:
    node = shutil.which("node")
    if node is None:
        raise IdpMissing("node is not installed: the test IdP (tests/idp, oidc-provider) needs "
                         "Node.js 20 or later (apt-get install nodejs npm), then make install")
    if not (IDP_DIR / "node_modules" / "oidc-provider").exists():
        raise IdpMissing("tests/idp has no node_modules: run make install (npm ci there)")
    return node


@dataclasses.dataclass
class IdP:
    issuer: str
    key: rsa.RSAPrivateKey
    kid: str
    config: Path

    def set_account(self, login: str, **fields: Any) -> None:
        """Change ``login`` at the IdP (``groups``, ``disabled``): its next sign-in sees it."""
        config = json.loads(self.config.read_text())
        config["accounts"].setdefault(login, {}).update(fields)
        self.config.write_text(json.dumps(config))

    async def sign_in(self, login: str, *, nonce: str, scope: str = "openid profile groups",
                      client_id: str = CLIENT_ID) -> str:
        """The ID token the IdP issues to ``login`` by the Authorization Code flow with PKCE
        (RFC 7636 S256; RFC 9700 §2.1.1), its own sign-in and consent forms posted as a
        browser posts them; the redirect to the client is read, not followed."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(16)
        url = self.issuer + "/auth?" + urlencode({
            "client_id": client_id, "redirect_uri": REDIRECT_URI, "response_type": "code",
            "scope": scope, "nonce": nonce, "state": state, "code_challenge": challenge,
            "code_challenge_method": "S256"})
        async with httpx.AsyncClient(timeout=seconds(10)) as http:
            response = await http.get(url)
            for _ in range(10):
                if response.is_redirect:
                    target = urljoin(str(response.url), response.headers["location"])
                    if target.startswith(REDIRECT_URI):
                        query = parse_qs(urlsplit(target).query)
                        assert query.get("state") == [state], target
                        assert "code" in query, f"the IdP refused: {target}"
                        break
                    response = await http.get(target)
                    continue
                assert response.status_code == 200, response.text
                action = re.search(r'<form[^>]*action="([^"]+)"', response.text)
                prompt = re.search(r'name="prompt" value="(\w+)"', response.text)
                assert action and prompt, f"no form on the IdP's page: {response.text}"
                form = {"prompt": prompt.group(1)}
                if form["prompt"] == "login":
                    form |= {"login": login, "password": "the hospital password"}
                response = await http.post(urljoin(str(response.url), action.group(1)),
                                           data=form)
            else:
                raise AssertionError("the IdP never redirected back to the client")
            tokens = await http.post(self.issuer + "/token", data={
                "grant_type": "authorization_code", "code": query["code"][0],
                "redirect_uri": REDIRECT_URI, "client_id": client_id,
                "code_verifier": verifier})
        assert tokens.status_code == 200, tokens.text
        id_token: str = tokens.json()["id_token"]
        return id_token

    @property
    def port(self) -> int:
        return int(self.issuer.rsplit(":", 1)[1])

    def sign(self, claims: dict[str, Any], *, key: rsa.RSAPrivateKey | None = None,
             kid: str | None = None) -> str:
        """An ID token signed as the IdP signs (RS256, its kid), with the claims given."""
        return jwt.encode(claims, key or self.key, algorithm="RS256",
                          headers={"kid": kid or self.kid})

    def claims(self, *, sub: str, nonce: str, aud: str = CLIENT_ID,
               lifetime: int = 600, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.issuer, "sub": sub, "aud": aud, "iat": now, "exp": now + lifetime,
                "nonce": nonce, "preferred_username": sub, **extra}


@contextlib.contextmanager
def running_idp(accounts: dict[str, dict[str, Any]], *,
                clients: tuple[str, ...] = (CLIENT_ID,), port: int = 0,
                redirect_uris: tuple[str, ...] = ()) -> Iterator[IdP]:
    """The IdP with a fresh signing key; ``port`` (0: any) lets a test restart it where the
    relay expects it, with a new key: a key rotation. ``redirect_uris`` are registered for
    every client beside the loopback one (the phone app's ``sso-callback.html``; the IdP allows
    CORS to its token endpoint from a public client's registered origins)."""
    node = require_idp()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = uuid.uuid4().hex
    jwk = json.loads(RSAAlgorithm.to_jwk(key))
    jwk.update(kid=kid, use="sig", alg="RS256")
    with tempfile.TemporaryDirectory(prefix="lightbox-idp-") as tmp:
        config = Path(tmp) / "idp.json"
        config.write_text(json.dumps({
            "port": port, "jwks": {"keys": [jwk]}, "accounts": dict(accounts),
            "clients": [{"client_id": c, "redirect_uris": [REDIRECT_URI, *redirect_uris]}
                        for c in clients]}))
        log = Path(tmp) / "idp.log"
        with log.open("w") as errors, subprocess.Popen(
                [node, str(IDP_DIR / "server.mjs"), str(config)], cwd=IDP_DIR,
                stdout=subprocess.PIPE, stderr=errors, text=True) as proc:
            try:
                assert proc.stdout is not None
                deadline = time.monotonic() + seconds(30)
                line = ""
                while not line.startswith("ready ") and time.monotonic() < deadline:
                    line = proc.stdout.readline()
                    if not line and proc.poll() is not None:
                        raise RuntimeError(f"the test IdP did not start: {log.read_text()}")
                yield IdP(issuer=line.split()[1], key=key, kid=kid, config=config)
            finally:
                proc.terminate()
                try:
                    proc.wait(seconds(10))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
