"""The JPEG frame a DICOM object carries (PS3.5 §8.2.1, JPEG Baseline 8-bit): reading a photo's
SOF marker (ITU-T T.81 §B.2.2) to keep its own bytes when they already are baseline 8-bit
YCbCr or greyscale, and Pillow's re-encoding when they are not; never a second lossy pass when
none is needed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

from PIL import Image

__all__ = [
    "JPEG_QUALITY",
    "NOT_SOF",
    "STANDALONE",
    "FrameError",
    "JpegFrame",
    "Sof",
    "encode_frame",
    "has_adobe_transform",
    "read_sof",
]


class FrameError(ValueError):
    """The image cannot be made a baseline JPEG frame (dicom.py reports it as a
    DicomBuildError)."""


JPEG_QUALITY: Final = 92  # only used when an image has to be encoded here


@dataclass(frozen=True)
class JpegFrame:
    jpeg: bytes
    rows: int
    columns: int
    components: int
    subsampled: bool


def encode_frame(img: Image.Image) -> JpegFrame:
    if img.mode not in ("L", "RGB"):
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            img = flat
        elif img.mode in ("1", "I;16", "I", "F"):
            img = img.convert("L")
        else:
            img = img.convert("RGB")
    if not (1 <= img.width <= 65535 and 1 <= img.height <= 65535):
        raise FrameError("image dimensions out of range")
    out = io.BytesIO()
    # 4:4:4 (no chroma subsampling) keeps colour detail; the frame is then YBR_FULL.
    img.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False,
             progressive=False)
    data = out.getvalue()
    sof = read_sof(data)
    if sof is None or not sof.baseline:  # Pillow writes SOF0 when not progressive
        raise FrameError("the JPEG encoder did not produce a baseline frame")
    return JpegFrame(data, sof.rows, sof.columns, sof.components, sof.subsampled)


@dataclass(frozen=True)
class Sof:
    marker: int
    precision: int
    rows: int
    columns: int
    components: int
    subsampled: bool

    @property
    def baseline(self) -> bool:
        # Process 1 (PS3.5 §8.2.1, ISO 10918-1 SOF0): 8-bit, Huffman, sequential.
        return (self.marker == 0xC0 and self.precision == 8 and self.components in (1, 3)
                and self.rows > 0)


STANDALONE: Final = {0x01, 0xD8, *range(0xD0, 0xD8)}


NOT_SOF: Final = {0xC4, 0xC8, 0xCC}


def read_sof(data: bytes) -> Sof | None:
    """The JPEG frame header (ISO 10918-1 §B.2.2), or None when it cannot be found."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in STANDALONE:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        seg = data[i + 4:i + 2 + length]
        if length < 2 or len(seg) != length - 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in NOT_SOF:
            if len(seg) < 6:
                return None
            ncomp = seg[5]
            if len(seg) < 6 + 3 * ncomp or ncomp == 0:
                return None
            factors = [(seg[7 + 3 * k] >> 4, seg[7 + 3 * k] & 0x0F) for k in range(ncomp)]
            subsampled = any(f != factors[0] for f in factors[1:])
            return Sof(marker, seg[0], int.from_bytes(seg[1:3], "big"),
                        int.from_bytes(seg[3:5], "big"), ncomp, subsampled)
        if marker == 0xDA:  # scan before any frame header
            return None
        i += 2 + length
    return None


def has_adobe_transform(data: bytes) -> bool:
    """An Adobe APP14 segment may say the components are RGB, not YCbCr: re-encode those."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF and data[i + 1] != 0xDA:
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if data[i + 1] == 0xEE and data[i + 4:i + 9] == b"Adobe":
            return True
        i += 2 + length
    return False
