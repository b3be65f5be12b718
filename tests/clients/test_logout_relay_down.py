"""``lightbox logout`` with the relay out of reach (docs/USER_GUIDE.md "Everyday commands"): the
device stops using the session all the same, and one sentence says that the relay could not be
told, that the next logout ends it, and when it lapses by itself (exit status 1). The refresh
token, which alone lets the relay end the session, stays sealed in the vault; the next logout
that reaches the relay ends the session there and forgets it. A real relay, stopped, then started
again on its port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clients.clinician.shell import when
from tests.clients.test_outbox import relay_back
from tests.clinician_world import cli_world, enrol_clinician, profile_session
from tests.clinician_world import run_cli as lightbox
from tests.identity_world import World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


@pytest.mark.parametrize("signed_in_again", [False, True], ids=["logged-out", "signed-in-again"])
async def test_logout_with_the_relay_down_stops_using_the_session_and_the_next_logout_ends_it(
        world: World, tmp_path: Path, signed_in_again: bool) -> None:
    """The next logout ends the kept session, whether the clinician signed in again meanwhile
    (the next command does, docs/USER_GUIDE.md) or not."""
    home = tmp_path / "home"
    intern = await enrol_clinician(world, tmp_path, "intern", vault_dir=home / "intern")
    await intern.client.ensure_login()
    await intern.client.close()
    session, device_id = intern.vault.state.session, intern.vault.state.device_id
    assert session is not None
    intern.vault.lock()
    await asyncio.to_thread(world.relay.stop)  # off this loop: nothing may answer

    down = (
        "error: cannot reach the relay (no connection could be made), so it could not be told "
        f"to end the session of intern on device {device_id}: this device no longer uses it and "
        "keeps its token sealed only to end it; run `lightbox logout` again once the relay "
        f"answers, or the session lapses at {when(session.refresh_expires_at)} (your IT team "
        "can end it sooner)\n")
    rc, out, err = await lightbox("--profile", "intern", "logout")
    assert (rc, out, err) == (1, "", down)
    assert profile_session(home, "intern") is None  # out of use: nothing refreshes with it
    for kept in (f for f in (home / "intern").rglob("*") if f.is_file()):  # sealed
        assert session.refresh_token.encode() not in kept.read_bytes(), kept
    rc, out, err = await lightbox("--profile", "intern", "logout")  # still down: still kept
    assert (rc, out, err) == (1, "", down)

    async with relay_back(world, tmp_path):
        earlier = f"the relay ended the session of intern on device {device_id} that it could " \
            "not be told to end before"
        if signed_in_again:
            rc, out, err = await lightbox("--profile", "intern", "inbox")
            assert rc == 0 and profile_session(home, "intern") is not None, out + err
        rc, out, err = await lightbox("--profile", "intern", "logout")
        assert (rc, err) == (0, ""), out + err
        assert out == (
            f"logged out: the relay ended the session of intern on device {device_id} and this "
            f"device forgot its tokens; `lightbox login` signs in again\nalso: {earlier}\n"
            if signed_in_again else f"logged out: {earlier}, and this device forgot its token; "
            "`lightbox login` signs in again\n")
        r = await world.http.post("/v1/auth/refresh",
                                  json={"refresh_token": session.refresh_token})
        assert (r.status_code, r.json()["code"]) == (401, "token_invalid"), r.text
        rc, out, err = await lightbox("--profile", "intern", "logout")
        assert rc == 0 and out.startswith("not logged in: intern"), out + err
