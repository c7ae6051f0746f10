"""The trade's own words, found in a post in linear time: products and their code words, offers,
buyer requests, contact channels, prices with their units, hunting, and the words of posts that
only talk about wildlife (news of seizures, conservation, zoos, tourism, films).

The list is ``resources/trade_terms.yaml`` (ten languages, each term with its category and,
for a product, its commodity and species). Matching rules:

- words of scripts written with spaces (Latin, Vietnamese, Arabic) match as whole words, so
  "cub" does not match "Cubs" unless "cubs" is listed, "horn" not "one-horned" (the hyphen makes
  "one horned": "horned" is not "horn"), "vend" not "vendredi"; Arabic words lose a leading
  article or conjunction first ("والعاج" is "عاج");
- words of scripts without spaces (Chinese, Thai) match anywhere in a run of text;
- any term may list longer words that contain it and mean something else (``not_in``): Thai
  "ไลน์" (Line) is not counted inside "ออนไลน์" (online), Vietnamese "bán" (sell) not inside
  "buôn bán" (trafficking, a news word), "cubs" not in "chicago cubs".

Every step reads the normalised text (at most ``textscan.MAX_SCAN`` characters) a bounded number
of times: a term index by first word, ``str.find`` for no-space terms, one linear pattern for
numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from wildwatch.monitor.textscan import normalise, tokens

LANGUAGES = ("en", "zh", "vi", "th", "id", "fr", "es", "pt", "sw", "ar")
LANGUAGE_NAMES = {"en": "English", "zh": "Chinese", "vi": "Vietnamese", "th": "Thai", "id": "Indonesian",
                  "fr": "French", "es": "Spanish", "pt": "Portuguese", "sw": "Swahili", "ar": "Arabic"}
# categories that say a post offers or seeks something, and those that say it only talks about it
TRADE_CATEGORIES = ("product", "code", "offer", "request", "contact", "price_word", "hunting")
CONTEXT_CATEGORIES = ("news", "conservation", "leisure")
CATEGORIES = TRADE_CATEGORIES + CONTEXT_CATEGORIES + ("animal",)
CATEGORY_WORDS = {"product": "product", "code": "code word", "offer": "offer", "request": "buyer request",
                  "contact": "contact channel", "price_word": "price talk", "hunting": "hunting", "news": "news",
                  "conservation": "conservation", "leisure": "zoo, tourism or film", "animal": "animal"}

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")  # greedy with nothing after it: never backtracks
_NEXT = re.compile(r" ?([^\s\d]{1,10})")  # the word after a number (anchored with .match)


@dataclass(frozen=True)
class Term:
    meaning: str  # "ivory", "for sale", ...
    category: str  # one of CATEGORIES
    lang: str
    text: str  # normalised
    species: tuple[str, ...] = ()
    commodity: str = ""
    not_in: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hit:
    term: Term
    start: int
    end: int


@dataclass(frozen=True)
class Price:
    text: str
    start: int
    end: int
    unit: str = ""  # "per gram", "million", ... when the price says so


def _spaced(text: str) -> bool:
    """Whether a term is written with spaces between words (matched as whole words)."""
    return not any("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" or "\u0e00" <= c <= "\u0e7f"
                   or "\u3040" <= c <= "\u30ff" for c in text)


def _key(text: str) -> tuple[str, ...]:
    return tuple(w for w, _, _ in tokens(normalise(text)))


@dataclass
class TermList:
    terms: list[Term]
    by_first: dict[str, list[tuple[tuple[str, ...], Term]]]  # whole-word terms by their first word
    nospace: list[Term]
    prefix_currencies: set[str]
    suffix_units: dict[str, str]  # word after a number -> unit meaning ("" for a plain currency)
    sources: dict[str, str]


@lru_cache(maxsize=1)
def term_list() -> TermList:
    doc = yaml.safe_load(resources.files("wildwatch").joinpath("resources/trade_terms.yaml").read_text("utf-8"))
    terms: list[Term] = []
    for t in doc["terms"]:
        excl = tuple(normalise(x) for lang in LANGUAGES for x in (t.get("not_in") or {}).get(lang, []))
        for lang in LANGUAGES:
            for w in t.get(lang) or []:
                terms.append(Term(t["meaning"], t["category"], lang, normalise(str(w)), tuple(t.get("species", ())),
                                  t.get("commodity", ""), excl))
    by_first: dict[str, list] = {}
    nospace = []
    for t in terms:
        if _spaced(t.text):
            key = _key(t.text)
            if key:
                by_first.setdefault(key[0], []).append((key, t))
        else:
            nospace.append(t)
    prices = doc["prices"]
    units = {normalise(k): "" for k in prices["currencies"]}
    units.update({normalise(k): v for k, v in prices["units"].items()})
    return TermList(terms, by_first, nospace, {normalise(c) for c in prices["before"]}, units, doc.get("sources", {}))


def _excluded(text: str, start: int, end: int, term: Term) -> bool:
    """Whether the match [start, end) overlaps one of the term's ``not_in`` words ("ساحل العاج" for
    the token "العاج", whose match starts at its article). Only a window of the not_in word's length
    around the match is searched, so each check is bounded whatever the text."""
    for w in term.not_in:
        lo, hi = max(0, start - len(w)), end + len(w)
        j = text.find(w, lo, hi)
        while j >= 0:
            if j < end and j + len(w) > start:
                return True
            j = text.find(w, j + 1, hi)
    return False


def _whole_word_hits(text: str, toks: list[tuple[str, int, int]], tl: TermList) -> list[Hit]:
    words = [w for w, _, _ in toks]
    out = []
    for i, w in enumerate(words):
        for key, t in tl.by_first.get(w, ()):
            if tuple(words[i:i + len(key)]) == key:
                start, end = toks[i][1], toks[i + len(key) - 1][2]
                if not _excluded(text, start, end, t):
                    out.append(Hit(t, start, end))
    return out


def _nospace_hits(text: str, tl: TermList, most: int = 20) -> list[Hit]:
    out = []
    for t in tl.nospace:
        at, found = text.find(t.text), 0
        while at >= 0 and found < most:
            if not _excluded(text, at, at + len(t.text), t):
                out.append(Hit(t, at, at + len(t.text)))
                found += 1
                break  # one occurrence of a term is enough evidence
            at = text.find(t.text, at + 1)
    return out


def find_hits(text: str, normalised: bool = False) -> list[Hit]:
    """Every term occurrence (one per term), in text order."""
    tl = term_list()
    low = text if normalised else normalise(text)
    hits = _whole_word_hits(low, tokens(low), tl) + _nospace_hits(low, tl)
    return sorted(hits, key=lambda h: (h.start, -(h.end - h.start)))


def _word_before(text: str, start: int) -> str:
    """The word (or symbol run) just before ``start``, one space allowed."""
    j = start
    if j > 0 and text[j - 1] == " ":
        j -= 1
    i = j
    while i > 0 and not text[i - 1].isspace() and not text[i - 1].isdigit() and j - i < 10:
        i -= 1
    return text[i:j]


def _ends_word(chunk: str, k: int) -> bool:
    """Whether ``chunk[:k]`` is a whole word of ``chunk`` ("k" in "k," but not in "kg"); units of scripts
    without spaces end anywhere ("元" in "元起")."""
    return k == len(chunk) or not chunk[k].isalpha() or not _spaced(chunk[:k])


def find_prices(text: str, normalised: bool = False, most: int = 5) -> list[Price]:
    """Prices: a number with a currency or a unit before or after it ("$4,500", "rp 50 juta",
    "每克480元起", "r$ 4 mil", "5000 bs", "dola 300", "shilingi milioni 2")."""
    tl = term_list()
    low = text if normalised else normalise(text)
    out: list[Price] = []
    for m in _NUMBER.finditer(low):
        s, e = m.start(), m.end()
        before = _word_before(low, s)
        unit = ""
        after_m = _NEXT.match(low, e)
        after = after_m.group(1) if after_m else ""
        # the unit after: the longest listed word that the next chunk starts with ("元起" -> "元")
        suffix = next((after[:k] for k in range(len(after), 0, -1) if after[:k] in tl.suffix_units
                       and _ends_word(after, k)), "")
        prefix = next((before[-k:] for k in range(len(before), 0, -1) if before[-k:] in tl.prefix_currencies
                       and (k == len(before) or not before[-k - 1].isalpha() or not _spaced(before[-k:]))), "")
        if not prefix and before in tl.suffix_units and tl.suffix_units[before]:  # "milioni 2", "每克480"
            prefix = before
        if not suffix and not prefix:
            continue
        if suffix:
            unit = tl.suffix_units[suffix]
            e = (after_m.start(1) if after_m else e) + len(suffix)
        if prefix:
            unit = unit or tl.suffix_units.get(prefix, "")
            s = low.rfind(prefix, 0, s)
            # a currency before a multiplier word: "shilingi milioni 2", "rp. 3,5 juta"
            more = _word_before(low, s)
            if more and more in tl.prefix_currencies:
                s = low.rfind(more, 0, s)
        if "每克" in low[max(0, s - 4):s] or "/克" in low[e:e + 3] or "per gram" in low[e:e + 10]:
            unit = "per gram"
        out.append(Price(low[s:e].strip(), s, e, unit))
        if len(out) >= most:
            break
    return out


_STOPWORDS = {
    "en": {"the", "and", "for", "with", "this", "is", "of", "to", "in", "at", "my", "our", "we", "you"},
    "id": {"yang", "dan", "di", "ini", "untuk", "dengan", "tidak", "ada", "dari", "sudah", "bisa", "kami"},
    "fr": {"le", "la", "les", "des", "et", "est", "pour", "avec", "une", "du", "au", "dans", "nous", "sur"},
    "es": {"el", "los", "las", "y", "es", "para", "con", "una", "del", "por", "que", "en", "muy", "se"},
    "pt": {"o", "os", "as", "e", "é", "para", "com", "uma", "do", "da", "no", "na", "que", "em", "não"},
    "sw": {"na", "ya", "wa", "kwa", "ni", "za", "la", "katika", "hii", "huu", "kwenye", "leo", "sana"},
}
_VIETNAMESE = set("ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ")


def guess_language(text: str, hits: list[Hit] | None = None) -> str:
    """The post's language by its script, Vietnamese letters, common words and the languages of the
    terms found in it (``hits``): a two-letter code."""
    low = normalise(text, 2000)
    counts = {"zh": 0, "th": 0, "ar": 0, "vi": 0}
    for c in low:
        if "\u4e00" <= c <= "\u9fff":
            counts["zh"] += 1
        elif "\u0e00" <= c <= "\u0e7f":
            counts["th"] += 1
        elif "\u0600" <= c <= "\u06ff":
            counts["ar"] += 1
        elif c in _VIETNAMESE:
            counts["vi"] += 1
    script = max(counts, key=lambda k: counts[k])
    if counts[script] >= 2:
        return script
    words = [w for w, _, _ in tokens(low)]
    scores = {lang: sum(1 for w in words if w in sw) for lang, sw in _STOPWORDS.items()}
    for h in hits or ():  # a term of one language only ("dijual", "inauzwa") says more than a stopword
        if h.term.lang in scores and h.term.category != "animal":
            scores[h.term.lang] += 2
    best = max(scores, key=lambda k: scores[k])
    return best if scores[best] else "en"
