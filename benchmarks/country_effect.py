"""How often knowing the country changes the answer, on the test split of the bundled model.

    python benchmarks/country_effect.py ../shared/data/endangered11

Each test photo is given a plausible country: one drawn (seeded) from the countries where its
labelled class lives. Prints the answers named right, named wrong and uncertain without and with the
country (outside a species' range, a photo-only answer below the decision's ``range_sure`` becomes
uncertain between it and the most likely species that lives there).
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
    outputs = collect(pred, args.data, samples, desc="test split")
    rng = random.Random(args.seed)
    table = range_table()
    places = [Place(country=rng.choice(sorted(table[s.label]["countries"]))) for s in samples]
    truth = [s.label for s in samples]
    print(f"{len(samples)} test photos, each with a plausible country (seed {args.seed})")
    for name, where in (("without a country", None), ("with the country", places)):
        preds = pred.from_outputs([s.relpath for s in samples], outputs, where)
        right = np.mean([p.named and p.species == t for p, t in zip(preds, truth)])
        wrong = np.mean([p.named and p.species != t for p, t in zip(preds, truth)])
        uncertain = np.mean([p.uncertain for p in preds])
        out = sum(p.out_of_range for p in preds)
        print(f"{name:18s} named right {right:.4f}, named wrong {wrong:.4f}, uncertain {uncertain:.4f}, "
              f"out of range {out}")


if __name__ == "__main__":
    main()
