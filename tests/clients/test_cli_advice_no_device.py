"""``lightbox send --to user:LOGIN`` to a colleague whose only device IT revoked, against a real
relay: refused before anything is made (clients/clinician/sending.py ``check_devices``), with
one sentence naming them and what to do instead, never the relay's ``device_set_mismatch``."""

from __future__ import annotations

from pathlib import Path

from tests.clinician_world import cli_world, enrol_clinician
from tests.clinician_world import run_cli as lightbox
from tests.identity_world import World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


async def test_a_colleague_whose_only_device_was_revoked_is_named_and_nothing_is_sent(
        world: World, tmp_path: Path) -> None:
    home = tmp_path / "home"
    intern = await enrol_clinician(world, tmp_path, "intern", vault_dir=home / "intern")
    rita = await enrol_clinician(world, tmp_path, "rita.ray", roles=("physician",),
                                 vault_dir=home / "rita")
    intern.vault.lock()
    r = await world.revoke(world.org, 1, devices=(await world.device_of(rita.user_id),))
    assert r.status_code == 200, r.text

    rc, out, err = await lightbox("--profile", "intern", "send", "--to", "user:rita.ray",
                                  "Please review the film for bed 4.")
    assert (rc, "sent:" in out) == (1, False), out + err
    assert err == ("error: no_device: rita.ray has no device that can receive messages (their "
                   "devices were revoked or never enrolled): ask them to enrol one, or send to "
                   "the on-call role (--to role:ROLE). Nothing was sent.\n")
    conn = await world.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM threads") == 0
    finally:
        await conn.close()
