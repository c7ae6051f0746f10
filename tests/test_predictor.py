"""The Predictor in two parts: a pure post-processing step and a file pipeline, each built complete."""

import dataclasses
import random

import numpy as np
import pytest
from conftest import draw_shape
from PIL import Image

from wildwatch.field import Place
from wildwatch.inference.postprocess import PostProcess
from wildwatch.inference.predictor import Predictor
from wildwatch.models.decision import Decision, Outputs

CLASSES = ("lion", "panda", "rhino")


def test_post_processing_is_pure_and_needs_no_model():
    answers = PostProcess(CLASSES, Decision(CLASSES, unknown_threshold=0.0), top_k=2, country="ke")
    out = Outputs(np.array([[8.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 9.0, 0.0]]), np.array([-3.0, -3.0, 2.0]))
    first = answers(["a", "b", "c"], out, [Place("TZ", 1.0, 36.0), None, None])
    assert first == answers(["a", "b", "c"], out, [Place("TZ", 1.0, 36.0), None, None])  # no state kept
    lion, unsure, unknown = first
    assert lion.species == "lion" and lion.country == "KE" and lion.latitude == 1.0 and len(lion.top_k) == 2
    assert lion.iucn_status and lion.common_name == "Lion"
    assert unsure.uncertain and len(unsure.candidates) == 2 and " or " in unsure.common_name
    assert unknown.unknown and unknown.species == "unknown" and unknown.unknown_score > 1


def test_a_predictor_is_built_complete_and_never_changes(tmp_path):
    pred = Predictor.from_file(None, top_k=1, country="ke", use_exif=False)
    assert pred.runner is not None and pred.pipeline.runner is pred.runner
    assert pred.answers.country == "ke" and pred.answers.top_k == 1 and not pred.pipeline.use_exif
    photo = draw_shape("red_circles", random.Random(2), 300)
    photo.save(tmp_path / "a.jpg")
    [p] = list(pred.predict_paths([tmp_path]))
    assert p.country == "KE" and len(p.top_k) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        pred.country = "TZ"  # what callers did before; now refused
    other = dataclasses.replace(pred, country="TZ", top_k=2)  # another predictor, the same model and runner
    assert other.runner is pred.runner and other.torch_model is pred.torch_model
    [q] = other.predict_images([Image.open(tmp_path / "a.jpg")])
    assert q.country == "TZ" and len(q.top_k) == 2 and pred.answers.country == "ke"


def test_classify_finds_the_files_once(tmp_path, monkeypatch):
    from wildwatch.data import discover
    from wildwatch.inference import pipeline
    from wildwatch.inference.batch import ClassifyOptions, classify_files

    for i in range(3):
        draw_shape("green_squares", random.Random(i), 200).save(tmp_path / f"{i}.jpg")
    calls = []
    original = discover.expand_paths

    def counting(paths):
        calls.append(1)
        return original(paths)

    monkeypatch.setattr(discover, "expand_paths", counting)
    monkeypatch.setattr(pipeline, "expand_paths", counting)
    seen = []
    summary = classify_files(ClassifyOptions(paths=[tmp_path]), seen.append)
    assert summary.files == 3 and len(seen) == 3 and len(calls) == 1
