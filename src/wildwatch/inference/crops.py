"""Crops of detector boxes, cut from a decode with all the detail the classifier can use.

A JPEG can be decoded at 1/2, 1/4 or 1/8 of its size for a fraction of the cost (Pillow's draft
mode). A whole photo shrunk to the classifier's input loses nothing that way; a box a tenth of the
photo wide does: at 1/8 of a 3000-pixel photo it is 37 pixels. ``decode_for_crops`` therefore
decodes each photo at the smallest scale at which every box's crop still has ``CROP_DETAIL`` times
the classifier's input side, and at full resolution whenever a box needs it, so that a crop is the
same, to the classifier, as one cut from the full-resolution decode.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from wildwatch.data.loading import DEFAULT_MAX_PIXELS, ImageLoadError, load_photo, load_photo_bytes

CROP_MARGIN = 0.1  # each side of a box grows by this fraction of its longer side before squaring
CROP_DETAIL = 2.0  # a crop keeps at least this many times the classifier's input side, where the photo has it
JPEG_SCALES = (8, 4, 2)


def square_crop_box(bbox: Sequence[float], width: int, height: int,
                    margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of a detection: its longer side grown by ``margin`` on
    each side, made square around the box's centre, kept inside the image."""
    x, y, w, h = (float(v) for v in bbox)
    cx, cy = (x + w / 2) * width, (y + h / 2) * height
    side = max(w * width, h * height) * (1 + 2 * margin)
    side = max(1.0, min(side, float(max(width, height))))
    left = min(max(0.0, cx - side / 2), max(0.0, width - side))
    top = min(max(0.0, cy - side / 2), max(0.0, height - side))
    return (round(left), round(top), round(min(width, left + side)), round(min(height, top + side)))


def crop_scale(bboxes: Sequence[Sequence[float]], width: int, height: int, input_side: int) -> int:
    """The JPEG reduction (1, 2, 4 or 8) at which the smallest crop still has ``CROP_DETAIL`` x
    ``input_side`` pixels on its side (1: full resolution)."""
    if not bboxes:
        return max(JPEG_SCALES)
    smallest = min(right - left for left, _, right, _ in (square_crop_box(b, width, height) for b in bboxes))
    need = CROP_DETAIL * input_side
    return next((s for s in JPEG_SCALES if smallest / s >= need), 1)


def decode_for_crops(path: str | Path | bytes, bboxes: Sequence[Sequence[float]], input_side: int,
                     max_pixels: int = DEFAULT_MAX_PIXELS, decoded: Image.Image | None = None,
                     name: str = "upload") -> Image.Image:
    """The photo (a path, or an upload's bytes named ``name``; EXIF orientation applied) decoded at
    ``crop_scale`` for these boxes; ``decoded`` (the same photo decoded already, perhaps at a draft
    scale) is used as it is when it has the detail. Raises ImageLoadError."""
    raw, label = (bytes(path), name) if isinstance(path, (bytes, bytearray, memoryview)) else (None, path)
    try:
        with Image.open(io.BytesIO(raw) if raw is not None else label) as img:
            raw_w, raw_h = img.size
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageLoadError(label, f"cannot read the image header ({exc})") from None
    w, h = (raw_h, raw_w) if turned else (raw_w, raw_h)
    scale = crop_scale(bboxes, w, h, input_side)
    if decoded is not None and decoded.width * scale >= w:
        return decoded
    draft = None if scale == 1 else (-(-raw_w // scale), -(-raw_h // scale))
    # kept at the scale chosen (a JPEG, or any photo in a narrow mode), not reduced to the loader's
    # usual 4 Mpx: a small box's crop needs the detail
    if raw is not None:
        return load_photo_bytes(raw, name, max_pixels, draft, keep_pixels=max_pixels)[0]
    return load_photo(label, max_pixels, draft, keep_pixels=max_pixels)[0]


def crops(img: Image.Image, bboxes: Sequence[Sequence[float]]) -> list[Image.Image]:
    return [img.crop(square_crop_box(b, img.width, img.height)) for b in bboxes]
