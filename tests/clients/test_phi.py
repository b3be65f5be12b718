"""PHI burned into images (clients/clinician/phi.py), with the real Tesseract (Debian tesseract-ocr,
tesseract-ocr-eng) on generated images whose labels are drawn with a TrueType font."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from clients.clinician import cli, phi
from clients.clinician.phi import OcrStatus, PhiKind, PhiRefused, RedactMode
from clients.sdk import imaging
from protocol.model import Purpose

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
LABEL = "DOE^JOHN  MRN 12345678  DOB 01/02/1960"


def _font(size: int) -> ImageFont.FreeTypeFont:
    assert Path(FONT).is_file(), "DejaVu fonts missing: install Debian fonts-dejavu-core"
    return ImageFont.truetype(FONT, size)


def labelled_film(label: str | None = LABEL, *, footer: str | None = "ST ELSEWHERE HOSPITAL",
          size: tuple[int, int] = (1200, 900)) -> Image.Image:
    """A dark film with a bright bone and a white-on-black label strip."""
    im = Image.new("L", size, 20)
    d = ImageDraw.Draw(im)
    d.ellipse((300, 150, 900, 800), fill=140)
    d.rectangle((560, 200, 640, 780), fill=220)
    if label:
        d.rectangle((20, 20, 780, 70), fill=0)
        d.text((30, 28), label, fill=235, font=_font(28))
    if footer:
        d.text((30, 820), footer, fill=235, font=_font(28))
    return im.convert("RGB")


def _monitor() -> Image.Image:
    """The corner of a PACS monitor: dark text on a light panel beside the image."""
    im = Image.new("RGB", (1200, 900), (10, 10, 10))
    d = ImageDraw.Draw(im)
    d.ellipse((400, 150, 1000, 800), fill=(130, 130, 130))
    d.rectangle((0, 0, 380, 200), fill=(235, 235, 235))
    for i, line in enumerate(("Name: Jane Smith", "Patient ID A7734521", "Born 14-Mar-1975")):
        d.text((15, 15 + 55 * i), line, fill=(0, 0, 0), font=_font(30))
    return im


def _sanitised(im: Image.Image) -> imaging.SanitisedImage:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return imaging.sanitise_image(buf.getvalue())


def _no_text_image() -> Image.Image:
    im = Image.new("L", (1200, 900), 30)
    d = ImageDraw.Draw(im)
    d.ellipse((300, 150, 900, 800), fill=140)
    d.rectangle((560, 200, 640, 780), fill=210)
    return im.filter(ImageFilter.GaussianBlur(3)).convert("RGB")


def _words(scan: phi.PhiScan) -> str:
    return " ".join(r.text for r in scan.regions)


@pytest.fixture(scope="module")
def film() -> imaging.SanitisedImage:
    return _sanitised(labelled_film())


# --- finding ---------------------------------------------------------------------------------


def test_the_film_label_is_found_with_each_identifier_kind(film: imaging.SanitisedImage) -> None:
    scan = phi.scan_image(film.data)
    assert scan.status is OcrStatus.TEXT_FOUND and not scan.clean
    kinds = {r.text: r.kinds for r in scan.findings}
    assert any(PhiKind.NAME in k and "DOE" in t for t, k in kinds.items())
    assert PhiKind.IDENTIFIER in kinds["12345678"]
    assert PhiKind.DATE_OF_BIRTH in kinds["01/02/1960"]
    assert PhiKind.DATE in kinds["01/02/1960"]
    assert PhiKind.INSTITUTION in kinds["HOSPITAL"]
    for region in scan.findings:  # boxes are where the label is, in image pixels
        left, top, width, height = region.box
        assert 0 <= left < film.width and 0 <= top < film.height and width > 0 and height > 0
    assert any("12345678" in line for line in phi.describe(scan))


def test_a_monitor_corner_with_a_labelled_name_and_id_is_found() -> None:
    scan = phi.scan_image(_sanitised(_monitor()).data)
    flagged = {r.text: r.kinds for r in scan.findings}
    assert PhiKind.NAME in flagged["Smith"] and PhiKind.NAME in flagged["Jane"]
    assert PhiKind.IDENTIFIER in flagged["A7734521"]
    assert PhiKind.DATE_OF_BIRTH in flagged["Born"]


def test_an_image_without_text_is_not_flagged() -> None:
    scan = phi.scan_image(_sanitised(_no_text_image()).data)
    assert scan.status is OcrStatus.NO_TEXT and scan.clean and scan.regions == ()
    assert phi.check_for_purpose(Purpose.TEACHING, scan) == []
    assert phi.check_for_purpose(Purpose.DIRECT_CARE, scan) == []


# --- redaction -------------------------------------------------------------------------------


def test_the_label_is_blacked_out_and_nothing_is_left_to_read(
        film: imaging.SanitisedImage) -> None:
    scan = phi.scan_image(film.data)
    redacted = phi.redact(film.data, [r.box for r in scan.regions])
    after = phi.scan_image(redacted)
    assert after.status is OcrStatus.NO_TEXT, _words(after)
    pixels = Image.open(io.BytesIO(redacted)).convert("L")
    for region in scan.regions:  # each box is black (JPEG noise aside)
        left, top, width, height = region.box
        box = pixels.crop((left, top, left + width, top + height))
        _darkest, brightest = box.getextrema()
        assert isinstance(brightest, int | float) and brightest < 40
    assert pixels.getpixel((600, 500)) == pytest.approx(220, abs=10)  # the bone is intact


def test_the_redacted_copy_is_re_sanitised(film: imaging.SanitisedImage) -> None:
    redacted = phi.redact(film.data, [(30, 28, 200, 30)])
    markers = {m for m, _ in imaging.jpeg_segments(redacted)}
    assert markers <= {0xD8, 0xE0, 0xDB, 0xC0, 0xC1, 0xC2, 0xC4, 0xDA, 0xD9}


def test_redaction_boxes_off_the_edge_are_clipped_and_empty_ones_refused(
        film: imaging.SanitisedImage) -> None:
    phi.redact(film.data, [(1150, 850, 500, 500)])
    with pytest.raises(ValueError, match="empty"):
        phi.redact(film.data, [(10, 10, 0, 5)])


def test_identifiers_mode_blacks_out_only_what_looks_like_identifiers() -> None:
    im = labelled_film("MRN 12345678", footer="LATERAL VIEW")
    shared = phi.prepare_for_purpose(_sanitised(im), Purpose.DIRECT_CARE,
                                     mode=RedactMode.IDENTIFIERS)
    assert shared.redacted
    left = _words(shared.shared_scan)
    assert "12345678" not in left and "LATERAL" in left
    assert shared.warnings == ()  # what is left is not identifier-like


# --- the rule by purpose ---------------------------------------------------------------------


@pytest.mark.parametrize("purpose", [Purpose.TEACHING, Purpose.PUBLICATION, Purpose.RESEARCH])
def test_teaching_publication_and_research_refuse_an_unredacted_label(
        film: imaging.SanitisedImage, purpose: Purpose) -> None:
    with pytest.raises(PhiRefused) as refused:
        phi.prepare_for_purpose(film, purpose)
    assert refused.value.code == "phi_unredacted"


def test_redacting_only_identifiers_is_not_enough_for_teaching() -> None:
    im = labelled_film("MRN 12345678", footer="LATERAL VIEW")
    with pytest.raises(PhiRefused) as refused:
        phi.prepare_for_purpose(_sanitised(im), Purpose.TEACHING, mode=RedactMode.IDENTIFIERS)
    assert refused.value.code == "phi_unredacted"


def test_teaching_shares_the_fully_redacted_copy(film: imaging.SanitisedImage) -> None:
    shared = phi.prepare_for_purpose(film, Purpose.TEACHING, mode=RedactMode.ALL_TEXT)
    assert shared.redacted and shared.shared_scan.clean
    assert shared.original_scan.status is OcrStatus.TEXT_FOUND
    assert shared.image.data != film.data
    # Deterministic: a consent captured over this copy names what `send` will share.
    again = phi.prepare_for_purpose(film, Purpose.TEACHING, mode=RedactMode.ALL_TEXT)
    assert again.image.data == shared.image.data


def test_direct_care_warns_about_identifiers_but_sends_the_original(
        film: imaging.SanitisedImage) -> None:
    shared = phi.prepare_for_purpose(film, Purpose.DIRECT_CARE)
    assert shared.image == film and not shared.redacted
    assert len(shared.warnings) == 1 and "looks like identifiers" in shared.warnings[0]


def test_the_clinicians_own_boxes_are_blacked_out_too() -> None:
    im = labelled_film(None, footer="LATERAL VIEW")
    shared = phi.prepare_for_purpose(_sanitised(im), Purpose.TEACHING,
                                     boxes=[(20, 810, 400, 45)])
    assert shared.redacted and shared.shared_scan.clean


def test_lightbox_send_for_teaching_refuses_an_unredacted_label(tmp_path: Path) -> None:
    path = tmp_path / "film.png"
    labelled_film().save(path)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["--profile", "nobody", "send", "--to", "role:teaching_group",
                       "--purpose", "teaching", "--image", str(path), "--send-anyway",
                       "fracture for the teaching file"])
    assert rc == 1 and "phi_unredacted" in err.getvalue() and "sent:" not in out.getvalue()
    assert "text in the image" in err.getvalue() and "12345678" in err.getvalue()
    assert "--redact all-text" in err.getvalue()


# --- bad input -------------------------------------------------------------------------------


def test_a_tiny_image_could_not_be_read_and_is_never_clean() -> None:
    scan = phi.scan_image(_sanitised(labelled_film().resize((90, 68))).data)
    assert scan.status is OcrStatus.UNREADABLE and not scan.clean
    assert "too small" in scan.reason
    with pytest.raises(PhiRefused) as refused:
        phi.check_for_purpose(Purpose.TEACHING, scan)
    assert refused.value.code == "phi_unverified"
    assert "not checked" in phi.check_for_purpose(Purpose.DIRECT_CARE, scan)[0]


def test_a_noisy_image_could_not_be_read() -> None:
    rng = random.Random(7)
    noise = Image.frombytes("L", (1000, 800), rng.randbytes(1000 * 800))
    scan = phi.scan_image(_sanitised(noise).data)
    assert scan.status is OcrStatus.UNREADABLE and "too noisy" in scan.reason


def test_noise_hiding_a_label_after_redaction_blocks_teaching() -> None:
    # A label OCR reads on a noisy film: after redaction the copy is noise with no readable
    # text, which is not the same as clean.
    noisy = ImageChops.add(labelled_film(footer=None).convert("L"),
                           Image.effect_noise((1200, 900), 40), 1, -128)
    with pytest.raises(PhiRefused) as refused:
        phi.prepare_for_purpose(_sanitised(noisy), Purpose.TEACHING, mode=RedactMode.ALL_TEXT)
    assert refused.value.code in {"phi_unverified", "phi_unredacted"}


def _no_ocr(image: Image.Image, timeout: float) -> list[phi.OcrWord]:
    raise phi.OcrUnavailable(phi.INSTALL_HINT)


def _tesseract_threads(scan: Callable[[], object]) -> list[int]:
    """The thread counts of this process's ``tesseract`` children, read from /proc every 5 ms
    while ``scan`` runs."""
    seen: list[int] = []
    done = threading.Event()
    me = str(os.getpid())

    def watch() -> None:
        while not done.is_set():
            for proc in Path("/proc").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    status = dict(line.split(":\t", 1)
                                  for line in (proc / "status").read_text().splitlines())
                    if status["Name"] == "tesseract" and status["PPid"] == me:
                        seen.append(int(status["Threads"]))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        scan()
    finally:
        done.set()
        watcher.join()
    return seen


def test_tesseract_runs_on_one_thread_unless_told_otherwise(
        film: imaging.SanitisedImage, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's Tesseract starts up to four OpenMP threads on two cores, and the scan of a 12 MP
    photo took twice as long (docs/BENCHMARKS.md "Clinical safety on the device"): it runs on
    one, unless whoever runs the program set OMP_THREAD_LIMIT themselves."""
    monkeypatch.delenv(phi.OCR_THREADS_ENV, raising=False)
    threads = _tesseract_threads(lambda: phi.scan_image(film.data))
    assert threads and max(threads) == 1, threads
    monkeypatch.setenv(phi.OCR_THREADS_ENV, "2")
    assert phi.scan_image(film.data).status is OcrStatus.TEXT_FOUND
    assert os.environ[phi.OCR_THREADS_ENV] == "2"


def test_without_an_ocr_engine_teaching_is_refused_with_how_to_install(
        film: imaging.SanitisedImage) -> None:
    with pytest.raises(PhiRefused) as refused:
        phi.prepare_for_purpose(film, Purpose.TEACHING, mode=RedactMode.ALL_TEXT, ocr=_no_ocr)
    assert refused.value.code == "ocr_unavailable"
    assert "apt-get install tesseract-ocr tesseract-ocr-eng" in str(refused.value)
    shared = phi.prepare_for_purpose(film, Purpose.DIRECT_CARE, ocr=_no_ocr)
    assert "not checked" in shared.warnings[0] and "tesseract-ocr" in shared.warnings[0]


def test_a_missing_tesseract_program_is_reported_not_raised(
        film: imaging.SanitisedImage, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytesseract

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    scan = phi.scan_image(film.data)
    assert scan.status is OcrStatus.UNAVAILABLE and "tesseract-ocr" in scan.reason


def test_site_patterns_are_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = tmp_path / "phi.json"
    rules.write_text(json.dumps([{"kind": "identifier", "pattern": r"\bLATERAL\b"}]))
    monkeypatch.setenv(phi.PATTERNS_ENV, str(rules))
    scan = phi.scan_image(_sanitised(labelled_film(None, footer="LATERAL VIEW")).data,
                          rules=phi.rules_from_env())
    assert {r.text for r in scan.findings} == {"LATERAL"}
    rules.write_text(json.dumps([{"kind": "nonsense", "pattern": "x"}]))
    with pytest.raises(ValueError, match="rule 0"):
        phi.rules_from_env()


# --- dates in the formats films and monitors print ------------------------------------------

DATE_FORMATS = ("2024-03-14", "14/03/1957", "03/14/1957", "14.03.1957", "14-Mar-1957",
                "14 March 1957", "Mar 14 1957", "March 14, 1957", "14 Mar 57",
                # as film printers and DICOM overlays write them: 14MAR1957, DICOM DA
                "14MAR1957", "14MAR57", "19570314")


def _flagged_words(label: str) -> dict[str, frozenset[PhiKind]]:
    """Each OCR word of a film labelled ``label`` and what it was flagged as."""
    scan = phi.scan_image(_sanitised(labelled_film(label, footer=None)).data)
    assert scan.status is OcrStatus.TEXT_FOUND, (label, scan)
    return {r.text: r.kinds for r in scan.regions}


@pytest.mark.parametrize("date", DATE_FORMATS)
def test_a_burned_in_date_is_found_in_each_common_format(date: str) -> None:
    words = _flagged_words(f"Study {date}  LATERAL")
    # every word OCR read but the two around it is a part of the date (as OCR spelt it)
    parts = {text: kinds for text, kinds in words.items() if text not in {"Study", "LATERAL"}}
    assert parts and all(PhiKind.DATE in k for k in parts.values()), (date, words)
    assert PhiKind.DATE not in words.get("LATERAL", frozenset())


@pytest.mark.parametrize("label", ["DOB: {}", "DOB {}", "D.O.B. {}", "Born {}",
                                   "Date of birth: {}"])
@pytest.mark.parametrize("date", ["14/03/1957", "14.03.1957", "14-Mar-1957", "14 March 1957",
                                  "Mar 14 1957", "1957-03-14", "14MAR1957", "19570314"])
def test_a_labelled_date_of_birth_is_found_as_a_date_of_birth(label: str, date: str) -> None:
    words = _flagged_words(label.format(date))
    assert words and all(PhiKind.DATE_OF_BIRTH in k for k in words.values()), \
        (label, date, words)


def test_a_record_number_printed_against_its_label_is_found() -> None:
    words = _flagged_words("MRN123456  ACC:A99812")
    assert PhiKind.IDENTIFIER in words["MRN123456"], words


def test_an_eight_digit_number_that_is_no_date_is_not_called_a_date() -> None:
    words = _flagged_words("Study 12345678  LATERAL")
    assert PhiKind.DATE not in words["12345678"] and PhiKind.IDENTIFIER in words["12345678"]


def test_identifier_kinds_name_what_was_found_without_the_text(
        film: imaging.SanitisedImage) -> None:
    scan = phi.scan_image(film.data)
    # in the body's order; the date of birth is not also listed as a date
    assert phi.identifier_kinds(scan) == ("name", "date_of_birth", "identifier", "institution")
    assert phi.identifier_kinds(phi.scan_image(_sanitised(_no_text_image()).data)) == ()
