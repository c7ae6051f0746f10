"""What wildwatch says about one photo: a ``Prediction``, the row every output format writes."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from wildwatch.species import species_info


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image. ``error`` is set (and species empty) when it failed."""

    source: str
    species: str = ""
    confidence: float = 0.0
    top_k: tuple[dict, ...] = ()
    common_name: str = ""
    iucn_status: str = ""
    threatened: bool = False
    unknown: bool = False
    unknown_score: float | None = None
    error: str | None = None
    country: str | None = None
    out_of_range: bool = False
    top_k_original: tuple[dict, ...] = ()
    population: str = ""
    latitude: float | None = None
    longitude: float | None = None
    taken_at: str | None = None
    looks_like: str = ""  # when unknown: what the photo looks like instead, in plain words, if it is sure
    looks_like_kind: str = ""  # when unknown: animal, person, vehicle, scene or object
    note: str = ""  # a plain-words remark: out of range, an ignored GPS position
    uncertain: bool = False  # not sure enough to name one species: ``candidates`` names the two it is between
    candidates: tuple[str, ...] = ()
    off_list: str = ""  # with a species list (--species): the species named that is not on it (then unknown)

    @property
    def named(self) -> bool:
        """Whether the answer names one species (not unknown, not uncertain, not failed)."""
        return not (self.error or self.unknown or self.uncertain)

    def describe(self) -> str:
        """One line for people: the species, "leopard or jaguar?", or what the photo shows instead."""
        if self.error:
            return f"error: {self.error}"
        if self.uncertain:
            return f"{self.common_name}? ({self.confidence:.0%} sure of {species_info(self.candidates[0]).common_name})"
        if not self.unknown:
            return f"{self.common_name or self.species} ({self.confidence:.0%})"
        if self.off_list:
            return f"Not on the species list — {off_list_words(self.off_list)}"
        return "Not one of the 11 species — " + describe_other(self.looks_like, self.looks_like_kind)

    def to_json(self) -> dict:
        """The row as JSON values. A photo that could not be classified has its ``error`` and empty
        (null) answers: no confidence of 0.0, no "not unknown", for a photo nobody looked at. An unknown
        photo has no confidence and no top-k: the species' probabilities say nothing about a photo of
        none of them."""
        d = dataclasses.asdict(self)
        d["top_k"] = [dict(t) for t in self.top_k]
        d["top_k_original"] = [dict(t) for t in self.top_k_original]
        d["candidates"] = list(self.candidates)
        if self.error:
            d.update({k: None for k in FAILED_EMPTY})
        elif self.unknown:
            d.update(confidence=None, top_k=[])
        return d

    def to_row(self) -> dict:
        """Flat values for CSV (lists as JSON text)."""
        d = self.to_json()
        d["top_k"] = json.dumps(d["top_k"])
        d["top_k_original"] = json.dumps(d["top_k_original"]) if d["top_k_original"] else ""
        d["candidates"] = ",".join(d["candidates"])
        return d


ROW_FIELDS = [f.name for f in dataclasses.fields(Prediction)]
FAILED_EMPTY = ("confidence", "threatened", "unknown", "out_of_range", "uncertain")  # no answer for a photo that failed


def describe_other(name: str, kind: str) -> str:
    """What a photo of none of the 11 shows, in words: "looks like a tiger", "a person?", "no animal seen"."""
    if kind == "animal":
        return f"looks like {_article(name)}" if name else "an animal it does not know"
    if kind == "person":
        return "a person?"
    if kind == "vehicle":
        return f"a vehicle ({name})" if name else "a vehicle?"
    return f"no animal seen ({name})" if name else "no animal seen"


def off_list_words(off_list: str) -> str:
    """The species a photo was named as, when the run's species list leaves it out, in words."""
    return " or ".join(species_info(k).common_name for k in off_list.split("|"))


def _article(name: str) -> str:
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name
