"""``lightbox watch`` on a device that was offline while a consult sent to it escalated: the
backup doctor, away until the shift change, starts watch and sees the consult (held unread on
the device), then one line saying where it stands (its latest escalation step), not the stack
of steps that happened while the device was offline; steps that happen while watch runs are
said each as it comes (docs/USER_GUIDE.md "Specialists: watching for consults"). Real relay,
simulated on-call minutes, real ``lightbox`` processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clients.test_watch_beside_commands import Watch
from tests.clients.test_watch_escalation import ORTHO, ROLE, rota
from tests.clinician_world import enrol_clinician, lightbox_process, use_cli_profiles
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import count
from tests.helpers import eventually, seconds
from tests.identity_world import World
from tests.server.test_escalation import SimClock
from tests.server.test_escalation import clock as clock  # simulated on-call minutes
from tests.server.test_escalation import world as world  # a relay on that clock


async def _steps(world: World, n: int) -> None:
    await eventually(lambda: _at_least(world, n), timeout=30)


async def _at_least(world: World, n: int) -> bool:
    return await count(world, "SELECT count(*) FROM escalation_events") >= n


async def test_watch_shows_a_backlog_consult_with_its_latest_escalation_step_only(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: SimClock) -> None:
    home = use_cli_profiles(monkeypatch, tmp_path)
    await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern",
                          vault_dir=home / "intern")
    await enrol_clinician(world, tmp_path, "bob", roles=(ORTHO,), display_name="Dr Bob Primary")
    carol = await enrol_clinician(world, tmp_path, "carol", roles=(ORTHO,),
                                  display_name="Dr Carol Backup", vault_dir=home / "carol")
    await enrol_clinician(world, tmp_path, "dan", roles=(ORTHO,), display_name="Dr Dan Night")
    await rota(world, clock)
    carol.vault.lock()  # Carol's device is offline until she starts watch
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", ROLE, "--urgent",
                                  "--subject", "Wrist, bed 4", "Displaced distal radius?")
    assert rc == 0, out + err
    for n, minutes in enumerate((151, 150, 150, 150), start=1):  # reminded, passed to Carol,
        clock.advance(minutes)  # Carol reminded, everyone reminded again
        await _steps(world, n)
    consult = 'consult "Wrist, bed 4": '
    watch = Watch(await lightbox_process("--profile", "carol", "watch", "--timeout",
                                         str(seconds(120))))
    try:
        await watch.until("Wrist, bed 4 - Displaced distal radius?")
        await watch.until(f"    {consult}still no answer: everyone on call reminded again")
        clock.advance(3600)  # live: Bob's shift ends, Dan's night shift takes the consult
        await watch.until(f"    {consult}shift change: handed over to Dr Dan Night (on call)")
    finally:
        err = await watch.stop()
        assert "Traceback" not in err, err
    lines = watch.lines
    header = next(i for i, line in enumerate(lines) if "Displaced distal radius?" in line)
    assert [line for line in lines if consult in line] == [
        f"    {consult}still no answer: everyone on call reminded again",
        f"    {consult}shift change: handed over to Dr Dan Night (on call)"], lines
    assert lines.index(f"    {consult}still no answer: everyone on call reminded again") \
        > header, lines
