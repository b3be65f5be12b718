"""IT suspends a clinician and resumes her (``lightbox-admin user suspend``/``resume``: two
signed revocation lists, the first naming her, the next not): the relay ended her sessions
at the suspension, and the next command she runs signs in again by itself with the password
that unlocked her device, and just works (docs/USER_GUIDE.md "Your session renews itself").
Before, every command said ``your session has ended (token_invalid): run `lightbox login```
until she did: the relay refused her access token, which still had time left, and nothing
asked for another (clients/sdk/transport.py ``_device``, clients/sdk/session.py
``token_refused``). Real relay, the real ``lightbox`` run to its end."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clinician_world import cli_world, intern_and_specialist
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import count
from tests.identity_world import World

world = cli_world

ORTHO = "orthopaedics_oncall"


@pytest.mark.parametrize("command", ["inbox", "threads"])
async def test_after_a_suspension_and_resume_the_next_command_signs_in_again_by_itself(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    _intern, ortho = await intern_and_specialist(world, tmp_path, monkeypatch, ORTHO)
    rc, out, err = await lightbox("--profile", "ortho", command)
    assert (rc, err) == (0, ""), out + err
    logins = await count(world, "SELECT count(*) FROM audit_log WHERE event = 'auth.login'")

    r = await world.revoke(world.org, 1, users=(ortho.user_id,))  # suspended
    assert r.status_code == 200, r.text
    r = await world.revoke(world.org, 2)  # resumed
    assert r.status_code == 200, r.text

    rc, out, err = await lightbox("--profile", "ortho", command)
    assert (rc, err) == (0, ""), out + err
    assert await count(world, "SELECT count(*) FROM audit_log WHERE event = 'auth.login'") \
        == logins + 1
    rc, out, err = await lightbox("--profile", "ortho", command)  # and the one after it
    assert (rc, err) == (0, ""), out + err
