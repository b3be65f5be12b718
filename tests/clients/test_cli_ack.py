"""``lightbox ack MESSAGE_ID``: the on-call specialist on a terminal says "I'm on it"
(docs/USER_GUIDE.md "Specialists: answering a consult"; docs/PROTOCOL.md §16.3). The id is
the one ``inbox`` and ``watch`` show under the consult; the command says what the relay did
with the acknowledgement (taken, and the escalation stopped; refused as ``not_on_ladder``),
and every wrong input or a relay out of reach ends with one sentence, never a traceback.
Real relay, real ``lightbox`` commands (one as a process of its own), real on-call rota."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path

from clients.sdk.client import EscalationEvent
from tests.clinician_world import cli_world, enrol_clinician, lightbox_process
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import count
from tests.filing_world import enrol_gateway
from tests.helpers import seconds
from tests.identity_world import World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)

ORG = "st-elsewhere"
ROLE = "role:orthopaedics-oncall"
ORTHO = "orthopaedics_oncall"
ACK = re.compile(r"^    I'm on it: lightbox ack (\S+)$", re.M)


async def on_call(world: World, tmp_path: Path) -> None:
    """Ada the intern; Bob on call for orthopaedics now, Carol his backup; Eve a colleague
    outside the rota."""
    home = tmp_path / "home"
    await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern",
                          vault_dir=home / "intern")
    for login, name, roles in (("bob", "Dr Bob Primary", (ORTHO,)),
                               ("carol", "Dr Carol Backup", (ORTHO,)),
                               ("eve", "Dr Eve Radiology", ("radiologist",))):
        c = await enrol_clinician(world, tmp_path, login, roles=roles, display_name=name,
                                  vault_dir=home / login)
        c.vault.lock()
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/{ROLE}", headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    now = int(time.time())
    r = await world.http.post(
        f"/v1/admin/oncall/{ORG}/{ROLE}/shifts", headers=world.admin_headers(),
        json={"shifts": [{"starts_at": now - 3600, "ends_at": now + 3600,
                          "ladder": ["bob", "carol"]}]})
    assert r.status_code == 200 and r.json()["results"][0]["ok"], r.text


async def escalation(world: World, message_id: str) -> tuple[str, str | None]:
    """The consult's escalation as the relay keeps it: its state, and who acknowledged it."""
    state = await count(world, "SELECT array_position(ARRAY['open', 'acknowledged', "
                        "'exhausted'], state) FROM escalations WHERE message_id = $1",
                        uuid.UUID(message_id))
    by = await count(world, "SELECT count(*) FROM escalations e JOIN users u ON u.user_id = "
                     "e.acknowledged_by WHERE e.message_id = $1 AND u.login = 'bob'",
                     uuid.UUID(message_id))
    return ("open", "acknowledged", "exhausted")[state - 1], "bob" if by else None


async def send(*argv: str) -> str:
    rc, out, err = await lightbox("--profile", "intern", "send", *argv)
    assert rc == 0, out + err
    return re.search(r"^sent: message (\S+) ", out, re.M)[1]  # type: ignore[index]


async def test_the_on_call_specialist_acknowledges_the_consult_inbox_shows_and_it_stops(
        world: World, tmp_path: Path) -> None:
    await on_call(world, tmp_path)
    sent = await send("--to", ROLE, "--urgent", "--subject", "Wrist, bed 4",
                      "Displaced distal radius?")
    rc, out, err = await lightbox("--profile", "bob", "inbox")
    assert rc == 0, out + err
    (shown,) = ACK.findall(out)  # the id under the consult, with the command
    assert shown == sent, out
    assert (await escalation(world, sent))[0] == "open"

    process = await lightbox_process("--profile", "bob", "ack", shown)
    out_b, err_b = await asyncio.wait_for(process.communicate(), seconds(60))
    assert (process.returncode, err_b.decode()) == (0, ""), out_b + err_b
    assert out_b.decode() == ('acknowledged consult "Wrist, bed 4": Dr Ada Intern is told you '
                              "are on it, and its on-call escalation stops\n")
    assert await escalation(world, sent) == ("acknowledged", "bob")

    # Again: said, nothing sent again; and inbox no longer offers it.
    rc, out, err = await lightbox("--profile", "bob", "ack", shown)
    assert rc == 0, out + err
    assert out.startswith('you already acknowledged consult "Wrist, bed 4" at '), out
    assert out.endswith(": Dr Ada Intern was told then; nothing sent again\n"), out
    rc, out, err = await lightbox("--profile", "bob", "inbox")
    assert rc == 0 and not ACK.findall(out), out + err


async def test_someone_off_the_ladder_is_refused_and_told_in_plain_words(
        world: World, tmp_path: Path) -> None:
    """Eve, named on the consult beside the role but not on its on-call ladder: the relay
    refuses her acknowledgement (``not_on_ladder``), and the escalation goes on."""
    await on_call(world, tmp_path)
    sent = await send("--to", ROLE, "--to", "user:eve", "--subject", "Ankle, bed 9",
                      "Weber B?")
    rc, out, err = await lightbox("--profile", "eve", "inbox")
    assert rc == 0 and ACK.findall(out) == [sent], out + err
    thread = re.search(r" in (\S{8}): Ankle", out)
    assert thread, out
    rc, out, err = await lightbox("--profile", "eve", "ack", sent)
    assert rc == 1 and out == "", out + err
    assert re.fullmatch(
        r'error: not_on_ladder: consult "Ankle, bed 9" is not acknowledged: only someone on '
        r"its on-call ladder can acknowledge it, and you are not on it, so its escalation "
        r"goes on; to tell Dr Ada Intern anything, reply \(lightbox send --thread "
        rf"{thread[1]}\S+ TEXT\)\n", err), err
    assert await escalation(world, sent) == ("open", None)
    # Once Bob on the ladder has acknowledged it, Eve is not told the escalation goes on.
    rc, out, err = await lightbox("--profile", "bob", "ack", sent)
    assert rc == 0, out + err
    rc, out, err = await lightbox("--profile", "eve", "ack", sent)
    assert rc == 1 and ("you are not on it, and its escalation stopped already: Dr Bob "
                        "Primary acknowledged it; to tell Dr Ada Intern") in err, err


async def test_a_consult_without_a_role_is_acknowledged_to_its_sender(
        world: World, tmp_path: Path) -> None:
    await on_call(world, tmp_path)
    sent = await send("--to", "user:eve", "--subject", "Chest film", "Effusion?")
    rc, out, err = await lightbox("--profile", "eve", "ack", sent)
    assert (rc, out, err) == (0, 'acknowledged consult "Chest film": Dr Ada Intern is told '
                                 "you are on it\n", ""), out + err


async def test_wrong_ids_and_own_messages_are_refused_with_one_sentence(
        world: World, tmp_path: Path) -> None:
    await on_call(world, tmp_path)
    sent = await send("--to", "user:eve", "--subject", "Chest film", "Effusion?")
    rc, out, err = await lightbox("--profile", "eve", "ack", "not-an-id")
    assert (rc, out) == (1, ""), out + err
    assert err == ("error: validation_failed: 'not-an-id' is not a message id: copy the one "
                   'after "lightbox ack" under the consult in `lightbox inbox` or '
                   "`lightbox watch`\n")
    unknown = str(uuid.uuid4())
    rc, out, err = await lightbox("--profile", "eve", "ack", unknown)
    assert (rc, out) == (1, ""), out + err
    assert err == (f"error: not_found: no message {unknown} on this device: copy the id after "
                   '"lightbox ack" under the consult in `lightbox inbox` or `lightbox watch`\n')
    rc, out, err = await lightbox("--profile", "intern", "ack", sent)
    assert (rc, out) == (1, ""), out + err
    assert err == (f"error: validation_failed: message {sent} is yours (consult \"Chest film\"): "
                   "only a consult a colleague sent you can be acknowledged\n")


async def test_with_the_relay_down_nothing_is_acknowledged_and_the_specialist_is_told(
        world: World, tmp_path: Path) -> None:
    await on_call(world, tmp_path)
    sent = await send("--to", ROLE, "--urgent", "--subject", "Hip, bed 2", "NOF?")
    rc, out, err = await lightbox("--profile", "bob", "inbox")
    assert rc == 0, out + err
    await asyncio.to_thread(world.relay.stop)  # off this loop: nothing may answer
    rc, out, err = await lightbox("--profile", "bob", "ack", sent)
    assert (rc, out) == (1, ""), out + err
    assert err == ("error: cannot reach the relay (no connection could be made), so consult "
                   '"Hip, bed 2" is NOT acknowledged: the sender is not told and its on-call '
                   f"escalation goes on; run `lightbox ack {sent}` again when the relay "
                   "answers, or phone the sender if it cannot wait\n")
    assert await escalation(world, sent) == ("open", None)


async def test_thread_escalation_steps_are_the_relays_in_order_and_none_when_it_cannot_say(
        world: World, tmp_path: Path) -> None:
    """The SDK's one reading of ``GET /v1/threads/{id}/escalations`` (``send``'s gap line and
    the steps a device tells after another program sent): a consult in a gap in the rota has
    its ``no_shift`` step; a thread not the user's, or a relay out of reach, gives []."""
    home = tmp_path / "home"
    intern = await enrol_clinician(world, tmp_path, "intern", display_name="Dr Ada Intern",
                                   vault_dir=home / "intern")
    await enrol_clinician(world, tmp_path, "carol", roles=(ORTHO,))
    r = await world.http.put(f"/v1/admin/oncall/{ORG}/{ROLE}", headers=world.admin_headers(),
                             json={"display_name": "Orthopaedics on call"})
    assert r.status_code == 200, r.text
    client = intern.client
    await client.start()
    try:
        thread = await client.create_thread(roles=[ORTHO])
        sent = await client.send_text(thread.thread_id, "Hot swollen knee")
        steps = await client.thread_escalation_steps(thread.thread_id)
        assert steps == [EscalationEvent(thread.thread_id, sent.message_id, "no_shift", 1, 0,
                                         intern.user_id, steps[0].at, None)], steps
        assert await client.thread_escalation_steps(str(uuid.uuid4())) == []
        await asyncio.to_thread(world.relay.stop)
        assert await client.thread_escalation_steps(thread.thread_id) == []
    finally:
        await client.close(drain=0)


async def test_the_record_gateways_messages_offer_no_ack_and_are_refused_one(
        world: World, tmp_path: Path) -> None:
    """The record gateway answers in a consult (a filing it refused, say): an "I'm on it" to
    it would go to the gateway, not to the consult's sender, and its escalation would read
    acknowledged by you. ``inbox`` offers none under it, and ``ack`` refuses it."""
    await on_call(world, tmp_path)
    gateway = await enrol_gateway(world, tmp_path)
    await gateway.client.start(wait_connected=seconds(10))
    try:
        bob = await gateway.client.resolve_user("bob")
        thread = await gateway.client.create_thread(users=[bob.user_id])
        said = await gateway.client.send_text(thread.thread_id,
                                              "The image was not filed again.")
    finally:
        await gateway.client.close()
    rc, out, err = await lightbox("--profile", "bob", "inbox")
    assert rc == 0 and "The image was not filed again." in out and not ACK.findall(out), (
        out + err)
    rc, out, err = await lightbox("--profile", "bob", "ack", said.message_id)
    assert rc == 1 and out == "", out + err
    assert err.startswith(f"error: validation_failed: message {said.message_id} is the record "
                          "gateway's answer, not a consult ("), err
    assert err.endswith("only a consult a colleague sent you can be acknowledged\n"), err
