"""Fixtures that make their own images: no downloads, no real photos unless a test asks for them."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# Exported ONNX files go to a fresh folder for the test session (subprocesses inherit it).
os.environ["WILDWATCH_CACHE"] = tempfile.mkdtemp(prefix="wildwatch-test-cache-")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_DATA = Path(os.environ.get("WILDWATCH_DATA", SHARED_DATA / "endangered11"))
OOD_DATA = Path(os.environ.get("WILDWATCH_OOD", SHARED_DATA / "ood_dev"))

COLOURS = {"red_circles": (220, 40, 40), "green_squares": (40, 200, 60), "blue_triangles": (40, 70, 220)}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """The app on a real HTTP server (uvicorn) on loopback, in a thread: yields its address."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def smtp_catcher():
    """A real SMTP server (aiosmtpd) on loopback: yields (its port, the envelopes it received)."""
    from aiosmtpd.controller import Controller

    got: list = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            got.append(envelope)
            return "250 OK"

    port = free_port()
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port)
    ctl.start()
    try:
        yield port, got
    finally:
        ctl.stop()


def csv_rows(path: str | Path, header: bool = True) -> list:
    """The rows of a CSV file: dicts by the header, or lists of values with ``header=False``."""
    with open(path) as f:
        return list(csv.DictReader(f)) if header else list(csv.reader(f))


def draw_shape(label: str, rng: random.Random, size: int = 48) -> Image.Image:
    """A noisy background with one coloured shape whose kind and colour give the class."""
    bg = np.clip(np.random.default_rng(rng.randrange(2**31)).normal(128, 30, (size, size, 3)), 0, 255)
    img = Image.fromarray(bg.astype(np.uint8))
    d = ImageDraw.Draw(img)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    colour = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in COLOURS[label])
    if label == "red_circles":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif label == "green_squares":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return img


def smooth_photo(seed: int = 0, size: int = 96) -> np.ndarray:
    """A smooth image with edges (noise alone would hide blur)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    a = np.stack([128 + 100 * np.sin(6 * xx + c) * np.cos(4 * yy) for c in range(3)], -1)
    a[size // 3: 2 * size // 3, size // 4: size // 2] = rng.integers(0, 255, 3)
    a[: size // 2, size // 2:] += 60 * ((np.arange(size // 2) // 3) % 2)[:, None, None]  # fine stripes
    return np.clip(a, 0, 255).astype(np.uint8)


def make_shapes_folder(root: Path, per_class: int = 30, seed: int = 0, size: int = 48, duplicates: int = 0) -> Path:
    """An ImageFolder tree of synthetic shapes; ``duplicates`` near-copies (mirrored, re-saved) per class."""
    rng = random.Random(seed)
    for label in COLOURS:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_shape(label, rng, size).save(folder / f"img{i:03d}.jpg", quality=92)
        for i in range(duplicates):
            src = Image.open(folder / f"img{i:03d}.jpg")
            src.transpose(Image.FLIP_LEFT_RIGHT).save(folder / f"img{i:03d}_mirror.jpg", quality=80)
    return root


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    return make_shapes_folder(tmp_path_factory.mktemp("shapes"), per_class=40, duplicates=5)


@pytest.fixture()
def broken_dir(tmp_path) -> Path:
    """One good photo and every kind of broken or odd file a camera card or a scrape can hold."""
    d = tmp_path / "broken"
    d.mkdir()
    rng = random.Random(1)
    draw_shape("red_circles", rng, 64).save(d / "good.jpg")
    (d / "empty.jpg").write_bytes(b"")
    good = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (d / "text.jpg").write_text("this is not an image")
    draw_shape("green_squares", rng, 64).convert("CMYK").save(d / "cmyk.jpg")
    arr = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(arr).save(d / "sixteen_bit.png")
    return d


def write_near_duplicates_csv(root: Path, groups: list[list[str]]) -> None:
    with open(root / "near_duplicates.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group_id", "path", "class"])
        for gid, members in enumerate(groups):
            for m in members:
                w.writerow([gid, f"prefix/{m}", m.split("/")[0]])


CAMTRAP_DP = SHARED_DATA.parent / "standards" / "camtrap-dp-1.0.2"


def camtrap_dp_errors(folder: Path) -> list[str]:
    """A package checked as the standard checks it, offline: datapackage.json against the official
    Camtrap DP 1.0.2 profile (JSON Schema, its GeoJSON reference resolved to the local copy; the
    generic Data Package part is checked by frictionless below), and each table against the
    official table schema its resource names (local copies), with types, formats, constraints,
    primary and foreign keys, by frictionless."""
    import json

    from frictionless import Package
    from jsonschema import Draft4Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    pkg = json.loads((folder / "datapackage.json").read_text())
    profile = json.loads((CAMTRAP_DP / "camtrap-dp-profile.json").read_text())
    registry = Registry().with_resources([
        ("http://json.schemastore.org/geojson.json",
         Resource.from_contents(json.loads((CAMTRAP_DP / "geojson.json").read_text()), default_specification=DRAFT4)),
        ("https://specs.frictionlessdata.io/schemas/data-package.json",
         Resource.from_contents({}, default_specification=DRAFT4))])
    errors = [f"profile: {'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in Draft4Validator(profile, registry=registry).iter_errors(pkg)]
    local = {k: v for k, v in pkg.items() if k != "profile"}  # URLs: never fetched in tests
    local["resources"] = []
    for r in pkg["resources"]:
        r = dict(r)
        if isinstance(r.get("schema"), str):
            name = r["schema"].rsplit("/", 1)[-1]
            errors += [] if r["schema"].startswith("https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0.2/") else [
                f"{r['name']}: schema {r['schema']} is not a Camtrap DP 1.0.2 table schema"]
            r["schema"] = json.loads((CAMTRAP_DP / name).read_text())
        local["resources"].append(r)
    report = Package(local, basepath=str(folder)).validate()
    errors += [f"{row[0]}: {row[1]} {row[2]} {row[3]}"
               for row in report.flatten(["rowNumber", "fieldName", "type", "note"])]
    return errors
