"""The next morning (docs/USER_GUIDE.md "The next morning: a desktop that was closed"): a desktop
that held the image and was closed when it was filed and expired deletes it when it comes back,
and its image route answers 410 with the same record reference as a desktop that was running at
expiry time (docs/PROTOCOL.md §15: the tombstone keeps the record reference), against a real
relay, a real record gateway and a real Orthanc.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from clients.desktop.app import DesktopServer
from protocol.model import DeviceKind
from tests.clients.test_desktop import ORTHO, desktop_http, desktop_team, send_wrist_xray
from tests.clinician_world import enrol_clinician
from tests.consent_world import count
from tests.filing_world import enrol_gateway, orthanc_gateway
from tests.helpers import eventually, seconds
from tests.identity_world import PASSWORD, World
from tests.orthanc import OrthancServer

pytestmark = pytest.mark.world(attachment_chunk_bytes=64 * 1024, expiry_grace=2,
                               expiry_sweep_interval=0.5)


async def test_a_desktop_closed_at_expiry_keeps_the_record_reference_of_its_deleted_image(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    async with desktop_team(world, tmp_path, orthanc) as team:
        intern, specialist, desktop, gw = team.intern, team.specialist, team.desktop, team.gateway
        desktop_device = await world.device_of(specialist.user_id)
        async with desktop_http(desktop) as http:
            sent = await send_wrist_xray(intern)
            (aid,) = sent.attachment_ids

            async def held() -> bool:
                return (await http.get(f"/api/images/{aid}")).status_code == 200

            await eventually(held, timeout=30)  # the desktop downloaded and holds it
            # Bea quits the desktop client for the night: it locks, nothing more arrives.
            assert (await http.post("/api/lock")).status_code == 200

            async def ordered() -> bool:
                return await count(world, "SELECT count(*) FROM expiry_orders WHERE "
                                   "device_id = $1 AND attachment_id = $2",
                                   uuid.UUID(desktop_device), uuid.UUID(aid)) == 1

            await gw.start()  # files it; the grace period passes; every copy is ordered
            await eventually(ordered, timeout=30)
            study = gw.filed[0].study_instance_uid

            async def confirmed() -> bool:
                return await count(world, "SELECT count(*) FROM expiry_orders WHERE "
                                   "device_id = $1 AND attachment_id = $2 AND "
                                   "confirmed_at IS NOT NULL",
                                   uuid.UUID(desktop_device), uuid.UUID(aid)) == 1

            # The next morning: unlocked again, the order and then the receipt arrive.
            r = await http.post("/api/unlock", json={"password": PASSWORD})
            assert r.status_code == 200, r.text
            await eventually(confirmed, timeout=30)
            client = desktop.client
            assert client is not None
            await client.wait_synced(seconds(15))

            async def answer() -> bool:  # the receipt follows the order: it fills it in
                r = await http.get(f"/api/images/{aid}")
                return r.status_code == 410 and r.json() == {"error": "expired",
                                                             "record_ref": study}

            await eventually(answer, timeout=10)




async def test_a_receipt_handled_before_the_copy_was_stored_still_names_the_record(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    """The desktop heard the consult and the gateway's filing receipt before it had stored
    the image (its download not done: here, not started), and was closed; the copy expired
    overnight. The receipt it holds says where the record keeps the image: the next morning
    the image route answers 410 with that reference, and the page shows it."""
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern")
    profile = tmp_path / "specialist-profile"
    specialist = await enrol_clinician(world, tmp_path, "ortho", roles=(ORTHO,),
                                       display_name="Dr Bo Ortho", vault_dir=profile,
                                       kind=DeviceKind.DESKTOP)
    specialist.vault.lock()
    desktop = DesktopServer(profile, client_options={"backoff_base": 0.05, "backoff_max": 0.5,
                                                     "fetch_images": False})
    await desktop.start()
    gw, pacs = orthanc_gateway(await enrol_gateway(world, tmp_path), orthanc)
    desktop_device = await world.device_of(specialist.user_id)
    try:
        await intern.client.start(wait_connected=seconds(10))
        async with desktop_http(desktop) as http:
            client = desktop.client
            assert client is not None
            await gw.start()
            sent = await send_wrist_xray(intern)
            (aid,) = sent.attachment_ids

            async def receipt_held() -> bool:
                return bool(gw.filed) and any(
                    v.body.filing is not None and v.body.filing.attachment_id == aid
                    for v in client.thread_messages(sent.thread_id))

            await eventually(receipt_held, timeout=30)
            study = gw.filed[0].study_instance_uid
            assert (await http.post("/api/lock")).status_code == 200  # closed for the night

            async def ordered() -> bool:
                return await count(world, "SELECT count(*) FROM expiry_orders WHERE "
                                   "device_id = $1 AND attachment_id = $2",
                                   uuid.UUID(desktop_device), uuid.UUID(aid)) == 1

            await eventually(ordered, timeout=30)
            r = await http.post("/api/unlock", json={"password": PASSWORD})
            assert r.status_code == 200, r.text

            async def confirmed() -> bool:
                return await count(world, "SELECT count(*) FROM expiry_orders WHERE "
                                   "device_id = $1 AND attachment_id = $2 AND "
                                   "confirmed_at IS NOT NULL",
                                   uuid.UUID(desktop_device), uuid.UUID(aid)) == 1

            await eventually(confirmed, timeout=30)
            r = await http.get(f"/api/images/{aid}")
            assert r.status_code == 410
            assert r.json() == {"error": "expired", "record_ref": study}
            thread = (await http.get(f"/api/threads/{sent.thread_id}")).json()
            images = [i for m in thread["messages"] for i in m["images"]
                      if i["attachment_id"] == aid]
            assert images and all(i["record_ref"] == study for i in images), images
    finally:
        await gw.stop()
        await pacs.aclose()
        await intern.client.close()
        intern.vault.lock()
        await desktop.stop()
