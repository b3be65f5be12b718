"""clients/gateway/jpeg.py: the gateway files images as baseline JPEG frames (PS3.5 §8.2.1):
it reads a JPEG's frame header (ISO 10918-1 §B.2.2) to tell baseline from anything else,
and makes any picture a baseline frame, transparency flattened onto white."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from clients.gateway.jpeg import FrameError, encode_frame, has_adobe_transform, read_sof


def _jpeg(img: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", **options)
    return out.getvalue()


def test_a_colour_picture_becomes_a_full_resolution_baseline_frame() -> None:
    frame = encode_frame(Image.new("RGB", (40, 30), (200, 10, 10)))
    assert (frame.rows, frame.columns, frame.components, frame.subsampled) == (30, 40, 3, False)
    sof = read_sof(frame.jpeg)
    assert sof is not None and sof.baseline and sof.marker == 0xC0


def test_transparency_is_flattened_onto_white() -> None:
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    frame = encode_frame(clear)
    decoded = Image.open(io.BytesIO(frame.jpeg))
    assert decoded.mode == "RGB"
    assert all(channel > 245 for channel in decoded.getpixel((4, 4)))  # type: ignore[union-attr]


def test_a_sixteen_bit_grey_picture_becomes_one_component() -> None:
    frame = encode_frame(Image.new("I;16", (16, 16), 1000))
    assert frame.components == 1


def test_read_sof_tells_progressive_and_subsampled_frames() -> None:
    picture = Image.new("RGB", (32, 32), (10, 120, 200))
    progressive = read_sof(_jpeg(picture, progressive=True))
    assert progressive is not None and progressive.marker == 0xC2 and not progressive.baseline
    subsampled = read_sof(_jpeg(picture, subsampling=2))  # 4:2:0
    assert subsampled is not None and subsampled.subsampled and subsampled.baseline


@pytest.mark.parametrize("data", [
    b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8", b"\xff\xd8\xff\xc0\x00\x11\x08",
    b"\xff\xd8\xff\xda\x00\x02"])
def test_read_sof_finds_no_frame_in_what_is_not_a_whole_jpeg_header(data: bytes) -> None:
    assert read_sof(data) is None


def test_a_truncated_jpeg_has_no_frame() -> None:
    whole = _jpeg(Image.new("L", (8, 8), 128))
    sof_at = whole.index(b"\xff\xc0")
    assert read_sof(whole) is not None
    assert read_sof(whole[:sof_at + 8]) is None


def test_an_adobe_segment_is_found_before_the_scan_only() -> None:
    cmyk = _jpeg(Image.new("CMYK", (8, 8), (0, 0, 0, 0)))
    assert has_adobe_transform(cmyk)
    assert not has_adobe_transform(_jpeg(Image.new("RGB", (8, 8))))


def test_dimensions_out_of_range_are_refused() -> None:
    with pytest.raises(FrameError, match="image dimensions out of range"):
        encode_frame(Image.new("RGB", (65536, 1)))
