"""clients/sdk/imaging.py: no metadata leaves the device, images arrive upright, quality is told."""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from collections.abc import Callable

import pytest
from PIL import Image, ImageCms, ImageDraw, ImageFilter, PngImagePlugin

from clients.sdk.imaging import (
    DEFAULT_LIMITS,
    ImageLimits,
    ImageRejected,
    QualityIssue,
    RejectCode,
    check_quality,
    dominant_tilt,
    jpeg_segments,
    prepare_image,
    sanitise_image,
)

# --- generated images --------------------------------------------------------------------------


def _film(size: tuple[int, int] = (1200, 900), *, lo: int = 25, hi: int = 225) -> Image.Image:
    """An x-ray-like film: dark background, two long bones with a bright cortex and a
    trabecular interior (deterministic)."""
    w, h = size
    rng = random.Random(1)
    img = Image.new("L", size, lo)
    draw = ImageDraw.Draw(img)
    for cx in (w * 0.38, w * 0.62):
        draw.rounded_rectangle((cx - w * 0.07, h * 0.08, cx + w * 0.07, h * 0.92),
                               radius=int(w * 0.05), fill=hi)
        draw.rounded_rectangle((cx - w * 0.045, h * 0.12, cx + w * 0.045, h * 0.88),
                               radius=int(w * 0.03), fill=(lo + hi) // 2 + 20)
        for _ in range(60):
            y, x = rng.uniform(h * 0.15, h * 0.85), cx + rng.uniform(-w * 0.04, w * 0.04)
            draw.line((x, y, x + rng.uniform(-20, 20), y + rng.uniform(-20, 20)),
                      fill=hi - 30, width=2)
    return img.convert("RGB")


@functools.cache
def _scene(angle: float = 0.0) -> Image.Image:
    """A film on a lit viewing box, photographed at ``angle`` degrees."""
    background = Image.new("L", (1200, 900), 190)
    background.paste(_film((720, 630)).convert("L"), (240, 135))
    if angle:
        background = background.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=190)
    return background.convert("RGB")


def _issues(image: Image.Image) -> set[QualityIssue]:
    return {w.issue for w in check_quality(image)}


def _jpeg(image: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95, **params)
    return out.getvalue()


def _png(image: Image.Image, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", **params)
    return out.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _insert_after_soi(jpeg: bytes, *segments: bytes) -> bytes:
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


# --- metadata ----------------------------------------------------------------------------------

SECRET_COMMENT = b"Patient DOE^JOHN MRN 12345678 - comment"
IPTC_NAME = b"DOE^JOHN-IPTC"
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
       b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
       b'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="LeakyCam"/>'
       b"</rdf:RDF></x:xmpmeta>")


def _exif_with_gps(orientation: int | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "LEAKY-PHONE-MAKER"  # Make
    exif[0x0110] = "LEAKY-MODEL-X"  # Model
    exif[0x010E] = "GPS position of St Elsewhere ward 7"  # ImageDescription
    if orientation is not None:
        exif[0x0112] = orientation
    exif[0x8825] = {  # GPS IFD (EXIF 2.32 §4.6.6)
        1: "N", 2: (51.0, 30.0, 26.0), 3: "W", 4: (0.0, 7.0, 39.0), 18: "WGS-84",
    }
    return exif


def _dirty_jpeg() -> bytes:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    base = _jpeg(_film((400, 300)), exif=_exif_with_gps().tobytes(), xmp=XMP,
                 comment=SECRET_COMMENT, icc_profile=srgb)
    iptc = b"\x1c\x02\x05" + struct.pack(">H", len(IPTC_NAME)) + IPTC_NAME
    photoshop = (b"Photoshop 3.0\x00" + b"8BIM" + b"\x04\x04" + b"\x00\x00"
                 + struct.pack(">I", len(iptc)) + iptc)
    return _insert_after_soi(
        base,
        _segment(0xED, photoshop),  # APP13: IPTC
        _segment(0xEC, b"Ducky\x00\x01\x00\x04\x00\x00\x00\x50"),  # APP12
        _segment(0xEF, b"VENDOR-APP15 serial 998877"),  # APP15
        _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + XMP),  # a second APP1 XMP
        _segment(0xFE, b"second COM DOE^JOHN"),
    )


NEEDLES = (b"Exif", b"GPS", b"WGS-84", b"LEAKY", b"http://ns.adobe.com/xap", b"xmpmeta",
           b"Photoshop 3.0", b"8BIM", IPTC_NAME, b"DOE^JOHN", SECRET_COMMENT, b"ICC_PROFILE",
           b"Ducky", b"VENDOR-APP15")
CLEAN_MARKERS = {0xD8, 0xE0, 0xDB, 0xC0, 0xC1, 0xC2, 0xC4, 0xDA, 0xD9}


def test_the_dirty_test_image_really_carries_every_kind_of_metadata() -> None:
    dirty = _dirty_jpeg()
    for needle in NEEDLES:
        assert needle in dirty, needle
    markers = {m for m, _ in jpeg_segments(dirty)}
    assert {0xE1, 0xE2, 0xEC, 0xED, 0xEF, 0xFE} <= markers


def test_sanitised_jpeg_holds_pixels_and_nothing_else() -> None:
    clean = sanitise_image(_dirty_jpeg())
    segments = jpeg_segments(clean.data)
    assert {m for m, _ in segments} <= CLEAN_MARKERS
    assert segments[0][0] == 0xD8 and segments[-1][0] == 0xD9
    for marker, payload in segments:
        if marker == 0xE0:
            assert payload.startswith(b"JFIF\x00")
    for needle in NEEDLES:
        assert needle not in clean.data, needle
    reopened = Image.open(io.BytesIO(clean.data))
    assert not reopened.getexif()
    assert not {"exif", "icc_profile", "xmp", "comment", "photoshop"} & set(reopened.info)
    assert (clean.width, clean.height, clean.media_type) == (400, 300, "image/jpeg")


def test_png_text_chunks_and_exif_do_not_survive() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "DOE^JOHN MRN 12345678")
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    data = _png(_film((300, 200)), pnginfo=info, exif=_exif_with_gps().tobytes())
    assert b"DOE^JOHN" in data
    clean = sanitise_image(data)
    assert {m for m, _ in jpeg_segments(clean.data)} <= CLEAN_MARKERS
    for needle in (b"DOE^JOHN", b"12345678", b"xmp", b"GPS", b"LEAKY"):
        assert needle not in clean.data


def test_a_broken_icc_profile_is_dropped_not_fatal() -> None:
    clean = sanitise_image(_jpeg(_film((200, 150)), icc_profile=b"not a profile at all"))
    assert b"not a profile" not in clean.data
    assert {m for m, _ in jpeg_segments(clean.data)} <= CLEAN_MARKERS


@pytest.mark.parametrize(
    ("mode", "fill"),
    [("RGBA", (10, 200, 30, 128)), ("LA", (90, 200)), ("P", 3), ("1", 1), ("L", 77),
     ("CMYK", (0, 255, 255, 0)), ("I;16", 40000)],
)
def test_every_pixel_format_becomes_a_clean_8_bit_jpeg(mode: str, fill: object) -> None:
    image = Image.new(mode, (64, 48), fill)  # type: ignore[arg-type]
    data = _jpeg(image) if mode == "CMYK" else _png(image)
    clean = sanitise_image(data)
    out = Image.open(io.BytesIO(clean.data))
    assert out.mode in ("RGB", "L") and out.size == (64, 48)
    if mode == "I;16":  # 16-bit grey is scaled (40000 / 256 = 156), not clipped to 255
        assert abs(out.getpixel((32, 24)) - 156) <= 3  # type: ignore[operator]


def test_quality_must_be_in_range() -> None:
    with pytest.raises(ValueError, match="quality"):
        sanitise_image(_jpeg(_film((64, 48))), quality=100)


# --- orientation -------------------------------------------------------------------------------

RED, GREEN, BLUE, WHITE = (230, 20, 20), (20, 200, 20), (20, 20, 230), (255, 255, 255)
W, H = 96, 64


def _upright_marker() -> Image.Image:
    """Red top-left, green top-right, blue bottom-left, white bottom-right: every one of the
    eight orientations puts a different colour (or aspect ratio) in each corner."""
    img = Image.new("RGB", (W, H), WHITE)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 23, 23), fill=RED)
    draw.rectangle((W - 24, 0, W - 1, 23), fill=GREEN)
    draw.rectangle((0, H - 24, 23, H - 1), fill=BLUE)
    return img


# Where stored pixel (x, y) appears on screen, straight from the meaning of each value of EXIF
# tag 0x0112 ("0th row is visual ..., 0th column is visual ...", CIPA DC-008 §4.6.4 A),
# independent of Pillow's implementation.
_TO_DISPLAY: dict[int, Callable[[int, int], tuple[int, int]]] = {
    1: lambda x, y: (x, y),                  # top, left
    2: lambda x, y: (W - 1 - x, y),          # top, right
    3: lambda x, y: (W - 1 - x, H - 1 - y),  # bottom, right
    4: lambda x, y: (x, H - 1 - y),          # bottom, left
    5: lambda x, y: (y, x),                  # left, top
    6: lambda x, y: (W - 1 - y, x),          # right, top
    7: lambda x, y: (W - 1 - y, H - 1 - x),  # right, bottom
    8: lambda x, y: (y, H - 1 - x),          # left, bottom
}


def _as_camera_stored(upright: Image.Image, orientation: int) -> Image.Image:
    size = (W, H) if orientation <= 4 else (H, W)
    stored = Image.new("RGB", size)
    to_display = _TO_DISPLAY[orientation]
    for y in range(size[1]):
        for x in range(size[0]):
            stored.putpixel((x, y), upright.getpixel(to_display(x, y)))  # type: ignore[arg-type]
    return stored


def _close(a: object, b: tuple[int, int, int]) -> bool:
    assert isinstance(a, tuple)
    return all(abs(p - q) <= 40 for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_upright(orientation: int) -> None:
    stored = _as_camera_stored(_upright_marker(), orientation)
    data = _jpeg(stored, exif=_exif_with_gps(orientation).tobytes())
    clean = sanitise_image(data)
    out = Image.open(io.BytesIO(clean.data)).convert("RGB")
    assert out.size == (W, H) == (clean.width, clean.height)
    assert _close(out.getpixel((11, 11)), RED)
    assert _close(out.getpixel((W - 12, 11)), GREEN)
    assert _close(out.getpixel((11, H - 12)), BLUE)
    assert _close(out.getpixel((W - 12, H - 12)), WHITE)
    assert b"Exif" not in clean.data  # and the orientation tag went with the rest


# --- quality checks ----------------------------------------------------------------------------


def test_a_good_photo_gets_no_warning() -> None:
    assert check_quality(_scene()) == []


def test_blur_is_flagged_and_a_sharp_film_is_not() -> None:
    blurred = _scene().filter(ImageFilter.GaussianBlur(4))
    assert QualityIssue.BLUR in _issues(blurred)
    assert QualityIssue.BLUR not in _issues(_scene())
    assert QualityIssue.BLUR not in _issues(_film())


def test_a_dark_photo_is_underexposed_and_a_normal_one_is_not() -> None:
    dark = _film(lo=5, hi=60)
    assert QualityIssue.UNDEREXPOSED in _issues(dark)
    assert QualityIssue.BLUR not in _issues(dark)  # dark but sharp is not "blurred"
    assert QualityIssue.UNDEREXPOSED not in _issues(_film())


def test_a_washed_out_photo_is_overexposed_and_a_normal_one_is_not() -> None:
    bright = _film(lo=190, hi=255)
    assert QualityIssue.OVEREXPOSED in _issues(bright)
    assert QualityIssue.OVEREXPOSED not in _issues(_film())


def test_glare_is_flagged_and_a_photo_without_clipped_highlights_is_not() -> None:
    glare = _scene().copy()
    ImageDraw.Draw(glare).ellipse((700, 200, 950, 420), fill=(255, 255, 255))
    warnings = {w.issue: w for w in check_quality(glare)}
    assert QualityIssue.GLARE in warnings
    assert QualityIssue.OVEREXPOSED not in warnings
    assert "glare" in warnings[QualityIssue.GLARE].message
    assert QualityIssue.GLARE not in _issues(_scene())


def test_a_small_photo_is_low_resolution_and_a_large_one_is_not() -> None:
    small = _scene().resize((400, 300), Image.Resampling.LANCZOS)
    warnings = {w.issue: w for w in check_quality(small)}
    assert QualityIssue.LOW_RESOLUTION in warnings
    assert "400 x 300" in warnings[QualityIssue.LOW_RESOLUTION].message
    assert QualityIssue.LOW_RESOLUTION not in _issues(_scene())


@pytest.mark.parametrize("angle", [20, -20, 15, 35])
def test_a_film_photographed_at_an_angle_is_flagged(angle: float) -> None:
    warnings = {w.issue: w for w in check_quality(_scene(angle))}
    assert QualityIssue.TILT in warnings
    assert warnings[QualityIssue.TILT].value == pytest.approx(abs(angle), abs=1.5)
    assert "tilted by about" in warnings[QualityIssue.TILT].message


@pytest.mark.parametrize("angle", [0, 3, -4])
def test_a_straight_or_nearly_straight_film_is_not_flagged(angle: float) -> None:
    assert QualityIssue.TILT not in _issues(_scene(angle))


def test_no_dominant_line_means_no_tilt_verdict() -> None:
    rng = random.Random(3)
    blobs = Image.frombytes("L", (600, 600), rng.randbytes(600 * 600))
    blobs = blobs.filter(ImageFilter.GaussianBlur(4))
    _tilt, strength = dominant_tilt(blobs)
    assert strength < 0.15
    assert QualityIssue.TILT not in _issues(blobs.convert("RGB"))


def test_warnings_never_block_sending() -> None:
    bad = _film((500, 400), lo=5, hi=60).filter(ImageFilter.GaussianBlur(3))
    prepared = prepare_image(_jpeg(bad))
    assert {QualityIssue.BLUR, QualityIssue.UNDEREXPOSED,
            QualityIssue.LOW_RESOLUTION} <= {w.issue for w in prepared.warnings}
    assert prepared.image.data.startswith(b"\xff\xd8")
    assert all(w.message.endswith(".") for w in prepared.warnings)


def test_check_quality_accepts_file_bytes_and_applies_orientation_first() -> None:
    rotated_on_disk = _scene().rotate(90, expand=True)  # stored sideways, tag says "right, top"
    data = _jpeg(rotated_on_disk, exif=_exif_with_gps(6).tobytes())
    assert check_quality(data) == []
    assert sanitise_image(data).width == 1200


# --- bad input ---------------------------------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _rejected(data: bytes, limits: ImageLimits = DEFAULT_LIMITS) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        sanitise_image(data, limits=limits)
    assert caught.value.reason.endswith(".") and str(caught.value) == caught.value.reason
    return caught.value


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_a_truncated_jpeg_is_rejected_as_damaged(cut: float) -> None:
    data = _jpeg(_film((400, 300)))
    assert _rejected(data[: int(len(data) * cut)]).code is RejectCode.DAMAGED


def test_a_truncated_png_is_rejected_as_damaged() -> None:
    data = _png(_film((200, 150)))
    assert _rejected(data[: len(data) // 2]).code is RejectCode.DAMAGED


def test_a_jpeg_with_garbage_after_its_header_is_rejected() -> None:
    data = _jpeg(_film((200, 150)))
    sos = data.index(b"\xff\xda")
    corrupt = data[:sos] + b"\xff\xda\x00\x02" + random.Random(9).randbytes(300)
    assert _rejected(corrupt).code is RejectCode.DAMAGED


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.7\n1 0 obj <<>> endobj\n", b"just some text, not a photo\n", b"\x00" * 100,
     b"\xff\xd8\xff", b"GIF89a" + b"\x00" * 20],
)
def test_non_image_files_are_rejected(data: bytes) -> None:
    assert _rejected(data).code in (RejectCode.NOT_AN_IMAGE, RejectCode.DAMAGED)


@pytest.mark.parametrize("kind", ["GIF", "BMP", "TIFF"])
def test_images_in_formats_a_phone_does_not_produce_are_refused(kind: str) -> None:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(out, format=kind)
    assert _rejected(out.getvalue()).code is RejectCode.NOT_AN_IMAGE


def test_an_empty_file_is_rejected() -> None:
    assert _rejected(b"").code is RejectCode.EMPTY


def test_a_file_over_the_byte_limit_is_rejected_before_decoding() -> None:
    error = _rejected(b"\xff\xd8" + b"\x00" * 5000, ImageLimits(max_bytes=4096))
    assert error.code is RejectCode.TOO_LARGE
    assert "largest image accepted" in error.reason


def test_an_image_over_the_pixel_limit_is_rejected() -> None:
    error = _rejected(_jpeg(_film((400, 300))), ImageLimits(max_pixels=100_000))
    assert error.code is RejectCode.TOO_MANY_PIXELS
    assert "400 x 300" in error.reason


@pytest.mark.parametrize(
    "size",
    [(8000, 8000),     # over our 50 Mpx limit, under Pillow's bomb warning
     (10000, 10000),   # Pillow would warn (DecompressionBombWarning): handled, not a warning
     (30000, 30000)],  # Pillow would raise DecompressionBombError
)
def test_decompression_bombs_are_rejected_without_decoding(size: tuple[int, int]) -> None:
    assert _rejected(_png_header_only(*size)).code is RejectCode.TOO_MANY_PIXELS


def test_jpeg_segments_refuses_what_is_not_a_jpeg() -> None:
    with pytest.raises(ValueError, match="SOI"):
        jpeg_segments(b"\x89PNG")
    with pytest.raises(ValueError):
        jpeg_segments(b"\xff\xd8\xff\xe0\x00\x10JF")


def test_warnings_describe_the_measurement() -> None:
    (warning,) = check_quality(_scene().resize((600, 450)))
    assert warning.issue is QualityIssue.LOW_RESOLUTION
    assert (warning.value, warning.threshold) == (450, 800)
