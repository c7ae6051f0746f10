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


def test_a_species_list_turns_answers_off_it_into_unknown_saying_which():
    decision = Decision(CLASSES, unknown_threshold=0.0)
    listed, everything = PostProcess(CLASSES, decision, species_list=frozenset({"rhino"})), PostProcess(CLASSES, decision)
    # a confident lion, lion or panda, lion or rhino, a confident rhino, and none of the species
    logits = np.array([[8.0, 0, 0], [2.0, 1.9, -5], [2.0, -5, 1.9], [0, 0, 9.0], [0, 9.0, 0]])
    out = Outputs(logits, np.array([-3.0, -3.0, -3.0, -3.0, 2.0]))
    plain = everything(list("abcde"), out)
    assert [p.species for p in plain] == ["lion", "uncertain", "uncertain", "rhino", "unknown"]
    lion, lion_or_panda, lion_or_rhino, rhino, unknown = listed(list("abcde"), out)
    assert lion.unknown and not lion.named and lion.species == "unknown" and lion.off_list == "lion"
    assert lion.looks_like == "" and lion.describe() == "Not on the species list — Lion"
    assert lion.to_json()["confidence"] is None and lion.to_json()["top_k"] == []
    assert lion_or_panda.unknown and lion_or_panda.off_list == "lion|panda" and not lion_or_panda.uncertain
    # an answer between two species stays uncertain while one of the two is on the list
    assert lion_or_rhino == plain[2] and not lion_or_rhino.off_list
    assert rhino == plain[3] and rhino.named
    assert unknown == plain[4] and not unknown.off_list  # none of the species: as without a list


def test_a_species_list_must_name_the_models_classes():
    from wildwatch.errors import UsageError

    with pytest.raises(UsageError, match="rhinos not among the model's classes"):
        Predictor.from_file(None, species_list=frozenset({"rhinos", "lion"}))
    assert Predictor.from_file(None, species_list=frozenset({"lion"})).answers.species_list == {"lion"}


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
