"""The open-set decision: ImageNet evidence against the chosen class, label cleaning, what a photo looks like."""

import json

import numpy as np
import pytest
from PIL import Image

from wildwatch.models.imagenet import (GROUP, ImageNetHead, dequantise_head, imagenet_classes, imagenet_index,
                                       quantise_head)
from wildwatch.models.open_set import OpenSet, contradicted, fit_open_set, looks_like

CLASSES = ["african_elephant", "amur_leopard", "arctic_fox", "cheetahs", "chimpanzee", "jaguars", "lion",
           "orangutan", "panda", "panthers", "rhino"]


def q_of(spec: dict[str, float], rng=None) -> np.ndarray:
    """An ImageNet probability row: the named classes get their share, the rest spreads over the others."""
    q = np.ones(1000) if rng is None else rng.random(1000)
    idx = imagenet_index(list(spec))
    q[idx] = 0
    q *= (1 - sum(spec.values())) / q.sum()
    q[idx] = list(spec.values())
    return q


def test_imagenet_classes_have_names_and_kinds():
    names = imagenet_classes()
    assert len(names) == 1000
    kind = dict(names)
    assert kind["tiger"] == "animal" and kind["lesser panda"] == "animal" and kind["ice bear"] == "animal"
    assert kind["pickup"] == "vehicle" and kind["valley"] == "scene" and kind["suit"] == "person"
    assert kind["toaster"] == "object"
    with pytest.raises(KeyError, match="not ImageNet"):
        imagenet_index(["snow lion"])


def test_4_bit_head_stays_within_half_a_step_of_the_float_weights():
    rng = np.random.default_rng(0)
    w, b = rng.normal(0, 0.05, (20, 4 * GROUP)).astype(np.float32), rng.normal(0, 1, 20).astype(np.float32)
    stored = quantise_head(w, b)
    assert stored["imagenet_weight_q4"].nbytes == w.size // 2  # two weights per byte
    w2, b2 = dequantise_head({k: v.astype(np.float32) for k, v in stored.items()})  # as load_extras gives them
    step = np.repeat(stored["imagenet_weight_scale"].astype(np.float32), GROUP, axis=1)
    assert np.all(np.abs(w2 - w) <= step / 2 + 1e-6)
    assert np.allclose(b2, b, atol=1e-2)
    f = rng.random((5, 4 * GROUP)).astype(np.float32)
    p, p2 = ImageNetHead(w, b)(f), ImageNetHead(w2, b2)(f)
    assert np.allclose(p.sum(1), 1) and (p.argmax(1) == p2.argmax(1)).mean() >= 0.8
    with pytest.raises(ValueError, match="groups"):
        quantise_head(np.zeros((3, GROUP + 2)), np.zeros(3))


def test_confident_lookalikes_and_toys_contradict_the_folder_label():
    rows = [({"leopard": 0.9}, "jaguars"), ({"jaguar": 0.9}, "jaguars"), ({"lesser panda": 0.8}, "panda"),
            ({"teddy": 0.7}, "panda"), ({"leopard": 0.4, "jaguar": 0.3}, "jaguars"), ({"hippopotamus": 0.5}, "rhino"),
            ({"ice bear": 0.95}, "arctic_fox"), ({"giant panda": 0.99}, "panda"), ({"hippopotamus": 0.9}, "rhino"),
            ({"jaguar": 0.9}, "panthers")]
    q = np.stack([q_of(s) for s, _ in rows])
    labels = np.array([CLASSES.index(c) for _, c in rows])
    assert contradicted(q, labels, CLASSES).tolist() == [True, False, True, True, False, False, True, False, True, False]


def _training_q(rng):
    """Training photos: lions as ImageNet sees them, rhinos spread over ImageNet's stand-ins."""
    q, y = [], []
    for _ in range(200):
        q.append(q_of({"lion": rng.uniform(0.6, 0.99), "cougar": rng.uniform(0, 0.1)}, rng))
        y.append(CLASSES.index("lion"))
        hippo = rng.uniform(0.0, 0.8)
        q.append(q_of({"hippopotamus": hippo, "triceratops": (1 - hippo) * 0.6, "warthog": (1 - hippo) * 0.3}, rng))
        y.append(CLASSES.index("rhino"))
    return np.stack(q), np.array(y)


def test_foreign_evidence_rejects_a_tiger_called_lion_and_keeps_real_lions():
    rng = np.random.default_rng(1)
    q, y = _training_q(rng)
    rule = OpenSet(*fit_open_set(q, y, CLASSES).values())
    lion, rhino = CLASSES.index("lion"), CLASSES.index("rhino")
    tiger = q_of({"tiger": 0.8, "lion": 0.1})
    real = q_of({"lion": 0.9})
    foreign, lack = rule.scores(np.stack([tiger, real]), np.array([lion, lion]))
    assert foreign[0] > 1 and foreign[1] < 1 and lack[1] < 1
    # rhinos often look like hippos to ImageNet: the usual hippo share is no evidence, a sure hippo is
    hippo_ok, hippo_sure = q_of({"hippopotamus": 0.6, "triceratops": 0.3}), q_of({"hippopotamus": 0.99})
    foreign, _ = rule.scores(np.stack([hippo_ok, hippo_sure]), np.array([rhino, rhino]))
    assert foreign[0] < 1 < foreign[1]
    # a photo with little mass on what lions look like lacks support (an ocelot the head calls a lion)
    _, lack = rule.scores(q_of({"Egyptian cat": 0.3, "tabby": 0.3, "lion": 0.05})[None], np.array([lion]))
    assert lack[0] > 1
    # fitted on these photos, at most about 1% of them are rejected
    scores = np.maximum(*rule.scores(q, y))
    assert (scores > 1).mean() <= 0.03


def test_looks_like_names_the_class_or_the_kind():
    q = np.stack([q_of({"tiger": 0.7}), q_of({"suit": 0.1, "Windsor tie": 0.1, "jersey": 0.1, "bow tie": 0.1}),
                  q_of({"alp": 0.5})])
    assert looks_like(q) == [("tiger", "animal", pytest.approx(0.7, abs=0.01)), ("", "person", pytest.approx(0.1, abs=0.01)),
                             ("alp", "scene", pytest.approx(0.5, abs=0.01))]


def test_descriptions_say_what_an_unknown_photo_looks_like():
    from wildwatch.inference.predictor import Prediction, describe_other

    tiger = Prediction("t.jpg", "unknown", unknown=True, looks_like="tiger", looks_like_kind="animal")
    person = Prediction("p.jpg", "unknown", unknown=True, looks_like="", looks_like_kind="person")
    scene = Prediction("s.jpg", "unknown", unknown=True, looks_like="valley", looks_like_kind="scene")
    assert tiger.describe() == "Not one of the 11 species — looks like a tiger"
    assert person.describe() == "Not one of the 11 species — a person?"
    assert scene.describe() == "Not one of the 11 species — no animal seen (valley)"
    assert "Unknown animal" not in person.describe() + scene.describe()
    assert describe_other("pickup", "vehicle") == "a vehicle (pickup)" and describe_other("", "animal")


def test_bundled_model_says_what_a_photo_called_lion_by_the_head_looks_like():
    from wildwatch.inference.predictor import Predictor

    pred = Predictor.from_file(None, backend="onnx-int8")
    head, _ = pred.open_set
    tiger = imagenet_index(["tiger"])[0]
    feats = np.maximum(head.wt[:, tiger], 0)[None] * 40  # features the ImageNet classifier reads as a tiger
    assert head(feats)[0].argmax() == tiger
    logits = np.full((1, 11), -4.0)
    logits[0, CLASSES.index("lion")] = 6.0  # the 11-class head is sure it is a lion
    [p] = pred.from_outputs(["tiger.jpg"], logits, feats)
    assert p.unknown and p.species == "unknown" and p.looks_like == "tiger" and p.looks_like_kind == "animal"
    assert p.describe() == "Not one of the 11 species — looks like a tiger"
    assert p.unknown_score > 1 and p.to_row()["looks_like"] == "tiger"


def test_training_cleans_labels_adds_the_int8_view_and_stores_the_open_set_decision(tmp_path):
    from conftest import make_shapes_folder

    from wildwatch.config import TrainConfig
    from wildwatch.models.files import load_extras, read_model_meta
    from wildwatch.engine.fit import fit
    from wildwatch.inference.predictor import Predictor

    data = make_shapes_folder(tmp_path / "shapes", per_class=12)
    out = tmp_path / "run"
    fit(TrainConfig(data=data, model="effnet_lite0", out=out, epochs=1, views=1, degrade_views=0,
                             batch_size=16), progress=False)
    cache = out / "cache"
    int8, fp32 = np.load(cache / "train_int8.npy"), np.load(cache / "train_eval.npy")
    assert int8.shape == fp32.shape and not np.array_equal(int8, fp32)
    assert np.corrcoef(int8.ravel().astype(np.float32), fp32.ravel().astype(np.float32))[0, 1] > 0.9
    cleaning = json.loads((out / "label_cleaning.json").read_text())
    assert cleaning["kept"] + cleaning["left_out"] == len(np.load(cache / "train_eval.npy"))
    assert (out / "label_cleaning.csv").read_text().startswith("path,label,imagenet_class")
    extras = load_extras(out / "model.safetensors")
    assert extras["imagenet_weight_q4"].shape == (1000, 640) and extras["openset_foreign"].shape[1] == 1000
    meta = read_model_meta(out / "model.safetensors")
    assert meta["recipe"]["clean_labels"] and meta["recipe"]["int8_view"]
    assert "open_set_rejected_known_test" in meta["metrics"]
    pred = Predictor.from_file(out, backend="torch")
    [p] = pred.predict_images([Image.new("RGB", (200, 200), (128, 128, 128))])
    assert pred.open_set is not None and (not p.unknown or p.looks_like_kind in ("animal", "person", "vehicle",
                                                                                  "scene", "object"))
