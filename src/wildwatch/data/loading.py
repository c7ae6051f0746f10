"""Open any image safely as 8-bit RGB, or fail with a message that names the file."""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from wildwatch.errors import WildwatchError

try:  # HEIC/HEIF, the iPhone's default: Pillow reads it through pillow-heif's opener
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a core dependency
    pass

# The one limit on an image: the pixels wildwatch decodes. 64 megapixels is larger than any
# camera-trap or phone photo; a JPEG is decoded at reduced scale first (draft mode), so a larger
# JPEG panorama is still read when the answer needs only a small copy of it.
DEFAULT_MAX_PIXELS = 64_000_000
# a decoded image larger than this is reduced at once (by an integer factor, before any change of
# mode): the model needs 256 px, overlays and snapshots at most ~2000, and a wide mode (RGBA, 16-bit,
# float) at full size would otherwise be copied several times over while it is converted
KEEP_PIXELS = 4_000_000
# modes whose change to RGB makes at most one copy: only these may be kept larger than KEEP_PIXELS
# (crops of small detector boxes need the full detail of a camera-trap JPEG)
NARROW_MODES = ("RGB", "L", "CMYK", "YCbCr")
FORMATS_READ = "JPEG, PNG, HEIC/HEIF, AVIF, TIFF, WebP, BMP or GIF"
_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                8: Image.Transpose.ROTATE_90}


def too_large(label, w: int, h: int, max_pixels: int) -> ImageLoadError:
    """The one message for an image over the limit, wherever it is met."""
    return ImageLoadError(label, f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} pixels "
                                 "per image (JPEGs are reduced while decoding; save a larger photo as JPEG or "
                                 "shrink it)", too_large=True)


class ImageLoadError(WildwatchError):
    """An image could not be read. ``str()`` names the file and the problem; ``too_large`` is set
    when it was refused for its size (a limit, a decompression bomb) rather than its content."""

    def __init__(self, path: str | Path, reason: str, too_large: bool = False):
        self.path = str(path)
        self.reason = reason
        self.too_large = too_large
        super().__init__(f"{path}: {reason}")


def declared_size(source, name: str, draft_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) that decoding ``source`` (bytes or a binary file, rewound afterwards) will
    produce, from the image's header, without decoding its pixels: a JPEG's at the reduced scale
    ``draft_size`` asks for. Raises ImageLoadError."""
    return header_info(source, name, draft_size)[:2]


def header_info(source, name: str, draft_size: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """``declared_size`` and a bound on the memory, in bytes, that decoding it takes at its peak:
    4 bytes per decoded pixel (the widest mode), three times over for WebP (its decoder keeps a
    canvas and a copy besides the image)."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    start = source.tell()
    try:
        if not source.read(1):
            raise ImageLoadError(name, "file is empty (0 bytes)")
        source.seek(start)
        with _open(source, name) as img:
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", draft_size)
            w, h = img.size
            return w, h, w * h * 4 * (3 if img.format == "WEBP" else 1)
    except ImageLoadError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(name, f"unreadable image header ({exc})") from None
    finally:
        source.seek(start)


def _open(source, label) -> Image.Image:
    """``Image.open`` with wildwatch's own limit instead of Pillow's decompression-bomb check: a
    JPEG too large for that check is opened directly, since drafting may still bring it within
    the limit (the caller checks the size it will decode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except UnidentifiedImageError:
            raise ImageLoadError(label, f"not an image wildwatch can read (it reads {FORMATS_READ}); is the "
                                        "content what the file name says?") from None
        except Image.DecompressionBombError:
            from PIL import JpegImagePlugin

            if isinstance(source, (str, Path)):
                with open(source, "rb") as f:
                    jpeg = f.read(3) == b"\xff\xd8\xff"
            else:
                source.seek(0)
                jpeg = source.read(3) == b"\xff\xd8\xff"
                source.seek(0)
            if not jpeg:
                raise ImageLoadError(label, "image has more pixels than wildwatch reads (a decompression bomb?)",
                                     too_large=True) from None
            return JpegImagePlugin.JpegImageFile(str(source) if isinstance(source, Path) else source)


def shrink(img: Image.Image, keep_pixels: int = KEEP_PIXELS) -> Image.Image:
    """``img`` reduced by the smallest integer factor that brings it within ``keep_pixels``, in its
    own mode where Pillow can (box averaging: no aliasing); the same image when it is small."""
    w, h = img.size
    if w * h <= keep_pixels:
        return img
    factor = math.ceil(math.sqrt(w * h / keep_pixels))
    if img.mode in ("1", "P", "PA") or img.mode.startswith("I;16"):
        # palette indices cannot be averaged, 1-bit and 16-bit have no reducer: widen first
        img = img.convert({"1": "L", "P": "RGBA" if "transparency" in img.info else "RGB", "PA": "RGBA"}.get(img.mode, "I"))
    return img.reduce(factor)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0
        scale = 255.0 / 65535.0 if hi > 255 else 1.0
        arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def load_image(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Load ``path`` as an RGB image with EXIF orientation applied.

    ``draft_size`` lets JPEG decoding skip detail that a later resize would throw away
    (Pillow's draft mode decodes at 1/2, 1/4 or 1/8 scale, never below this size).
    Raises ImageLoadError for missing, empty, truncated, non-image or oversized files.
    """
    return load_photo(path, max_pixels, draft_size)[0]


def load_photo(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: tuple[int, int] | None = None,
               keep_pixels: int = KEEP_PIXELS) -> tuple[Image.Image, Image.Exif]:
    """``load_image`` and the photo's EXIF block (GPS, capture time), read from the same open
    file: one open and one parse of the header per photo instead of two. ``keep_pixels``: the
    decode is reduced beyond this (a larger value keeps more detail in ``NARROW_MODES`` only)."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if path.is_dir():
        raise ImageLoadError(path, "is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")
    return _decode(path, path, max_pixels, draft_size, keep_pixels)


def load_image_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                     draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Like ``load_image`` for bytes (an upload); ``name`` is used in error messages. The content
    decides, never the name or a declared content type."""
    return load_photo_bytes(data, name, max_pixels, draft_size)[0]


def load_photo_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                     draft_size: tuple[int, int] | None = None,
                     keep_pixels: int = KEEP_PIXELS) -> tuple[Image.Image, Image.Exif]:
    """``load_image_bytes`` and the EXIF block, from one parse (as ``load_photo``)."""
    if not data:
        raise ImageLoadError(name, "file is empty (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels, draft_size, keep_pixels)


def _decode(source, label, max_pixels: int, draft_size, keep_pixels: int = KEEP_PIXELS) -> tuple[Image.Image, Image.Exif]:
    try:
        with _open(source, label) as img:
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", draft_size)  # decoded at 1/2, 1/4 or 1/8 scale: the limit is on what is decoded
            w, h = img.size
            if w * h > max_pixels:
                raise too_large(label, w, h, max_pixels)
            img.load()
            exif = img.getexif()  # the EXIF block: parsed once, kept for GPS and time
            if img.mode not in NARROW_MODES:  # a wide mode is copied several times over while it is converted
                keep_pixels = min(keep_pixels, KEEP_PIXELS)
            small = shrink(img, keep_pixels)  # before any conversion: wide modes are never copied at full size
            turn = _ORIENTATION.get(exif.get(0x0112))
            if turn is not None:
                small = small.transpose(turn)
            return _to_rgb(small), exif
    except ImageLoadError:
        raise
    except Image.DecompressionBombError:
        raise ImageLoadError(label, "image has more pixels than wildwatch reads (a decompression bomb?)",
                             too_large=True) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(label, f"cannot decode image ({exc})") from None
