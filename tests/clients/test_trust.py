"""clients/sdk/trust.py against a real relay: the one place a device checks what the relay
serves. A device (the SDK client's or the record gateway's) that already holds an
organisation-signed revocation list refuses an older one from the relay (a rollback that
would bring revoked devices back) instead of taking it; and a claimed prekey comes only for
a device asked for."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest

from clients.gateway.app import RecordGateway
from clients.gateway.pacs import PacsClient, PacsSettings
from clients.sdk.errors import FlowError
from clients.sdk.trust import Trust
from protocol.errors import ErrorCode
from tests.clinician_world import Clinician, enrol_clinician
from tests.filing_world import enrol_gateway
from tests.identity_world import PASSWORD, World


async def _holding_a_newer_list(world: World, device: Clinician, lost_device: str) -> str:
    """The relay has list 3 (nothing revoked); the device already holds list 5, which revokes
    ``lost_device``: the relay is serving a rollback."""
    r = await world.revoke(world.org, 3)
    assert r.status_code == 200, r.text
    newer = world.org.revocation_list(5, devices=(lost_device,))
    device.vault.save(msgspec.structs.replace(device.vault.state, revocation_lists=[newer]))
    return newer


async def test_the_sdk_refuses_a_revocation_list_older_than_the_one_it_holds(
        world: World, tmp_path: Path) -> None:
    intern = await enrol_clinician(world, tmp_path, "intern")
    lost = await enrol_clinician(world, tmp_path, "lost")
    newer = await _holding_a_newer_list(world, intern, lost.client.device_id)
    trust = Trust(intern.client.relay, intern.vault, clock=time.time)
    try:
        with pytest.raises(FlowError) as refused:
            await trust.revocations(force=True)
        assert refused.value.code == ErrorCode.CERTIFICATE_REVOKED.value
        assert "older revocation list" in str(refused.value)
        assert intern.vault.state.revocation_lists == [newer]  # the newer list is kept
    finally:
        await intern.client.relay.aclose()
        await lost.client.relay.aclose()


async def test_the_record_gateway_refuses_a_revocation_list_older_than_the_one_it_holds(
        world: World, tmp_path: Path) -> None:
    gateway = await enrol_gateway(world, tmp_path)
    lost = await enrol_clinician(world, tmp_path, "lost")
    await _holding_a_newer_list(world, gateway, lost.client.device_id)
    # The PACS is never reached: the revocation check comes before any filing.
    pacs = PacsClient(PacsSettings(url="http://127.0.0.1:9/dicom-web"))
    gw = RecordGateway(gateway.vault, pacs, password=PASSWORD)
    try:
        with pytest.raises(FlowError) as refused:
            await gw._revocations()
        assert refused.value.code == ErrorCode.CERTIFICATE_REVOKED.value
    finally:
        await gw.relay.aclose()
        await pacs.aclose()
        await gateway.client.relay.aclose()
        await lost.client.relay.aclose()
