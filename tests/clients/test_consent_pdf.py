"""The patient's copy of a consent (clients/sdk/consent_pdf.py): every required statement is in the
PDF's text (extracted with poppler's pdftotext, Debian poppler-utils), on one page."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from clients.clinician import cli
from clients.sdk.consent_pdf import (
    ConsentFormDisplay,
    ConsentPdfError,
    FormCopy,
    load_consent_token,
    render_consent_pdf,
    save_consent_pdf,
)
from protocol.consent import (
    ConsentBasis,
    ConsentClaims,
    ConsentDecision,
    ConsentRecipients,
    issue_consent_token,
)
from protocol.model import Purpose

T0 = 1_767_225_600  # 2026-01-01
JTI = "6f1c2a44-5a8e-4f0b-9d53-1c2e3f4a5b6c"
SPECIALIST = "0b7e2c1d-3f4a-4b5c-8d6e-7f8091a2b3c4"
SEED = bytes(range(32))
DISPLAY = ConsentFormDisplay(organisation_name="St Elsewhere Hospital",
                             privacy_contact="the Privacy Office, privacy@st-elsewhere.example",
                             patient_label="Jane Doe",
                             user_names={SPECIALIST: "Dr Ada Bone"})


def _claims(decision: ConsentDecision = ConsentDecision.AGREED, *,
            purposes: tuple[Purpose, ...] = (Purpose.DIRECT_CARE, Purpose.EXTERNAL_CONSULT),
            external: bool = True, users: tuple[str, ...] = (SPECIALIST,)) -> ConsentClaims:
    return ConsentClaims(
        jti=JTI, iss=str(uuid.UUID(int=1)), org="st-elsewhere.example", patient="pt-abc",
        purposes=list(purposes),
        recipients=ConsentRecipients(users=list(users), roles=["orthopaedics_oncall"],
                                     orgs=["general.example"], external=external),
        images=["ab" * 32, "cd" * 32], form_version="2026.1", decision=decision,
        basis=ConsentBasis.WRITTEN, permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True, iat=T0, nbf=T0, exp=T0 + 30 * 86400)


def _text(pdf: bytes, tmp_path: Path) -> str:
    assert shutil.which("pdftotext"), "pdftotext missing: install Debian poppler-utils " \
                                      "(make system-deps)"
    path = tmp_path / "form.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, check=True,
                         timeout=60).stdout.decode()
    assert out.count("\f") == 1, "the form must fit on exactly one page"
    return " ".join(out.split())  # lines wrap anywhere: compare on single spaces


def test_the_patients_copy_states_everything_the_guidance_asks_for(tmp_path: Path) -> None:
    pdf = render_consent_pdf(_claims(), DISPLAY)
    assert pdf.startswith(b"%PDF-")
    text = _text(pdf, tmp_path)
    assert "Consent to share clinical images" in text and "your copy" in text
    assert "St Elsewhere Hospital" in text
    assert "Patient: Jane Doe" in text  # what the clinician typed for the patient's copy
    assert "You AGREED" in text
    # Every use is named, each agreed or not.
    assert "Your care: sharing with the clinicians treating you: agreed" in text
    assert "A specialist opinion from clinicians outside St Elsewhere Hospital: agreed" in text
    for use in ("Teaching", "Publication", "Medical research"):
        assert f"{use}" in text
    assert text.count("not agreed (not asked)") == 3
    # Who may see the images.
    assert "Named clinicians: Dr Ada Bone" in text
    assert "orthopaedics oncall" in text
    assert "Clinicians at: general.example" in text
    assert "Clinicians outside St Elsewhere Hospital: yes" in text
    assert "Your medical record" in text
    # The statements.
    assert "Images shared electronically are permanent" in text
    assert "does not affect your care" in text
    assert f"Consent reference: {JTI}" in text
    assert "withdraw this consent at any time" in text
    assert "privacy@st-elsewhere.example" in text
    assert "separate from your consent to treatment" in text


def test_a_refusal_says_so_and_that_nobody_may_see_the_images(tmp_path: Path) -> None:
    text = _text(render_consent_pdf(_claims(ConsentDecision.REFUSED), DISPLAY), tmp_path)
    assert "You REFUSED" in text and "You AGREED" not in text
    assert "Your care: sharing with the clinicians treating you: refused" in text
    assert "Nobody: you refused" in text and "Named clinicians" not in text
    assert "does not affect your care" in text and "permanent" in text
    assert f"Consent reference: {JTI}" in text and "If you change your mind" in text


def test_the_privacy_contact_comes_from_the_setting(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTBOX_PRIVACY_CONTACT", "Patient Advice Desk, 01234 567890")
    text = _text(render_consent_pdf(_claims(), ConsentFormDisplay()), tmp_path)
    assert "Patient Advice Desk, 01234 567890" in text
    assert "Patient:" not in text  # no label typed: no patient identifier at all
    assert "pt-abc" not in text  # nor the token's opaque reference


def test_a_long_recipient_list_still_fits_on_one_page(tmp_path: Path) -> None:
    many = tuple(str(uuid.UUID(int=i + 10)) for i in range(64))
    names = {u: f"Dr Number {i}" for i, u in enumerate(many)}
    display = dataclasses.replace(DISPLAY, user_names=names)
    text = _text(render_consent_pdf(_claims(users=many), display), tmp_path)
    assert "Dr Number 0, Dr Number 1" in text and "and 56 more" in text


def test_recipients_without_a_name_are_counted_never_shown_as_ids(tmp_path: Path) -> None:
    """A patient reads names: someone this device could not name is counted, not an id."""
    unknown = tuple(str(uuid.UUID(int=i + 100)) for i in range(2))
    text = _text(render_consent_pdf(_claims(users=(SPECIALIST, *unknown)), DISPLAY), tmp_path)
    assert "Named clinicians: Dr Ada Bone, 2 other clinicians named by your clinician" in text
    assert not any(u[:8] in text for u in unknown)


def test_the_record_copy_is_marked_as_such(tmp_path: Path) -> None:
    text = _text(render_consent_pdf(_claims(), DISPLAY, copy=FormCopy.RECORD), tmp_path)
    assert "copy for the record" in text and "your copy" not in text


def test_rendering_is_deterministic() -> None:
    assert render_consent_pdf(_claims(), DISPLAY) == render_consent_pdf(_claims(), DISPLAY)


def test_the_saved_copy_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = save_consent_pdf(tmp_path / "copy.pdf", render_consent_pdf(_claims(), DISPLAY))
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_consent_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConsentPdfError, match=r"there is no consent at .*capture it first"):
        load_consent_token(tmp_path / "missing.jwt")
    (tmp_path / "empty.jwt").write_text("\n")
    with pytest.raises(ConsentPdfError, match="holds no consent"):
        load_consent_token(tmp_path / "empty.jwt")
    (tmp_path / "junk.jwt").write_text("not.a.token")
    with pytest.raises(ConsentPdfError, match="does not hold a Lightbox consent token"):
        load_consent_token(tmp_path / "junk.jwt")


def _lightbox(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_lightbox_consent_pdf_writes_the_patients_copy(tmp_path: Path) -> None:
    token_file = tmp_path / "consent.jwt"
    token_file.write_text(issue_consent_token(_claims(), SEED) + "\n")
    out_file = tmp_path / "patient.pdf"
    rc, out, err = _lightbox("consent", "pdf", str(token_file), "--out", str(out_file),
                             "--patient-label", "Jane Doe", "--privacy-contact",
                             "privacy@st-elsewhere.example")
    assert rc == 0, err
    assert JTI in out and "not sent anywhere" in out
    assert os.stat(out_file).st_mode & 0o777 == 0o600
    text = _text(out_file.read_bytes(), tmp_path)
    assert "Patient: Jane Doe" in text and "privacy@st-elsewhere.example" in text


def test_lightbox_consent_pdf_for_a_missing_consent_fails_plainly(tmp_path: Path) -> None:
    rc, _out, err = _lightbox("consent", "pdf", str(tmp_path / "nope.jwt"), "--out",
                              str(tmp_path / "x.pdf"))
    assert rc == 1 and "there is no consent at" in err and "Traceback" not in err
    assert not (tmp_path / "x.pdf").exists()
