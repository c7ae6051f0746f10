"""Robustness benchmark: the conditions, their determinism, the benchmark run (with resume) and
the degradation used for hardening."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import OOD_DATA, REAL_DATA, make_shapes_folder
from conftest import smooth_photo as photo
from PIL import Image

from wildwatch.robustness import corruptions as C
from wildwatch.robustness.augment import OPS, Degrade


@pytest.fixture(scope="module")
def pastes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pastes")
    for name, colour in (("person", (250, 0, 250)), ("landscape", (0, 0, 250)), ("rock", (250, 250, 0))):
        (root / name).mkdir()
        for i in range(2):
            Image.new("RGB", (60 + 10 * i, 40), colour).save(root / name / f"{i}.png")
    return C.Pastes.from_folder(root)


@pytest.mark.parametrize("name", [*C.IMAGENET_C, *C.CCTV])
def test_each_condition_is_repeatable_and_changes_the_image(name):
    x = photo(0, 224)  # the model's input size: 96 px (low_resolution 1) is a real reduction
    for sev in (1, 5):
        a = C.apply(name, x, sev, C.item_rng(7, name, sev, 0))
        b = C.apply(name, x, sev, C.item_rng(7, name, sev, 0))
        assert a.shape == x.shape and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
        assert np.abs(a.astype(int) - x).mean() > 0.5, f"{name} severity {sev} left the image as it was"


@pytest.mark.parametrize("name", ["gaussian_noise", "defocus_blur", "low_resolution", "night_ir", "heavy_jpeg",
                                  "motion_blur_any", "contrast"])
def test_higher_severity_moves_further_from_the_original(name):
    x = photo(1)
    err = [np.abs(C.apply(name, x, s, C.item_rng(0, name, s, 0)).astype(int) - x).mean() for s in (1, 3, 5)]
    assert err[0] < err[1] < err[2], err


def test_low_resolution_really_loses_detail():
    x = photo(2, 224)
    y = C.low_resolution(x, 1, px=48)
    # what survives is what 48 px can hold: downscaling again loses almost nothing
    again = C.low_resolution(y, 1, px=48)
    assert np.abs(again.astype(int) - y).mean() < np.abs(y.astype(int) - x).mean()


def test_occlusion_covers_the_asked_fraction(pastes):
    x = np.zeros((100, 100, 3), np.uint8)
    for sev, frac in enumerate(C.OCCLUDED_FRACTION, start=1):
        y = C.apply("occlusion_person", x, sev, C.item_rng(0, "occlusion_person", sev, 3), pastes)
        covered = (y == [250, 0, 250]).all(-1).mean()
        assert abs(covered - frac) < 0.03, (sev, covered)
    y = C.apply("occlusion_object", x, 2, C.item_rng(0, "occlusion_object", 2, 0), pastes)
    assert (y == [250, 250, 0]).all(-1).mean() > 0.15


def test_small_in_frame_puts_the_photo_in_a_scene(pastes):
    x = np.full((96, 96, 3), 200, np.uint8)
    y = C.apply("small_in_frame", x, 2, C.item_rng(0, "small_in_frame", 2, 0), pastes)
    animal = (y == 200).all(-1).mean()
    scene = (y == [0, 0, 250]).all(-1).mean()
    assert abs(animal - 1 / 16) < 0.01 and abs(scene - 15 / 16) < 0.01


def test_bad_conditions_are_named():
    x = photo()
    with pytest.raises(ValueError, match="unknown condition 'fogg'"):
        C.apply("fogg", x, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="severity must be one of"):
        C.apply("small_in_frame", x, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="needs paste images"):
        C.apply("occlusion_person", x, 1, np.random.default_rng(0))


def test_pastes_folder_must_have_people_scenery_and_objects(tmp_path):
    (tmp_path / "person").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "person" / "a.png")
    with pytest.raises(FileNotFoundError, match="landscape"):
        C.Pastes.from_folder(tmp_path)


def test_degrade_is_seeded_and_varied():
    img = Image.fromarray(photo(3, 64))
    torch.manual_seed(0)
    a = [np.asarray(Degrade()(img)) for _ in range(6)]
    torch.manual_seed(0)
    b = [np.asarray(Degrade()(img)) for _ in range(6)]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    changed = [np.abs(u.astype(int) - np.asarray(img)).mean() > 1 for u in a]
    assert sum(changed) >= 4
    rng = np.random.default_rng(0)
    for name, op in OPS.items():
        y = op(img, rng)
        assert y.size == img.size and y.mode == "RGB", name


def test_benchmark_runs_resumes_and_reports(tmp_path):
    from wildwatch.robustness.benchmark import run_robustness

    out = tmp_path / "rb"
    names = ["gaussian_noise", "low_resolution", "occlusion_person", "small_in_frame"]
    s = run_robustness(None, REAL_DATA, out, limit_per_class=1, conditions=names, pastes=OOD_DATA, workers=1,
                       progress=False)
    assert s["n"] == 11
    for f in ("results.csv", "results.json", "summary.json", "heatmap.png", "report.html", "cells.jsonl"):
        assert (out / f).stat().st_size > 0, f
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 1 + 5 + 5 + 5 + 2
    assert set(s["families"]) == {"imagenet_c", "cctv", "context"}
    assert 0 <= s["low_resolution_48px"] <= 1 and "animal_at_1_16_of_frame" in s
    assert (out / "examples" / "occlusion_person_3.jpg").exists()
    page = (out / "report.html").read_text()
    assert "occlusion_person" in page and "data:image/png;base64" in page

    # cut the log as an interruption would: the missing cells run again and give the same numbers
    lines = (out / "cells.jsonl").read_text().splitlines()
    (out / "cells.jsonl").write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:20])
    s2 = run_robustness(None, REAL_DATA, out, limit_per_class=1, conditions=names, pastes=OOD_DATA, workers=1,
                        progress=False)
    assert s2["conditions"] == s["conditions"]
    with pytest.raises(FileExistsError, match="other settings"):
        run_robustness(None, REAL_DATA, out, limit_per_class=1, conditions=names, pastes=OOD_DATA, seed=1,
                       workers=1, progress=False)


def test_degraded_views_are_cached_and_used_in_training(tmp_path):
    from wildwatch.config import TrainConfig
    from wildwatch.engine.fit import fit
    from wildwatch.models.files import load_model

    data = make_shapes_folder(tmp_path / "shapes", per_class=12)
    cfg = TrainConfig(data=data, model="effnet_lite0", out=tmp_path / "run", epochs=1, views=1, degrade_views=1,
                      batch_size=16)
    fit(cfg, progress=False)
    cache = tmp_path / "run" / "cache"
    deg, aug = np.load(cache / "train_degraded0.npy"), np.load(cache / "train_aug0.npy")
    assert deg.shape == aug.shape and not np.array_equal(deg, aug)
    _, meta = load_model(tmp_path / "run" / "model.safetensors")
    assert meta["recipe"]["degrade_views"] == 1


def test_tiles_find_a_small_animal_and_keep_confident_answers():
    from wildwatch.inference.predictor import Predictor

    p = Predictor.from_file(None)
    photo = min((REAL_DATA / "lion").iterdir())
    img = Image.open(photo).convert("RGB").resize((120, 120))
    frame = Image.new("RGB", (480, 480), (90, 110, 80))
    frame.paste(img, (300, 60))  # the lion covers 1/16 of the frame
    whole = p.predict_images([frame, img])
    assert whole[0].species != "lion" and whole[1].species == "lion"
    found = p.refine_with_tiles([frame, img], whole, grid=3)
    assert found[0].species == "lion" and found[0].confidence >= 0.6 and not found[0].unknown
    assert found[1] is whole[1]  # a confident whole-image answer is not looked at again
    grey = Image.new("RGB", (400, 300), (128, 128, 128))
    assert p.refine_with_tiles([grey], p.predict_images([grey]), grid=3)[0].species == "unknown"
