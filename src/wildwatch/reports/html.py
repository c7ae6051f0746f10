"""Self-contained HTML pages (thumbnails inlined as base64)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable
from pathlib import Path

from wildwatch.data.loading import ImageLoadError, load_image

PAGE_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px}
.grid{display:flex;flex-wrap:wrap;gap:12px}.card{width:180px;font-size:12px;border:1px solid #ddd;padding:6px;border-radius:6px}
.card img{width:180px;height:180px;object-fit:cover}.bad{color:#b00}.good{color:#070}
"""


def thumbnail_data_uri(path: str | Path, size: int = 180) -> str:
    try:
        img = load_image(path, draft_size=(size, size))
    except ImageLoadError:
        return ""
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>{html.escape(title)}</title><style>{PAGE_STYLE}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


def image_cards_page(title: str, intro: str, cards: Iterable[dict], path: str | Path) -> None:
    """A page of image cards. Each card: ``path`` (image file) and ``lines`` (list of text lines)."""
    parts = [f"<p>{html.escape(intro)}</p><div class='grid'>"]
    for c in cards:
        uri = thumbnail_data_uri(c["path"])
        lines = "<br>".join(html.escape(str(x)) for x in c["lines"])
        parts.append(f"<div class='card'><img src='{uri}' alt=''><br>{lines}</div>")
    parts.append("</div>")
    Path(path).write_text(page(title, "".join(parts)))


def table_html(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def png_data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def figures_page(title: str, path: str | Path, figures: list[tuple[str, str | Path]], tables: list[tuple[str, list[dict]]]) -> None:
    """One self-contained page: captioned PNG figures (inlined) and tables of numbers."""
    parts = []
    for caption, png in figures:
        if Path(png).exists():
            parts.append(f"<figure><img src='{png_data_uri(png)}' alt='{html.escape(caption)}' style='max-width:100%'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    for caption, rows in tables:
        parts.append(f"<h2>{html.escape(caption)}</h2>{table_html(rows)}")
    Path(path).write_text(page(title, "".join(parts)))
