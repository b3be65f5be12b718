"""clients/admin/rota.py: ``lightbox-admin rota`` as IT runs it against a real relay: a role
and its deadlines, a shift added by hand and one imported from a CSV, the shifts shown with
their ladders, one removed; a shift whose ladder names nobody the relay knows, or a file that
is not a rota, is refused row by row and nothing of it is stored."""

from __future__ import annotations

import argparse
import datetime as dt
import re
import time
import uuid
from pathlib import Path

import pytest

from clients.admin.rota import describe_removal
from protocol import api
from protocol.model import Priority
from tests.clients.test_consent_withdraw import admin_session as admin_session
from tests.clients.test_consent_withdraw import lightbox_admin
from tests.helpers import eventually
from tests.identity_world import World
from tests.relay_world import connect, peer, seal

ROLE = "orthopaedics-oncall"
SHIFT = re.compile(r"^([0-9a-f-]{36})  ", re.M)


def _at(days: int, hour: int) -> str:
    day = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)
    return f"{day.isoformat()}T{hour:02d}:00"


@pytest.mark.usefixtures("admin_session")
async def test_it_defines_a_role_adds_imports_shows_and_removes_shifts(
        world: World, tmp_path: Path) -> None:
    org = world.org
    for login, name in (("amy.ortho", "Dr Amy Ortho"), ("ben.ortho", "Dr Ben Ortho")):
        await world.onboard(org.user(login, display_name=name))  # enrolled: on a ladder
    rc, out, err = await lightbox_admin("rota", "role", ROLE, "--org", org.org_id,
                                        "--urgent-minutes", "5", "--routine-minutes", "30")
    assert rc == 0, err
    assert "acknowledge urgent within 5 min, routine within 30 min" in out

    rc, out, err = await lightbox_admin("rota", "add", ROLE, "--org", org.org_id,
                                        "--start", _at(1, 8), "--end", _at(1, 20),
                                        "--ladder", "amy.ortho;ben.ortho")
    assert rc == 0, err
    csv = tmp_path / "rota.csv"
    csv.write_text("start,end,primary,backups\n"
                   f"{_at(2, 8)},{_at(2, 20)},ben.ortho,amy.ortho\n")
    rc, out, err = await lightbox_admin("rota", "import", ROLE, "--org", org.org_id, str(csv))
    assert rc == 0, err

    rc, out, err = await lightbox_admin("rota", "show", ROLE, "--org", org.org_id)
    assert rc == 0, err
    assert "Dr Amy Ortho > Dr Ben Ortho" in out and "Dr Ben Ortho > Dr Amy Ortho" in out
    first = SHIFT.findall(out)[0]
    rc, out, err = await lightbox_admin("rota", "remove", ROLE, "--org", org.org_id, first)
    assert rc == 0 and f"shift {first} removed" in out
    rc, out, _ = await lightbox_admin("rota", "show", ROLE, "--org", org.org_id)
    assert len(SHIFT.findall(out)) == 1 and first not in out

    # role_unknown named neither the role nor the organisation: a typo of the organisation
    # (the role exists) or of the role is told apart, from the relay's list of roles
    rc, _, err = await lightbox_admin("rota", "show", ROLE, "--org", "st-elswhere")
    assert (rc, err.strip()) == (2, (
        "error: role_unknown: st-elswhere has no on-call roles at all: check the organisation "
        f"id (organisations with on-call roles: {org.org_id})"))
    rc, _, err = await lightbox_admin("rota", "show", "orthopaedics-oncal", "--org", org.org_id)
    assert (rc, err.strip()) == (2, (
        f"error: role_unknown: {org.org_id} has no on-call role orthopaedics-oncal (its roles: "
        "orthopaedics_oncall); `lightbox-admin rota role orthopaedics-oncal --org "
        f"{org.org_id}` defines it"))
    # and so do the commands that change a rota, storing and removing nothing
    wrong_org = ("error: role_unknown: st-elswhere has no on-call roles at all: check the "
                 f"organisation id (organisations with on-call roles: {org.org_id})")
    wrong_role = (f"error: role_unknown: {org.org_id} has no on-call role orthopaedics-oncal "
                  "(its roles: orthopaedics_oncall); `lightbox-admin rota role "
                  f"orthopaedics-oncal --org {org.org_id}` defines it")
    left = SHIFT.findall((await lightbox_admin("rota", "show", ROLE, "--org", org.org_id))[1])
    for argv, said in [
        (("rota", "add", "orthopaedics-oncal", "--org", org.org_id, "--start", _at(3, 8),
          "--end", _at(3, 20), "--ladder", "amy.ortho"), wrong_role),
        (("rota", "import", ROLE, "--org", "st-elswhere", str(csv)), wrong_org),
        (("rota", "remove", "orthopaedics-oncal", "--org", org.org_id, left[0]), wrong_role),
    ]:
        rc, out, err = await lightbox_admin(*argv)
        assert (rc, out, err.strip()) == (2, "", said), argv
    rc, out, _ = await lightbox_admin("rota", "show", ROLE, "--org", org.org_id)
    assert SHIFT.findall(out) == left


@pytest.mark.usefixtures("admin_session")
async def test_a_ladder_of_strangers_and_a_file_that_is_not_a_rota_store_nothing(
        world: World, tmp_path: Path) -> None:
    org = world.org
    await lightbox_admin("rota", "role", ROLE, "--org", org.org_id)
    rc, out, err = await lightbox_admin("rota", "add", ROLE, "--org", org.org_id,
                                        "--start", _at(1, 8), "--end", _at(1, 20),
                                        "--ladder", "nobody.here")
    assert rc != 0 and "rota_invalid: unknown users: nobody.here" in err
    rc, out, err = await lightbox_admin("rota", "add", ROLE, "--org", org.org_id,
                                        "--start", _at(1, 8), "--end", _at(1, 20),
                                        "--ladder", "nobody.here", "--tz", "Europe/Lndon")
    assert rc != 0 and err.strip() == ("error: unknown time zone 'Europe/Lndon': write an "
                                       "IANA name such as Europe/London"), err
    bad = tmp_path / "notes.csv"
    bad.write_text("what,is,this\n1,2,3\n")
    rc2, _, err2 = await lightbox_admin("rota", "import", ROLE, "--org", org.org_id, str(bad))
    assert rc2 != 0 and "csv_invalid: missing columns: start, end, primary, backups" in err2
    rc, out, _ = await lightbox_admin("rota", "show", ROLE, "--org", org.org_id)
    assert rc == 0 and not SHIFT.findall(out)


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M")


@pytest.mark.usefixtures("admin_session")
async def test_a_rota_may_name_clinicians_not_enrolled_yet_but_not_a_suspended_one(
        world: World) -> None:
    """IT writes next month's rota once the accounts exist, before every clinician has
    enrolled: a provisioned user may be on a ladder (the consult passes over a member with no
    device: server/oncall.py). A suspended one may not, and is named as such."""
    org = world.org
    amy = org.user("amy.later", display_name="Dr Amy Later")
    sue = org.user("sue.suspended", display_name="Dr Sue Suspended")
    await world.provision(amy)  # provisioned only: not enrolled
    await world.onboard(sue)
    r = await world.revoke(org, 1, users=(sue.user_id,))
    assert r.status_code == 200, r.text
    await lightbox_admin("rota", "role", ROLE, "--org", org.org_id)
    rc, out, _ = await lightbox_admin("rota", "show", ROLE, "--org", org.org_id)
    assert rc == 0 and out.strip() == (
        f"no shifts of {ROLE} now or to come: consults to it wait for a shift "
        f"(lightbox-admin rota add {ROLE} ...)")
    rc, out, err = await lightbox_admin("rota", "add", ROLE, "--org", org.org_id,
                                        "--start", _at(3, 8), "--end", _at(3, 20),
                                        "--ladder", "amy.later")
    assert rc == 0, err
    rc, out, _ = await lightbox_admin("rota", "show", ROLE, "--org", org.org_id)
    assert "Dr Amy Later" in out
    rc, out, err = await lightbox_admin("rota", "add", ROLE, "--org", org.org_id,
                                        "--start", _at(4, 8), "--end", _at(4, 20),
                                        "--ladder", "amy.later;sue.suspended;nobody.here")
    assert rc != 0
    assert ("rota_invalid: unknown users: nobody.here; suspended users: sue.suspended"
            in err), err


@pytest.mark.usefixtures("admin_session")
async def test_a_single_shift_refused_is_not_given_a_line_and_a_file_counts_lines_from_one(
        world: World, tmp_path: Path) -> None:
    """``rota add`` gives one shift on the command line: its refusal names no line ("line 0"
    meant nothing). An imported file's refusals name its lines as a person counts them, the
    header being line 1."""
    org = world.org
    for login in ("amy.ortho", "ben.ortho"):
        await world.onboard(org.user(login))
    await lightbox_admin("rota", "role", ROLE, "--org", org.org_id)
    add = ("rota", "add", ROLE, "--org", org.org_id, "--start", _at(1, 8), "--end", _at(1, 20))
    rc, _, err = await lightbox_admin(*add, "--ladder", "amy.ortho")
    assert rc == 0, err
    rc, out, err = await lightbox_admin(*add, "--ladder", "ben.ortho")
    assert (rc, out) == (1, "0 shifts stored, 1 refused\n")
    assert err == ("shift refused (ben.ortho): shift_overlap: the shift overlaps another shift "
                   "of the role\n")
    csv = tmp_path / "rota.csv"
    csv.write_text("start,end,primary,backups\n"
                   f"{_at(1, 9)},{_at(1, 10)},ben.ortho,\n")
    rc, out, err = await lightbox_admin("rota", "import", ROLE, "--org", org.org_id, str(csv))
    assert (rc, out) == (1, "0 shifts stored, 1 refused\n")
    assert err == ("line 2 (ben.ortho): shift_overlap: the shift overlaps another shift of "
                   "the role\n")


@pytest.mark.usefixtures("admin_session")
async def test_removing_a_running_shift_tells_it_what_becomes_of_its_unacknowledged_consult(
        world: World) -> None:
    """An intern's urgent consult to the role is unacknowledged when IT removes the running
    shift: IT reads that it waits for the next shift, at its start. Once a shift IT adds has
    taken it, the later shift removed (nothing on it) and then that one, IT reads that no
    later shift is on the rota and how to add one. Counts and times only."""
    org = world.org
    intern = await peer(world, "intern", roles=("intern",))
    amy = await peer(world, "amy.ortho", roles=("orthopaedist",))
    await peer(world, "ben.ortho", roles=("orthopaedist",))
    await lightbox_admin("rota", "role", ROLE, "--org", org.org_id)
    now = int(time.time())
    later = now + 20 * 3600

    async def add(start: int, end: int, who: str) -> str:
        rc, _, err = await lightbox_admin("rota", "add", ROLE, "--org", org.org_id, "--start",
                                          _iso(start), "--end", _iso(end), "--ladder", who)
        assert rc == 0, err
        _, out, _ = await lightbox_admin("rota", "show", ROLE, "--org", org.org_id)
        return str(next(x for x in SHIFT.findall(out) if x not in ids))

    async def remove(shift_id: str) -> str:
        rc, out, err = await lightbox_admin("rota", "remove", ROLE, "--org", org.org_id,
                                            shift_id)
        assert rc == 0, err
        return out

    ids: list[str] = []
    ids.append(await add(now - 3600, now + 8 * 3600, "amy.ortho"))
    ids.append(await add(later, later + 8 * 3600, "ben.ortho"))
    running, nxt = ids
    tid = str(uuid.uuid4())
    r = await world.call(intern.device, "POST", "/v1/threads", json={
        "thread_id": tid, "roles": [f"role:{ROLE}"], "priority": "urgent"})
    assert r.status_code == 201, r.text
    s = await connect(world, intern)
    try:
        await s.send(seal(intern, tid, [amy], b"please see bed 4", priority=Priority.URGENT))
    finally:
        await s.close()
    at = dt.datetime.fromtimestamp(later - later % 60, dt.UTC).strftime("%Y-%m-%d %H:%M")
    assert await remove(running) == (
        f"shift {running} removed: 1 unacknowledged consult on it waits for the next shift, "
        f"at {at} (none covers now): their senders are told\n")
    ids.append(await add(now - 60, now + 3600, "amy.ortho"))  # takes the consult at once
    conn = await world.db()
    try:
        await eventually(lambda: conn.fetchval(
            "SELECT shift_id::text = $1 FROM escalations", ids[-1]))
    finally:
        await conn.close()
    assert await remove(nxt) == f"shift {nxt} removed\n"
    assert await remove(ids[-1]) == (
        f"shift {ids[-1]} removed: 1 unacknowledged consult on it waits for the next shift, "
        f"and no later shift is on the rota: add one (lightbox-admin rota add {ROLE} --org "
        f"{org.org_id} ...); their senders are told\n")


def test_consults_handed_over_to_a_shift_covering_now_are_said_to_be() -> None:
    """The relay's answer when a shift covers the moment (none can while shifts never
    overlap, but the wording must not claim a wait then)."""
    args = argparse.Namespace(shift_id="s1", role=ROLE, org="st-elsewhere", tz="UTC")
    assert describe_removal(args, api.ShiftRemoved(
        shift_id="s1", handovers=2, covered_now=True)) == (
        "shift s1 removed: 2 unacknowledged consults on it are handed over to the shift "
        "covering now")
