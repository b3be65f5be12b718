"""The hospital's identity provider for the tests: oidc-provider (an OpenID Certified
implementation, tests/idp/) run by Node with a signing key made here, so a test can also sign
tokens the IdP never would (another audience, expired) with the very key the IdP publishes.

``running_idp(accounts)`` starts it on a loopback port and stops it after; a machine without
Node, or without ``make install``'s ``npm ci``, fails with how to fix it, never a silent skip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.helpers import ROOT, seconds

__all__ = ["CLIENT_ID", "IdP", "IdpMissing", "require_idp", "running_idp"]

IDP_DIR = ROOT / "tests" / "idp"
CLIENT_ID = "lightbox-cli"


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
                clients: tuple[str, ...] = (CLIENT_ID,), port: int = 0) -> Iterator[IdP]:
    """The IdP with a fresh signing key; ``port`` (0: any) lets a test restart it where the
    relay expects it, with a new key: a key rotation."""
    node = require_idp()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = uuid.uuid4().hex
    jwk = json.loads(RSAAlgorithm.to_jwk(key))
    jwk.update(kid=kid, use="sig", alg="RS256")
    with tempfile.TemporaryDirectory(prefix="lightbox-idp-") as tmp:
        config = Path(tmp) / "idp.json"
        config.write_text(json.dumps({
            "port": port, "jwks": {"keys": [jwk]}, "accounts": accounts,
            "clients": [{"client_id": c, "redirect_uris": ["http://127.0.0.1/callback"]}
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
                yield IdP(issuer=line.split()[1], key=key, kid=kid)
            finally:
                proc.terminate()
                try:
                    proc.wait(seconds(10))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
