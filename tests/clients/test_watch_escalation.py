"""``lightbox watch`` follows a consult's on-call escalation (docs/PROTOCOL.md §16) in words a
doctor can act on: each line names the consult as the reader knows it (its thread's subject,
else who sent it and when) and the person concerned by name, from the device's own vault and
the names the SDK verifies in the key directory (nothing new is sent, no patient data to the
relay). Real relay, real ``lightbox watch`` processes, simulated on-call minutes
(docs/USER_GUIDE.md "Interns: sending a consult")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clients.sdk.timefmt import format_time
from tests.clients.test_watch_beside_commands import Watch
from tests.clinician_world import enrol_clinician, lightbox_process, use_cli_profiles
from tests.clinician_world import run_cli as lightbox
from tests.helpers import seconds
from tests.identity_world import World
from tests.server.test_escalation import SimClock
from tests.server.test_escalation import clock as clock  # simulated on-call minutes
from tests.server.test_escalation import world as world  # a relay on that clock

ORG = "st-elsewhere"
ROLE = "role:orthopaedics-oncall"
ORTHO = "orthopaedics_oncall"


async def rota(world: World, clock: SimClock) -> None:
    """Bob on call with Carol his backup for one hour; then Dan's night shift."""
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/{ROLE}", headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    now = int(clock())
    r = await world.http.post(
        f"/v1/admin/oncall/{ORG}/{ROLE}/shifts", headers=world.admin_headers(),
        json={"shifts": [{"starts_at": now - 3600, "ends_at": now + 3600,
                          "ladder": ["bob", "carol"]},
                         {"starts_at": now + 3600, "ends_at": now + 9 * 3600,
                          "ladder": ["dan"]}]})
    assert r.status_code == 200 and all(x["ok"] for x in r.json()["results"]), r.text


async def test_watch_names_the_consult_and_the_person_at_each_escalation_step(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: SimClock) -> None:
    home = use_cli_profiles(monkeypatch, tmp_path)
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern",
                                   vault_dir=home / "intern")
    bob = await enrol_clinician(world, tmp_path, "bob", roles=(ORTHO,),
                                display_name="Dr Bob Primary", vault_dir=home / "bob")
    await enrol_clinician(world, tmp_path, "carol", roles=(ORTHO,),
                          display_name="Dr Carol Backup")
    await enrol_clinician(world, tmp_path, "dan", roles=(ORTHO,), display_name="Dr Dan Night")
    await rota(world, clock)
    intern.vault.lock()
    bob.vault.lock()
    watches = {who: Watch(await lightbox_process("--profile", who, "watch", "--timeout",
                                                  str(seconds(120))))
               for who in ("intern", "bob")}
    try:
        for w in watches.values():
            await w.until("-- connected to the relay")
        for args in (("--subject", "Wrist, bed 4", "Displaced distal radius?"),
                     ("Hip film: fracture?",)):
            rc, out, err = await lightbox("--profile", "intern", "send", "--to", ROLE,
                                          "--urgent", *args)
            assert rc == 0, out + err
        await watches["bob"].until("Wrist, bed 4")
        await watches["bob"].until("Hip film: fracture?")
        (hip_line,) = [line for line in watches["bob"].lines if "Hip film" in line]
        hip_at = re.search(r"\[(.*?)\]", hip_line)[1]  # type: ignore[index]

        clock.advance(151)  # half the urgent deadline: Bob is reminded
        await watches["intern"].until(
            '    consult "Wrist, bed 4": no answer yet: reminded Dr Bob Primary (on call)')
        await watches["bob"].until(
            f"    the consult from Dr Ada Intern at {hip_at}: no answer yet: reminded you "
            "(on call)")
        clock.advance(150)  # the deadline: the consult is passed to Carol
        await watches["intern"].until(
            '    consult "Wrist, bed 4": no answer in time: passed to Dr Carol Backup '
            "(backup 1)")
        await watches["bob"].until(
            f"    the consult from Dr Ada Intern at {hip_at}: no answer in time: passed to "
            "Dr Carol Backup (backup 1)")
        clock.advance(150)  # Carol is reminded in turn
        await watches["intern"].until(
            '    consult "Wrist, bed 4": no answer yet: reminded Dr Carol Backup (backup 1)')
        clock.advance(150)  # the ladder used up: everyone on it reminded once more
        await watches["intern"].until(
            '    consult "Wrist, bed 4": still no answer: everyone on call reminded again')
        await watches["bob"].until(
            f"    the consult from Dr Ada Intern at {hip_at}: still no answer: everyone on "
            "call reminded again")
        clock.advance(3600)  # Bob's shift ends: Dan's night shift takes the consult
        await watches["intern"].until(
            '    consult "Wrist, bed 4": shift change: handed over to Dr Dan Night (on call)')
        await watches["bob"].until(
            '    consult "Wrist, bed 4": shift change: handed over to Dr Dan Night (on call)')
    finally:
        for w in watches.values():
            err = await w.stop()
            assert "Traceback" not in err, err
    lines = [line for w in watches.values() for line in w.lines]
    assert not [line for line in lines if "(step " in line], lines  # no message ids, no steps


async def test_the_incoming_clinician_sees_a_handed_over_consult_as_its_author_wrote_it(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: SimClock) -> None:
    """A shift change hands an unacknowledged consult to the night doctor: the relay is blind,
    so the outgoing doctor's device seals it again (docs/PROTOCOL.md §16.4), a new message
    signed by Bob's device at the moment of the reseal. Dan reads it as the intern wrote it, at
    the intern's time, told that it was handed over and by whose device: not as Bob's."""
    home = use_cli_profiles(monkeypatch, tmp_path)
    await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern",
                          vault_dir=home / "intern")
    bob = await enrol_clinician(world, tmp_path, "bob", roles=(ORTHO,),
                                display_name="Dr Bob Primary", vault_dir=home / "bob")
    await enrol_clinician(world, tmp_path, "carol", roles=(ORTHO,),
                          display_name="Dr Carol Backup")
    dan = await enrol_clinician(world, tmp_path, "dan", roles=(ORTHO,),
                                display_name="Dr Dan Night", vault_dir=home / "dan")
    await rota(world, clock)
    bob.vault.lock()
    dan.vault.lock()
    # the intern's device is not connected at the shift change: Bob's device reseals
    rc, out, err = await lightbox("--profile", "intern", "send", "--to", ROLE, "--urgent",
                                  "--subject", "Wrist, bed 4", "Displaced distal radius?")
    assert rc == 0, out + err
    watches = {who: Watch(await lightbox_process("--profile", who, "watch", "--timeout",
                                                  str(seconds(120))))
               for who in ("bob", "dan")}
    try:
        for w in watches.values():
            await w.until("-- connected to the relay")
        await watches["bob"].until("Wrist, bed 4 - Displaced distal radius?")
        (line,) = [x for x in watches["bob"].lines if "Displaced distal radius?" in x]
        written = re.search(r"^URGENT \[(.*?)\] Dr Ada Intern in ", line)
        assert written, line
        clock.advance(600 + 3600)  # the ladder used up, then Bob's shift ends: Dan's starts
        await watches["dan"].until("Wrist, bed 4 - Displaced distal radius?")
        (copy,) = [x for x in watches["dan"].lines if "Displaced distal radius?" in x]
        assert copy.startswith(f"URGENT [{written[1]}] Dr Ada Intern (as handed over by "
                               "Dr Bob Primary) in "), copy
        await watches["dan"].until("    as handed over by Dr Bob Primary at the shift change "
                                   "on ")
    finally:
        for w in watches.values():
            err = await w.stop()
            assert "Traceback" not in err, err


async def test_the_sender_is_told_at_once_that_nobody_is_on_call_and_when_the_next_shift_starts(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: SimClock) -> None:
    """A consult sent in a gap in the rota (docs/PROTOCOL.md §16.4) reaches the role's
    certificate holder; ``lightbox send`` and the sender's ``lightbox watch`` say at once that
    no one is on call and when the next shift starts, ``watch`` again at each reminder, and
    then the handover to that shift."""
    home = use_cli_profiles(monkeypatch, tmp_path)
    await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern",
                          vault_dir=home / "intern")
    await enrol_clinician(world, tmp_path, "carol", roles=(ORTHO,),
                          display_name="Dr Carol Backup")
    await enrol_clinician(world, tmp_path, "dan", roles=("orthopaedist",),
                          display_name="Dr Dan Night")
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/{ROLE}", headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    starts = int(clock()) + 3600
    r = await world.http.post(
        f"/v1/admin/oncall/{ORG}/{ROLE}/shifts", headers=world.admin_headers(),
        json={"shifts": [{"starts_at": starts, "ends_at": starts + 8 * 3600,
                          "ladder": ["dan"]}]})
    assert r.status_code == 200 and r.json()["results"][0]["ok"], r.text
    watch = Watch(await lightbox_process("--profile", "intern", "watch", "--timeout",
                                         str(seconds(120))))
    try:
        await watch.until("-- connected to the relay")
        rc, out, err = await lightbox("--profile", "intern", "send", "--to", ROLE, "--urgent",
                                      "--subject", "Knee, bed 12", "Hot swollen knee")
        assert rc == 0, out + err
        nxt = f"it goes to the next shift when that starts at {format_time(starts)}"
        # ``send`` says it too, right under its "sent" line: the intern may run no watch.
        assert out.splitlines()[-1] == (
            f'    consult "Knee, bed 12": no one is on call for the role now; {nxt}'), out
        await watch.until(f'    consult "Knee, bed 12": no one is on call for the role now; '
                          f"{nxt}")
        clock.advance(300)  # the urgent deadline: reminded
        await watch.until(f'    consult "Knee, bed 12": still no one on call for the role: '
                          f"reminded; {nxt}")
        clock.now = starts  # the night shift starts: Dan is handed the consult
        await watch.until(
            '    consult "Knee, bed 12": shift change: handed over to Dr Dan Night (on call)')
    finally:
        err = await watch.stop()
        assert "Traceback" not in err, err


async def test_a_role_holder_sees_the_gap_line_after_the_consult_it_is_about(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: SimClock) -> None:
    """In a gap in the rota the consult reaches the role's certificate holder at once, with the
    ``no_shift`` step (docs/PROTOCOL.md §16.4), whichever of the two the relay writes first: the
    holder's ``watch`` shows the consult, then the line about it by its subject, never "a
    consult not yet on this device"."""
    home = use_cli_profiles(monkeypatch, tmp_path)
    await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern",
                          vault_dir=home / "intern")
    carol = await enrol_clinician(world, tmp_path, "carol", roles=(ORTHO,),
                                  display_name="Dr Carol Backup", vault_dir=home / "carol")
    carol.vault.lock()
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/{ROLE}", headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    watch = Watch(await lightbox_process("--profile", "carol", "watch", "--timeout",
                                         str(seconds(120))))
    try:
        await watch.until("-- connected to the relay")
        for n in range(3):  # each of several consults, each in a thread of its own
            rc, out, err = await lightbox("--profile", "intern", "send", "--to", ROLE,
                                          "--urgent", "--subject", f"Knee, bed {n}",
                                          "Hot swollen knee")
            assert rc == 0, out + err
        gap = ("no one is on call for the role now; no later shift is on the rota yet: it "
               "goes to the next shift IT adds")
        for n in range(3):
            await watch.until(f'    consult "Knee, bed {n}": {gap}')
    finally:
        err = await watch.stop()
        assert "Traceback" not in err, err
    lines = watch.lines
    assert not [line for line in lines if "not yet on this device" in line], lines
    for n in range(3):
        consult = next(i for i, line in enumerate(lines) if f"Knee, bed {n} - " in line)
        assert lines.index(f'    consult "Knee, bed {n}": {gap}') > consult, lines
