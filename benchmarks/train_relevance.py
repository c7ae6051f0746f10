"""Train the media watch's relevance model on the training part of the corpus and write it into
the package (src/wildwatch/resources/relevance_model.npz).

    python benchmarks/train_relevance.py [--extra marks.jsonl ...] [--out PATH]

``--extra``: labelled posts exported from the review queue (``wildwatch events --cases --format
labels``), one JSON object a line with ``text`` and ``label`` (1 reported, 0 not relevant), added
to the training part. The held-out part of the corpus is never read here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from media_corpus.corpus import load

from wildwatch.monitor.relevance import MODEL_FILE, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extra", type=Path, nargs="*", default=[])
    ap.add_argument("--out", type=Path, default=Path(__file__).parents[1] / "src/wildwatch" / MODEL_FILE)
    ap.add_argument("--l2", type=float, default=1e-4)
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args()
    posts = load("train")
    texts, labels = [p.text for p in posts], [p.label for p in posts]
    for path in args.extra:
        for line in path.read_text("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                texts.append(str(row["text"]))
                labels.append(int(row["label"]))
    t0 = time.perf_counter()
    model, report = train(texts, labels, l2=args.l2, epochs=args.epochs,
                          meta={"corpus": "benchmarks/media_corpus (train part)", "extra": [str(p) for p in args.extra]})
    model.save(args.out)
    print(json.dumps(report), f"{time.perf_counter() - t0:.1f} s", f"-> {args.out}")


if __name__ == "__main__":
    main()
