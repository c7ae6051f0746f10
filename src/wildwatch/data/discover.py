"""Find images in an ImageFolder tree (one sub-folder per class) or in loose paths."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# the one list of photo types wildwatch reads (folder scans, watch-folders) and their media types
# (Camtrap DP's media.fileMediatype); AVIF and HEIC/HEIF through Pillow's plugins
IMAGE_MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".jpe": "image/jpeg", ".png": "image/png",
                     ".bmp": "image/bmp", ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff",
                     ".webp": "image/webp", ".ppm": "image/x-portable-pixmap", ".pgm": "image/x-portable-graymap",
                     ".heic": "image/heic", ".heif": "image/heif", ".avif": "image/avif"}
IMAGE_EXTENSIONS = frozenset(IMAGE_MEDIA_TYPES)


@dataclass(frozen=True)
class Sample:
    """One labelled image: its path relative to the dataset root and its class name."""

    relpath: str
    label: str


def is_image_file(path: Path) -> bool:
    """True when the name ends in a known image extension, whatever its case (.JPG, .Jpeg)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def discover_images(root: str | Path) -> tuple[list[Sample], list[str]]:
    """Walk an ImageFolder tree and return (samples, class names).

    Each direct sub-folder of ``root`` is a class; images are found recursively inside it,
    with any common extension in any case. Hidden files and folders are ignored. Classes are
    sorted by name, as torchvision's ImageFolder does, so indices are stable.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder. Give a folder with one sub-folder per class.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples: list[Sample] = []
    for name in classes:
        for path in sorted((root / name).rglob("*")):
            if any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if path.is_file() and is_image_file(path):
                samples.append(Sample(path.relative_to(root).as_posix(), name))
    classes = [c for c in classes if any(s.label == c for s in samples)]
    if not samples:
        raise FileNotFoundError(
            f"{root}: no images found. Expected one sub-folder per class holding .jpg/.png/... files."
        )
    return samples, classes


def expand_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Yield image files from files and folders (folders searched recursively, sorted).

    A path that does not exist is yielded as is, so the caller reports it as a per-file error.
    """
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for child in sorted(p.rglob("*")):
                if child.is_file() and is_image_file(child):
                    yield child
        else:
            yield p


def fingerprint(root: str | Path, samples: Iterable[Sample]) -> str:
    """A short hash of the file list, labels and sizes: tells whether two runs saw the same data."""
    root = Path(root)
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: s.relpath):
        size = (root / s.relpath).stat().st_size
        h.update(f"{s.relpath}\t{s.label}\t{size}\n".encode())
    return h.hexdigest()[:16]


def ood_images(folder: Path | None) -> list[Path]:
    """The photos under ``folder`` (photos of none of the classes), or none when it is not given."""
    return [] if folder is None else list(expand_paths([folder]))
