"""The media-watch corpus: posts written from published sources (sources.yaml), labelled, in ten
languages, split into a training part and a held-out part.

The split is fixed by position, before any model sees the posts: within each language and label,
every third post (the 3rd, 6th, 9th, ...) is held out. The held-out part is only ever scored, never
trained or tuned on (benchmarks/train_relevance.py reads ``part="train"`` alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).parent
FILES = ("posts_a.yaml", "posts_b.yaml", "posts_c.yaml", "posts_d.yaml")
TRADE_KINDS = ("offer", "request")


@dataclass(frozen=True)
class CorpusPost:
    id: str
    lang: str
    label: int  # 1: offers, seeks or advertises wildlife or its products; 0: only talks about wildlife
    kind: str
    species: str  # the class whose photo goes with the post ("" for none)
    source: str  # URL of the published source it was written from
    text: str
    part: str  # "train" or "heldout"


def load(part: str | None = None) -> list[CorpusPost]:
    sources = yaml.safe_load((HERE / "sources.yaml").read_text("utf-8"))
    out: list[CorpusPost] = []
    for name in FILES:
        for lang, rows in yaml.safe_load((HERE / name).read_text("utf-8")).items():
            seen = {0: 0, 1: 0}
            for label, kind, species, source, text in rows:
                seen[label] += 1
                held = seen[label] % 3 == 0
                if (label == 1) != (kind in TRADE_KINDS):
                    raise ValueError(f"{name}: {lang} post {text[:40]!r}: label {label} with kind {kind}")
                out.append(CorpusPost(f"{lang}-{'t' if label else 'h'}{seen[label]:02d}", lang, int(label), kind,
                                      "" if species == "-" else species, sources[source], text,
                                      "heldout" if held else "train"))
    return [p for p in out if part is None or p.part == part]
