"""Text helpers shared by the store and the apps: outside text normalised for matching, and made
safe for a spreadsheet cell (CSV exports of posts, feed items, camera names)."""

from __future__ import annotations

import unicodedata

MAX_SCAN = 8000  # characters of a post that are read for evidence (a real advert is far shorter)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def normalise(text: str, limit: int = MAX_SCAN) -> str:
    """NFKC, case folded, whitespace runs as one space, at most ``limit`` characters."""
    text = unicodedata.normalize("NFKC", (text or "")[: limit * 2]).casefold()
    return " ".join(text.split())[:limit]


def spreadsheet_text(value: str) -> str:
    """Text from a post made inert for a spreadsheet: a cell that would start a formula (=, +, -, @,
    a tab or line break, or their full-width forms) gets a leading apostrophe, so ``=HYPERLINK(...)``
    or ``=cmd|...`` is shown as text and never run when the CSV is opened."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text
