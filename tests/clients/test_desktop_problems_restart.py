"""Every problem line the desktop shows survives a restart until dismissed
(docs/HAZARD_LOG.md HAZ-10; clients/desktop/dropped.py), not only the drops of a revoked or
suspended sender's messages: a message the client could not open, or whose sender's certificate
does not verify, is said again after the desktop is quit and started again, sealed in the vault
(its sentence nowhere in the clear on disk), and once dismissed it stays dismissed. Real relay,
real desktop client and vault; the problems are reported the way the SDK reports them, as
``error`` events of the client's hub (clients/sdk/receiving.py).
"""

from __future__ import annotations

from pathlib import Path

from clients.desktop.app import DesktopServer
from clients.sdk.client import StatusEvent
from tests.clients import test_desktop
from tests.clients.test_desktop import desktop_http, desktop_team
from tests.clients.test_desktop_dropped_restart import _sealed
from tests.identity_world import World
from tests.orthanc import OrthancServer

pytestmark = test_desktop.DESKTOP_WORLD  # the same relay as the desktop's own tests

UNOPENED = "a message could not be opened and was dropped (decryption_failed)"
UNVERIFIED = "a message whose sender does not verify was dropped (certificate_invalid)"


async def test_problem_lines_of_any_kind_are_said_again_after_a_restart_until_dismissed(
        world: World, tmp_path: Path, orthanc: OrthancServer) -> None:
    profile = tmp_path / "specialist-profile"
    async with desktop_team(world, tmp_path, orthanc) as team:
        async with desktop_http(team.desktop) as http:
            client = team.desktop.client
            assert client is not None
            await client.hub.emit(StatusEvent("error", UNOPENED, "decryption_failed"))
            await client.hub.emit(StatusEvent("error", UNVERIFIED, "certificate_invalid"))
            before = (await http.get("/api/state")).json()["notices"]
            assert [(n["detail"], n["code"]) for n in before] == [
                (UNOPENED, "decryption_failed"), (UNVERIFIED, "certificate_invalid")]
        assert _sealed(profile, UNOPENED, UNVERIFIED) == []

        launches: list[DesktopServer] = []
        try:
            for _ in range(2):  # quit and started again, twice
                await (launches[-1] if launches else team.desktop).stop()
                launches.append(DesktopServer(profile))
                await launches[-1].start()
                async with desktop_http(launches[-1]) as http:
                    said = (await http.get("/api/state")).json()["notices"]
                    if len(launches) == 1:
                        assert said == before  # the same lines, ids and times
                        r = await http.post("/api/notice/dismiss",
                                            json={"ids": [before[0]["id"]]})
                        assert r.status_code == 200, r.text
                    else:  # the one dismissed stays dismissed
                        assert said == before[1:]
        finally:
            for launch in launches:
                await launch.stop()
