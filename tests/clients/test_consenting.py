"""clients/clinician/consenting.py, ``lightbox consent capture`` refusing what it cannot record
before any profile is opened (no image named, an image it cannot read, patient data with an
agreement, a refusal without the patient to file it under), each as ``error: CODE: sentence``
and exit 1, never a traceback; and the one line ``lightbox consent list`` gives a consent."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from clients.clinician.consenting import consent_line
from clients.sdk.consent import ConsentCapture, capture_consent, image_hash
from clients.sdk.keystore import DeviceState
from clients.sdk.timefmt import format_time
from protocol.consent import ConsentBasis, ConsentDecision
from protocol.model import Purpose
from tests.clinician_world import run_cli as lightbox
from tests.consent_world import xray_png


@pytest.fixture
def film(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LIGHTBOX_HOME", str(tmp_path / "nobody-enrolled-here"))
    path = tmp_path / "film.png"
    path.write_bytes(xray_png(320, 240))
    return path


async def _refused(*argv: str) -> str:
    rc, out, err = await lightbox("consent", "capture", "--yes", *argv)
    assert (rc, out) == (1, "")
    assert "Traceback" not in err
    return err.strip()


async def test_a_consent_must_name_the_images_shown(film: Path) -> None:
    assert await _refused("--statements-shown") == (
        "error: validation_failed: name the images shown to the patient with --image FILE")


async def test_an_image_that_cannot_be_read_is_named_in_the_refusal(film: Path,
                                                                    tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    err = await _refused("--image", str(junk), "--statements-shown")
    assert err.startswith(f"error: validation_failed: {junk}: ")


async def test_patient_data_goes_with_the_image_not_with_an_agreement(film: Path) -> None:
    err = await _refused("--image", str(film), "--statements-shown", "--decision", "agreed",
                         "--patient-id", "MRN123", "--patient-name", "Doe^Jane")
    assert err == ("error: validation_failed: patient data for an agreement is sealed with the "
                   "image when it is sent (`lightbox send --patient-id ...`)")


async def test_a_refusal_without_the_patient_cannot_be_filed(film: Path) -> None:
    err = await _refused("--image", str(film), "--statements-shown", "--decision", "refused")
    assert err.startswith("error: validation_failed: a refusal is filed in the patient's record")
    assert "--patient-id MRN and --patient-name FAMILY^GIVEN" in err


def test_a_consent_line_says_decision_purposes_images_and_when() -> None:
    state = DeviceState(
        server_url="http://relay.test", login="alice", user_id=str(uuid.UUID(int=3)),
        org_id="org.test", org_public_key=b"\x01" * 32, identity_seed=b"I" * 32,
        device_id=str(uuid.UUID(int=4)), device_kind="mobile", device_seed=b"D" * 32,
        dh_secret=b"H" * 32, user_certificate="u.c", device_certificate="d.c")

    def line(images: int) -> str:
        _, claims = capture_consent(state, ConsentCapture(
            purposes=[Purpose.DIRECT_CARE, Purpose.TEACHING],
            images=[image_hash(bytes([i])) for i in range(images)],
            decision=ConsentDecision.AGREED, basis=ConsentBasis.WRITTEN,
            permanence_statement_shown=True, no_effect_on_care_statement_shown=True),
            now=1_780_000_000)
        return consent_line(claims)

    when = format_time(1_780_000_000)
    assert line(1) == f"agreed for direct_care, teaching, 1 image, captured {when}"
    assert line(3) == f"agreed for direct_care, teaching, 3 images, captured {when}"
