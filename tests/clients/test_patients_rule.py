"""One rule for "do these images' record data name one patient" (clients/sdk/patients.py,
docs/HAZARD_LOG.md HAZ-01 C6), and both of its users judging every consult alike: the CLI's
refusal of a photo of another patient (clients/clinician/sending.py ``consult_patient``, which
``lightbox send --thread T --image`` calls) and the desktop's warning over a consult holding two
patients' images (clients/desktop/app.py ``patients_warning``). Each case is a consult kept in a
real vault and a photo's record: the CLI is asked to add the photo, then the desktop shows the
consult with it, its views read back from the vault as the desktop reads them."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from pathlib import Path

import msgspec
import pytest

from clients.clinician.sending import consult_patient
from clients.desktop.app import patients_warning
from clients.sdk.errors import FlowError
from clients.sdk.memory import Memory
from clients.sdk.patients import same_patient
from clients.sdk.profile import ProfileDevice
from clients.sdk.vault import Vault
from clients.sdk.vaultrows import VaultMessage
from protocol.body import Body, RecordData
from protocol.keys import CHEAP_PROFILE
from tests.identity_world import PASSWORD


def rec(name: str = "Poe^Edgar", number: str = "MRN789", issuer: str = "RGH",
        born: str | None = "1970-01-02") -> RecordData:
    return RecordData(patient_name=name, patient_id=number, issuer_of_patient_id=issuer,
                      birth_date=born)


POE = rec()
# Two patients whose names and numbers read alike are named with their issuer and birth date.
POE_RGH = "Poe, Edgar (MRN789, issuer RGH, born 1970-01-02)"
POE_RSCH = "Poe, Edgar (MRN789, issuer RSCH, born 1970-01-02)"
WARNING = "WARNING: this consult holds images of two patients: {} and {}: check before acting"
REFUSAL = ("patient_mismatch: this consult is about {}; a photo of another patient ({}) goes "
           "in a new consult (lightbox send --to ...); nothing was sent")


@dataclasses.dataclass(frozen=True)
class Case:
    consult: list[RecordData]  # the records of the consult's messages, oldest first
    photo: RecordData  # the record typed for the photo added to it
    warning: str  # what the desktop shows over the consult with the photo ("" none)
    refusal: str  # what the CLI says refusing the photo ("" sent)


CASES = {
    "the_same_number_in_another_case_and_with_separators": Case(
        [POE], rec(number="mrn-789"), "", ""),
    "another_issuer": Case(
        [POE, rec(number="mrn 789")], rec(issuer="RSCH"),
        WARNING.format(POE_RGH, POE_RSCH),
        REFUSAL.format(POE_RGH.replace("MRN789", "mrn 789"), POE_RSCH)),
    "the_issuer_missing_on_one_side": Case(
        [POE], rec(issuer=""), "", ""),
    # Not transitive: no issuer matches either, but RGH and RSCH are two patients.
    "no_issuer_between_two_issuers": Case(
        [POE, rec(issuer="")], rec(issuer="RSCH"),
        WARNING.format(POE_RGH, POE_RSCH), REFUSAL.format(POE_RGH, POE_RSCH)),
    "another_birth_date": Case(
        [POE], rec(born="1970-02-01"),
        WARNING.format(POE_RGH, POE_RGH.replace("01-02", "02-01")),
        REFUSAL.format(POE_RGH, POE_RGH.replace("01-02", "02-01"))),
    "the_birth_date_missing_on_one_side_and_the_issuer_in_lower_case": Case(
        [POE], rec(issuer="rgh", born=None), "", ""),
    "the_same_number_with_another_name": Case(
        [POE], rec(name="Poe^Edna"),
        WARNING.format("Poe, Edgar (MRN789)", "Poe, Edna (MRN789)"),
        REFUSAL.format("Poe, Edgar (MRN789)", "Poe, Edna (MRN789)")),
    "another_number": Case(
        [POE, rec(number="mrn789")], rec(name="Roe^Richard", number="MRN456"),
        WARNING.format("Poe, Edgar (MRN789)", "Roe, Richard (MRN456)"),
        REFUSAL.format("Poe, Edgar (mrn789)", "Roe, Richard (MRN456)")),
}

_sent = itertools.count(1_700_000_000)


def _keep(vault: Vault, thread_id: str, record: RecordData) -> None:
    vault.put_message(VaultMessage(
        message_id=str(uuid.uuid4()), thread_id=thread_id, sender_user_id=str(uuid.uuid4()),
        sender_device_id=str(uuid.uuid4()), sent_at=float(next(_sent)), body="",
        content=msgspec.msgpack.encode(Body(record=record))))


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Vault:
    kept = Vault(Path(tmp_path_factory.mktemp("patients-rule")) / "vault", kdf=CHEAP_PROFILE)
    kept.create(PASSWORD)
    return kept


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_cli_and_the_desktop_judge_the_consult_by_one_rule(vault: Vault, case: Case) -> None:
    thread_id = str(uuid.uuid4())
    for record in case.consult:
        _keep(vault, thread_id, record)
    try:
        sent, _ = consult_patient(ProfileDevice(vault, vault, PASSWORD), thread_id, case.photo,
                                  infer=False)
        refusal = ""
    except FlowError as exc:
        sent, refusal = None, f"{exc.code}: {exc}"
    _keep(vault, thread_id, case.photo)
    memory = Memory(vault, lambda: "")
    warning = patients_warning([memory.view(m) for m in vault.messages(thread_id)])

    assert (refusal, warning) == (case.refusal, case.warning)
    assert bool(refusal) == bool(warning)  # one verdict
    assert bool(warning) == (not all(same_patient(a, b) for a, b in itertools.combinations(
        [*case.consult, case.photo], 2)))
    if sent is not None:  # the same patient: filed as the consult last wrote them
        assert sent.patient_id == case.consult[-1].patient_id
