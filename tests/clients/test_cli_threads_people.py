"""``lightbox threads`` says whom each consult reaches besides the reader: its roles, then the
people in it by name, never a bare count that includes the reader (docs/USER_GUIDE.md
"Everyday commands"). Real relay and real ``lightbox`` commands."""

from __future__ import annotations

import re
from pathlib import Path

from tests.clients.test_cli_ack import ACK, on_call, send
from tests.clinician_world import cli_world
from tests.clinician_world import run_cli as lightbox
from tests.identity_world import World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)


def people_of(out: str, subject: str) -> str:
    line = next(x for x in out.splitlines() if f"  {subject}  [" in x)
    return re.search(r"  \[(.*)\]  \d+ unread$", line)[1]  # type: ignore[index]


async def test_threads_names_the_role_and_the_people_besides_the_reader(
        world: World, tmp_path: Path) -> None:
    await on_call(world, tmp_path)
    await send("--to", "role:orthopaedics-oncall", "--to", "user:eve", "--urgent",
               "--subject", "Ankle, bed 9", "Weber B?")
    hip = await send("--to", "role:orthopaedics-oncall", "--subject", "Hip, bed 2", "NOF?")

    rc, out, err = await lightbox("--profile", "intern", "threads")
    assert rc == 0, out + err
    assert people_of(out, "Ankle, bed 9") == "with role:orthopaedics_oncall, Dr Eve Radiology"
    assert people_of(out, "Hip, bed 2") == "with role:orthopaedics_oncall"

    # Bob, reached through the role, acknowledges the hip: he is then in the thread by name
    # too, and reads it as with the role and the intern.
    rc, out, err = await lightbox("--profile", "bob", "inbox")
    assert rc == 0 and hip in ACK.findall(out), out + err
    rc, out, err = await lightbox("--profile", "bob", "ack", hip)
    assert rc == 0, out + err
    rc, out, err = await lightbox("--profile", "bob", "threads")
    assert rc == 0, out + err
    assert people_of(out, "Ankle, bed 9") == ("with role:orthopaedics_oncall, Dr Ada Intern, "
                                              "Dr Eve Radiology")
    assert people_of(out, "Hip, bed 2") == "with role:orthopaedics_oncall, Dr Ada Intern"
    rc, out, err = await lightbox("--profile", "intern", "threads")
    assert people_of(out, "Hip, bed 2") == "with role:orthopaedics_oncall, Dr Bob Primary", out


async def test_someone_reached_through_the_role_who_replied_is_named(
        world: World, tmp_path: Path) -> None:
    """Bob, on call, answers the consult without acknowledging it: he is not made a member of
    the thread, but the intern's list names him all the same (he wrote in it), as the guide's
    "4. Follow it" shows it."""
    await on_call(world, tmp_path)
    await send("--to", "role:orthopaedics-oncall", "--subject", "Elbow, bay 3", "Supracondylar?")
    rc, out, err = await lightbox("--profile", "bob", "inbox")
    assert rc == 0, out + err
    prefix = re.search(r" in ([0-9a-f]{8}): Elbow, bay 3", out)[1]  # type: ignore[index]
    rc, out, err = await lightbox("--profile", "bob", "send", "--thread", prefix,
                                  "Coming down now")
    assert rc == 0, out + err
    rc, out, err = await lightbox("--profile", "intern", "inbox")
    assert rc == 0 and "Coming down now" in out, out + err
    rc, out, err = await lightbox("--profile", "intern", "threads")
    assert rc == 0, out + err
    assert people_of(out, "Elbow, bay 3") == "with role:orthopaedics_oncall, Dr Bob Primary"
