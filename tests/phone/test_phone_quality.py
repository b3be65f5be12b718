"""The phone's capture checks against the CLI's (clients/sdk/imaging.py check_quality) on the
same pixels: the app's own code (src/app/quality.ts, which the worker runs off the page's
thread) under Node. Here the tilt hint: a film photographed at an angle is flagged with about
the angle the CLI finds; a straight or nearly straight one, or a picture without straight
edges, is not."""

from __future__ import annotations

import random

import pytest
from PIL import Image, ImageFilter

from clients.sdk.imaging import QualityIssue, check_quality
from protocol.canonical import b64url_encode
from tests.phone.node import run_driver
from tests.phone.phone_world import film


def scene(angle: float) -> Image.Image:
    """A generated film on a lit viewing box, photographed at ``angle`` degrees."""
    box = Image.new("L", (1200, 900), 190)
    box.paste(film(720, 630).convert("L").resize((720, 630)), (240, 135))
    if angle:
        box = box.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=190)
    return box.convert("RGB")


def phone_warnings(image: Image.Image) -> dict[str, str]:
    rgba = image.convert("RGBA")
    answer = run_driver({"op": "quality", "rgba": b64url_encode(rgba.tobytes()),
                         "width": rgba.width, "height": rgba.height})
    return {w["issue"]: w["message"] for w in answer["warnings"]}


@pytest.mark.parametrize("angle", [20, -20, 15, 35])
def test_a_film_at_an_angle_gets_the_tilt_hint_the_cli_gives(angle: float) -> None:
    image = scene(angle)
    cli = {w.issue: w for w in check_quality(image)}
    assert QualityIssue.TILT in cli
    phone = phone_warnings(image)
    assert "tilt" in phone
    degrees = float(phone["tilt"].split("tilted by about ")[1].split(" ")[0])
    assert degrees == pytest.approx(cli[QualityIssue.TILT].value, abs=1.5)
    assert phone["tilt"].startswith("The film looks tilted by about")


@pytest.mark.parametrize("angle", [0, 3, -4])
def test_a_straight_or_nearly_straight_film_gets_no_tilt_hint(angle: float) -> None:
    image = scene(angle)
    assert QualityIssue.TILT not in {w.issue for w in check_quality(image)}
    assert "tilt" not in phone_warnings(image)


def test_a_picture_without_straight_edges_gets_no_tilt_hint() -> None:
    rng = random.Random(3)
    blobs = Image.frombytes("L", (600, 600), rng.randbytes(600 * 600))
    blobs = blobs.filter(ImageFilter.GaussianBlur(4)).convert("RGB")
    assert QualityIssue.TILT not in {w.issue for w in check_quality(blobs)}
    assert "tilt" not in phone_warnings(blobs)
