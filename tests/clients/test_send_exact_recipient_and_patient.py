"""``lightbox send`` reaches exactly whom, and is about exactly whom, the intern meant
(docs/USER_GUIDE.md "Interns: sending a consult", §3): ``--to user:LOGIN`` is an exact login,
never completed from a part of one (docs/SECURITY.md "Misdirection"), and the ``sent:`` line
names whom it reached; a photo added to a consult (``--thread``, also by the start of its id)
is of the consult's patient, and a subject holding any of the patient's names is refused
(clients/clinician/phi.py ``subject_names_patient``). The real CLI against a real relay;
refusals leave nothing at the relay."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clients.clinician.phi import subject_names_patient
from clients.clinician.sending import thread_of
from clients.sdk.errors import FlowError
from clients.sdk.profile import open_profile
from clients.sdk.threads import THREAD_NOTE
from tests.clinician_world import cli_world, enrol_clinician
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import count, xray_png
from tests.identity_world import PASSWORD, World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)

ORTHO = "orthopaedics_oncall"


async def _colleagues(world: World, tmp_path: Path) -> None:
    """The intern, Bea Bone (on call for orthopaedics) and Ada Byron, with CLI profiles."""
    home = tmp_path / "home"
    for login, name, roles in (("ivy.intern", "Ivy Intern", ("intern",)),
                               ("bea.bone", "Bea Bone", (ORTHO,)),
                               ("ada.byron", "Ada Byron", ("radiologist",))):
        person = await enrol_clinician(world, tmp_path, login, roles=roles, display_name=name,
                                       vault_dir=home / login)
        person.vault.lock()


async def _stored(world: World) -> tuple[int, int, int]:
    return (await count(world, "SELECT count(*) FROM threads"),
            await count(world, "SELECT count(*) FROM messages"),
            await count(world, "SELECT count(*) FROM attachments"))


def _refusal(rc: int, out: str, err: str) -> str:
    """The one error line of a refused send (after the photo's warnings and OCR lines)."""
    assert rc == 1 and "sent:" not in out, out + err
    assert "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    return line


async def test_a_partial_or_mistyped_login_is_refused_and_the_exact_one_is_named_when_sent(
        world: World, tmp_path: Path) -> None:
    await _colleagues(world, tmp_path)
    send = ["--profile", "ivy.intern", "send", "--subject", "x"]
    assert _refusal(*await lightbox(*send, "--to", "user:bea.bon", "test")) == (
        "error: not_found: no colleague with login 'bea.bon' who can receive messages (did "
        "you mean user:bea.bone?): check its spelling (lightbox lookup NAME searches the "
        "directory); if it is right, they may not have enrolled a device yet")
    assert _refusal(*await lightbox(*send, "--to", "user:ada", "test")) == (
        "error: not_found: no colleague with login 'ada' who can receive messages (did "
        "you mean user:ada.byron?): check its spelling (lightbox lookup NAME searches the "
        "directory); if it is right, they may not have enrolled a device yet")
    assert _refusal(*await lightbox(*send, "--to", "user:Bea Bo", "test")).startswith(
        "error: not_found: no colleague with login or name 'Bea Bo' (did you mean "
        "user:bea.bone?)")
    assert await _stored(world) == (0, 0, 0)

    # Logins are lower case: the exact login in capitals is hers; the sent line names her.
    rc, out, err = await lightbox(*send, "--to", "user:Bea.Bone", "test")
    assert rc == 0, out + err
    assert re.fullmatch(r"sent: message \S+ stored by the relay in thread \S+ \(#1\), "
                        r"to Bea Bone\n", out), out
    rc, out, err = await lightbox(*send, "--to", f"role:{ORTHO}", "--to", "user:ada.byron",
                                  "test")
    assert rc == 0 and out.rstrip().endswith(f", to role:{ORTHO}, Ada Byron"), out + err
    assert await _stored(world) == (2, 2, 0)


async def test_a_photo_of_another_patient_is_refused_in_a_consult_and_the_same_one_goes(
        world: World, tmp_path: Path) -> None:
    await _colleagues(world, tmp_path)
    film = tmp_path / "film.png"
    film.write_bytes(xray_png(900, 700))
    photo = ["--profile", "ivy.intern", "send", "--image", str(film), "--send-anyway",
             "--patient-agreed", "--statements-shown"]
    poe = ["--patient-name", "Poe^Edgar", "--patient-id", "MRN789"]
    rc, out, err = await lightbox(*photo, "--to", "user:bea.bone", *poe, "Wrist?")
    assert rc == 0, out + err
    (thread,) = re.findall(r"in thread (\S+) \(#1\), to Bea Bone$", out.strip())
    before = await _stored(world)
    assert before == (1, 1, 1)

    # Another patient into Poe's consult: refused before anything is uploaded or stored.
    for prefix in (thread, thread[:8]):
        assert _refusal(*await lightbox(*photo, "--thread", prefix, "--patient-name",
                                        "Roe^Richard", "--patient-id", "MRN456", "Ankle?")) \
            == ("error: patient_mismatch: this consult is about Poe, Edgar (MRN789); a photo "
                "of another patient (Roe, Richard (MRN456)) goes in a new consult (lightbox "
                "send --to ...); nothing was sent")
    # The same hospital number with another name is another patient too.
    assert "patient_mismatch" in _refusal(*await lightbox(
        *photo, "--thread", thread, "--patient-name", "Poe^Edna", "--patient-id", "MRN789",
        "Wrist?"))
    # The given name in the subject is refused as the family name is.
    assert "subject_identifies" in _refusal(*await lightbox(
        *photo, "--thread", thread, *poe, "--subject", "Edgar's wrist", "Wrist?"))
    assert await _stored(world) == before

    # The same patient written otherwise (case, spaces, "," for "^"), by the start of the id.
    rc, out, err = await lightbox(*photo, "--thread", thread[:8], "--patient-name",
                                  " POE,  edgar ", "--patient-id", "mrn789", "Lateral view")
    assert rc == 0, out + err
    assert out.strip().endswith(f"in thread {thread} (#2), to Bea Bone"), out
    # No patient typed: the consult's, said on the sent line.
    rc, out, err = await lightbox(*photo, "--thread", thread, "Another view")
    assert rc == 0, out + err
    assert out.strip().endswith(f"in thread {thread} (#3), to Bea Bone; the photo is filed "
                                "under this consult's patient, Poe, Edgar (MRN789)"), out
    assert await _stored(world) == (1, 3, 3)


async def test_a_thread_named_by_an_unknown_or_short_prefix_is_refused_naming_the_ids(
        world: World, tmp_path: Path) -> None:
    await _colleagues(world, tmp_path)
    send = ["--profile", "ivy.intern", "send"]
    rc, out, err = await lightbox(*send, "--to", "user:bea.bone", "first")
    assert rc == 0, out + err
    (thread,) = re.findall(r"in thread (\S+) \(#1\)", out)
    assert _refusal(*await lightbox(*send, "--thread", "ffffffff", "hello")) == (
        "error: thread_not_found: no consult this device knows has an id starting "
        "'ffffffff': `lightbox threads` lists yours with their ids; nothing was sent")
    assert _refusal(*await lightbox(*send, "--thread", thread[:7], "hello")) == (
        f"error: validation_failed: --thread '{thread[:7]}': give the consult's id, or at "
        "least its first 8 characters as `lightbox threads` prints it; nothing was sent")
    # Eight characters with one that no id has (a typo): named, not "at least 8 characters".
    assert _refusal(*await lightbox(*send, "--thread", thread[:7] + "X", "hello")) == (
        f"error: validation_failed: --thread '{thread[:7]}X': a consult's id has only the "
        "digits 0-9, the letters a-f and dashes, not 'X', as `lightbox threads` prints it; "
        "nothing was sent")
    # A whole id that is none of the user's consults: said before anything is sent.
    nobody = "00000000-0000-4000-8000-000000000000"
    assert _refusal(*await lightbox(*send, "--thread", nobody, "hello")) == (
        f"error: thread_not_found: no consult of yours has the id '{nobody}': `lightbox "
        "threads` lists yours with their ids; nothing was sent")
    # Two consults this device knows whose ids start alike: the refusal names both.
    twin = thread[:9] + ("0" if thread[9] != "0" else "1") + thread[10:]
    device = open_profile(tmp_path / "home" / "ivy.intern", PASSWORD)
    device.vault.put_note(THREAD_NOTE, twin, b"")
    with pytest.raises(FlowError) as refused:
        thread_of(device, thread[:8])
    device.vault.drop_note(THREAD_NOTE, twin)
    device.vault.lock()
    assert (refused.value.code, str(refused.value)) == ("ambiguous", (
        f"'{thread[:8]}' starts the ids of 2 consults: {', '.join(sorted([thread, twin]))}; "
        "give the one you mean with --thread ID; nothing was sent"))
    rc, out, err = await lightbox(*send, "--thread", thread[:8].upper(), "hello")
    assert rc == 0 and f"in thread {thread} (#2), to Bea Bone" in out, out + err
    assert await count(world, "SELECT count(*) FROM messages") == 2


@pytest.mark.parametrize(("subject", "names"), [
    ("Richard's ankle", True), ("RICHARD ankle", True), ("ankle, Roe", True),
    ("ankle (mrn 456)", True), ("Richardson's ankle", False), ("Roebuck ward", False),
    ("Rich tea biscuit ward", False), ("MR ankle", False)])
def test_a_subject_naming_any_of_the_patients_names_as_a_whole_word_is_refused(
        subject: str, names: bool) -> None:
    assert subject_names_patient(subject, "MRN456", "Roe^Richard^^Mr") is names
    # A middle name counts; a 2-letter name counts; a 1-letter initial does not.
    assert subject_names_patient("Lee's wrist", "X1", "Li^Ann^Lee") is True
    assert subject_names_patient("Li wrist", "X1", "Li^Ann") is True
    assert subject_names_patient("a wrist", "X1", "Poe^A") is False
