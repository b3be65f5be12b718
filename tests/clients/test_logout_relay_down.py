"""``lightbox logout`` with the relay out of reach (docs/USER_GUIDE.md "Everyday commands"): the
device forgets its tokens all the same, and one sentence says that the relay could not be told
and when the session lapses by itself (exit status 1, the session living on at the relay until
then). A real relay, stopped, then started again on its port to show the session still there."""

from __future__ import annotations

import asyncio
from pathlib import Path

from clients.clinician.shell import when
from tests.clients.test_outbox import relay_back
from tests.clinician_world import cli_world, enrol_clinician, profile_session
from tests.clinician_world import run_cli as lightbox
from tests.identity_world import World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


async def test_logout_with_the_relay_down_forgets_the_tokens_and_says_the_session_lapses(
        world: World, tmp_path: Path) -> None:
    home = tmp_path / "home"
    intern = await enrol_clinician(world, tmp_path, "intern", vault_dir=home / "intern")
    await intern.client.ensure_login()
    await intern.client.close()
    session, device_id = intern.vault.state.session, intern.vault.state.device_id
    assert session is not None
    intern.vault.lock()
    await asyncio.to_thread(world.relay.stop)  # off this loop: nothing may answer

    rc, out, err = await lightbox("--profile", "intern", "logout")
    assert rc == 1 and out == "", out + err
    assert err == (
        "error: cannot reach the relay (no connection could be made), so it could not be told "
        f"to end the session of intern on device {device_id}: this device forgot its tokens "
        f"all the same, and the session lapses at {when(session.refresh_expires_at)} (your IT "
        "team can end it sooner)\n")
    assert profile_session(home, "intern") is None
    rc, out, err = await lightbox("--profile", "intern", "logout")
    assert rc == 0 and out.startswith("not logged in: intern"), out + err

    # As said: the relay was not told, so the session lives on there until it lapses.
    async with relay_back(world, tmp_path):
        r = await world.http.post("/v1/auth/refresh",
                                  json={"refresh_token": session.refresh_token})
        assert r.status_code == 200, r.text
