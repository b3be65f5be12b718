"""What the clinical-safety steps of CLINICAL_SAFETY.md cost, beside the step every send already
pays.

    .venv/bin/python -m bench.safety [--runs 5] [--out FILE]

A phone photo of a labelled film (12 MP, 4032 x 3024, the label ``DOE^JOHN  MRN 12345678  DOB
01/02/1960`` and a footer burned in; generated, no real patient) goes through each step; the
table gives the median wall time over ``--runs``, its ratio to the baseline measured in the
same run, and the median CPU time (this process's and Tesseract's):

* ``baseline_prepare``: ``clients.sdk.imaging.prepare_image`` (decode, orientation, metadata
  stripped, re-encode, quality checks): what every image costs before it is sent;
* ``ocr_scan``: ``phi.scan_image`` (Tesseract) on the prepared image: the direct-care
  warning;
* ``teaching_redact``: ``phi.prepare_for_purpose(teaching, all-text)``: scan, black
  out, re-sanitise, scan the copy again (the step that gates a de-identified share);
* ``consent_pdf``: the patient's one-page consent form (fpdf2, DejaVu fonts);
* ``gateway_consent_form``: the record's copy as DICOM Encapsulated PDF with the signed token
  and FHIR Consent embedded (``clients.gateway.records.build_consent_form``);
* ``gateway_image``: the photo as DICOM Secondary Capture (``gateway.records.build_instance``);
* ``text_guard``: ``clients.sdk.textguard.scan_text`` over a 2,000-character consult note.

It prints a table and writes JSON to bench/results/safety.json. It needs Tesseract (``make
system-deps``); without it the OCR rows say so rather than timing a refusal.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from clients.clinician import phi
from clients.gateway.records import build_consent_form, build_instance
from clients.sdk import imaging
from clients.sdk.consent import image_hash
from clients.sdk.consent_pdf import ConsentFormDisplay, render_consent_pdf
from clients.sdk.textguard import scan_text
from protocol.body import RecordData, Sex
from protocol.consent import (
    ConsentBasis,
    ConsentClaims,
    ConsentDecision,
    ConsentRecipients,
    issue_consent_token,
)
from protocol.keys import Ed25519KeyPair
from protocol.model import MessageHeader, Priority, Purpose

RESULTS = Path(__file__).parent / "results"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
NOTE = ("Seen in ED this evening after a fall on the outstretched hand. Pain and swelling at the "
        "distal radius, no open wound, neurovascularly intact, capillary refill under two "
        "seconds. Film attached: dorsal angulation about 20 degrees, possible intra-articular "
        "extension. Analgesia given, backslab applied. Past history of osteopenia; on "
        "calcium. Lives alone, independent. Would you review for manipulation or fixation, "
        "and advise whether to keep nil by mouth overnight? Bed 4, bleep 2231. ") * 4


def labelled_film() -> bytes:
    """A 12 MP phone photo (PNG) of a film with a burned-in label and footer."""
    im = Image.new("L", (4032, 3024), 20)
    d = ImageDraw.Draw(im)
    d.ellipse((1000, 500, 3000, 2700), fill=140)
    d.rectangle((1870, 650, 2130, 2600), fill=220)
    font = ImageFont.truetype(FONT, 90)
    d.rectangle((60, 60, 2600, 230), fill=0)
    d.text((90, 90), "DOE^JOHN  MRN 12345678  DOB 01/02/1960", fill=235, font=font)
    d.text((90, 2750), "ST ELSEWHERE HOSPITAL", fill=235, font=font)
    out = io.BytesIO()
    im.convert("RGB").save(out, format="PNG")
    return out.getvalue()


def signed_consent(image: bytes) -> tuple[ConsentClaims, str]:
    """A consent for direct care and teaching naming ``image``, signed by a throwaway key."""
    now = int(time.time())
    claims = ConsentClaims(
        jti=str(uuid.uuid4()), iss=str(uuid.uuid4()), org="st-elsewhere", patient="pt-bench",
        purposes=[Purpose.DIRECT_CARE, Purpose.TEACHING],
        recipients=ConsentRecipients(users=[], roles=["orthopaedics_oncall"], orgs=[],
                                     external=False),
        images=[image_hash(image)], form_version="2026.1", decision=ConsentDecision.AGREED,
        basis=ConsentBasis.WRITTEN, permanence_statement_shown=True,
        no_effect_on_care_statement_shown=True, iat=now, nbf=now, exp=now + 86400)
    return claims, issue_consent_token(claims, Ed25519KeyPair.generate().seed.reveal())


def _cpu() -> float:
    """CPU seconds so far of this process and of the children it reaped (Tesseract)."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                           resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def median_cost(step: Callable[[], Any], runs: int) -> tuple[float, float]:
    """The median wall time and the median CPU time of ``step``, in seconds."""
    walls, cpus = [], []
    for _ in range(runs):
        c0, t0 = _cpu(), time.perf_counter()
        step()
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu() - c0)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS / "safety.json")
    args = p.parse_args()

    photo = labelled_film()
    prepared = imaging.prepare_image(photo)
    image = prepared.image
    claims, token = signed_consent(image.data)
    record = RecordData(patient_name="TEST^BENCH", patient_id="LBX-BENCH-1", sex=Sex.UNKNOWN)
    header = MessageHeader(
        v=1, message_id=str(uuid.uuid4()), thread_id=str(uuid.uuid4()),
        sender_user_id=claims.iss, sender_device_id=str(uuid.uuid4()), sent_at=claims.iat,
        purpose=Purpose.DIRECT_CARE, priority=Priority.URGENT, consent_id=claims.jti,
        attachment_ids=[], recipient_devices=[])
    descriptor = SimpleNamespace(attachment_id=str(uuid.uuid4()))
    ocr_ok = phi.scan_image(image.data).status is not phi.OcrStatus.UNAVAILABLE

    steps: dict[str, Callable[[], Any] | None] = {
        "baseline_prepare": lambda: imaging.prepare_image(photo),
        "ocr_scan": (lambda: phi.scan_image(image.data)) if ocr_ok else None,
        "teaching_redact": (lambda: phi.prepare_for_purpose(
            image, Purpose.TEACHING, mode=phi.RedactMode.ALL_TEXT)) if ocr_ok else None,
        "consent_pdf": lambda: render_consent_pdf(claims, ConsentFormDisplay(
            patient_label="Test, Bench")),
        "gateway_consent_form": lambda: build_consent_form(
            claims, token, record, header, study_instance_uid="2.25.1", clinician_name="",
            operator="", default_issuer="LBX"),
        "gateway_image": lambda: build_instance(image.data, record, header,
                                                descriptor,  # type: ignore[arg-type]
                                                operator="", default_issuer="LBX"),
        "text_guard": lambda: scan_text(NOTE[:2000]),
    }
    results: dict[str, Any] = {"runs": args.runs, "image": f"{image.width}x{image.height}",
                               "jpeg_bytes": len(image.data)}
    base, base_cpu = median_cost(steps["baseline_prepare"], args.runs)  # type: ignore[arg-type]
    print(f"image {image.width}x{image.height}, {len(image.data):,} bytes JPEG; "
          f"median of {args.runs} runs")
    print(f"{'step':<22} {'ms':>9} {'x baseline':>11} {'CPU ms':>9}")
    for name, step in steps.items():
        if step is None:
            print(f"{name:<22} {'OCR not installed (make system-deps)':>21}")
            results[name] = None
            continue
        seconds, cpu = (base, base_cpu) if name == "baseline_prepare" else \
            median_cost(step, args.runs)
        results[name] = {"ms": round(seconds * 1000, 2), "ratio": round(seconds / base, 3),
                         "cpu_ms": round(cpu * 1000, 2)}
        print(f"{name:<22} {seconds * 1000:>9.1f} {seconds / base:>11.2f} {cpu * 1000:>9.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
