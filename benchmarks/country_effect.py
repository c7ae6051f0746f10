"""How often knowing the country changes the answer, on the test split of the bundled model.

    python benchmarks/country_effect.py ../shared/data/endangered11

Each test photo is given a plausible country: one drawn (seeded) from the countries where its
labelled class lives. Prints how many answers change, and accuracy before and after.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from wildwatch.data.splits import split_for_model
from wildwatch.engine.evaluate import collect
from wildwatch.field import Place, range_table
from wildwatch.inference import Predictor, bundled_model_path
from wildwatch.models.files import resolve_model_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", type=Path, default=bundled_model_path())
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pred = Predictor.from_file(args.model)
    split, _ = split_for_model(resolve_model_path(args.model), pred.meta, args.data)
    samples = split.test
    logits, feats = collect(pred, args.data, samples, desc="test split")
    rng = random.Random(args.seed)
    table = range_table()
    places = [Place(country=rng.choice(sorted(table[s.label]["countries"]))) for s in samples]
    before = pred.from_outputs([s.relpath for s in samples], logits, feats)
    after = pred.from_outputs([s.relpath for s in samples], logits, feats, places)
    truth = [s.label for s in samples]

    def top(p):
        return p.top_k[0]["species"]

    acc_b = np.mean([top(p) == t for p, t in zip(before, truth)])
    acc_a = np.mean([top(p) == t for p, t in zip(after, truth)])
    changed = sum(top(a) != top(b) for a, b in zip(after, before))
    fixed = sum(top(a) == t != top(b) for a, b, t in zip(after, before, truth))
    broken = sum(top(b) == t != top(a) for a, b, t in zip(after, before, truth))
    flagged = sum(p.out_of_range for p in after)
    print(f"{len(samples)} test photos, each with a plausible country (seed {args.seed})")
    print(f"out of range before re-ranking: {flagged} ({flagged / len(samples):.1%}); answers changed: {changed} "
          f"(fixed {fixed}, broken {broken})")
    print(f"top-1 accuracy without country {acc_b:.4f}, with country {acc_a:.4f}")


if __name__ == "__main__":
    main()
