"""The open-set decision: ImageNet evidence against the chosen class, label cleaning, what a photo looks like."""

import json

import numpy as np
import pytest
from PIL import Image

from wildwatch.models.imagenet import (
    GROUP,
    ImageNetHead,
    dequantise_head,
    imagenet_classes,
    imagenet_index,
    quantise_head,
)
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
    from wildwatch.engine.fit import fit
    from wildwatch.inference.predictor import Predictor
    from wildwatch.models.files import load_extras, read_model_meta

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


def test_the_learned_decision_separates_other_photos_and_rejects_its_share_of_known_ones():
    from wildwatch.models.open_set import combiner_scores, fit_combiner

    rng = np.random.default_rng(0)
    known = rng.normal(0, 1, (400, 11))
    other = rng.normal(0, 1, (120, 11))
    other[:, 0] += 3.0  # far from the training photos (log Mahalanobis / threshold)
    other[:, 1] += 1.5  # and some foreign evidence
    fit = fit_combiner(known, other, known_rejected=0.05)
    w, t = fit["openset_combiner"], float(fit["openset_combiner_threshold"][0])
    assert w.shape == (12,) and w[0] > 0 and w[1] > 0 and abs(w[0]) > abs(w[5:11]).max()
    s_known, s_other = combiner_scores(known, w, t), combiner_scores(other, w, t)
    assert abs((s_known > 1).mean() - 0.05) < 0.01  # the share asked for, on the photos it was fitted on
    assert (s_other > 1).mean() > 0.9
    fresh = rng.normal(0, 1, (2000, 11))
    assert (combiner_scores(fresh, w, t) > 1).mean() < 0.09
    with pytest.raises(ValueError, match="at least 10"):
        fit_combiner(known, other[:5])


def test_hash_halves_alternate_within_each_label_and_ignore_other_folders():
    from wildwatch.data.splits import hash_halves

    files = [f"tiger/{i}.jpg" for i in range(9)] + [f"person/{i}.jpg" for i in range(4)]
    halves = hash_halves(files)
    assert set(halves) == set(files) and set(halves.values()) == {"dev", "held_out"}
    tiger = [halves[f] for f in files if f.startswith("tiger/")]
    assert sorted(tiger).count("dev") == 5 and tiger.count("held_out") == 4
    assert {f: h for f, h in hash_halves(files[:9]).items()} == {f: halves[f] for f in files[:9]}
    assert hash_halves(list(reversed(files))) == halves


def test_training_with_negatives_fits_the_learned_decision_on_one_half(tmp_path):
    import random

    from conftest import make_shapes_folder

    from wildwatch.config import TrainConfig
    from wildwatch.engine.fit import fit
    from wildwatch.errors import UsageError
    from wildwatch.inference.predictor import Predictor
    from wildwatch.models.files import load_extras, read_model_meta

    data = make_shapes_folder(tmp_path / "shapes", per_class=40)
    negatives = tmp_path / "other"
    rng = random.Random(0)
    for label in ("noise", "stripes"):
        (negatives / label).mkdir(parents=True)
        for i in range(11):
            px = bytes(rng.randrange(256) for _ in range(48 * 48 * 3))
            img = Image.frombytes("RGB", (48, 48), px)
            if label == "stripes":
                img = img.point(lambda v: 255 if v > 128 else 0)
            img.save(negatives / label / f"{i}.png")
    out = tmp_path / "run"
    fit(TrainConfig(data=data, model="effnet_lite0", out=out, epochs=1, views=1, degrade_views=0, int8_view=False,
                    batch_size=32, negatives=negatives, negatives_half="dev"), progress=False)
    extras = load_extras(out / "model.safetensors")
    assert extras["openset_combiner"].shape == (12,) and extras["openset_combiner_threshold"].shape == (1,)
    meta = read_model_meta(out / "model.safetensors")
    assert meta["metrics"]["open_set_negatives"] == 12  # 6 of each label's 11: the dev half only
    pred = Predictor.from_file(out, backend="torch")
    rule = pred.open_set[1]
    assert rule.combiner is not None
    # the score a photo gets is the learned decision's, computed from the raw outputs
    img = Image.open(next((data / "red_circles").glob("*.jpg"))).convert("RGB")
    logits, feats = pred.outputs(pred.pixels([img]))
    from wildwatch.models.open_set import combiner_scores

    expected = combiner_scores(pred.combiner_inputs(logits, feats), rule.combiner, rule.combiner_threshold)
    [p] = pred.predict_images([img])
    assert p.unknown_score == pytest.approx(float(expected[0]), rel=1e-4)
    assert p.unknown == (float(expected[0]) > 1)
    with pytest.raises(UsageError, match="--negatives"):
        fit(TrainConfig(data=data, model="seed_m4_gap", out=tmp_path / "seed", epochs=1, negatives=negatives),
            progress=False)
