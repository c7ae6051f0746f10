"""After the network: its outputs for a batch of photos become Predictions. Pure: no I/O, no model.

The decision (``models.decision.Decision.decide``: the temperature, unknown, uncertain between two,
outside the species' range) gives a Verdict per photo; this step adds what people read: the names,
the top-k, the IUCN status (the local one where the country is known), the place and the notes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wildwatch.field import Place, local_status
from wildwatch.inference.prediction import Prediction, off_list_words
from wildwatch.models.decision import Decision, Outputs, Verdict
from wildwatch.species import species_info


@dataclass(frozen=True)
class PostProcess:
    """Outputs → Predictions for one model: its ``classes``, the ``decision`` as its backend runs it,
    how many species each row lists (``top_k``) and, when set, the ISO ``country`` of every photo
    (over what each photo's EXIF GPS says). With a ``species_list`` (``--species``), an answer that
    names only species off the list becomes unknown, with ``off_list`` saying which: an uncertain
    answer stays uncertain when one of its two is on the list."""

    classes: tuple[str, ...]
    decision: Decision
    top_k: int = 3
    country: str | None = None
    species_list: frozenset[str] | None = None

    def __call__(self, sources: Sequence[str], outputs: Outputs,
                 places: Sequence[Place | None] | None = None) -> list[Prediction]:
        """A Prediction per photo of the batch (``places``: each photo's ``field.Place``, where known)."""
        where = [_place(places, i) for i in range(len(sources))]
        if self.country:
            where = [dataclasses.replace(pl, country=self.country.upper(), country_source="given") for pl in where]
        verdicts = self.decision.decide(outputs, [pl.country for pl in where])
        scores = self.unknown_scores(outputs)
        return [self.prediction(src, v, pl, None if scores is None else float(scores[i]))
                for i, (src, v, pl) in enumerate(zip(sources, verdicts, where))]

    def unknown_scores(self, outputs: Outputs) -> np.ndarray | None:
        """The open-set score over the threshold, as a ratio (above 1: unknown); None without one."""
        threshold = self.decision.unknown_threshold
        if outputs.unknown is None or threshold is None:
            return None
        return np.exp(np.clip(np.asarray(outputs.unknown, np.float64) - threshold, -50, 50))

    def prediction(self, src: str, v: Verdict, place: Place, score: float | None) -> Prediction:
        """One row from a verdict: names, status (local where the place is known), place and notes."""
        classes = self.classes
        key = {"unknown": "unknown", "uncertain": "uncertain"}.get(v.kind, classes[v.top])
        info = species_info(key)
        candidates = tuple(classes[j] for j in v.candidates)
        common, status, threatened = info.common_name, info.iucn_status, info.threatened
        if v.kind == "uncertain":
            infos = [species_info(c) for c in candidates]
            common = " or ".join(i.common_name for i in infos)
            status = " or ".join(dict.fromkeys(i.iucn_status for i in infos))
            threatened = any(i.threatened for i in infos)
        off_list = self.off_list(v)
        if off_list:
            return Prediction(src, "unknown", round(float(v.probs.max()), 5), self.top(v.probs),
                              common_name=f"Not on the species list ({off_list_words(off_list)})", unknown=True,
                              unknown_score=None if score is None else round(score, 5), country=place.country,
                              out_of_range=v.out_of_range, latitude=place.latitude, longitude=place.longitude,
                              taken_at=place.taken_at, looks_like_kind="animal", note=v.note or place.warning or "",
                              off_list=off_list)
        local = local_status(key, place.country) if v.kind == "species" else None
        confidence = v.confidence if v.confidence is not None else float(v.probs.max())
        return Prediction(
            src, key, round(float(confidence), 5), self.top(v.probs),
            common, local["status"] if local else status, threatened, v.kind == "unknown",
            None if score is None else round(score, 5), None, place.country, v.out_of_range, (),
            local["population"] if local else "", place.latitude, place.longitude, place.taken_at,
            v.looks_like, v.looks_like_kind, v.note or place.warning or "", v.kind == "uncertain", candidates)

    def off_list(self, v: Verdict) -> str:
        """The species a verdict names ("a|b" for two) when the species list has none of them; else ""."""
        if self.species_list is None or v.kind not in ("species", "uncertain"):
            return ""
        named = [self.classes[j] for j in v.candidates] if v.kind == "uncertain" else [self.classes[v.top]]
        return "" if any(n in self.species_list for n in named) else "|".join(named)

    def top(self, p: np.ndarray) -> tuple[dict, ...]:
        """The ``top_k`` most likely species with their probabilities."""
        order = np.argsort(-p)[: self.top_k]
        return tuple({"species": self.classes[j], "probability": round(float(p[j]), 5)} for j in order)


def _place(places: Sequence[Place | None] | None, i: int) -> Place:
    """Photo ``i``'s place, or an empty one where nothing is known."""
    pl = places[i] if places is not None else None
    return pl if pl is not None else Place()
