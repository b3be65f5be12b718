"""clients/admin/rota.py: ``lightbox-admin rota`` as IT runs it against a real relay: a role
and its deadlines, a shift added by hand and one imported from a CSV, the shifts shown with
their ladders, one removed; a shift whose ladder names nobody the relay knows, or a file that
is not a rota, is refused row by row and nothing of it is stored."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from tests.clients.test_consent_withdraw import admin_session as admin_session
from tests.clients.test_consent_withdraw import lightbox_admin
from tests.identity_world import World

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


@pytest.mark.usefixtures("admin_session")
async def test_a_ladder_of_strangers_and_a_file_that_is_not_a_rota_store_nothing(
        world: World, tmp_path: Path) -> None:
    org = world.org
    await lightbox_admin("rota", "role", ROLE, "--org", org.org_id)
    rc, out, err = await lightbox_admin("rota", "add", ROLE, "--org", org.org_id,
                                        "--start", _at(1, 8), "--end", _at(1, 20),
                                        "--ladder", "nobody.here")
    assert rc != 0 and "rota_invalid: unknown or inactive users: nobody.here" in err
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
