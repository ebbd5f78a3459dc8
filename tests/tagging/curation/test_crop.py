"""Crop: the border trimmer on letterboxed pictures, the crop-model interface, recorded boxes."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

from tagging.curation.crop import BorderCrop, CropModel, apply_crops, crop_image, find_crops
from tagging.curation.manifest import Box, Manifest
from tagging.errors import InvalidInput
from tests.tagging.curation.factory import picture, row, sha


def jpeg(image: Image.Image) -> Image.Image:
    """Through a JPEG round trip, as archived images are: bars get noise and soft edges."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def letterboxed(bars: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """A 240×135 picture centred in a 240×200 frame: black bars of 32/33 px above and below."""
    frame = Image.new("RGB", (240, 200), bars)
    frame.paste(picture(4, (240, 135)), (0, 32))
    return jpeg(frame)


def close(box: Box | None, expected: Box, slack: int = 2) -> bool:
    return box is not None and all(abs(a - b) <= slack for a, b in zip(box, expected, strict=True))


def test_letterboxing_is_trimmed() -> None:
    box = BorderCrop().crop(letterboxed())
    assert close(box, (0, 32, 240, 167)), box
    assert crop_image(letterboxed(), box).size[1] in range(131, 140)


def test_a_uniform_white_frame_is_trimmed_on_every_side() -> None:
    frame = Image.new("RGB", (300, 220), (255, 255, 255))
    frame.paste(picture(5, (240, 180)), (30, 20))
    assert close(BorderCrop().crop(jpeg(frame)), (30, 20, 270, 200))


def test_a_picture_without_borders_is_kept_whole() -> None:
    assert BorderCrop().crop(jpeg(picture(6, (240, 180)))) is None


def test_a_placeholder_card_is_not_cropped_to_its_text() -> None:
    # Mostly uniform: trimming would keep only the text, the very thing that makes it a placeholder.
    card = Image.new("RGB", (320, 240), (235, 235, 235))
    ImageDraw.Draw(card).text((110, 110), "PHOTO COMING SOON", fill=(60, 60, 60))
    assert BorderCrop().crop(jpeg(card)) is None
    assert BorderCrop().crop(Image.new("RGB", (50, 50), (0, 0, 0))) is None


def test_a_plain_background_around_an_object_is_not_a_border() -> None:
    # A card with a tall icon, and a studio shot's car on white: the old trim kept 56% of the card
    # (over min_area) and cut the shot's floor; neither background ends in a picture's edge.
    card = Image.new("RGB", (400, 300), (200, 200, 200))
    ImageDraw.Draw(card).rectangle((140, 66, 260, 234), fill=(120, 120, 120))
    studio = Image.new("RGB", (400, 300), (250, 250, 250))
    ImageDraw.Draw(studio).ellipse((40, 60, 360, 250), fill=(180, 20, 20))
    assert BorderCrop().crop(jpeg(card)) is None
    assert BorderCrop().crop(jpeg(studio)) is None
    # The same card letterboxed in black bars loses only the bars.
    framed = Image.new("RGB", (400, 380), (0, 0, 0))
    framed.paste(card, (0, 40))
    assert close(BorderCrop().crop(jpeg(framed)), (0, 40, 400, 340))


class FixedModel:
    """A configured crop model: anything with ``crop(image) -> box | None``."""

    def crop(self, image: Image.Image) -> Box | None:
        return (1, 1, image.width - 1, image.height - 1) if image.width > 100 else None


def test_a_configured_model_and_recorded_boxes() -> None:
    model: CropModel = FixedModel()
    images = {sha("big"): picture(1, (200, 100)), sha("small"): picture(2, (80, 60))}
    boxes = find_crops(images, model)
    assert boxes == {sha("big"): (1, 1, 199, 99)}
    assert find_crops({sha("lb"): letterboxed()}).keys() == {sha("lb")}  # the default model
    manifest = Manifest([row("big", width=200, height=100), row("small", width=80, height=60)])
    out = apply_crops(manifest, boxes).by_sha256()
    assert out[sha("big")].crop == (1, 1, 199, 99)
    assert out[sha("small")].crop is None


def test_a_box_must_fit_its_image_and_name_a_row() -> None:
    manifest = Manifest([row("a", width=100, height=100)])
    with pytest.raises(InvalidInput, match="not inside"):
        apply_crops(manifest, {sha("a"): (0, 0, 101, 100)})
    with pytest.raises(InvalidInput, match="not in the manifest"):
        apply_crops(manifest, {sha("zz"): (0, 0, 10, 10)})
