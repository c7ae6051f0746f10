"""Text made safe for a spreadsheet cell (CSV exports of outside text: posts, feed items, camera names)."""

from __future__ import annotations

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_text(value: str) -> str:
    """Text from a post made inert for a spreadsheet: a cell that would start a formula (=, +, -, @,
    a tab or line break, or their full-width forms) gets a leading apostrophe, so ``=HYPERLINK(...)``
    or ``=cmd|...`` is shown as text and never run when the CSV is opened."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text
