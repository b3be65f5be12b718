"""``lightbox send --subject`` refuses a subject that names the patient, as the phone does
(docs/USER_GUIDE.md "Interns: sending a consult", §3): the subject travels sealed, but it is
shown wherever the consult is listed, so the hospital number and family name typed in
--patient-id and --patient-name stay out of it, for direct care too. The real ``lightbox`` runs
as a process of its own against a real relay; a refusal is one sentence, exit status 1, and
nothing reaches the relay; a subject without them goes as before."""

from __future__ import annotations

from pathlib import Path

from tests.clients.test_outbox import lightbox
from tests.clients.test_patient_fields_cli import ORTHO, _film, _nothing_at_the_relay, _refused
from tests.clinician_world import cli_world
from tests.consent_world import count
from tests.identity_world import World

world = cli_world  # the relay and the CLI's environment (tests/clinician_world.py)

REFUSED = ("error: subject_identifies: keep the patient's name and hospital number out of the "
           "subject: it is shown wherever the consult is listed (they go in --patient-name and "
           "--patient-id); nothing was sent")


async def test_a_subject_naming_the_patient_is_refused_and_one_without_goes(
        world: World, tmp_path: Path) -> None:
    film = await _film(world, tmp_path)
    send = ["--profile", "intern", "send", "--to", f"role:{ORTHO}", "--image", str(film),
            "--send-anyway", "--patient-agreed", "--statements-shown", "--purpose",
            "direct_care", "--patient-name", "Doe^Jane", "--patient-id", "MRN123"]
    for subject in ("Wrist, Mrs Doe", "DOE wrist", "wrist mrn123", "Wrist (MRN1234)",
                    "wrist MRN 123", "wrist mrn-123"):
        assert _refused(*await lightbox(*send, "--subject", subject, "Displaced?")) == REFUSED, \
            subject
    await _nothing_at_the_relay(world)
    assert await count(world, "SELECT count(*) FROM consents") == 0
    assert await count(world, "SELECT count(*) FROM threads") == 0

    # A word that only starts with the family name is not the name.
    rc, out, err = await lightbox(*send, "--subject", "Wrist after a fall, Doerr ward",
                                  "Displaced?")
    assert rc == 0 and "sent: message" in out, out + err
    rc, out, err = await lightbox("--profile", "ortho", "inbox")
    assert rc == 0 and "Wrist after a fall, Doerr ward - Displaced?" in out, out + err
