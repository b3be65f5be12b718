"""Clinicians with real SDK clients for the client tests: each is provisioned by IT on a real
relay (tests/identity_world.py), enrols a device whose prekey secrets it keeps, and holds a
vault (cheap Argon2id) with its device state inside, as the desktop and CLI keep them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.sdk.client import LightboxClient
from clients.sdk.identity import make_prekeys
from clients.sdk.keystore import DeviceState
from clients.sdk.vault import Vault
from protocol.api import TokenPair
from protocol.certs import DeviceCertificate, issue_device_certificate
from protocol.keys import CHEAP_PROFILE, DeviceKeys
from protocol.model import DeviceKind
from tests.helpers import ROOT, make_settings, running_relay
from tests.identity_world import PASSWORD, User, World, identity_world

__all__ = ["Clinician", "cli_world", "enrol_clinician", "intern_and_specialist",
           "lightbox_process", "profile_session", "relay_back", "use_cli_profiles"]


@dataclasses.dataclass
class Clinician:
    user: User
    vault: Vault
    client: LightboxClient

    @property
    def user_id(self) -> str:
        return self.user.user_id


async def enrol_clinician(world: World, tmp: Path, login: str, *,
                          roles: tuple[str, ...] = ("intern",), display_name: str = "",
                          kind: DeviceKind = DeviceKind.MOBILE, one_time: int = 25,
                          provision: bool = True, user: User | None = None,
                          vault_dir: Path | None = None, id_token: str | None = None
                          ) -> Clinician:
    """Provision ``login`` (unless ``user`` is given), enrol a device keeping its prekey
    secrets, store the state in a fresh vault, and return an (unstarted) SDK client. With
    ``id_token`` (the IdP's, for a relay nonce) it enrols as ``lightbox enroll --sso`` does:
    no relay password, the device signs in at the IdP (``DeviceState.sso``)."""
    user = user or world.org.user(login, roles=roles,
                                  display_name=display_name or f"Dr {login.title()}")
    if provision:
        (result,) = await world.provision(user)
        assert result["ok"], result
    now = int(time.time())
    keys = DeviceKeys.generate(str(uuid.uuid4()))
    cert = issue_device_certificate(DeviceCertificate(
        v=1, device_id=keys.device_id, user_id=user.user_id, org_id=user.org.org_id, kind=kind,
        signing_key=keys.signing.public, dh_key=keys.dh.public, issued_at=now - 60,
        not_after=now + 365 * 86400), user.identity)
    batch = make_prekeys(keys, first_id=1, one_time=one_time, signed=True, now=now)
    assert batch.signed_token is not None and batch.signed_secret is not None
    first_factor = ({"password": PASSWORD} if id_token is None
                    else {"org_id": user.org.org_id, "id_token": id_token})
    r = await world.http.post(
        "/v1/enrol/complete" if id_token is None else "/v1/enrol/complete-sso",
        json={"enrolment_token": user.token_b64, "device_certificate": cert,
              "signed_prekey": batch.signed_token, "one_time_prekeys": batch.one_time_tokens,
              **first_factor})
    assert r.status_code == 200, r.text
    state = DeviceState(
        server_url=world.relay.base_url, login=user.login, user_id=user.user_id,
        org_id=user.org.org_id, org_public_key=user.org.key.public,
        identity_seed=user.identity.seed.reveal(), device_id=keys.device_id,
        device_kind=kind.value, device_seed=keys.signing.seed.reveal(),
        dh_secret=keys.dh.secret.reveal(), user_certificate=user.cert, device_certificate=cert,
        signed_prekeys=[batch.signed_secret], one_time_prekeys=batch.one_time_secrets,
        next_prekey_id=batch.next_prekey_id, sso=id_token is not None)
    vault = Vault(vault_dir or tmp / f"vault-{login}-{keys.device_id[:8]}", kdf=CHEAP_PROFILE)
    vault.create(PASSWORD)
    vault.save(state)
    client = LightboxClient(vault, vault, password=PASSWORD, backoff_base=0.05,
                            backoff_max=0.5)
    return Clinician(user, vault, client)


def use_cli_profiles(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Path:
    """The ``lightbox`` CLI's environment in a test: profiles under ``tmp/home`` (a profile
    is ``home/<name>``, where :func:`enrol_clinician` can put its vault), the test password,
    the cheap Argon2id profile. Returns the home folder."""
    home = tmp / "home"
    monkeypatch.setenv("LIGHTBOX_HOME", str(home))
    monkeypatch.setenv("LIGHTBOX_PASSWORD", PASSWORD)
    monkeypatch.setenv("LIGHTBOX_INSECURE_FAST_KDF", "1")
    monkeypatch.delenv("LIGHTBOX_PROFILE", raising=False)
    return home


async def intern_and_specialist(world: World, tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                role: str) -> tuple[Clinician, Clinician]:
    """In the CLI's environment (:func:`use_cli_profiles`), the intern "Dr Ada Intern" (an SDK
    client, not started, on profile ``intern``) and the specialist "Dr Bea Ortho" holding
    ``role`` on profile ``ortho``, her vault locked for a ``lightbox`` process to open."""
    home = use_cli_profiles(monkeypatch, tmp)
    intern = await enrol_clinician(world, tmp, "intern", display_name="Dr Ada Intern",
                                   vault_dir=home / "intern")
    ortho = await enrol_clinician(world, tmp, "ortho", roles=(role,),
                                  display_name="Dr Bea Ortho", vault_dir=home / "ortho")
    ortho.vault.lock()
    return intern, ortho


def profile_session(home: Path, profile: str) -> TokenPair | None:
    """The session a CLI profile's vault holds now (``home/profile``, the test password)."""
    vault = Vault(home / profile, kdf=CHEAP_PROFILE)
    vault.unlock(PASSWORD)
    try:
        return vault.state.session
    finally:
        vault.lock()


@pytest.fixture
async def cli_world(db_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                    ) -> AsyncIterator[World]:
    """The world of the ``lightbox`` CLI tests: a relay (attachments in 64 KiB chunks, so an
    image goes in several) and the CLI's environment (:func:`use_cli_profiles`). A test
    module takes it as its ``world`` with ``world = cli_world``."""
    use_cli_profiles(monkeypatch, tmp_path)
    async with identity_world(db_dsn, tmp_path, attachment_chunk_bytes=64 * 1024) as w:
        yield w


async def lightbox_process(*argv: str) -> asyncio.subprocess.Process:
    """``lightbox ARGV`` as a process of its own (a phone that can be killed)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.clinician.cli", *argv, cwd=ROOT, env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def run_cli(*argv: str) -> tuple[int, str, str]:
    """``lightbox ARGV`` in this process, in a thread (its exit status, stdout and stderr)."""
    from clients.clinician import cli  # the CLI, only for the tests that run it

    def call(args: list[str]) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(args)
        return rc, out.getvalue(), err.getvalue()
    return await asyncio.to_thread(call, list(argv))


@contextlib.asynccontextmanager
async def relay_back(world: World, tmp: Path) -> AsyncIterator[None]:
    """The relay of ``world`` (a :func:`cli_world`'s, stopped by the test with
    ``world.relay.stop``) serving again on its own port, database and organisations: IT's
    restart as the clients meet it."""
    settings = make_settings(trusted_orgs_file=tmp / "trusted-orgs.json",
                             port=int(world.relay.base_url.rsplit(":", 1)[1]),
                             attachment_chunk_bytes=64 * 1024)
    async with running_relay(world.dsn, settings, clock=world.clock):
        yield
