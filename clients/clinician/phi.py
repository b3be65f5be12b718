"""Identifiers burned into an image: find them with OCR, black them out (CLINICAL_SAFETY.md).

Why: a photo captures what the clinician did not mean to send: the corner of a monitor shows the
patient's name, MRN and date of birth; a film label reads ``DOE^JOHN  MRN 12345678``. Metadata
stripping (clients/sdk/imaging.py) cannot remove pixels. Before an image is sent the client reads
its text with Tesseract (Debian ``tesseract-ocr`` + ``tesseract-ocr-eng``, through pytesseract),
flags the words that look like identifiers, shows them, and lets the clinician black them out.

The rule, by purpose (:func:`check_for_purpose`):

* **teaching, publication, research** (:data:`DEIDENTIFIED_PURPOSES`): the image that is
  shared must scan with *no text at all*: every detected text region is redacted (not only
  those that look like identifiers: a ward name or a date is enough to re-identify), and a
  redacted copy is scanned again. If text remains, if OCR could not read the image (too small,
  too noisy), or if OCR is not installed, sending is **refused**, never done unchecked.
* **direct care, external consult**: identifier-like text is shown as a warning (the record
  needs the identified original; the clinician may still redact).

The redacted copy is what is shared; the identified original is what the record gateway files
for direct care, under its own direct-care message (``LightboxClient.file_image``, in the
user's record thread; ``lightbox send`` does it when given patient data). A consent for a
de-identified purpose names the redacted copy's SHA-256 (the bytes shown to the patient and
sent); one that covers direct care as well names the original's too.

OCR is a safety net, not a guarantee: handwriting, tiny or stylised text and text at steep
angles can be missed. The clinician still looks at the copy that will be shared.

Patterns (:class:`PhiRule`, :data:`DEFAULT_RULES`) are regular expressions matched against each
OCR line; a deployment adds its own (a local MRN format, its hospitals' names) with
:func:`load_rules` from a JSON file named by ``LIGHTBOX_PHI_PATTERNS``::

    [{"kind": "identifier", "pattern": "\\\\bRX[0-9]{6}\\\\b"}]

Result states (:class:`OcrStatus`): ``no_text`` is the only "clean" one; ``unreadable`` (too
small or too noisy to read) and ``unavailable`` (no OCR engine) are never treated as clean.

Exceptions::

    FlowError (clients.sdk.errors)
      PhiRefused     the image may not be shared for this purpose (``code``: phi_unredacted,
                     phi_unverified or ocr_unavailable)
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageStat

from clients.sdk import imaging
from clients.sdk.consent import DEIDENTIFIED_PURPOSES
from clients.sdk.errors import FlowError
from clients.sdk.wording import counted
from protocol.body import IdentifierKind
from protocol.model import Purpose

__all__ = [
    "DEFAULT_RULES",
    "DEIDENTIFIED_PURPOSES",
    "INSTALL_HINT",
    "OCR_THREADS_ENV",
    "PATTERNS_ENV",
    "Box",
    "OcrStatus",
    "OcrUnavailable",
    "OcrWord",
    "PhiKind",
    "PhiRefused",
    "PhiRule",
    "PhiScan",
    "RedactMode",
    "ScanSettings",
    "SharedImage",
    "TextRegion",
    "check_for_purpose",
    "describe",
    "identifier_kinds",
    "load_rules",
    "prepare_for_purpose",
    "redact",
    "redact_image",
    "rules_from_env",
    "scan_image",
    "subject_names_patient",
    "tesseract_words",
]

PATTERNS_ENV: Final = "LIGHTBOX_PHI_PATTERNS"
INSTALL_HINT: Final = (
    "Text recognition (Tesseract OCR) is not installed, so this image cannot be checked for "
    "names, MRNs or dates. Install it with `apt-get install tesseract-ocr tesseract-ocr-eng` "
    "and `pip install pytesseract`.")

Box = tuple[int, int, int, int]
"""``(left, top, width, height)`` in pixels of the (upright, sanitised) image."""


class PhiKind(enum.StrEnum):
    NAME = "name"
    IDENTIFIER = "identifier"  # MRN, hospital / NHS number, accession number, long digit runs
    DATE_OF_BIRTH = "date_of_birth"
    DATE = "date"
    AGE = "age"
    INSTITUTION = "institution"


@dataclasses.dataclass(frozen=True, slots=True)
class PhiRule:
    """One pattern: a regular expression over an OCR line (words joined by single spaces).
    Every OCR word that overlaps a match is flagged with ``kind``."""

    kind: PhiKind
    pattern: str
    ignore_case: bool = True

    def compile(self) -> re.Pattern[str]:
        return re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)


_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
# Dates as films, monitors and labels print them: 14/03/1957, 03/14/1957, 14.03.1957, 14-03-57,
# 1957-03-14 (ISO 8601), 14-Mar-1957, 14 March 1957, 14MAR1957, Mar 14 1957, March 14, 1957,
# and DICOM's DA form 19570314 (PS3.5 §6.2) when it is a plausible date.
_DATE = (r"(?:\b\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})\b"
         r"|\b\d{4}[/.\-]\d{1,2}[/.\-]\d{1,2}\b"
         rf"|\b\d{{1,2}}[ \-.]?{_MONTH}[ \-,.]*\d{{2,4}}\b"
         rf"|\b{_MONTH} \d{{1,2}},? \d{{4}}\b"
         r"|\b(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\b)")
# OCR reads a 1 as l, I, L or |, and a 0 as O or o, most often inside numbers: the rules for
# dates, numbers and ages are also matched against the line with those letters, where they
# touch a digit, read as digits (same length, so the words a match covers stay the same).
_LOOKALIKES: Final = re.compile(r"(?<=\d)[lIL|Oo]|[lIL|Oo](?=\d)")
_AS_DIGIT: Final = {"l": "1", "I": "1", "L": "1", "|": "1", "O": "0", "o": "0"}

DEFAULT_RULES: Final[tuple[PhiRule, ...]] = (
    # DICOM person names (PS3.5 §6.2: Family^Given); OCR often reads ^ as * or a space.
    PhiRule(PhiKind.NAME, r"\b[A-Z][A-Z'\-]+ ?[\^*] ?[A-Z][A-Z'\-]*\b", ignore_case=False),
    PhiRule(PhiKind.NAME, r"\b[A-Z][A-Z'\-]{1,}, ?[A-Z][A-Z'\-]{1,}\b", ignore_case=False),
    # A name-like label followed by up to four name-like words.
    PhiRule(PhiKind.NAME, r"\b(?:patient(?: name)?|pt(?: name)?|name|surname|forename|"
                          r"given name|family name)\b ?[:.\-]? ?[A-Z][A-Za-z'\-]+"
                          r"(?:[ ,^*]{1,2}[A-Z][A-Za-z'\-]+){0,3}"),
    # Labelled record numbers, then bare long digit runs (MRNs, NHS numbers, accessions).
    # (the label may touch its number: MRN123456)
    PhiRule(PhiKind.IDENTIFIER, r"\b(?:mrn|mr ?no|hosp(?:ital)? ?(?:no|number|#)|nhs(?: ?no)?|"
                                r"pid|patient ?id|id|ur ?no|urn|acc(?:ession)?(?: ?no)?|"
                                r"chi)(?:\b|(?=\d)) ?[:#.]? ?[A-Z0-9][A-Z0-9\-/]{3,}"),
    PhiRule(PhiKind.IDENTIFIER, r"\b\d{6,}\b"),
    PhiRule(PhiKind.IDENTIFIER, r"\b\d{3}[ \-]\d{3}[ \-]\d{4}\b"),
    PhiRule(PhiKind.DATE_OF_BIRTH, rf"\b(?:dob|d\.o\.b\.?|born|birth ?date|date of birth)"
                                   rf"\b ?[:.]? ?(?:{_DATE})?"),
    PhiRule(PhiKind.DATE, _DATE),
    PhiRule(PhiKind.AGE, r"\b\d{1,3} ?(?:y|yo|yrs?|years?)\b"),
    PhiRule(PhiKind.INSTITUTION, r"(?:\b[A-Z][A-Za-z.'\-]* ){0,4}\b(?:hospital|infirmary|"
                                 r"clinic|medical cent(?:er|re)|health(?:care)?|imaging|"
                                 r"radiology|university)\b"),
)


def load_rules(path: Path | str) -> tuple[PhiRule, ...]:
    """Extra rules from a JSON list of ``{"kind", "pattern", "ignore_case"?}`` (ValueError
    naming the bad entry)."""
    entries = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of rules")
    rules = []
    for i, entry in enumerate(entries):
        try:
            rule = PhiRule(PhiKind(entry["kind"]), str(entry["pattern"]),
                           bool(entry.get("ignore_case", True)))
            rule.compile()
        except (KeyError, TypeError, ValueError, re.error) as exc:
            raise ValueError(f"{path}: rule {i} is not valid: {exc}") from exc
        rules.append(rule)
    return tuple(rules)


def rules_from_env() -> tuple[PhiRule, ...]:
    """:data:`DEFAULT_RULES` plus those of the file named by ``LIGHTBOX_PHI_PATTERNS``."""
    path = os.environ.get(PATTERNS_ENV, "").strip()
    return DEFAULT_RULES + (load_rules(path) if path else ())


class OcrStatus(enum.StrEnum):
    NO_TEXT = "no_text"  # OCR read the image and found no text: the only clean state
    TEXT_FOUND = "text_found"
    UNREADABLE = "unreadable"  # too small or too noisy to tell: never "clean"
    UNAVAILABLE = "unavailable"  # no OCR engine: never "clean"


@dataclasses.dataclass(frozen=True, slots=True)
class OcrWord:
    text: str
    box: Box
    confidence: float  # 0-100
    line: tuple[int, ...]  # words with the same key are on one line


@dataclasses.dataclass(frozen=True, slots=True)
class TextRegion:
    """One word OCR read. ``kinds`` is empty for text that looks like no identifier."""

    text: str
    box: Box
    confidence: float
    kinds: frozenset[PhiKind] = frozenset()


@dataclasses.dataclass(frozen=True, slots=True)
class PhiScan:
    status: OcrStatus
    regions: tuple[TextRegion, ...] = ()
    reason: str = ""

    @property
    def clean(self) -> bool:
        return self.status is OcrStatus.NO_TEXT

    @property
    def findings(self) -> tuple[TextRegion, ...]:
        """The regions that look like identifiers."""
        return tuple(r for r in self.regions if r.kinds)


@dataclasses.dataclass(frozen=True, slots=True)
class ScanSettings:
    """When OCR results are trusted. ``min_side``: images whose shorter side is smaller are
    too small to read; ``max_noise``: mean absolute difference (grey levels) between the image
    and its 3x3 median, above which an image with no confident words is too noisy to call
    clean (sensor noise, not detail: a sharp photo of a film scores below 3, dense small print
    about 18 but then reads with high confidence); ``min_confidence``: Tesseract confidence
    (0-100) for a word to count as text; ``ocr_size``: longest side OCR sees (small images are
    enlarged up to 3x, large ones reduced)."""

    min_side: int = 100
    max_noise: float = 12.0
    min_confidence: float = 45.0
    ocr_size: int = 2400
    timeout: float = 60.0


DEFAULT_SETTINGS: Final = ScanSettings()
Ocr = Callable[[Image.Image, float], list[OcrWord]]


class OcrUnavailable(Exception):
    """No OCR engine; ``str()`` says how to install one."""


# Tesseract 4 and 5, built with OpenMP as Debian's is (libgomp), spread recognition over
# several threads: up to four on a two-core machine, seen in /proc during a scan. Its
# maintainers left OpenMP out of their default build from 5.1.0 on: it costs much more CPU
# than the little time it saves; OpenMP's own OMP_THREAD_LIMIT=1 keeps a build's threads from
# starting. Measured on the 12 MP photo of bench/safety.py, the scan took 1.4-1.8 s with the
# threads and 0.63-0.72 s without (docs/BENCHMARKS.md "Clinical safety on the device"). So
# Tesseract runs on one thread, unless whoever runs the program set OMP_THREAD_LIMIT
# themselves.
OCR_THREADS_ENV: Final = "OMP_THREAD_LIMIT"


def tesseract_words(image: Image.Image, timeout: float = 60.0) -> list[OcrWord]:
    """Words with boxes and confidences from Tesseract (``image_to_data``, on one thread:
    :data:`OCR_THREADS_ENV`); OcrUnavailable if pytesseract, the ``tesseract`` program or its
    English data is missing."""
    try:
        import pytesseract
    except ImportError:
        raise OcrUnavailable(INSTALL_HINT) from None
    # pytesseract starts the program with this process's environment (os.environ itself).
    os.environ.setdefault(OCR_THREADS_ENV, "1")
    try:
        data: dict[str, list[Any]] = pytesseract.image_to_data(
            image, lang="eng", output_type=pytesseract.Output.DICT, timeout=timeout)
    except pytesseract.TesseractNotFoundError:
        raise OcrUnavailable(INSTALL_HINT) from None
    except pytesseract.TesseractError as exc:
        if "eng" in str(exc) or "language" in str(exc).lower():
            raise OcrUnavailable(INSTALL_HINT) from None
        raise
    except RuntimeError as exc:  # pytesseract's timeout
        raise OcrUnavailable(f"text recognition did not finish in {timeout:.0f} s") from exc
    words = []
    for i, text in enumerate(data["text"]):
        text = str(text).strip()
        if not text:
            continue
        words.append(OcrWord(
            text=text,
            box=(int(data["left"][i]), int(data["top"][i]), int(data["width"][i]),
                 int(data["height"][i])),
            confidence=float(data["conf"][i]),
            line=(int(data["page_num"][i]), int(data["block_num"][i]), int(data["par_num"][i]),
                  int(data["line_num"][i]))))
    return words


def _noise(grey: Image.Image) -> float:
    if max(grey.size) > 1024:
        scale = 1024 / max(grey.size)
        grey = grey.resize((max(1, round(grey.width * scale)),
                            max(1, round(grey.height * scale))), Image.Resampling.BOX)
    median = grey.filter(ImageFilter.MedianFilter(3))
    return float(ImageStat.Stat(ImageChops.difference(grey, median)).mean[0])


def _has_alnum(text: str) -> bool:
    return sum(ch.isalnum() for ch in text) >= 1 and not all(ch in "|_-=~.,:;'\"`" for ch in text)


def _classify(words: Sequence[OcrWord], rules: Sequence[PhiRule]) -> list[TextRegion]:
    """Match every rule against each OCR line; flag the words a match overlaps."""
    lines: dict[tuple[int, ...], list[OcrWord]] = {}
    for word in words:
        lines.setdefault(word.line, []).append(word)
    compiled = [(rule.kind, rule.compile()) for rule in rules]
    numeric = {PhiKind.DATE, PhiKind.DATE_OF_BIRTH, PhiKind.IDENTIFIER, PhiKind.AGE}
    regions = []
    for line_words in lines.values():
        line_words.sort(key=lambda w: w.box[0])
        spans, parts, at = [], [], 0
        for word in line_words:
            spans.append((at, at + len(word.text)))
            parts.append(word.text)
            at += len(word.text) + 1
        text = " ".join(parts)
        kinds: list[set[PhiKind]] = [set() for _ in line_words]
        as_digits = _LOOKALIKES.sub(lambda m: _AS_DIGIT[m.group()], text)
        for kind, pattern in compiled:
            readings = (text, as_digits) if kind in numeric and as_digits != text else (text,)
            for match in (m for reading in readings for m in pattern.finditer(reading)):
                if match.end() == match.start():
                    continue
                for i, (start, end) in enumerate(spans):
                    if start < match.end() and match.start() < end:
                        kinds[i].add(kind)
        regions += [TextRegion(w.text, w.box, w.confidence, frozenset(k))
                    for w, k in zip(line_words, kinds, strict=True)]
    return regions


def scan_image(image: bytes | Image.Image, *, rules: Sequence[PhiRule] | None = None,
               settings: ScanSettings = DEFAULT_SETTINGS, ocr: Ocr | None = None) -> PhiScan:
    """OCR ``image`` (file bytes, decoded upright by clients.sdk.imaging, or a PIL image already
    upright) and flag identifier-like text. Never raises for what OCR cannot do: the status
    says ``unreadable`` or ``unavailable`` with a plain ``reason``."""
    if isinstance(image, bytes):
        image = imaging.load_upright(image)
    grey = image.convert("L")
    if min(grey.size) < settings.min_side:
        return PhiScan(OcrStatus.UNREADABLE, reason=(
            f"The image is too small ({grey.width} x {grey.height} pixels) to read any text "
            "in it, so it cannot be checked for names or numbers."))
    scale = min(3.0, settings.ocr_size / max(grey.size))
    work = grey if abs(scale - 1) < 0.05 else grey.resize(
        (round(grey.width * scale), round(grey.height * scale)), Image.Resampling.LANCZOS)
    try:
        words = (ocr or tesseract_words)(work, settings.timeout)
    except OcrUnavailable as exc:
        return PhiScan(OcrStatus.UNAVAILABLE, reason=str(exc))
    back = 1 / scale if abs(scale - 1) >= 0.05 else 1.0
    confident, doubtful = [], 0
    for w in words:
        if not _has_alnum(w.text):
            continue
        if w.confidence >= settings.min_confidence:
            left, top, width, height = w.box
            confident.append(dataclasses.replace(w, box=(
                int(left * back), int(top * back), max(1, round(width * back)),
                max(1, round(height * back)))))
        elif w.confidence >= 0:
            doubtful += 1
    noise = _noise(grey)
    if not confident and noise > settings.max_noise:
        return PhiScan(OcrStatus.UNREADABLE, reason=(
            "The image is too noisy to read any text in it reliably, so it cannot be checked "
            "for names or numbers. Take a sharper, better lit photo."))
    if doubtful >= 3 and doubtful > len(confident):
        return PhiScan(OcrStatus.UNREADABLE, regions=tuple(
            _classify(confident, DEFAULT_RULES if rules is None else rules)), reason=(
            "Some text in the image could not be read reliably, so it cannot be checked for "
            "names or numbers. Take a sharper photo or black out the text by hand."))
    if not confident:
        return PhiScan(OcrStatus.NO_TEXT)
    regions = _classify(confident, DEFAULT_RULES if rules is None else rules)
    return PhiScan(OcrStatus.TEXT_FOUND, regions=tuple(regions))


def describe(scan: PhiScan) -> list[str]:
    """Lines for the clinician: what was found and where."""
    if scan.status is not OcrStatus.TEXT_FOUND:
        return [scan.reason] if scan.reason else []
    out = []
    for r in scan.regions:
        left, top, width, height = r.box
        what = ", ".join(sorted(k.value.replace("_", " ") for k in r.kinds)) or "text"
        out.append(f"{what} at x={left} y={top} ({width}x{height} px): {r.text!r}")
    return out


def identifier_kinds(scan: PhiScan) -> tuple[IdentifierKind, ...]:
    """What kinds of identifier the scanned image shows, for the sealed body's
    ``burned_in_identifiers`` (docs/PROTOCOL.md §14): kinds only, never the text, in the
    protocol's order; a date that is a date of birth is listed as that alone."""
    found: set[IdentifierKind] = set()
    for region in scan.findings:
        kinds = set(region.kinds)
        if PhiKind.DATE_OF_BIRTH in kinds:
            kinds.discard(PhiKind.DATE)
        found |= {IdentifierKind(k.value) for k in kinds}
    return tuple(k for k in IdentifierKind if k in found)


# --- redaction ----------------------------------------------------------------------------------


def _pad(box: Box, pad: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    left, top, width, height = box
    return (max(0, left - pad), max(0, top - pad), min(size[0], left + width + pad),
            min(size[1], top + height + pad))


def redact_image(image: bytes, boxes: Iterable[Box], *, pad: int = 4,
                 limits: imaging.ImageLimits = imaging.DEFAULT_LIMITS) -> imaging.SanitisedImage:
    """Black out ``boxes`` (each grown by ``pad`` pixels) in ``image`` (decoded upright, as
    the scan saw it) and re-sanitise: an upright, metadata-free JPEG."""
    pixels = imaging.load_upright(image, limits).copy()
    draw = ImageDraw.Draw(pixels)
    fill: int | tuple[int, int, int] = 0 if pixels.mode == "L" else (0, 0, 0)
    for box in boxes:
        if box[2] <= 0 or box[3] <= 0:
            raise ValueError(f"empty redaction box {box}")
        draw.rectangle(_pad(box, pad, pixels.size), fill=fill)
    out = io.BytesIO()
    pixels.save(out, format="PNG")  # lossless hand-over to the one sanitiser
    return imaging.sanitise_image(out.getvalue(), limits=limits)


def redact(image_bytes: bytes, boxes: Iterable[Box], *, pad: int = 4) -> bytes:
    """:func:`redact_image` as bytes: the re-sanitised JPEG with the boxes blacked out."""
    return redact_image(image_bytes, boxes, pad=pad).data


# --- the rule by purpose ------------------------------------------------------------------------


class PhiRefused(FlowError):
    """The image may not be shared for this purpose as it is; ``scan`` is what was found
    (in the original, when :func:`prepare_for_purpose` refused), for the client to show."""

    def __init__(self, message: str, *, code: str, scan: PhiScan | None = None) -> None:
        super().__init__(message, code=code)
        self.scan = scan


def check_for_purpose(purpose: Purpose, scan: PhiScan) -> list[str]:
    """Apply the rule to the scan of the image *that will be shared*.

    De-identified purposes: refuse (PhiRefused) unless the scan is ``no_text``. Other purposes:
    never refuse; return warnings for the clinician (identifier-like text, or why the image
    could not be checked)."""
    if purpose in DEIDENTIFIED_PURPOSES:
        if scan.status is OcrStatus.UNAVAILABLE:
            raise PhiRefused(f"not sent: images for {purpose.value} must be checked for text "
                             f"first. {scan.reason}", code="ocr_unavailable")
        if scan.status is OcrStatus.UNREADABLE:
            raise PhiRefused(f"not sent: {scan.reason} Images for {purpose.value} must be "
                             "verified free of text.", code="phi_unverified")
        if scan.status is OcrStatus.TEXT_FOUND:
            raise PhiRefused(f"not sent: the image shows "
                             f"{counted(len(scan.regions), 'text region')}; "
                             f"for {purpose.value} every one must be blacked out (redact all "
                             "text)", code="phi_unredacted", scan=scan)
        return []
    if scan.status is OcrStatus.TEXT_FOUND:
        found = scan.findings
        if not found:
            return []
        kinds = sorted({k.value.replace("_", " ") for r in found for k in r.kinds})
        return [f"the image shows text that looks like identifiers ({', '.join(kinds)}): "
                "black it out unless the recipient needs it"]
    if scan.status in (OcrStatus.UNREADABLE, OcrStatus.UNAVAILABLE):
        return [f"the image was not checked for identifiers: {scan.reason}"]
    return []


class RedactMode(enum.StrEnum):
    NONE = "none"
    IDENTIFIERS = "identifiers"  # black out the identifier-like findings
    ALL_TEXT = "all-text"  # black out every detected text region


@dataclasses.dataclass(frozen=True, slots=True)
class SharedImage:
    """The copy to share (redacted when anything was blacked out), the scans behind the
    decision, and warnings for the clinician."""

    image: imaging.SanitisedImage
    original_scan: PhiScan
    shared_scan: PhiScan
    redacted: bool
    warnings: tuple[str, ...]


def prepare_for_purpose(
    image: imaging.SanitisedImage, purpose: Purpose, *, mode: RedactMode = RedactMode.NONE,
    boxes: Sequence[Box] = (), rules: Sequence[PhiRule] | None = None,
    settings: ScanSettings = DEFAULT_SETTINGS, ocr: Ocr | None = None, max_rounds: int = 3,
) -> SharedImage:
    """Scan a sanitised image, redact per ``mode`` plus the clinician's own ``boxes``, scan the
    copy again and apply :func:`check_for_purpose` to it (PhiRefused for a de-identified
    purpose whose copy still shows text). Deterministic for equal input, so a consent captured
    over the result names the bytes that ``lightbox send`` shares."""
    original = scan_image(image.data, rules=rules, settings=settings, ocr=ocr)
    shared, scan, redacted = image, original, False
    wanted: list[Box] = list(boxes)
    for _round in range(max_rounds):
        if mode is RedactMode.ALL_TEXT:
            wanted += [r.box for r in scan.regions]
        elif mode is RedactMode.IDENTIFIERS:
            wanted += [r.box for r in scan.findings]
        if not wanted:
            break
        shared = redact_image(image.data, wanted)
        redacted = True
        scan = scan_image(shared.data, rules=rules, settings=settings, ocr=ocr)
        residue = scan.regions if mode is RedactMode.ALL_TEXT else scan.findings
        if mode is RedactMode.NONE or not residue:
            break
    try:
        warnings = check_for_purpose(purpose, scan)
    except PhiRefused as refused:
        refused.scan = original
        raise
    return SharedImage(shared, original, scan, redacted, tuple(warnings))


# The parts of a DICOM person name (PS3.5 §6.2.1, PN: FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX) that
# name the patient: the prefix and suffix ("Mr", "Dr", "Jr", "III") are titles that identify no
# one and are clinical words too ("MR knee"), so they are not looked for.
NAME_PARTS: Final = 3
MIN_NAME_WORD: Final = 2  # letters: "Li", "Ng" and "Bo" are names
MIN_NUMBER: Final = 3  # characters of the hospital number, separators aside
_WORD_SPLIT = re.compile(r"[\W_]+")


def _words(text: str) -> list[str]:
    return [w for w in _WORD_SPLIT.split(text.casefold()) if w]


def subject_names_patient(subject: str, patient_id: str, patient_name: str) -> bool:
    """Whether a subject line holds the patient's hospital number (as typed or spaced out:
    "MRN 123", "mrn-123", compared without separators) or any word of 2 letters or more of
    their family, given or middle name, as a whole word, whatever the case: "Richard's
    ankle" names Roe^Richard, "Richardson's ankle" does not name Roe^Rich. The subject is
    sealed but shown wherever the consult is listed (docs/PROTOCOL.md §14 "subject"), where the
    record data never is. The phone's twin is ``subjectNamesPatient`` in
    clients/phone/src/app/worker.ts: a change to one is made to the other."""
    number = "".join(_words(patient_id))
    if len(number) >= MIN_NUMBER and number in "".join(_words(subject)):
        return True
    said = set(_words(subject))
    names = {w for part in patient_name.split("^")[:NAME_PARTS] for w in _words(part)
             if sum(c.isalpha() for c in w) >= MIN_NAME_WORD}
    return bool(names & said)
