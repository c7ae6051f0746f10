"""Open any image safely as 8-bit RGB, or fail with a message that names the file."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wildwatch.errors import WildwatchError

try:  # HEIC/HEIF, the iPhone's default: Pillow reads it through pillow-heif's opener
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a core dependency
    pass

# 64 megapixels: larger than any camera-trap or phone photo; a decompression bomb is far above.
DEFAULT_MAX_PIXELS = 64_000_000


class ImageLoadError(WildwatchError):
    """An image could not be read. ``str()`` names the file and the problem; ``too_large`` is set
    when it was refused for its size (a limit, a decompression bomb) rather than its content."""

    def __init__(self, path: str | Path, reason: str, too_large: bool = False):
        self.path = str(path)
        self.reason = reason
        self.too_large = too_large
        super().__init__(f"{path}: {reason}")


def declared_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding its pixels. Raises ImageLoadError
    (``too_large`` for a size Pillow refuses outright as a decompression bomb)."""
    if not data:
        raise ImageLoadError(name, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image file Pillow can read (wrong content for its extension?)") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"refused as a decompression bomb ({exc})", too_large=True) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(name, f"unreadable header ({exc})") from None


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


def load_photo(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               draft_size: tuple[int, int] | None = None) -> tuple[Image.Image, Image.Exif]:
    """``load_image`` and the photo's EXIF block (GPS, capture time), read from the same open
    file: one open and one parse of the header per photo instead of two."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if path.is_dir():
        raise ImageLoadError(path, "is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")
    return _decode(path, path, max_pixels, draft_size)


def load_image_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                     draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Like ``load_image`` for bytes (an upload); ``name`` is used in error messages. The content
    decides, never the name or a declared content type."""
    return load_photo_bytes(data, name, max_pixels, draft_size)[0]


def load_photo_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                     draft_size: tuple[int, int] | None = None) -> tuple[Image.Image, Image.Exif]:
    """``load_image_bytes`` and the EXIF block, from one parse (as ``load_photo``)."""
    if not data:
        raise ImageLoadError(name, "file is empty (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels, draft_size)


def _decode(source, label, max_pixels: int, draft_size) -> tuple[Image.Image, Image.Exif]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(
                        label, f"image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}", too_large=True
                    )
                if draft_size is not None and img.format == "JPEG":
                    img.draft("RGB", draft_size)
                img.load()
                # in place: no copy of the pixels when the photo needs no turning (most do not)
                ImageOps.exif_transpose(img, in_place=True)
                return _to_rgb(img), img.getexif()  # the EXIF block: parsed once above, kept by the image
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(label, "not an image file Pillow can read (wrong content for its extension?)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(label, f"refused as a decompression bomb ({exc})", too_large=True) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(label, f"cannot decode image ({exc})") from None
