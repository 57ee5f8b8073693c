"""Letterbox trimming (simd.borders): padding is cut, content never is."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data

from simd.borders import letterbox, trim


def _jpeg(image: Image.Image, quality: int = 85) -> Image.Image:
    """Through a JPEG round trip, as a chat app sends it (ringing beside the hard edges)."""
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _padded(photo: Image.Image, canvas: tuple[int, int], fill: str) -> tuple[Image.Image, tuple[int, int]]:
    out = Image.new("RGB", canvas, fill)
    at = ((canvas[0] - photo.width) // 2, (canvas[1] - photo.height) // 2)
    out.paste(photo, at)
    return out, at


@pytest.mark.parametrize(
    "canvas, fill",
    [((600, 600), "white"), ((600, 600), "black"), ((338, 600), "black"), ((900, 400), "white")],
)
def test_a_real_photo_on_a_canvas_comes_back_whole(canvas, fill):
    """The photo (chelsea, 451x300, scaled to fit) padded to 1:1, 9:16 or a wide canvas, JPEG'd:
    the box found is the photo's to within 2 px, never inside it by more than that."""
    photo = Image.fromarray(data.chelsea())
    scale = min(canvas[0] / photo.width, canvas[1] / photo.height)  # fitted, as the apps do
    photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
    padded, (x, y) = _padded(photo, canvas, fill)
    box = letterbox(_jpeg(padded))
    assert box is not None
    expected = (x, y, x + photo.width, y + photo.height)
    assert all(abs(a - b) <= 2 for a, b in zip(box, expected, strict=True)), (box, expected)


def test_a_uniform_sky_at_the_top_is_content():
    """A photo whose top is one flat sky colour (and whose bottom is not) is not trimmed: bands
    are cut only in pairs of one colour, as letterboxing makes them."""
    photo = np.asarray(Image.fromarray(data.coffee()).convert("RGB")).copy()  # 600x400
    photo[:120] = (135, 190, 235)  # a cloudless sky, flat after JPEG
    image = _jpeg(Image.fromarray(photo))
    assert letterbox(image) is None
    assert trim(image) is image


def test_real_photos_without_padding_are_left_alone():
    for rgb in (data.chelsea(), data.coffee(), data.astronaut(), data.rocket(), data.hubble_deep_field()):
        image = _jpeg(Image.fromarray(rgb).convert("RGB"))
        assert letterbox(image) is None


def test_plain_images_and_thin_frames_are_left_alone():
    assert letterbox(Image.new("RGB", (300, 200), "white")) is None  # nothing to tell content by
    framed, _ = _padded(Image.fromarray(data.chelsea()), (455, 304), "black")  # a 2 px frame line
    assert letterbox(framed) is None
    assert letterbox(Image.new("RGB", (5, 5), "white")) is None


def test_bands_of_two_colours_are_not_a_letterbox():
    """Black above and white below (a screenshot's bars, a dark sky over snow) stay."""
    photo = Image.fromarray(data.chelsea())
    canvas = Image.new("RGB", (451, 500), "black")
    canvas.paste(Image.new("RGB", (451, 100), "white"), (0, 400))
    canvas.paste(photo, (0, 100))
    assert letterbox(_jpeg(canvas)) is None


def test_an_object_on_a_plain_field_is_not_a_letterbox():
    """Clip art or a product shot: plain on all four sides. Letterboxing pads one axis only."""
    horse = Image.fromarray(data.horse().astype(np.uint8) * 255).convert("RGB")  # a silhouette on white
    assert letterbox(horse) is None
    framed, _ = _padded(Image.fromarray(data.chelsea()), (600, 500), "white")
    assert letterbox(_jpeg(framed)) is None
