"""The species table: display name, scientific names, IUCN Red List status and CITES Appendix of
each class."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from wildwatch.errors import UsageError

THREATENED_CATEGORIES = ("VU", "EN", "CR")
# Badge colours used by the Red List itself.
CATEGORY_COLOURS = {"LC": "#60C659", "NT": "#CCE226", "VU": "#F9E814", "EN": "#FC7F3F", "CR": "#D81E05",
                    "EW": "#542344", "EX": "#000000", "DD": "#D1D1C6"}


@dataclass(frozen=True)
class SpeciesInfo:
    key: str
    common_name: str
    scientific_names: tuple[str, ...]
    iucn_status: str
    threatened: bool
    note: str
    source: str
    assessments: tuple[dict, ...] = ()
    taxon: str = ""  # the narrowest name that covers every species the class may show
    taxon_rank: str = ""
    taxonomy: str = ""  # "class;order;family;genus;species", lowercase, as MegaDetector and Wildlife Insights write it
    cites_appendix: str = ""  # "I", "II" or "" (not listed): what trade in the species is allowed, by CITES
    cites_note: str = ""
    cites_source: str = ""

    @property
    def cites_listed(self) -> bool:
        """On CITES Appendix I or II: international commercial trade is banned or controlled."""
        return self.cites_appendix in ("I", "II")

    @property
    def worst_category(self) -> str:
        order = ["LC", "NT", "VU", "EN", "CR"]
        cats = [a["category"] for a in self.assessments] or [self.iucn_status]
        return max(cats, key=lambda c: order.index(c) if c in order else -1)

    def to_json(self) -> dict:
        return {"key": self.key, "common_name": self.common_name, "scientific_names": list(self.scientific_names),
                "iucn_status": self.iucn_status, "threatened": self.threatened, "note": self.note,
                "source": self.source, "assessments": list(self.assessments), "taxon": self.taxon,
                "taxon_rank": self.taxon_rank, "taxonomy": self.taxonomy, "cites_appendix": self.cites_appendix,
                "cites_note": self.cites_note, "cites_source": self.cites_source}


UNKNOWN = SpeciesInfo("unknown", "Unknown (none of the known species)", (), "", False,
                      "The photo does not look like any species the model knows.", "")


@lru_cache(maxsize=1)
def species_table() -> dict[str, SpeciesInfo]:
    raw = json.loads(resources.files("wildwatch").joinpath("resources/species.json").read_text())
    return {
        k: SpeciesInfo(k, v["common_name"], tuple(v["scientific_names"]), v["iucn_status"], bool(v["threatened"]),
                       v.get("note", ""), v.get("source", ""), tuple(v.get("assessments", ())),
                       v.get("taxon", ""), v.get("taxon_rank", ""), v.get("taxonomy", ""), v.get("cites_appendix", ""),
                       v.get("cites_note", ""), v.get("cites_source", ""))
        for k, v in raw.items() if not k.startswith("_")
    }


UNCERTAIN = SpeciesInfo("uncertain", "Uncertain (between two species)", (), "", False,
                        "The photo looks like one of two species, and the model is not sure enough to name one.", "")


def species_info(key: str) -> SpeciesInfo:
    """Status of a class name; classes missing from the table get a plain entry with no status."""
    if key == "unknown":
        return UNKNOWN
    if key == "uncertain":
        return UNCERTAIN
    table = species_table()
    if key in table:
        return table[key]
    return SpeciesInfo(key, key.replace("_", " ").capitalize(), (), "", False, "not in the species table", "")


def parse_species_list(text: str | None, classes: Iterable[str] | None = None) -> frozenset[str] | None:
    """``--species lion,jaguars``: the classes a run keeps by name (None: all). Given ``classes``, a
    name that is not among them is an error that lists the choices (the Predictor checks a model's)."""
    if text is None or not text.strip():
        return None
    names = frozenset(n.strip().lower() for n in text.split(",") if n.strip())
    known = set(names if classes is None else classes)
    wrong = sorted(names - known)
    if wrong or not names:
        given = ", ".join(wrong) if wrong else repr(text)
        raise UsageError(f"--species: {given} not among the classes ({', '.join(sorted(known))})")
    return names
