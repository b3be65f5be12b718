"""Image hygiene before a photo leaves the device: orientation, metadata stripping, quality.

Why (docs/ARCHITECTURE.md §5, ARCHITECTURE.md §3, CLINICAL_SAFETY.md): a phone photo of a film
carries EXIF (GPS position, device serial, time), XMP, IPTC, comments, colour profiles and vendor
APPn segments; none of it may travel. And a clinician must be told, in plain words, when a photo
will be hard to read (blurred, too dark or bright, glare, too small, tilted) so they can retake it.

What :func:`sanitise_image` does, in this order:

1. refuses input over :class:`ImageLimits` (bytes, then pixels, before any pixel is decoded), and
   anything Pillow cannot fully decode (corrupt, truncated, not an image) with
   :class:`ImageRejected`;
2. applies the EXIF orientation to the pixels (all eight values, CIPA DC-008 §4.6.4 A tag 0x0112)
   *before* the metadata goes, so no image arrives rotated or mirrored (a mirrored x-ray swaps
   left and right);
3. converts to 8-bit sRGB (an embedded ICC profile is applied, then dropped) or 8-bit grey;
   transparency is flattened onto white;
4. copies the bare pixels into a fresh image and encodes that as baseline JPEG. Nothing from the
   input's headers can survive: the encoder never sees them. The output is then parsed and
   refused unless its only segments are SOI, APP0 (JFIF), DQT, SOF, DHT, SOS and EOI.

:func:`check_quality` returns :class:`QualityWarning` objects; they never block on their own (the
user chooses to retake or send anyway). The checks run on a downscaled grey copy so they cost tens
of milliseconds, with Pillow's C filters doing the per-pixel work (numpy is not a dependency).

Exceptions::

    ImageRejected     the file cannot be used (``code``: RejectCode, ``reason``: plain words)
"""

from __future__ import annotations

import io
import math
import warnings
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from PIL import Image, ImageCms, ImageFilter, ImageOps, ImageStat, UnidentifiedImageError

__all__ = [
    "DEFAULT_JPEG_QUALITY",
    "DEFAULT_LIMITS",
    "DEFAULT_THRESHOLDS",
    "ImageLimits",
    "ImageRejected",
    "PreparedImage",
    "QualityIssue",
    "QualityThresholds",
    "QualityWarning",
    "RejectCode",
    "SanitisedImage",
    "check_quality",
    "dominant_tilt",
    "jpeg_segments",
    "laplacian_variance",
    "load_upright",
    "prepare_image",
    "sanitise_image",
]

DEFAULT_JPEG_QUALITY: Final = 90
# Formats a phone or desktop hands us (a JPEG with extra multi-picture frames opens as MPO
# through the JPEG opener; only the first frame is kept). TIFF, GIF, BMP and the rest are
# refused: more parsers, more attack surface, and no phone produces them.
ACCEPTED_FORMATS: Final = ("JPEG", "PNG", "WEBP")
MEDIA_TYPE: Final = "image/jpeg"

# Segments a clean baseline/progressive JPEG from our encoder may contain (ITU T.81 Table B.1).
_SOI, _EOI, _SOS, _APP0 = 0xD8, 0xD9, 0xDA, 0xE0
_ALLOWED_MARKERS: Final = frozenset({_SOI, _APP0, 0xDB, 0xC0, 0xC1, 0xC2, 0xC4, _SOS, _EOI})


class RejectCode(StrEnum):
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    TOO_MANY_PIXELS = "too_many_pixels"
    NOT_AN_IMAGE = "not_an_image"
    DAMAGED = "damaged"


class ImageRejected(Exception):
    """The file cannot be sent as an image. ``reason`` is a sentence for the user."""

    def __init__(self, code: RejectCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ImageLimits:
    """Input limits, checked before decoding. ``max_pixels`` stays below Pillow's own
    decompression-bomb threshold (about 89 Mpx) so every refusal is ours and says why."""

    max_bytes: int = 40 * 1024 * 1024
    max_pixels: int = 50_000_000  # a 200 Mpx sensor's full-size mode is refused; 12-50 Mpx pass


DEFAULT_LIMITS: Final = ImageLimits()


@dataclass(frozen=True, slots=True)
class SanitisedImage:
    """Clean JPEG bytes, upright, without any metadata: what gets encrypted and sent."""

    data: bytes = field(repr=False)
    width: int
    height: int
    media_type: str = MEDIA_TYPE


# --- decoding --------------------------------------------------------------------------------


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def _decode(data: bytes, limits: ImageLimits) -> Image.Image:
    """Fully decode the first frame of ``data``, or raise ImageRejected."""
    if not data:
        raise ImageRejected(RejectCode.EMPTY, "The file is empty.")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            RejectCode.TOO_LARGE,
            f"The file is {_mb(len(data))}; the largest image accepted is "
            f"{_mb(limits.max_bytes)}.",
        )
    with warnings.catch_warnings():
        # Deliberate: Pillow *warns* between 89 and 179 Mpx and raises above; both become a
        # refusal. EXIF/ICC oddities it reports as UserWarning concern metadata we drop anyway.
        # (catch_warnings is process-global: a concurrent thread may see these filters briefly.)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_many_pixels(None, limits) from exc
        except UnidentifiedImageError as exc:
            raise ImageRejected(
                RejectCode.NOT_AN_IMAGE,
                "This is not a photo Lightbox can read (JPEG, PNG or WebP).",
            ) from exc
        except Exception as exc:  # any parser failure on untrusted bytes is a bad file
            raise _damaged() from exc
        width, height = image.size
        if width < 1 or height < 1 or width * height > limits.max_pixels:
            raise _too_many_pixels(image.size, limits)
        try:
            image.seek(0)
            image.load()
        except Exception as exc:  # truncated data, broken streams, codec errors
            raise _damaged() from exc
    return image


def _too_many_pixels(size: tuple[int, int] | None, limits: ImageLimits) -> ImageRejected:
    shown = f" ({size[0]} x {size[1]})" if size else ""
    return ImageRejected(
        RejectCode.TOO_MANY_PIXELS,
        f"The image is too large{shown}; the limit is {limits.max_pixels / 1e6:.0f} megapixels.",
    )


def _damaged() -> ImageRejected:
    return ImageRejected(
        RejectCode.DAMAGED, "The image file is damaged or incomplete; take or export it again."
    )


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (all eight values) to the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return ImageOps.exif_transpose(image)
    except Exception as exc:
        # Safer to refuse than to send a possibly mirrored film.
        raise ImageRejected(
            RejectCode.DAMAGED,
            "The photo's orientation data is damaged; take or export the photo again.",
        ) from exc


_SRGB: Final = ImageCms.createProfile("sRGB")


def _to_srgb(image: Image.Image, icc: bytes) -> Image.Image:
    """Convert pixels described by ``icc`` to sRGB. A broken profile leaves them as they are:
    slightly off colours are better than refusing a photo over a colour profile."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return image.convert("RGB")
    return converted if converted is not None else image


def _to_8bit(image: Image.Image) -> Image.Image:
    """RGB or L with 8 bits per sample; alpha flattened onto white; ICC applied."""
    icc = image.info.get("icc_profile")
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey (monitor captures): scale, do not clip.
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if mode == "F":
        return image.convert("L")
    if mode == "P":
        image = image.convert("RGBA")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
        mode = "RGB"
    if mode in ("1", "L"):
        return image.convert("L")
    if isinstance(icc, bytes) and icc and mode in ("RGB", "CMYK"):
        return _to_srgb(image, icc)
    return image.convert("RGB")


def jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """The marker segments of a JPEG stream as ``(marker, payload)`` (ITU T.81 §B.1).

    Entropy-coded data after SOS is skipped (its stuffed ``FF 00`` and RSTn are not segments).
    Raises ValueError for anything that is not a well-formed JPEG.
    """
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI)")
    segments: list[tuple[int, bytes]] = [(_SOI, b"")]
    i, n = 2, len(data)
    while True:
        if i >= n or data[i] != 0xFF:
            raise ValueError(f"expected a marker at offset {i}")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            raise ValueError("truncated marker")
        marker = data[i]
        i += 1
        if marker == _EOI:
            segments.append((_EOI, b""))
            if i != n:
                raise ValueError("bytes after EOI")
            return segments
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            segments.append((marker, b""))
            continue
        if i + 2 > n:
            raise ValueError("truncated segment length")
        length = int.from_bytes(data[i : i + 2], "big")
        if length < 2 or i + length > n:
            raise ValueError("bad segment length")
        segments.append((marker, data[i + 2 : i + length]))
        i += length
        if marker == _SOS:  # skip entropy-coded data up to the next real marker
            while i < n - 1 and not (
                data[i] == 0xFF and data[i + 1] != 0 and not 0xD0 <= data[i + 1] <= 0xD7
            ):
                i += 1


def _check_clean(data: bytes) -> None:
    """Refuse our own output unless it holds pixels and nothing else (defence in depth: a future
    encoder that adds a segment must fail loudly, not leak quietly)."""
    for marker, payload in jpeg_segments(data):
        if marker not in _ALLOWED_MARKERS or (marker == _APP0 and payload[:5] != b"JFIF\x00"):
            raise RuntimeError(f"sanitised JPEG holds a disallowed segment 0xFF{marker:02X}")


def _encode(image: Image.Image, quality: int) -> SanitisedImage:
    # A fresh image built from the raw pixels has an empty ``info``: no EXIF, ICC, XMP, DPI or
    # comment can reach the encoder (Pillow falls back to ``im.info`` for some of them).
    bare = Image.frombytes(image.mode, image.size, image.tobytes())
    out = io.BytesIO()
    bare.save(out, format="JPEG", quality=quality, optimize=True)
    data = out.getvalue()
    _check_clean(data)
    return SanitisedImage(data=data, width=bare.width, height=bare.height)


def _load_upright(data: bytes, limits: ImageLimits) -> Image.Image:
    upright = _upright(_decode(data, limits))
    try:
        return _to_8bit(upright)
    except (ValueError, OSError) as exc:  # a pixel format Pillow cannot convert
        raise ImageRejected(
            RejectCode.NOT_AN_IMAGE, "This image uses a colour format Lightbox cannot convert."
        ) from exc


def load_upright(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> Image.Image:
    """Decode ``data`` as :func:`sanitise_image` does (limits, orientation applied, 8-bit sRGB
    or grey) without encoding: the pixels that OCR and redaction work on (clinician/phi.py)."""
    return _load_upright(data, limits)


def sanitise_image(
    data: bytes, *, quality: int = DEFAULT_JPEG_QUALITY, limits: ImageLimits = DEFAULT_LIMITS
) -> SanitisedImage:
    """Upright, metadata-free JPEG re-encoded from the pixels of ``data`` (see module doc)."""
    if not 1 <= quality <= 95:
        raise ValueError("JPEG quality must be 1..95")
    return _encode(_load_upright(data, limits), quality)


# --- quality checks --------------------------------------------------------------------------


class QualityIssue(StrEnum):
    BLUR = "blur"
    UNDEREXPOSED = "underexposed"
    OVEREXPOSED = "overexposed"
    GLARE = "glare"
    LOW_RESOLUTION = "low_resolution"
    TILT = "tilt"


@dataclass(frozen=True, slots=True)
class QualityWarning:
    """One reason the photo may be hard to read. ``message`` is for the user; ``value`` and
    ``threshold`` are the measurement and the limit it crossed (for logs and tests)."""

    issue: QualityIssue
    message: str
    value: float
    threshold: float


@dataclass(frozen=True, slots=True)
class QualityThresholds:
    """When a check warns. Measured on a grey copy downscaled to ``analysis_size`` pixels on its
    longest side (``tilt_size`` for the tilt estimate, which loops in Python)."""

    analysis_size: int = 1024
    tilt_size: int = 256
    min_sharpness: float = 80.0  # variance of the 4-neighbour Laplacian (see laplacian_variance)
    dark_mean: float = 45.0  # mean grey level (0-255) below which the photo is too dark...
    dark_p95: float = 90.0  # ...or whose brightest 5% stay below this
    bright_mean: float = 215.0  # mean above which the photo is washed out...
    bright_p5: float = 170.0  # ...or whose darkest 5% are brighter than this
    glare_level: int = 250  # a pixel at or above this is clipped
    max_glare_fraction: float = 0.02
    min_short_side: int = 800  # pixels
    max_tilt_degrees: float = 8.0
    min_line_strength: float = 0.15  # share of edge weight within +-2 degrees of the peak


DEFAULT_THRESHOLDS: Final = QualityThresholds()


def _grey(image: Image.Image, longest: int) -> Image.Image:
    grey = image.convert("L")
    scale = longest / max(grey.size)
    if scale < 1:
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    return grey


_OFFSET: Final = 4096


def _convolve(grey_i: Image.Image, kernel: Sequence[int]) -> Image.Image:
    # Pillow's "I" (int32) kernels clamp below zero: the offset keeps signed results intact.
    return grey_i.filter(ImageFilter.Kernel((3, 3), kernel, scale=1, offset=_OFFSET))


def _inner(image: Image.Image) -> Image.Image:
    # Pillow copies the 1-pixel border unfiltered; leave it out of every statistic.
    return image.crop((1, 1, image.width - 1, image.height - 1))


def laplacian_variance(grey: Image.Image) -> float:
    """Variance of the Laplacian (Pech-Pacheco et al., 2000): low means few sharp edges.

    Computed in 8-bit ("L") mode, halved around 128, because Pillow's statistics are exact only
    on 256-bin histograms; responses beyond +-254 (hard synthetic steps) are clipped, which
    only ever lowers the score of an image that is sharp anyway.
    """
    if grey.width < 3 or grey.height < 3:
        return 0.0
    # A 3x3 median first, so sensor noise does not pass for detail; then stretch contrast (1%
    # clipped at each end) so a dark but sharp photo is not called blurred: exposure has checks
    # of its own.
    denoised = grey.convert("L").filter(ImageFilter.MedianFilter(3))
    stretched = ImageOps.autocontrast(denoised, cutoff=1)
    lap = stretched.filter(
        ImageFilter.Kernel((3, 3), (0, 1, 0, 1, -4, 1, 0, 1, 0), scale=2, offset=128))
    return 4.0 * float(ImageStat.Stat(_inner(lap)).var[0])


def _percentile(histogram: Sequence[int], fraction: float) -> int:
    target = fraction * sum(histogram)
    running = 0
    for level, count in enumerate(histogram):
        running += count
        if running >= target:
            return level
    return len(histogram) - 1


def dominant_tilt(grey: Image.Image) -> tuple[float, float]:
    """(tilt in degrees, strength) of the dominant straight edges, modulo 90 degrees.

    A histogram of gradient orientations (Sobel), weighted by gradient magnitude and folded
    modulo 90 degrees, so the four edges of a film vote for one angle. ``strength`` is the share
    of edge weight within +-2 degrees of the peak (about 0.05 for no dominant direction).
    """
    if grey.width < 8 or grey.height < 8:
        return 0.0, 0.0
    smooth = grey.filter(ImageFilter.GaussianBlur(1)).convert("I")
    gx = array("i", _inner(_convolve(smooth, (-1, 0, 1, -2, 0, 2, -1, 0, 1))).tobytes())
    gy = array("i", _inner(_convolve(smooth, (-1, -2, -1, 0, 0, 0, 1, 2, 1))).tobytes())
    bins = [0.0] * 90
    min_mag_sq = 40 * 40  # a step of about 10 grey levels; flat and noisy areas do not vote
    degrees = 180 / math.pi
    for x, y in zip(gx, gy, strict=True):
        dx, dy = x - _OFFSET, y - _OFFSET
        mag_sq = dx * dx + dy * dy
        if mag_sq < min_mag_sq:
            continue
        bins[math.floor(math.atan2(dy, dx) * degrees) % 90] += math.sqrt(mag_sq)
    total = sum(bins)
    if total == 0:
        return 0.0, 0.0
    window = [sum(bins[(i + k) % 90] for k in range(-2, 3)) for i in range(90)]
    peak = max(range(90), key=window.__getitem__)
    # Sub-degree estimate: weighted circular mean around the peak.
    num = sum(k * bins[(peak + k) % 90] for k in range(-2, 3))
    angle = peak + num / window[peak] + 0.5 if window[peak] else float(peak)
    tilt = angle if angle < 45 else angle - 90
    return tilt, window[peak] / total


def _quality(image: Image.Image, t: QualityThresholds) -> list[QualityWarning]:
    found: list[QualityWarning] = []
    width, height = image.size
    grey = _grey(image, t.analysis_size)

    sharpness = laplacian_variance(grey)
    if sharpness < t.min_sharpness:
        found.append(QualityWarning(
            QualityIssue.BLUR,
            "The photo looks blurred. Hold the phone steady, let it focus on the film, "
            "and take it again.", sharpness, t.min_sharpness))

    histogram = grey.histogram()
    mean = ImageStat.Stat(grey).mean[0]
    p5, p95 = _percentile(histogram, 0.05), _percentile(histogram, 0.95)
    overexposed = mean > t.bright_mean or p5 > t.bright_p5
    if mean < t.dark_mean or p95 < t.dark_p95:
        found.append(QualityWarning(
            QualityIssue.UNDEREXPOSED,
            "The photo is too dark. Put the film on a lit viewing box or add light, "
            "and take it again.", mean, t.dark_mean))
    elif overexposed:
        found.append(QualityWarning(
            QualityIssue.OVEREXPOSED,
            "The photo is too bright and washed out. Move away from direct light "
            "or lower the exposure, and take it again.", mean, t.bright_mean))
    clipped = sum(histogram[t.glare_level:]) / max(1, sum(histogram))
    if not overexposed and clipped > t.max_glare_fraction:
        found.append(QualityWarning(
            QualityIssue.GLARE,
            f"Part of the photo ({clipped:.0%}) is pure white, probably glare or a reflection. "
            "Tilt the phone slightly or switch off the flash, and take it again.",
            clipped, t.max_glare_fraction))

    if min(width, height) < t.min_short_side:
        found.append(QualityWarning(
            QualityIssue.LOW_RESOLUTION,
            f"The photo is small ({width} x {height} pixels); fine detail may not be readable. "
            "Move closer so the film fills the frame.", min(width, height), t.min_short_side))

    tilt, strength = dominant_tilt(_grey(image, t.tilt_size))
    if strength >= t.min_line_strength and abs(tilt) > t.max_tilt_degrees:
        found.append(QualityWarning(
            QualityIssue.TILT,
            f"The film looks tilted by about {abs(tilt):.0f} degrees. Hold the phone parallel "
            "to the film, with the whole film in view.", abs(tilt), t.max_tilt_degrees))
    return found


def check_quality(
    image: bytes | Image.Image,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> list[QualityWarning]:
    """Plain-language warnings about ``image`` (file bytes, or an already upright image)."""
    if isinstance(image, bytes):
        image = _load_upright(image, limits)
    return _quality(image, thresholds)


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """A photo ready to encrypt, and what the user should be told before sending it."""

    image: SanitisedImage
    warnings: tuple[QualityWarning, ...]


def prepare_image(
    data: bytes,
    *,
    quality: int = DEFAULT_JPEG_QUALITY,
    limits: ImageLimits = DEFAULT_LIMITS,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
) -> PreparedImage:
    """Decode once, then :func:`sanitise_image` and :func:`check_quality` on the upright pixels
    (the checks see the original pixels, not the re-encoded JPEG)."""
    if not 1 <= quality <= 95:
        raise ValueError("JPEG quality must be 1..95")
    upright = _load_upright(data, limits)
    return PreparedImage(image=_encode(upright, quality),
                         warnings=tuple(_quality(upright, thresholds)))
