"""The species/unknown decision (wildwatch.models.decision): one test per rule, then fitting and the network."""

import numpy as np
import pytest

from wildwatch.models.decision import (
    Decision,
    Outputs,
    absorbed_mask,
    contradicted,
    extended_score,
    fit_decision,
    looks_like,
)
from wildwatch.models.imagenet import imagenet_classes, imagenet_index

CLASSES = ("african_elephant", "amur_leopard", "arctic_fox", "cheetahs", "chimpanzee", "jaguars", "lion",
           "orangutan", "panda", "panthers", "rhino")
ABSORBED = absorbed_mask(CLASSES)


def imagenet(spec: dict[str, float]) -> np.ndarray:
    """ImageNet logits: the named classes at their value, every other class at 0."""
    z = np.zeros(1000)
    z[imagenet_index(list(spec))] = list(spec.values())
    return z


def species(spec: dict[str, float], rest: float = -5.0) -> np.ndarray:
    s = np.full(len(CLASSES), rest)
    for c, v in spec.items():
        s[CLASSES.index(c)] = v
    return s


def outputs(logits: list, nets: list | None = None) -> Outputs:
    """Outputs as a backbone gives them: the open-set score is computed from both logits, as the network does."""
    s = np.stack(logits)
    z = np.stack(nets) if nets is not None else np.zeros((len(s), 1000))
    return Outputs(s, extended_score(s, z, ABSORBED), z)


DECISION = Decision(CLASSES, unknown_threshold=0.0, temperature=1.0)


# ---- one test per rule ------------------------------------------------------------------------

def test_rule_1_above_the_threshold_is_unknown_and_says_what_it_looks_like():
    # the species head prefers lion, but ImageNet is far surer of a tiger than of any species
    [v] = DECISION.decide(outputs([species({"lion": 6.0})], [imagenet({"tiger": 14.0, "lion": 5.0})]))
    assert v.kind == "unknown" and v.looks_like == "tiger" and v.looks_like_kind == "animal" and v.confidence is None


def test_rule_1_an_unknown_never_looks_like_one_of_the_species():
    # ImageNet's own "lion" and "leopard" are the species: they are left out of what it looks like
    [v] = DECISION.decide(outputs([species({"lion": 1.0})], [imagenet({"lion": 20.0, "leopard": 19.0, "lynx": 12.0})]))
    assert v.kind == "unknown" and v.looks_like == "lynx"
    [v] = DECISION.decide(outputs([species({"lion": 1.0})], [imagenet({"lion": 20.0})]))
    assert v.kind == "unknown" and v.looks_like not in ("lion", "leopard") and v.looks_like == ""


def test_rule_2_a_network_without_an_open_set_score_never_says_unknown():
    d = Decision(CLASSES, unknown_threshold=None)
    [v] = d.decide(Outputs(np.stack([species({"lion": 9.0})])))
    assert v.kind == "species" and CLASSES[v.top] == "lion"


def test_rule_3_below_the_confidence_line_the_answer_is_uncertain_between_the_top_two():
    [v] = DECISION.decide(outputs([species({"amur_leopard": 12.0, "jaguars": 11.8})]))
    assert v.kind == "uncertain" and [CLASSES[j] for j in v.candidates] == ["amur_leopard", "jaguars"]
    assert v.confidence == pytest.approx(1 / (1 + np.exp(-0.2)), abs=0.01)


def test_rule_4_outside_the_range_and_not_sure_enough_is_uncertain_with_a_local_species():
    # a "jaguar" photographed in India: jaguars do not live there, leopards do
    [v] = DECISION.decide(outputs([species({"jaguars": 12.0, "amur_leopard": 10.5})]), ["IN"])
    assert v.kind == "uncertain" and v.out_of_range
    assert [CLASSES[j] for j in v.candidates] == ["jaguars", "amur_leopard"] and "IN" in v.note


def test_rule_4_a_very_sure_photo_outside_the_range_stands_flagged_as_captive_or_traded():
    [v] = DECISION.decide(outputs([species({"jaguars": 15.0})]), ["IN"])
    assert v.kind == "species" and CLASSES[v.top] == "jaguars" and v.out_of_range and "captive or traded" in v.note
    assert v.confidence >= DECISION.range_sure


def test_rule_5_otherwise_the_species_with_its_confidence():
    [v] = DECISION.decide(outputs([species({"rhino": 12.0})]), ["KE"])
    assert v.kind == "species" and CLASSES[v.top] == "rhino" and not v.out_of_range and v.confidence > 0.99


# ---- what an unknown photo looks like ----------------------------------------------------------

def test_looks_like_uses_plain_names_groups_dog_breeds_and_sees_people_in_their_clothes():
    rows = np.stack([imagenet({"lesser panda": 9.0}), imagenet({"ice bear": 9.0}),
                     imagenet({"Great Pyrenees": 5.0, "kuvasz": 5.0, "Samoyed": 5.0, "Old English sheepdog": 5.0}),
                     imagenet({"suit": 6.0, "Windsor tie": 6.0, "jersey": 6.0, "Great Pyrenees": 6.5}),
                     imagenet({"valley": 9.0}), imagenet({"pickup": 9.0}), imagenet({"toaster": 1.0})])
    assert looks_like(rows, ABSORBED) == [("red panda", "animal"), ("polar bear", "animal"), ("dog", "animal"),
                                          ("", "person"), ("valley", "scene"), ("pickup truck", "vehicle"),
                                          ("", "object")]


def test_descriptions_say_what_an_unknown_photo_looks_like_and_name_both_when_uncertain():
    from wildwatch.inference.prediction import Prediction, describe_other

    tiger = Prediction("t.jpg", "unknown", unknown=True, looks_like="tiger", looks_like_kind="animal")
    person = Prediction("p.jpg", "unknown", unknown=True, looks_like="", looks_like_kind="person")
    scene = Prediction("s.jpg", "unknown", unknown=True, looks_like="valley", looks_like_kind="scene")
    assert tiger.describe() == "Not one of the 11 species — looks like a tiger"
    assert person.describe() == "Not one of the 11 species — a person?"
    assert scene.describe() == "Not one of the 11 species — no animal seen (valley)"
    assert describe_other("pickup truck", "vehicle") == "a vehicle (pickup truck)"
    both = Prediction("l.jpg", "uncertain", 0.55, common_name="Leopard or Jaguar", uncertain=True,
                      candidates=("amur_leopard", "jaguars"))
    assert both.describe().startswith("Leopard or Jaguar?") and not both.named and tiger.to_json()["confidence"] is None
    assert both.to_row()["candidates"] == "amur_leopard,jaguars" and tiger.to_json()["top_k"] == []


# ---- label cleaning ---------------------------------------------------------------------------

def test_confident_lookalikes_and_toys_contradict_the_folder_label():
    def q_of(spec):
        q = np.full(1000, (1 - sum(spec.values())) / (1000 - len(spec)))
        q[imagenet_index(list(spec))] = list(spec.values())
        return q

    rows = [({"leopard": 0.9}, "jaguars"), ({"jaguar": 0.9}, "jaguars"), ({"lesser panda": 0.8}, "panda"),
            ({"teddy": 0.7}, "panda"), ({"leopard": 0.4, "jaguar": 0.3}, "jaguars"), ({"hippopotamus": 0.5}, "rhino"),
            ({"ice bear": 0.95}, "arctic_fox"), ({"giant panda": 0.99}, "panda"), ({"hippopotamus": 0.9}, "rhino"),
            ({"jaguar": 0.9}, "panthers")]
    q = np.stack([q_of(s) for s, _ in rows])
    labels = np.array([CLASSES.index(c) for _, c in rows])
    assert contradicted(q, labels, CLASSES).tolist() == [True, False, True, True, False, False, True, False, True, False]


def test_imagenet_classes_have_names_and_kinds():
    kind = dict(imagenet_classes())
    assert len(kind) == 1000 and kind["tiger"] == "animal" and kind["pickup"] == "vehicle" and kind["suit"] == "person"
    with pytest.raises(KeyError, match="not ImageNet"):
        imagenet_index(["snow lion"])


# ---- fitting ----------------------------------------------------------------------------------

def _photos(rng, n: int, sure: float, other: bool) -> Outputs:
    """Species photos: one species well ahead; other photos: ImageNet ahead of every species."""
    s = rng.normal(0, 1, (n, len(CLASSES)))
    labels = rng.integers(0, len(CLASSES), n)
    s[np.arange(n), labels] += sure
    z = rng.normal(0, 1, (n, 1000))
    z[:, imagenet_index(["tiger"])[0]] += 12.0 if other else 0.0
    return Outputs(s, extended_score(s, z, ABSORBED), z), labels


def test_the_fitted_threshold_rejects_the_share_asked_for_and_the_confidence_means_what_it_says():
    rng = np.random.default_rng(0)
    (known, labels), (other, _) = _photos(rng, 3000, 4.0, False), _photos(rng, 600, 4.0, True)
    d = fit_decision(CLASSES, known, labels, other, known_rejected=0.03, fitted_on="synthetic")
    assert d.calibration is not None and len(d.calibration) == 4 and d.fitted_on == "synthetic"
    verdicts = d.decide(known)
    assert abs(np.mean([v.kind == "unknown" for v in verdicts]) - 0.03) < 0.01
    assert np.mean([v.kind == "unknown" for v in d.decide(other)]) > 0.9
    # on fresh photos of the same kind, answers given with about 80% confidence are right about 80% of the time
    fresh, y = _photos(np.random.default_rng(1), 20000, 4.0, False)
    answered = [(v.confidence, v.top == t) for v, t in zip(d.decide(fresh), y) if v.kind != "unknown"]
    conf, right = np.array(answered).T
    band = (conf > 0.7) & (conf < 0.9)
    assert band.sum() > 100 and abs(right[band].mean() - conf[band].mean()) < 0.05


def test_without_other_photos_the_decision_has_no_calibration_and_keeps_the_temperature():
    rng = np.random.default_rng(2)
    known, labels = _photos(rng, 500, 3.0, False)
    d = fit_decision(CLASSES, known, labels)
    d3 = fit_decision(CLASSES, Outputs(known.logits * 3, known.unknown, known.imagenet), labels)
    assert d.calibration is None and d3.temperature == pytest.approx(3 * d.temperature, rel=0.02)


def test_the_decision_round_trips_through_the_model_metadata():
    d = Decision(CLASSES, 1.25, 1.7, (0.5, 0.3, -0.2, 1.0), 0.55, 0.92, "dev half")
    meta = {"classes": list(CLASSES), "decision": d.to_meta()}
    assert Decision.from_meta(meta) == d
    assert Decision.from_meta({"classes": ["a", "b"], "temperature": 2.0}) == Decision(("a", "b"), None, 2.0)


# ---- the network computes the same score -------------------------------------------------------

def test_the_network_open_set_output_is_the_extended_score():
    import torch

    from wildwatch.models import create_model

    absorbed = np.where(ABSORBED)[0].tolist()
    model = create_model("effnet_lite0", len(CLASSES), pretrained=False, absorbed=absorbed).eval()
    with torch.no_grad():
        logits, unknown, z = model.predict_outputs(torch.randn(2, 3, 64, 64))
    assert np.allclose(unknown.numpy(), extended_score(logits.numpy(), z.numpy(), ABSORBED), atol=1e-4)
