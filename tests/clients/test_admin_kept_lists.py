"""``lightbox-admin revocations save`` and ``restore`` (clients/admin/keptlists.py) as IT runs
them against a real relay, in processes of their own: a copy kept after each suspension, then
the relay's database as a restore from the day of the first copy leaves it (list 1 and the
second suspension undone: docs/OPERATIONS.md "What a restore brings back"), given the newest
copy back: the second clinician is suspended again and the relay serves the newest list, which
the devices holding it accept. An older copy is refused by the relay, one already held changes
nothing, and a file that is not a copy is one sentence."""

from __future__ import annotations

import json
from pathlib import Path

from tests.clients.test_cli_failures import _env, _write_org_keyfile, run
from tests.identity_world import World


async def test_it_keeps_the_lists_and_gives_a_restored_relay_the_newest_back(
        world: World, tmp_path: Path) -> None:
    org = world.org.org_id
    for login in ("ada.byron", "bo.chen"):
        await world.onboard(world.org.user(login))
    _write_org_keyfile(world, tmp_path / "it" / "org.key")
    env = _env(tmp_path, world)
    kept = tmp_path / "kept"
    kept.mkdir()

    async def admin(*argv: str) -> tuple[int, str, str]:
        return await run("lightbox-admin", *argv, env=env)

    # Nothing to keep yet: said, and no empty file written over an earlier copy.
    none = kept / "none.json"
    assert await admin("revocations", "save", str(none)) == (
        0, f"the relay holds no revocation list: nothing kept, {none} left as it was\n", "")
    assert not none.exists()

    first, second = kept / "first.json", kept / "second.json"
    assert (await admin("user", "suspend", "ada.byron"))[0] == 0
    assert await admin("revocations", "save", str(first)) == (
        0, f"kept revocation list 1 of {org} (1 entry)\nin {first}\n", "")
    assert (await admin("user", "suspend", "bo.chen"))[0] == 0
    assert await admin("revocations", "save", str(second)) == (
        0, f"kept revocation list 2 of {org} (2 entries)\nin {second}\n", "")

    # The relay restored from a backup taken between the two: list 1, and Bo not suspended.
    (held,) = await world.fetch("SELECT list FROM revocation_lists WHERE org_id = $1", org)
    await world.execute("UPDATE revocation_lists SET number = 1, list = $2 WHERE org_id = $1",
                        org, json.loads(first.read_text())["lists"][0])
    await world.execute("UPDATE users SET status = 'active' WHERE login = 'bo.chen'")

    assert await admin("revocations", "restore", str(first)) == (
        0, f"revocation list 1 of {org} (1 entry) already held by the relay: nothing "
           "changed\n", "")
    assert await admin("revocations", "restore", str(second)) == (
        0, f"revocation list 2 of {org} (2 entries) restored: 1 user suspended again\n", "")
    (bo,) = await world.fetch("SELECT status FROM users WHERE login = 'bo.chen'")
    assert bo["status"] == "suspended"
    served = (await world.http.get("/v1/revocations")).json()["lists"]
    assert served == [held["list"]]  # the list the devices hold, so they accept it again

    # An older copy is refused, and said so; the relay keeps the newer list.
    rc, out, err = await admin("revocations", "restore", str(first))
    assert (rc, out) == (1, "")
    assert err == (f"revocation list 1 of {org} (1 entry) refused: conflict: list 1 is older "
                   "than list 2\n")
    assert (await world.http.get("/v1/revocations")).json()["lists"] == [held["list"]]

    # Not a copy, or no file: one sentence each, nothing sent.
    wrong = tmp_path / "rota.csv"
    wrong.write_text("start,end,primary\n")
    assert await admin("revocations", "restore", str(wrong)) == (
        2, "", f"error: {wrong} is not a copy of the relay's revocation lists (`lightbox-admin "
               "revocations save FILE` writes one)\n")
    assert await admin("revocations", "restore", str(kept / "nowhere.json")) == (
        2, "", f"error: no such file: {kept / 'nowhere.json'}\n")
    nowhere = kept / "no-such-folder" / "copy.json"
    assert await admin("revocations", "save", str(nowhere)) == (
        2, "", f"error: cannot write {nowhere}: No such file or directory\n")
    assert sorted(p.name for p in kept.iterdir()) == ["first.json", "second.json"]
