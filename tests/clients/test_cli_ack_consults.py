"""``lightbox ack`` and its hint only for a consult that asks this reader for help
(clients/sdk/acking.py; docs/USER_GUIDE.md "Specialists: answering a consult"): ``inbox`` shows
``I'm on it: lightbox ack ID`` under a colleague's consult, never under the specialist's reply
to the sender's own consult nor under a break-glass follow-up note, and no longer once the
specialist acknowledged the consult on another device of theirs; ``ack`` of a reply is refused
in one sentence and nothing reaches the relay. Real relay, real ``lightbox`` commands, a real
on-call rota."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from types import SimpleNamespace

from clients.sdk.client import LightboxClient
from clients.sdk.profile import open_profile
from clients.sdk.vault import ItemNotFound
from tests.clients.test_cli_ack import ACK, ROLE, on_call, send
from tests.clients.test_unread_own_devices import link_desktop
from tests.clinician_world import cli_world
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import count
from tests.helpers import eventually, seconds
from tests.identity_world import PASSWORD, World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)

FOLLOW_UP = "The patient died before regaining consciousness"


async def thread_of(world: World, message_id: str) -> str:
    conn = await world.db()
    try:
        return str(await conn.fetchval("SELECT thread_id FROM messages WHERE message_id = $1",
                                       uuid.UUID(message_id)))
    finally:
        await conn.close()


async def held(client: LightboxClient, message_id: str) -> bool:
    try:
        client.vault.message(message_id)
    except ItemNotFound:
        return False
    return True


async def acknowledgements(world: World, message_id: str) -> int:
    """The ``acknowledged`` receipts the relay keeps of one message."""
    return await count(world, "SELECT count(*) FROM receipts WHERE message_id = $1 "
                       "AND kind = 'acknowledged'", uuid.UUID(message_id))


async def test_the_sender_is_offered_no_ack_under_the_reply_to_her_consult_and_ack_refuses_it(
        world: World, tmp_path: Path) -> None:
    """Ada's consult to the on-call role; Bob, on call, acknowledges it and replies. Ada's
    inbox shows his reply with no "I'm on it", and ``lightbox ack`` of it is refused: the
    escalation is over, so the relay (blind to which message is the consult) would take it
    and tell Bob that Ada is on his reply."""
    await on_call(world, tmp_path)
    sent = await send("--to", ROLE, "--urgent", "--subject", "Wrist, bed 4",
                      "Displaced distal radius?")
    rc, out, err = await lightbox("--profile", "bob", "inbox")
    assert rc == 0 and ACK.findall(out) == [sent], out + err  # a colleague's consult
    rc, out, err = await lightbox("--profile", "bob", "ack", sent)
    assert rc == 0, out + err
    thread = await thread_of(world, sent)
    rc, out, err = await lightbox("--profile", "bob", "send", "--thread", thread,
                                  "Coming to see her now.")
    assert rc == 0, out + err
    reply = re.search(r"^sent: message (\S+) ", out, re.M)[1]  # type: ignore[index]

    rc, out, err = await lightbox("--profile", "intern", "inbox")
    assert rc == 0 and "Coming to see her now." in out, out + err
    assert ACK.findall(out) == [], out

    rc, out, err = await lightbox("--profile", "intern", "ack", reply)
    assert (rc, out) == (1, ""), out + err
    assert err == (f"error: validation_failed: message {reply} is Dr Bob Primary's reply in a "
                   'consult you sent (consult "Wrist, bed 4"): not a consult for you to '
                   "acknowledge, so nothing is sent; to tell Dr Bob Primary anything, reply "
                   f"(lightbox send --thread {thread} TEXT)\n")
    assert await acknowledgements(world, reply) == 0
    assert await acknowledgements(world, sent) == 1  # Bob's, and only his


async def test_a_break_glass_follow_up_note_is_offered_no_ack_and_ack_refuses_it(
        world: World, tmp_path: Path) -> None:
    """Ada's emergency consult to Eve, then her break-glass follow-up (a note about the
    consent, sealed into the thread as a reply to it: docs/PROTOCOL.md §17). Eve is offered
    "I'm on it" under the consult only; ``ack`` of the note names the consult instead."""
    await on_call(world, tmp_path)
    sent = await send("--to", "user:eve", "--urgent", "--subject", "Collapse, bay 1",
                      "--emergency", "Unconscious after a fall, nobody to ask tonight",
                      "--emergency-category", "unconscious", "GCS 6, please come")
    rc, out, err = await lightbox("--profile", "intern", "break-glass")
    assert rc == 0, out + err
    case_id = out.split()[0]
    rc, out, err = await lightbox("--profile", "intern", "break-glass", "follow-up", case_id,
                                  "--no-consent", "patient_died", "--reason", FOLLOW_UP)
    assert rc == 0, out + err
    conn = await world.db()
    try:
        note = str(await conn.fetchval(
            "SELECT message_id FROM messages WHERE thread_id = (SELECT thread_id FROM messages "
            "WHERE message_id = $1) AND message_id <> $1", uuid.UUID(sent)))
    finally:
        await conn.close()

    rc, out, err = await lightbox("--profile", "eve", "inbox")
    assert rc == 0 and FOLLOW_UP in out, out + err
    assert ACK.findall(out) == [sent], out  # under the consult, not under the note

    rc, out, err = await lightbox("--profile", "eve", "ack", note)
    assert (rc, out) == (1, ""), out + err
    assert err == (f"error: validation_failed: message {note} is a note about an earlier "
                   "message (a break-glass follow-up, a corrected patient identity) (consult "
                   '"Collapse, bay 1"): not a consult for you to acknowledge, so nothing is '
                   f"sent; acknowledge the consult itself: lightbox ack {sent}\n")
    assert await acknowledgements(world, note) == 0


async def test_inbox_offers_no_ack_for_a_consult_acknowledged_on_her_other_device(
        world: World, tmp_path: Path) -> None:
    """Bob acknowledges the consult on his desktop (another device of his, linked from his
    phone's profile); his phone's ``inbox`` still shows the consult, without the hint, and
    ``ack`` there says it was done, sending nothing again."""
    await on_call(world, tmp_path)
    opened = open_profile(tmp_path / "home" / "bob", PASSWORD)
    desktop = await link_desktop(world, SimpleNamespace(  # type: ignore[arg-type]
        client=opened.client(), vault=opened.vault), tmp_path / "bob-desktop")
    opened.vault.lock()
    await desktop.start(wait_connected=seconds(10))
    try:
        sent = await send("--to", ROLE, "--urgent", "--subject", "Wrist, bed 4",
                          "Displaced distal radius?")
        await eventually(lambda: held(desktop, sent), timeout=15)
        assert await desktop.acknowledge(sent, wait=seconds(10))

        async def kept() -> bool:
            return await acknowledgements(world, sent) == 1
        await eventually(kept, timeout=15)  # the relay answers a kept receipt with nothing
    finally:
        await desktop.close()

    rc, out, err = await lightbox("--profile", "bob", "inbox")
    assert rc == 0 and "Displaced distal radius?" in out, out + err
    assert ACK.findall(out) == [], out
    rc, out, err = await lightbox("--profile", "bob", "ack", sent)
    assert rc == 0 and out.startswith('you already acknowledged consult "Wrist, bed 4" at '), (
        out + err)
    assert out.endswith(": Dr Ada Intern was told then; nothing sent again\n"), out
    assert await acknowledgements(world, sent) == 1


async def test_a_consult_of_two_opening_messages_offers_ack_once_and_is_acknowledged_once(
        world: World, tmp_path: Path) -> None:
    """Ada sends a consult, then a second message in it before anyone answered: both open it.
    Bob's inbox offers "I'm on it" once, under the second (the last of them it prints);
    ``ack`` of the second acknowledges the consult (and reads it), so his inbox offers it no
    longer under the first either, and
    ``ack`` of the first says it was done, sending nothing. Before, the hint came under both,
    and stayed under the first once the second was acknowledged."""
    await on_call(world, tmp_path)
    first = await send("--to", ROLE, "--urgent", "--subject", "Wrist, bed 4",
                       "Displaced distal radius?")
    second = await send("--thread", await thread_of(world, first), "Fingers numb now too.")
    rc, out, err = await lightbox("--profile", "bob", "inbox")
    assert rc == 0 and "Displaced distal radius?" in out and "Fingers numb now too." in out, (
        out + err)
    assert ACK.findall(out) == [second], out
    assert out.index("Fingers numb now too.") < out.index(f"lightbox ack {second}"), out

    rc, out, err = await lightbox("--profile", "bob", "ack", second)
    assert (rc, out) == (0, 'acknowledged consult "Wrist, bed 4": Dr Ada Intern is told you '
                            "are on it, and its on-call escalation stops\n"), out + err
    rc, out, err = await lightbox("--profile", "bob", "inbox")
    assert rc == 0 and "Displaced distal radius?" in out, out + err  # read: the acknowledged
    assert ACK.findall(out) == [], out  # nor under the first, still unread

    rc, out, err = await lightbox("--profile", "bob", "ack", first)
    assert rc == 0 and out.startswith('you already acknowledged consult "Wrist, bed 4" at '), (
        out + err)
    assert out.endswith(": Dr Ada Intern was told then; nothing sent again\n"), out
    assert (await acknowledgements(world, first), await acknowledgements(world, second)) == (0, 1)


async def test_a_consult_acknowledged_on_her_other_device_by_its_first_message_offers_no_ack(
        world: World, tmp_path: Path) -> None:
    """The consult of two opening messages; Bob acknowledges its first on his desktop. His
    phone's inbox offers "I'm on it" under neither (the place it would go, the second, was
    not the one acknowledged), and ``ack`` of the second says it was done."""
    await on_call(world, tmp_path)
    opened = open_profile(tmp_path / "home" / "bob", PASSWORD)
    desktop = await link_desktop(world, SimpleNamespace(  # type: ignore[arg-type]
        client=opened.client(), vault=opened.vault), tmp_path / "bob-desktop")
    opened.vault.lock()
    await desktop.start(wait_connected=seconds(10))
    try:
        first = await send("--to", ROLE, "--urgent", "--subject", "Wrist, bed 4",
                           "Displaced distal radius?")
        second = await send("--thread", await thread_of(world, first), "Fingers numb now too.")
        await eventually(lambda: held(desktop, second), timeout=15)
        assert await desktop.acknowledge(first, wait=seconds(10))

        async def kept() -> bool:
            return await acknowledgements(world, first) == 1
        await eventually(kept, timeout=15)
    finally:
        await desktop.close()

    rc, out, err = await lightbox("--profile", "bob", "inbox")
    assert rc == 0 and "Displaced distal radius?" in out and "Fingers numb now too." in out, (
        out + err)
    assert ACK.findall(out) == [], out
    rc, out, err = await lightbox("--profile", "bob", "ack", second)
    assert rc == 0 and out.startswith('you already acknowledged consult "Wrist, bed 4" at '), (
        out + err)
    assert out.endswith(": Dr Ada Intern was told then; nothing sent again\n"), out
    assert (await acknowledgements(world, first), await acknowledgements(world, second)) == (1, 0)
