"""Every command's failures, as a user meets them: ``lightbox``, ``lightbox-admin`` and
``lightbox-gateway`` run as subprocesses against a real relay (or a relay that is down), and
each failure ends with one sentence on stderr and a non-zero exit status, never a Python
traceback. The revoked phone is revoked and wiped through IT's real ``lightbox-admin device
revoke --wipe``, and hears its wipe order from the relay on its next command; a suspended
user is suspended through IT's real ``lightbox-admin user suspend``."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

import msgspec
import pytest

from clients.sdk.client import LightboxClient
from clients.sdk.keystore import KeyStore
from protocol.canonical import b64url_encode
from protocol.keys import CHEAP_PROFILE, seal_with_passphrase
from tests.clinician_world import Clinician, enrol_clinician
from tests.helpers import ROOT, seconds
from tests.identity_world import ADMIN_PASSWORD, PASSWORD, World

ORG_PASSPHRASE = "orbit lantern quarry 42"
REVOKED = re.compile(r"^This device was revoked by your organisation on "
                     r"(\d{4}-\d\d-\d\d \d\d:\d\d)(?: \S+)?; its data has been erased\.$", re.M)


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _env(tmp: Path, world: World | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTBOX_")}
    env.update({"LIGHTBOX_HOME": str(tmp / "home"), "LIGHTBOX_ADMIN_HOME": str(tmp / "it"),
                "LIGHTBOX_INSECURE_FAST_KDF": "1", "LIGHTBOX_PASSWORD": PASSWORD,
                "LIGHTBOX_PACS_URL": "http://127.0.0.1:9/dicom-web"})
    if world is not None:
        env.update({"LIGHTBOX_SERVER": world.relay.base_url,
                    "LIGHTBOX_ADMIN_TOKEN": world.admin_token,
                    "LIGHTBOX_ORG_KEYFILE": str(tmp / "it" / "org.key"),
                    "LIGHTBOX_ORG_PASSPHRASE": ORG_PASSPHRASE})
    env.update(extra)
    return env


async def run(program: str, *argv: str, env: dict[str, str],
              timeout: float = 60) -> tuple[int, str, str]:
    """Run ``lightbox`` (clinician/cli.py), ``lightbox-admin`` or ``lightbox-gateway`` as a user
    does, in a process of its own."""
    module = {"lightbox": "clients.clinician.cli", "lightbox-admin": "clients.admin.cli",
              "lightbox-gateway": "clients.gateway.cli"}[program]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *argv, cwd=ROOT, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    return await finish(proc, timeout)


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60
                 ) -> tuple[int, str, str]:
    """The status and output of ``proc`` once it ends, killed after ``timeout`` seconds."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds(timeout))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def run_all(cases: list[tuple[str, tuple[str, ...], dict[str, str]]]
                  ) -> list[tuple[int, str, str]]:
    """Run independent commands a few at a time (each is a process of its own)."""
    gate = asyncio.Semaphore(4)

    async def one(program: str, argv: tuple[str, ...], env: dict[str, str]
                  ) -> tuple[int, str, str]:
        async with gate:
            return await run(program, *argv, env=env)

    return await asyncio.gather(*(one(*case) for case in cases))


def assert_one_sentence(rc: int, out: str, err: str) -> None:
    assert rc != 0, (out, err)
    assert "Traceback" not in out + err, err
    assert err.strip(), "a failure must say why"


def _write_org_keyfile(world: World, path: Path) -> None:
    """IT's keyfile for the world's organisation (as `lightbox-admin org init` writes it)."""
    sealed = seal_with_passphrase(world.org.key.seed.reveal(), ORG_PASSPHRASE,
                                  opslimit=CHEAP_PROFILE.opslimit,
                                  memlimit=CHEAP_PROFILE.memlimit)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"org_id": world.org.org_id,
                                "public_key": world.org.public_b64,
                                "sealed_seed": b64url_encode(sealed)}))
    path.chmod(0o600)


async def _phone(world: World, tmp: Path, login: str = "ada.phone") -> tuple[Clinician, str]:
    """An enrolled, logged-in phone profile whose access token has since expired (locked),
    and its device id."""
    c = await enrol_clinician(world, tmp, login, vault_dir=tmp / "home" / "phone")
    await c.client.ensure_login()
    await c.client.close()
    session = c.vault.state.session
    assert session is not None
    c.vault.save(msgspec.structs.replace(
        c.vault.state, session=msgspec.structs.replace(session, expires_at=0)))
    # The key store beside the vault, as `lightbox enroll` leaves it (whoami, login use it).
    KeyStore(c.vault.directory).create(c.vault.state, PASSWORD, profile=CHEAP_PROFILE)
    device_id = c.vault.state.device_id
    c.vault.lock()
    return c, device_id


async def test_a_revoked_and_wiped_phone_says_so_and_erases_itself(
        world: World, tmp_path: Path) -> None:
    _, device_id = await _phone(world, tmp_path)
    _write_org_keyfile(world, tmp_path / "it" / "org.key")
    env = _env(tmp_path, world)
    rc, out, err = await run("lightbox-admin", "device", "revoke", device_id, "--wipe",
                             env=env)
    assert rc == 0, out + err
    assert "(wipe ordered)" in out

    rc, out, err = await run("lightbox", "--profile", "phone", "inbox", "--timeout", "20",
                             env=env)
    assert_one_sentence(rc, out, err)
    found = REVOKED.search(err)
    assert found, err
    today = dt.datetime.now().astimezone()
    assert abs(dt.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M").astimezone()
               - today) < dt.timedelta(minutes=10)
    profile = tmp_path / "home" / "phone"
    assert not profile.exists()  # keys, messages, images: all gone
    # Every later command on that profile says the same, not "run lightbox enroll".
    for argv in (("inbox",), ("send", "--to", "role:intern", "hello"), ("threads",),
                 ("whoami",), ("login",)):
        rc, out, err2 = await run("lightbox", "--profile", "phone", *argv, env=env)
        assert_one_sentence(rc, out, err2)
        again = REVOKED.search(err2)
        assert again and again.group(1) == found.group(1), err2
        assert "enroll" not in err2


async def test_a_revoked_device_without_a_wipe_is_told_who_ended_its_access(
        world: World, tmp_path: Path) -> None:
    _, device_id = await _phone(world, tmp_path)
    _write_org_keyfile(world, tmp_path / "it" / "org.key")
    env = _env(tmp_path, world)
    rc, out, err = await run("lightbox-admin", "device", "revoke", device_id, env=env)
    assert rc == 0, out + err
    for argv in (("threads",), ("inbox", "--timeout", "20"), ("login",), ("whoami",)):
        rc, out, err = await run("lightbox", "--profile", "phone", *argv, env=env)
        assert_one_sentence(rc, out, err)
        assert "This device was revoked by your organisation" in err, err
    assert (tmp_path / "home" / "phone" / "vault.db").exists()  # no wipe was ordered


async def test_every_command_says_one_sentence_when_the_relay_is_down(
        world: World, tmp_path: Path) -> None:
    phone, _ = await _phone(world, tmp_path)
    phone.vault.unlock(PASSWORD)
    dead = _dead_url()
    phone.vault.save(msgspec.structs.replace(phone.vault.state, server_url=dead))
    KeyStore.for_profile("gateway", tmp_path / "home").create(
        phone.vault.state, PASSWORD, profile=CHEAP_PROFILE)
    (tmp_path / "home" / "phone" / "keystore.lbx").unlink()  # the vault holds the state
    phone.vault.lock()
    env = _env(tmp_path, LIGHTBOX_SERVER=dead, LIGHTBOX_ADMIN_TOKEN="not-a-token",
               LIGHTBOX_ADMIN_PASSWORD="harbour-mosaic-tundra-9")
    reach = "cannot reach the relay"
    commands: tuple[tuple[str, tuple[str, ...]], ...] = (
            ("lightbox", ("--profile", "phone", "threads")),
            ("lightbox", ("--profile", "phone", "inbox", "--timeout", "5")),
            ("lightbox", ("--profile", "phone", "send", "--to", "role:intern", "hello")),
            # (`watch` waits for the relay instead: tests/clients/test_cli_watch_start.py)
            ("lightbox", ("--profile", "new", "enroll", "--server", dead, "--code",
                          "ABCD-EFGH-JKMN-PQRS-TVWX")),
            ("lightbox-admin", ("login", "--server", dead, "--login", "it.admin")),
            ("lightbox-admin", ("user", "list")),
            ("lightbox-gateway", ("--profile", "gateway")))
    results = await run_all([(program, argv, env) for program, argv in commands])
    for (program, argv), (rc, out, err) in zip(commands, results, strict=True):
        assert_one_sentence(rc, out, err)
        assert reach in err, (program, argv, err)


async def test_wrong_passwords_missing_profiles_and_garbage_arguments_say_one_sentence(
        world: World, tmp_path: Path) -> None:
    await _phone(world, tmp_path)
    env = _env(tmp_path, world)
    wrong = {**env, "LIGHTBOX_PASSWORD": "not the password at all"}
    cases: list[tuple[str, tuple[str, ...], dict[str, str], str]] = [
        ("lightbox", ("--profile", "phone", "threads"), wrong, "wrong password"),
        ("lightbox", ("--profile", "phone", "whoami"), wrong, "wrong password"),
        ("lightbox-gateway", ("--profile", "phone"), wrong, "wrong password"),
        ("lightbox-admin", ("login", "--server", world.relay.base_url, "--login", "it-admin"),
         {**env, "LIGHTBOX_ADMIN_PASSWORD": "not the admin password"}, "invalid_credentials"),
        # https:// to a relay serving plain http (no TLS proxy in front, one computer).
        ("lightbox-admin", ("login", "--server", "https" + world.relay.base_url[len("http"):],
                            "--login", "it-admin"),
         {**env, "LIGHTBOX_ADMIN_PASSWORD": ADMIN_PASSWORD},
         "(it did not answer in TLS: if it serves plain http:// (a relay without its TLS "
         "proxy, on this computer), write the address with http://)"),
        ("lightbox", ("--profile", "nobody", "threads"), env, "has no device"),
        ("lightbox", ("--profile", "nobody", "whoami"), env, "has no device"),
        ("lightbox", ("--profile", "nobody", "login"), env, "has no device"),
        ("lightbox-gateway", ("--profile", "nobody"), env, "holds no device"),
        ("lightbox", ("--profile", "phone", "send", "--bogus", "x"), env,
         "unrecognized arguments"),
        ("lightbox", ("--profile", "phone", "inbox", "--timeout", "soon"), env,
         "invalid float value"),
        ("lightbox", ("--profile", "phone", "send", "--to", "nobody", "hi"), env,
         "error: validation_failed: --to 'nobody': write a colleague as --to user:nobody "
         "(a login or a whole name) and a role as --to role:ROLE"),
        ("lightbox", ("--profile", "phone", "send", "--to", "Bea Bone", "hi"), env,
         "error: validation_failed: --to 'Bea Bone': write a colleague as --to "
         "'user:Bea Bone' (a login or a whole name) and a role as --to role:ROLE"),
        ("lightbox", ("--profile", "phone", "send", "--to", "users:nobody", "hi"), env,
         "write user:LOGIN or role:ROLE"),
        ("lightbox", ("--profile", "phone", "send", "--thread", "not-a-thread", "hi"), env,
         "error:"),
        ("lightbox", ("--profile", "../etc", "threads"), env, "invalid profile name"),
        ("lightbox-admin", ("frobnicate",), env, "invalid choice"),
        ("lightbox-admin", ("device", "revoke", "not-a-device-id"), env,
         "error: 'not-a-device-id' is not a device id: a device id is a UUID"),
        ("lightbox-gateway", ("--retry-max", "forever"), env, "invalid float value"),
    ]
    results = await run_all([(program, argv, case_env) for program, argv, case_env, _ in cases])
    for (program, argv, _, expected), (rc, out, err) in zip(cases, results, strict=True):
        assert_one_sentence(rc, out, err)
        assert expected in err, (program, argv, err)


SUSPENDED = ("error: your account is suspended by your organisation; ask your IT team "
             "(user_suspended)")


@pytest.mark.parametrize("session", ["valid", "expired"])
async def test_a_suspended_user_reads_one_sentence_to_ask_it_from_every_command(
        world: World, tmp_path: Path, session: str) -> None:
    """IT suspends the user with `lightbox-admin user suspend`. Every command of theirs, whether
    their session was still valid or had to be renewed, ends with the one sentence the CLI has
    for it (clients/sdk/failures.py), once, and a failure status: no log line of the SDK's
    prekey upkeep before it, no "HTTP 403", no traceback, and `watch` stops the same way
    rather than "stopped" and success."""
    phone, _ = await _phone(world, tmp_path, login="ada.byron")
    if session == "valid":  # renewed, as by a command just before IT acted
        phone.vault.unlock(PASSWORD)
        client = LightboxClient(phone.vault, phone.vault, password=PASSWORD)
        try:
            await client.relay.prekey_count()
        finally:
            await client.close()
        tokens = phone.vault.state.session
        assert tokens is not None and tokens.expires_at > time.time() + 60
        phone.vault.lock()
    _write_org_keyfile(world, tmp_path / "it" / "org.key")
    env = _env(tmp_path, world)
    rc, out, err = await run("lightbox-admin", "user", "suspend", "ada.byron", env=env)
    assert rc == 0, out + err
    commands = [("threads",), ("inbox",), ("send", "--to", "role:intern", "hello"),
                ("watch", "--timeout", "30"), ("whoami",), ("login",)]
    results = await run_all([("lightbox", ("--profile", "phone", *argv), env)
                             for argv in commands])
    for argv, (rc, out, err) in zip(commands, results, strict=True):
        assert_one_sentence(rc, out, err)
        assert err.strip() == SUSPENDED, (argv, err)
        assert "suspended" not in out, (argv, out)
