"""Linear-time tools for text that comes from outside (posts, pages, feeds): every function here
reads its input a bounded number of times, whatever the input is ("1 1 1 …", "<img<img…"), and
the input is cut to ``MAX_SCAN`` characters before any of them runs.

- ``normalise``: NFKC, case folded, cut to ``MAX_SCAN``;
- ``strip_tags`` / ``img_sources``: HTML to text and the ``src`` of its images, by a scan that
  finds each ``<`` and its ``>`` once (no regular expression that can backtrack);
- ``tokens``: words (runs of letters and digits) with their offsets; Arabic words also lose
  their diacritics and a leading article or conjunction, so "والعاج" finds "عاج";
- ``Budget``: a per-item time budget that long loops check, so one slow item gives up with an
  error instead of holding up every other source.
"""

from __future__ import annotations

import re
import time

from wildwatch.text import MAX_SCAN, normalise  # noqa: F401 - normalise is written in wildwatch.text, which the store shares

MAX_TAG = 2000  # characters of one HTML tag that are read for its attributes

_WORD = re.compile(r"\w+")  # one character class, no nesting: linear in the text
_ARABIC_MARKS = re.compile("[\u064b-\u0652\u0640]")  # harakat and tatweel
_ARABIC_PREFIXES = ("وال", "بال", "فال", "كال", "لل", "ال", "و", "ب", "ف")
_ALEF = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ى": "ي", "ة": "ه"})


class BudgetExceeded(TimeoutError):
    """An item took longer than its time budget; it is skipped with this error, the rest go on."""


class Budget:
    """``check()`` raises ``BudgetExceeded`` once ``seconds`` have passed since the budget began."""

    def __init__(self, seconds: float, what: str = "item"):
        self.seconds, self.what = seconds, what
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise BudgetExceeded(f"{self.what}: took longer than its {self.seconds:g} s budget; skipped")


def is_arabic(word: str) -> bool:
    return bool(word) and "\u0600" <= word[0] <= "\u06ff"


def arabic_stem(word: str) -> str:
    """An Arabic word without diacritics, with one alef and ta marbuta form, and without a leading
    article or conjunction when at least three letters stay ("والعاج" -> "عاج")."""
    word = _ARABIC_MARKS.sub("", word).translate(_ALEF)
    for p in _ARABIC_PREFIXES:
        if word.startswith(p) and len(word) - len(p) >= 3:
            return word[len(p):]
    return word


def tokens(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) of each run of letters and digits of a normalised text."""
    out = []
    for m in _WORD.finditer(text):
        w = m.group(0)
        out.append((arabic_stem(w) if is_arabic(w) else w, m.start(), m.end()))
    return out


def strip_tags(html_text: str, limit: int = MAX_SCAN * 4) -> str:
    """The text of an HTML fragment: tags become spaces, entities are decoded, scripts and styles
    dropped. An unclosed ``<`` ends the tags: the rest is text."""
    import html as _html

    s = (html_text or "")[:limit]
    out, i, n, skip_until = [], 0, len(s), ""
    while i < n:
        lt = s.find("<", i)
        if lt < 0:
            if not skip_until:
                out.append(s[i:])
            break
        if not skip_until:
            out.append(s[i:lt])
        gt = s.find(">", lt + 1)
        if gt < 0:  # an unclosed tag: what follows is text, not a tag (and is not searched again)
            if not skip_until:
                out.append(s[lt:])
            break
        name = s[lt + 1: min(gt, lt + 12)].lower()
        if skip_until and name.startswith("/" + skip_until):
            skip_until = ""
        elif not skip_until and name.startswith(("script", "style")):
            skip_until = "script" if name.startswith("script") else "style"
        out.append(" ")
        i = gt + 1
    return " ".join(_html.unescape("".join(out)).split())


def _attr(tag: str, name: str) -> str:
    """The value of attribute ``name`` in one tag's text (already cut to ``MAX_TAG``)."""
    low = tag.lower()
    at = 0
    while True:
        k = low.find(name, at)
        if k < 0:
            return ""
        at = k + len(name)
        if k > 0 and not low[k - 1].isspace():
            continue
        rest = tag[at:].lstrip()
        if not rest.startswith("="):
            continue
        rest = rest[1:].lstrip()
        if rest[:1] in ("'", '"'):
            end = rest.find(rest[0], 1)
            return rest[1:end] if end > 0 else ""
        return rest.split(None, 1)[0] if rest else ""


def img_sources(html_text: str, limit: int = MAX_SCAN * 4, most: int = 50) -> list[str]:
    """The ``src`` of each ``<img>`` tag, in order (at most ``most``)."""
    s = (html_text or "")[:limit]
    out: list[str] = []
    i = 0
    while len(out) < most:
        lt = s.find("<", i)
        if lt < 0:
            break
        gt = s.find(">", lt + 1)
        if gt < 0:
            break
        tag = s[lt + 1: min(gt, lt + 1 + MAX_TAG)]
        if tag[:3].lower() == "img" and (len(tag) == 3 or tag[3].isspace() or tag[3] == "/"):
            src = _attr(tag, "src").strip()
            if src:
                out.append(src)
        i = gt + 1
    return out


class PageParts:
    """What a page says: title, ``<meta>`` values, images (src, alt), links and text runs."""

    def __init__(self):
        self.title = ""
        self.meta: dict[str, str] = {}
        self.images: list[tuple[str, str]] = []
        self.links: list[str] = []
        self.text: list[str] = []


def scan_html(page: str, most_tags: int = 20000) -> PageParts:
    """One pass over an HTML page (each ``<`` and ``>`` found once with ``str.find``), unlike
    ``html.parser``, which takes minutes on a page of repeated ``<a href=x`` or ``<img``. At most
    ``most_tags`` tags are read; an unclosed ``<`` ends the tags."""
    import html as _html

    out = PageParts()
    i, n, skip, in_title, tags = 0, len(page), "", False, 0
    while i < n and tags < most_tags:
        lt = page.find("<", i)
        chunk = page[i:lt if lt >= 0 else n]
        if chunk.strip() and not skip:
            text = _html.unescape(" ".join(chunk.split()))
            if in_title:
                out.title += text
            else:
                out.text.append(text)
        if lt < 0:
            break
        gt = page.find(">", lt + 1)
        if gt < 0:
            break
        tags += 1
        tag = page[lt + 1: min(gt, lt + 1 + MAX_TAG)]
        name = tag.split(None, 1)[0].lower().rstrip("/") if tag.strip() else ""
        i = gt + 1
        if skip:
            if name == "/" + skip:
                skip = ""
            continue
        if name in ("script", "style", "noscript"):
            skip = name
        elif name == "title":
            in_title = True
        elif name == "/title":
            in_title = False
        elif name == "meta":
            key = (_attr(tag, "property") or _attr(tag, "name")).lower()
            if key:
                out.meta[key] = _html.unescape(_attr(tag, "content"))
        elif name == "img":
            src = _attr(tag, "src").strip()
            if src:
                out.images.append((_html.unescape(src), _html.unescape(_attr(tag, "alt"))))
        elif name == "a":
            href = _attr(tag, "href").strip()
            if href:
                out.links.append(_html.unescape(href))
    return out


def join_unique(parts, limit: int = MAX_SCAN, most_parts: int = 2000) -> str:
    """The parts joined by spaces, each text once: a part already contained in what is there (a
    page's title repeated in its description and body) is left out. Each part is cut to ``2 * limit``
    characters and at most ``most_parts`` parts are read, so the work is bounded whatever the item."""
    import itertools

    kept: list[str] = []
    seen = ""
    for p in itertools.islice(parts, most_parts):
        # a part is cut before any work: a feed item's title of 50 MB costs what one of 16,000 characters does
        p = " ".join((p if isinstance(p, str) else str(p or ""))[: limit * 2].split())
        if not p:
            continue
        low = p.casefold()
        if low in seen:
            continue
        # an earlier part contained in this one is replaced by it, in its place (a title, then the
        # body that starts with it)
        inside = [j for j, k in enumerate(kept) if k.casefold() in low]
        if inside:
            kept[inside[0]] = p
            kept = [k for j, k in enumerate(kept) if j not in inside[1:]]
        else:
            kept.append(p)
        seen = " \n ".join(k.casefold() for k in kept)
        if len(seen) > limit:
            break
    return " ".join(kept)[:limit]
