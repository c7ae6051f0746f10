"""The evidence of a media post: what its photos show and what its text says, as a score and a
reason in words ("rhino horn (zh: 犀牛角) + price + rhino photo 0.97").

The terms come from ``resources/trade_terms.yaml`` (products, selling, hunting, in nine
languages, with their sources); prices are a number with a currency. The score combines:

- the photo: the most confident threatened species among the post's photos (the open-set
  answer included: a photo of none of the species adds nothing);
- the text: a product (+0.45, +0.15 more when it is a product of the species in the photo),
  selling intent or a price (+0.3, +0.1 for both), hunting (+0.3), at most 1.

    score = 1 - (1 - 0.4 * photo) * (1 - 0.8 * text)   with a species photo
    score = 0.7 * text                                  without

so a species photo alone (0.39 at 0.97), selling alone (0.28) or a product word alone (0.32)
stays under the review threshold (0.5), while a species photo with a product or selling words,
or a product offered for a price, goes over it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml

LANGUAGES = ("en", "zh", "vi", "th", "id", "fr", "es", "pt", "sw")
NO_SPACES = ("zh", "th")  # scripts written without spaces between words: terms match anywhere
REVIEW_THRESHOLD = 0.5


@dataclass(frozen=True)
class Term:
    meaning: str
    category: str  # product, trade, hunting
    lang: str
    text: str
    species: tuple[str, ...] = ()


@dataclass
class Evidence:
    score: float
    reason: str
    terms: list[Term] = field(default_factory=list)
    price: str = ""
    species: str = ""  # the species in the photo, or ""
    photo_confidence: float = 0.0
    iucn_status: str = ""

    @property
    def flagged(self) -> bool:
        return self.score >= REVIEW_THRESHOLD


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold()


@lru_cache(maxsize=1)
def term_list() -> tuple[list[Term], re.Pattern]:
    doc = yaml.safe_load(resources.files("wildwatch").joinpath("resources/trade_terms.yaml").read_text("utf-8"))
    terms = [Term(t["meaning"], t["category"], lang, _fold(str(w)), tuple(t.get("species", ())))
             for t in doc["terms"] for lang in LANGUAGES for w in t.get(lang, [])]
    cur = "|".join(sorted((re.escape(_fold(c)) for c in doc["currencies"]), key=len, reverse=True))
    number = r"\d[\d.,' ]*\d|\d"
    price = re.compile(rf"(?:(?:{cur})\s?(?:{number}))|(?:(?:{number})\s?(?:k\s?)?(?:{cur}))(?![\w])")
    return terms, price


def find_terms(text: str) -> tuple[list[Term], str]:
    """The terms found in ``text`` (one per meaning: the longest match, non-English preferred at
    equal length) and the first price, if any."""
    terms, price = term_list()
    low = _fold(text)
    best: dict[str, Term] = {}
    for t in terms:
        found = (t.text in low) if t.lang in NO_SPACES else re.search(r"(?<![\w])" + re.escape(t.text), low)
        if not found:
            continue
        old = best.get(t.meaning)  # the longest match is the most specific; at equal length, not English
        if old is None or (len(t.text), t.lang != "en") > (len(old.text), old.lang != "en"):
            best[t.meaning] = t
    m = price.search(low)
    return list(best.values()), (m.group(0).strip() if m else "")


def post_evidence(text: str, predictions) -> Evidence:
    """Score a post from its text and the Predictions of its photos."""
    terms, price = find_terms(text)
    named = [p for p in predictions if not p.error and not p.unknown and p.threatened]
    photo = max(named, key=lambda p: p.confidence) if named else None
    products = [t for t in terms if t.category == "product"]
    selling = [t for t in terms if t.category == "trade"]
    hunting = [t for t in terms if t.category == "hunting"]
    text_score = 0.0
    if products:
        text_score += 0.45 + (0.15 if photo is not None and any(photo.species in t.species for t in products) else 0)
    if selling or price:
        text_score += 0.3 + (0.1 if selling and price else 0)
    if hunting:
        text_score += 0.3
    text_score = min(1.0, text_score)
    if photo is not None:
        score = 1 - (1 - 0.4 * float(photo.confidence)) * (1 - 0.8 * text_score)
    else:
        score = 0.7 * text_score
    parts = [t.meaning + ("" if t.lang == "en" else f" ({t.lang}: {t.text})") for t in products + hunting + selling]
    if price:
        parts.append(f"price {price}")
    if photo is not None:
        parts.append(f"{photo.species} photo {photo.confidence:.2f}")
    return Evidence(round(score, 4), " + ".join(parts) if parts else "nothing of note", terms, price,
                    photo.species if photo else "", round(float(photo.confidence), 4) if photo else 0.0,
                    photo.iucn_status if photo else "")
