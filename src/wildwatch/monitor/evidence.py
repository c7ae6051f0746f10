"""The evidence of a media post: does it offer, seek or advertise wildlife or wildlife products,
as a calibrated probability and a reason in words.

- The text: the learned relevance model (``monitor.relevance``) gives a calibrated log-odds; the
  term list (``monitor.terms``) says which words carried it (products and code words, offers,
  buyer requests, contact channels, prices with their units, news or zoo words that point the
  other way) and in which language.
- The photos: the most confident species among them that is on CITES Appendix I or II (the
  Convention's listing is what makes trade in it illegal or controlled; the Red List category is
  about extinction risk and stays in the answers). It adds a fixed, small log-odds, more when the
  text names a product of that species; a photo alone never makes a post trade, because sellers of
  carvings, slices and skins show products, not live animals, and harmless posts show animals.

    score = sigmoid(text_logodds + photo_logodds)

The post is flagged for review at the model's threshold (chosen out of fold on the training
corpus). Scores keep their full precision: two different posts practically never tie.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from wildwatch.monitor.relevance import bundled_model, featurise
from wildwatch.monitor.terms import CATEGORY_WORDS, LANGUAGE_NAMES, Term, guess_language
from wildwatch.monitor.textscan import Budget
from wildwatch.monitor.tracker import Answer
from wildwatch.species import species_info

PHOTO_LOGODDS = 0.6  # a confident CITES-listed species photo: about +0.15 at an even text score
PRODUCT_PHOTO_LOGODDS = 0.6  # more when the text names a product of that species (horn with a rhino photo)
REASON_ORDER = ("code", "product", "request", "offer", "contact", "price_word", "hunting", "news", "conservation",
                "leisure")


def review_threshold() -> float:
    return bundled_model().threshold


@dataclass
class Evidence:
    score: float  # calibrated probability that the post offers, seeks or advertises wildlife (products)
    reason: str
    terms: list[Term] = field(default_factory=list)
    price: str = ""
    species: str = ""  # the CITES-listed species in the photo, or ""
    photo_confidence: float = 0.0
    iucn_status: str = ""
    cites_appendix: str = ""
    language: str = ""
    text_score: float = 0.0  # the text's own probability
    photo_kind: str = ""  # "animal", "product or other", "" (no photo)
    threshold: float = 0.5

    @property
    def flagged(self) -> bool:
        return self.score >= self.threshold


def _photo(predictions: Sequence[Answer]):
    """The most confident prediction of a CITES-listed species, and what the photos show in words."""
    ok = [p for p in predictions if not p.error]
    listed = [p for p in ok if not p.unknown and species_info(p.species).cites_listed]
    best = max(listed, key=lambda p: p.confidence) if listed else None
    if best is not None:
        return best, "animal"
    other = next((p for p in ok if p.unknown), None)
    if other is not None:
        kind = other.looks_like_kind or "other"
        return None, "an animal of no listed species" if kind == "animal" else f"not an animal ({kind})"
    return None, ""


def _terms_in_words(hits) -> tuple[list[str], list[Term]]:
    """The matched terms by category ("code word: ivory '白料'", "contact channel '微信', 'dm'"), as
    the reason lists them."""
    by_cat: dict[str, list[Term]] = {}
    for h in hits:
        if h.term.category == "animal":
            continue
        group = by_cat.setdefault(h.term.category, [])
        if all(t.text != h.term.text for t in group):
            group.append(h.term)
    parts, terms = [], []
    for cat in REASON_ORDER:
        group = by_cat.get(cat, [])[:4]
        if not group:
            continue
        terms += group
        if cat in ("code", "product"):
            meanings: dict[str, list[str]] = {}
            for t in group:
                meanings.setdefault(t.meaning.replace(" (code word)", ""), []).append(f"'{t.text}'")
            parts.append(f"{CATEGORY_WORDS[cat]}: " + ", ".join(f"{m} {' '.join(w)}" for m, w in meanings.items()))
        else:
            parts.append(f"{CATEGORY_WORDS[cat]} " + ", ".join(f"'{t.text}'" for t in group))
    return parts, terms


def post_evidence(text: str, predictions: Sequence[Answer], budget: Budget | None = None) -> Evidence:
    """Score a post from its text and the Predictions of its photos."""
    model = bundled_model()
    f = featurise(text)
    if budget is not None:
        budget.check()
    text_logit = model.logit(f)
    photo, photo_kind = _photo(predictions)
    logit = text_logit
    commodity_match = False
    if photo is not None:
        commodity_match = any(photo.species in h.term.species for h in f.hits if h.term.category in ("product", "code"))
        logit += PHOTO_LOGODDS * float(photo.confidence) + (PRODUCT_PHOTO_LOGODDS if commodity_match else 0.0)
    score = 1.0 / (1.0 + math.exp(-logit))
    text_score = 1.0 / (1.0 + math.exp(-text_logit))
    lang = guess_language(text, f.hits)
    words, terms = _terms_in_words(f.hits)
    price = f.prices[0] if f.prices else None
    if price is not None:
        words.append(f"price {price.text}" + (f" ({price.unit})" if price.unit else ""))
    verdict = "trade" if score >= model.threshold else "talk about wildlife"
    kind = "buyer request" if any(t.category == "request" for t in terms) and not any(
        t.category == "offer" for t in terms) and verdict == "trade" else verdict
    reason = f"{kind} {score:.2f}: text {text_score:.2f} in {LANGUAGE_NAMES.get(lang, lang)}"
    if words:
        reason += " (" + "; ".join(words) + ")"
    info = species_info(photo.species) if photo is not None else None
    if photo is not None and info is not None:
        reason += (f"; photo: {info.common_name} {photo.confidence:.2f}, an animal, CITES Appendix "
                   f"{info.cites_appendix}" + (", the species of the product named" if commodity_match else ""))
    elif photo_kind:
        reason += f"; photo: {photo_kind}"
    return Evidence(score, reason, terms, price.text if price else "", photo.species if photo else "",
                    round(float(photo.confidence), 4) if photo else 0.0, info.iucn_status if info else "",
                    info.cites_appendix if info else "", lang, text_score, photo_kind, model.threshold)
