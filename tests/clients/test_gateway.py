"""``lightbox-gateway`` as IT runs it (docs/USER_GUIDE.md, "Record gateway"): a service account
with the role record_gateway, enrolled with ``lightbox enroll --kind gateway`` and no
``--profile``, found by ``lightbox-gateway`` with no ``--profile``; then, as a real process
against a real relay and a real Orthanc, its log during a filing, a PACS refusal and a PACS
outage: every filing, failure and hold is there, by ids, and none of the patient data is."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from clients.admin import csvio
from clients.admin.provisioning import provision_user
from clients.gateway import cli as gateway_cli
from clients.gateway.pacs import PacsClient, PacsSettings
from clients.gateway.records import build_instance, dicom_uid
from clients.sdk import imaging
from clients.sdk.keystore import GATEWAY_DEVICE_PROFILE, KeyStore
from protocol.keys import CHEAP_PROFILE
from protocol.model import MessageHeader

# the filing journey's sender and record data (tests/clients/test_filing_journey.py)
from tests.clients.test_filing_journey import ORTHO, record, send_for_filing
from tests.clinician_world import enrol_clinician
from tests.consent_world import BIRTH_DATE, MRN, PATIENT_NAME, count, xray_png
from tests.helpers import ROOT, seconds
from tests.identity_world import World
from tests.orthanc import OrthancServer

# Attachments in 64 KiB chunks, as the image and filing journeys need.
pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024)

GATEWAY_PASSWORD = "gateway filing quarry 93 lantern"


class Process:
    """A program run as IT runs it, its stderr (the log) read line by line as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._new = asyncio.Event()
        assert proc.stderr is not None
        self._reader = asyncio.create_task(self._read(proc.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode())
            self._new.set()
        self._new.set()

    async def line(self, pattern: str, timeout: float = 30) -> str:
        """The first log line matching ``pattern`` (a regex), waiting for it to be written."""
        async with asyncio.timeout(seconds(timeout)):
            while True:
                self._new.clear()
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                if self._reader.done():
                    raise AssertionError(f"exited without {pattern!r}:\n{self.log}")
                await self._new.wait()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(seconds(15)):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._reader


async def _program(module: str, *args: str, env: dict[str, str]) -> Process:
    return Process(await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE))


def _gateway_env(home: Path, orthanc: OrthancServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTBOX_")}
    return env | {"LIGHTBOX_HOME": str(home), "LIGHTBOX_PASSWORD": GATEWAY_PASSWORD,
                  "LIGHTBOX_INSECURE_FAST_KDF": "1", "LOG_LEVEL": "INFO",
                  "LIGHTBOX_PACS_URL": orthanc.dicomweb_url,
                  "LIGHTBOX_PACS_USERNAME": orthanc.username,
                  "LIGHTBOX_PACS_PASSWORD": orthanc.password}


async def _enrol_gateway(world: World, env: dict[str, str]) -> str:
    """IT provisions the service account; `lightbox enroll --kind gateway` with no --profile
    enrols it. Returns the device id the enrolment printed."""
    now = int(time.time())
    row = csvio.validate_user(line=0, name="Record Gateway", login="record.gateway",
                              roles="record_gateway", specialty=None, department=None,
                              licence_type=None, licence_number=None, jurisdiction=None,
                              licence_expires=None, now=now, service=True)
    provisioned = provision_user(row, org_id=world.org.org_id, org_key=world.org.key, now=now,
                                 kdf=CHEAP_PROFILE)
    r = await world.http.post("/v1/admin/users", headers=world.admin_headers(),
                              json={"users": [msgspec.to_builtins(provisioned.request)]})
    assert r.status_code == 200 and r.json()["results"][0]["ok"], r.text
    enrol = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.clinician.cli", "enroll", "--server", world.relay.base_url,
        "--code", provisioned.code, "--kind", "gateway", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(enrol.communicate(), seconds(60))
    out = stdout.decode()
    assert enrol.returncode == 0, out + stderr.decode()
    match = re.search(r"enrolled record\.gateway on this gateway \(device ([0-9a-f-]{36})\)",
                      out)
    assert match, out
    return match.group(1)


def test_lightbox_gateway_with_no_enrolled_device_says_how_to_enrol_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("LIGHTBOX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LIGHTBOX_HOME", str(tmp_path))
    monkeypatch.setenv("LIGHTBOX_PACS_URL", "http://127.0.0.1:9/dicom-web")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert gateway_cli.main([]) == 2
    assert err.getvalue() == (
        f"lightbox-gateway: profile 'gateway' holds no device ({tmp_path / 'gateway'}): enrol "
        "the gateway first with `lightbox enroll --kind gateway --server URL --code CODE`\n")


async def test_the_gateway_enrolled_without_a_profile_runs_without_one_and_logs_each_filing_and_failure_without_patient_data(  # noqa: E501
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    home = tmp_path / "gateway-host"
    env = _gateway_env(home, orthanc)
    device_id = await _enrol_gateway(world, env)
    assert KeyStore.for_profile(GATEWAY_DEVICE_PROFILE, home).exists()

    intern = await enrol_clinician(world, tmp_path, "intern")
    ortho = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,))
    gateway = await _program("clients.gateway.cli", "--retry-max", "1", env=env)
    try:
        for c in (intern, ortho):
            await c.client.start(wait_connected=seconds(10))
        started = await gateway.line(r"record gateway record\.gateway .* started")
        assert device_id in started and world.relay.base_url in started
        thread = await intern.client.create_thread(users=[ortho.user_id])
        tid = thread.thread_id

        # 1. filed
        image = imaging.prepare_image(xray_png(320, 240, seed=11)).image
        filed, _ = await send_for_filing(intern, tid, image, record())
        await gateway.line(rf"filed attachment {filed} of message .*SOP Instance "
                           rf"{re.escape(dicom_uid('sop', filed))} stored and read back")

        # 2. refused: the PACS already holds another object under the image's UIDs
        refused_pid = "LBX-TEST-REFUSED"
        other = imaging.prepare_image(xray_png(320, 240, seed=12)).image.data

        async def occupy(header: MessageHeader, aid: str) -> None:
            squatter = build_instance(other, record(refused_pid), header,
                                      SimpleNamespace(attachment_id=aid),  # type: ignore[arg-type]
                                      operator="", default_issuer="LBX")
            async with PacsClient(PacsSettings(url=orthanc.dicomweb_url,
                                               username=orthanc.username,
                                               password=orthanc.password)) as pacs:
                await pacs.store([squatter], study_instance_uid=squatter.study_instance_uid)

        image = imaging.prepare_image(xray_png(320, 240, seed=13)).image
        refused, _ = await send_for_filing(intern, tid, image, record(refused_pid),
                                           before_send=occupy)
        await gateway.line(rf"could not file attachment {refused} of message \S+: "
                           r"pacs_refused \(PacsVerificationFailed\); the sender is told")

        # 3. held while the PACS is down, filed when it returns
        held_pid = "LBX-TEST-HELD"
        orthanc.stop()
        try:
            image = imaging.prepare_image(xray_png(320, 240, seed=14)).image
            held, _ = await send_for_filing(intern, tid, image, record(held_pid))
            await gateway.line(rf"PACS unavailable \(PacsUnavailable\): holding attachment "
                               rf"{held} of message \S+, attempt 1 failed, next in [0-9.]+ s; "
                               "nothing expires meanwhile")
        finally:
            await asyncio.to_thread(orthanc.start)
        await gateway.line(rf"PACS answered again: attachment {held} of message \S+ stored "
                           r"after \d+ failed attempt")
        await gateway.line(rf"filed attachment {held} of message ")
        assert await count(world, "SELECT count(*) FROM filings") == 2
    finally:
        await gateway.stop()
        for c in (intern, ortho):
            await c.client.close()
            c.vault.lock()

    log = gateway.log
    assert "Traceback" not in log, log
    others = [line for line in gateway.lines
              if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4} [A-Z]+ lightbox\.", line)
              and not line.startswith("lightbox-gateway: stopped")]
    assert not others, f"lines from other loggers (libraries log warnings only): {others}"
    patient_data = {PATIENT_NAME, *PATIENT_NAME.split("^"), MRN, refused_pid, held_pid,
                    BIRTH_DATE, BIRTH_DATE.replace("-", ""), "ACC42",
                    # study UIDs derive from the patient id (gateway/records.py dicom_record)
                    *(dicom_uid("study", tid, pid) for pid in (MRN, refused_pid, held_pid))}
    leaked = sorted(p for p in patient_data if p.lower() in log.lower())
    assert not leaked, f"patient data in the gateway's log: {leaked}\n{log}"
