"""The media watch on its labelled corpus, end to end: the posts of benchmarks/media_corpus served
on loopback as an RSS feed (with authors), a JSON Feed, a Mastodon tag timeline, a Reddit listing,
a Telegram channel page and single web pages, read once by ``wildwatch monitor`` (the CLI, the
bundled model), and scored from the events database it writes.

    python benchmarks/media_watch.py --mode text  [--part heldout_v2|heldout_v1] [--out runs/media_watch]
    python benchmarks/media_watch.py --mode photo --data ../shared/data/endangered11 --ood ../shared/data/ood_dev

- ``--mode text``: posts without photos (the text alone decides);
- ``--mode photo``: each post carries a photo: a test-split photo (never trained on) of the class it
  names (a live animal, as sellers and harmless posts alike show), an ood_dev photo for posts of no
  class (pangolin scales, market posts);
- reposts: 20 trade posts of the part are reposted three times each on other sources by other
  accounts, text-only with small edits (another price, an emoji, "REPOST:", another contact), and
  (photo mode) 10 more reposted with the same photo re-encoded and resized under a new text;
- figures per language on the part's own posts: post precision, recall, hard harmless posts
  flagged (every harmless post of the corpus is a hard one: seizure news, anti-poaching, zoo births,
  safari prices, documentaries, word traps, other goods for sale); groups of reposts in one case;
  cases in the queue and distinct scores; posts/s of the whole run and of the text model alone;
  peak memory (RSS) of the monitor process.

Writes results.json and cases.csv under --out. The held-out part is only scored here.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from media_corpus.corpus import CorpusPost, load
from PIL import Image

SOURCES = ("feed", "jsonfeed", "mastodon", "reddit", "telegram")
EDITS = (lambda t: t + " 🔥🔥", lambda t: "REPOST: " + t, lambda t: t.replace("0", "5", 1) + " !!",
         lambda t: t + " (still available)", lambda t: t.upper(), lambda t: "✅ " + t + " ✅")


def photos_of(data: Path, classes: set[str]) -> dict[str, list[Path]]:
    """Test-split photos (never trained on) of each class, by the bundled model's own split."""
    from wildwatch.data.splits import split_for_model
    from wildwatch.inference.predictor import Predictor
    from wildwatch.models.bundle import bundled_model_path

    pred = Predictor.from_file(None)
    split = split_for_model(bundled_model_path(), pred.meta, data)[0]
    out: dict[str, list[Path]] = {c: [] for c in classes}
    for s in split.test:
        if s.label in out:
            out[s.label].append(data / s.relpath)
    return out


def jpeg(path: Path, scale: float = 1.0, quality: int = 88) -> bytes:
    img = Image.open(path).convert("RGB")
    img.thumbnail((640, 640))
    if scale != 1.0:
        img = img.resize((max(32, int(img.width * scale)), max(32, int(img.height * scale))))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def build(posts: list[CorpusPost], mode: str, data: Path | None, ood: Path | None, seed: int = 0):
    """The served posts ({id, text, account, image, lang, label, kind, group}) and their images."""
    rng = random.Random(seed)
    images: dict[str, bytes] = {}
    photos = photos_of(data, {p.species for p in posts if p.species}) if mode == "photo" else {}
    others = sorted(x for x in ood.rglob("*") if x.suffix.lower() in (".jpg", ".jpeg", ".png")) if mode == "photo" else []
    served: list[dict] = []
    decks: dict[str, list[Path]] = {}

    def draw(cls: str) -> Path:
        """A photo of the class, each used once before any is used again (a photo shared by two posts
        would make them one case, as it should in a real market)."""
        if not decks.get(cls):
            decks[cls] = rng.sample(photos[cls] if cls else others, len(photos[cls] if cls else others))
        return decks[cls].pop()

    def add(p: CorpusPost, text: str, group: str = "", photo: Path | None = None, scale=1.0, quality=88, ident=None):
        n = len(served)
        name = None
        if mode == "photo":
            photo = photo or draw(p.species if p.species and photos.get(p.species) else "")
            name = f"/img/{n}.jpg"
            images[name] = jpeg(photo, scale, quality)
        served.append({"id": ident or p.id, "text": text, "account": f"user{rng.randrange(100_000)}", "image": name,
                       "lang": p.lang, "label": p.label, "kind": p.kind, "group": group, "photo": photo})
        return photo

    for p in posts:
        add(p, p.text)
    trade = [p for p in posts if p.label == 1]
    rng.shuffle(trade)
    for g, p in enumerate(trade[:20]):  # text-only reposts (no photo even in photo mode)
        for k in range(3):
            n = len(served)
            served.append({"id": f"{p.id}-r{k}", "text": EDITS[(g + k) % len(EDITS)](p.text),
                           "account": f"reposter{g}-{k}", "image": None, "lang": p.lang, "label": 1,
                           "kind": "repost", "group": f"text{g}", "photo": None})
            served[n]["orig"] = p.id
        next(s for s in served if s["id"] == p.id)["group"] = f"text{g}"
    if mode == "photo":
        for g, p in enumerate(trade[20:30]):  # photo reposts: the same photo re-encoded, a new text
            orig = next(s for s in served if s["id"] == p.id)
            orig["group"] = f"photo{g}"
            for k in range(3):
                other = trade[(20 + g + k + 1) % len(trade)]
                add(p, other.text + " " + EDITS[k](""), f"photo{g}", orig["photo"], [0.7, 0.5, 0.85][k],
                    [60, 40, 75][k], f"{p.id}-p{k}")
    rng.shuffle(served)
    return served, images


class Internet:
    """The posts as six kinds of sources on one loopback server."""

    def __init__(self, served: list[dict], images: dict[str, bytes], pages: int = 6):
        self.images = images
        self.pages = served[:pages]
        rest = served[pages:]
        self.parts = {k: rest[i::len(SOURCES)] for i, k in enumerate(SOURCES)}
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                body, ctype = outer.route(self.path.split("?")[0])
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", ctype or "text/plain")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def img(self, p):
        return f"{self.base}{p['image']}" if p["image"] else None

    def route(self, path: str):
        b = self.base
        if path in self.images:
            return self.images[path], "image/jpeg"
        if path == "/robots.txt":
            return b"User-agent: *\nAllow: /\n", "text/plain"
        if path == "/feed.xml":
            items = "".join(
                f"<item><guid>{p['id']}</guid><title>{escape(p['text'][:60])}</title>"
                f"<description>{escape(p['text'])}</description><author>{p['account']}@example.org ({p['account']})"
                f"</author><link>{b}/post/{p['id']}</link>"
                + (f'<enclosure url="{self.img(p)}" type="image/jpeg" length="1"/>' if p["image"] else "") + "</item>"
                for p in self.parts["feed"])
            return (f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>t</title>{items}'
                    "</channel></rss>").encode(), "application/rss+xml"
        if path == "/feed.json":
            return json.dumps({"version": "https://jsonfeed.org/version/1.1", "title": "j", "items": [
                {"id": p["id"], "url": f"{b}/j/{p['id']}", "content_html": f"<p>{escape(p['text'])}</p>",
                 "authors": [{"name": p["account"]}], **({"image": self.img(p)} if p["image"] else {})}
                for p in self.parts["jsonfeed"]]}).encode(), "application/json"
        if path == "/api/v1/timelines/tag/wildlife":
            return json.dumps([{"id": p["id"], "url": f"{b}/@{p['account']}/{p['id']}",
                                "content": f"<p>{escape(p['text'])}</p>", "account": {"acct": p["account"]},
                                "media_attachments": [{"type": "image", "url": self.img(p)}] if p["image"] else []}
                               for p in self.parts["mastodon"]]).encode(), "application/json"
        if path == "/r/market/new.json":
            return json.dumps({"data": {"after": None, "children": [
                {"data": {"id": p["id"], "title": p["text"], "selftext": "", "author": p["account"],
                          "permalink": f"/r/market/comments/{p['id']}/", "url": self.img(p) or f"{b}/post/{p['id']}"}}
                for p in self.parts["reddit"]]}}).encode(), "application/json"
        if path == "/s/market":
            blocks = "".join(
                f'<div class="tgme_widget_message_wrap"><div class="tgme_widget_message" data-post="market/{p["id"]}">'
                + (f"<a class=\"tgme_widget_message_photo_wrap\" style=\"background-image:url('{self.img(p)}')\"></a>"
                   if p["image"] else "")
                + f'<div class="tgme_widget_message_text">{escape(p["text"])}</div></div></div>'
                for p in self.parts["telegram"])
            return f"<html><body>{blocks}</body></html>".encode(), "text/html; charset=utf-8"
        if path.startswith("/page/"):
            p = next((x for x in self.pages if x["id"] == path[6:]), None)
            if p is None:
                return None, ""
            img = f'<img src="{self.img(p)}" alt="">' if p["image"] else ""
            return (f"<html><head><title>{escape(p['text'][:50])}</title><meta name='author' content='{p['account']}'>"
                    f"<meta property='og:description' content='{escape(p['text'])}'></head><body><p>"
                    f"{escape(p['text'])}</p>{img}</body></html>").encode(), "text/html; charset=utf-8"
        return None, ""

    def specs(self) -> list[str]:
        b = self.base
        return [f"feed:{b}/feed.xml", f"feed:{b}/feed.json", f"mastodon:{b}/tags/wildlife", f"reddit:{b}/r/market",
                f"telegram:{b}/s/market", *(f"page:{b}/page/{p['id']}" for p in self.pages)]


def post_id(key: str) -> str:
    tail = key.rsplit("#", 1)[-1]
    return tail.replace("market/", "").rsplit("/page/", 1)[-1]


def run_monitor(specs: list[str], db: Path) -> tuple[float, float, str]:
    """``wildwatch monitor`` once over the sources: seconds, peak RSS (MiB) of that process, stderr."""
    cfg = db.parent / "watch.yaml"
    cfg.write_text("host_interval_s: 0\ndrain_s: 0\nsinks: []\nbatch_size: 16\n")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "wildwatch", "monitor", *specs, "--once", "--no-status", "--db", str(db),
                        "--config", str(cfg)], capture_output=True, text=True, timeout=3600, check=False)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"wildwatch monitor failed ({p.returncode}):\n{p.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return seconds, peak, p.stderr


def repost_groups(served: list[dict], cases: list[dict]) -> dict[str, set]:
    """Each repost group -> the cases its posts are in (None for a post in no case)."""
    groups: dict[str, set] = {}
    case_of = {post_id(p["key"]): c["id"] for c in cases for p in c["posts"]}
    for s in served:
        if s["group"]:
            groups.setdefault(s["group"], set()).add(case_of.get(s["id"]))
    return groups


def figures(rows: list[dict]) -> dict:
    pos = [r for r in rows if r["label"] == 1]
    neg = [r for r in rows if r["label"] == 0]
    tp = sum(r["flagged"] for r in pos)
    fp = sum(r["flagged"] for r in neg)
    return {"posts": len(rows), "trade": len(pos), "harmless": len(neg), "flagged": tp + fp,
            "precision": round(tp / max(1, tp + fp), 3), "recall": round(tp / max(1, len(pos)), 3),
            "hard_harmless_flagged": round(fp / max(1, len(neg)), 3)}


def text_model_rate(posts: list[CorpusPost]) -> float:
    from wildwatch.monitor.evidence import post_evidence

    texts = [p.text for p in posts] * max(1, 2000 // max(1, len(posts)))
    post_evidence(texts[0], [])
    t0 = time.perf_counter()
    for t in texts:
        post_evidence(t, [])
    return len(texts) / (time.perf_counter() - t0)


def hostile_timings() -> dict[str, float]:
    """Seconds to read and score one hostile post (parse and evidence), for the inputs that froze
    the monitor before the text scanners were made linear, and for the largest item a fetch may
    bring (the text work of a post is bounded by its caps, not by the item budget)."""
    from wildwatch.monitor.evidence import post_evidence
    from wildwatch.monitor.sources.feeds import parse_feed
    from wildwatch.monitor.sources.social import next_link
    from wildwatch.monitor.textscan import scan_html
    from wildwatch.store.cases import text_signature

    def rss(body: str) -> bytes:
        return (f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><item><guid>x</guid>'
                f"<title>x</title><description>{body}</description></item></channel></rss>").encode()

    big_json = json.dumps({"items": [{"id": "x", "title": "1 " * 12_000_000, "summary": "ivory " * 1_000_000,
                                      "content_html": "<img" * 3_000_000}]}).encode()
    big_rss = rss("&lt;img" * 3_000_000).replace(b"<title>x</title>", b"<title>" + b"1 " * 10_000_000 + b"</title>")
    cases = {
        "RSS post of 100 KB of '1 1 1'": lambda: [post_evidence(p.text, []) for p in parse_feed(rss("1 " * 50_000))],
        "JSON Feed content_html of 240 KB of '<img'": lambda: [post_evidence(p.text, []) for p in parse_feed(
            json.dumps({"items": [{"id": "x", "content_html": "<img" * 60_000}]}).encode())],
        "page of 270 KB of '<a href=x'": lambda: post_evidence(" ".join(scan_html("<a href=x" * 30_000).text), []),
        "Link header of 64 KB of '<'": lambda: next_link("<" * 65_536),
        # the largest item a fetch may bring, through every text step of one post (parse, score, sign)
        "JSON Feed item of 42 MB (title of '1 ', body of '<img'), parsed, scored, signed": lambda: [
            (post_evidence(p.text, []), text_signature(p.text)) for p in parse_feed(big_json)],
        "RSS item of 41 MB (title of '1 ', body of '&lt;img'), parsed (feedparser) and scored": lambda: [
            post_evidence(p.text, []) for p in parse_feed(big_rss)],
        "post of 8,000 characters of '美甲片虎皮青椒' (not_in traps), scored and signed": lambda: (
            post_evidence("美甲片虎皮青椒" * 20_000, []), text_signature("美甲片虎皮青椒" * 20_000)),
        "post of 8,000 characters of 'والعاج ساحل' (Arabic articles), scored and signed": lambda: (
            post_evidence("والعاج ساحل " * 20_000, []), text_signature("والعاج ساحل " * 20_000)),
    }
    out = {}
    for name, fn in cases.items():
        t0 = time.perf_counter()
        fn()
        out[name] = round(time.perf_counter() - t0, 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("text", "photo"), default="text")
    ap.add_argument("--part", choices=("heldout_v2", "heldout_v1", "heldout", "train", "all"), default="heldout_v2",
                    help="heldout_v2: written in round two, blind; heldout_v1: round one's, read after round one")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/endangered11"))
    ap.add_argument("--ood", type=Path, default=Path("../shared/data/ood_dev"))
    ap.add_argument("--out", type=Path, default=Path("runs/media_watch"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from wildwatch.monitor.evidence import review_threshold
    from wildwatch.store.cases import CaseBook, cases_text
    from wildwatch.store.events import EventStore

    posts = load(None if args.part == "all" else args.part)
    served, images = build(posts, args.mode, args.data, args.ood, args.seed)
    web = Internet(served, images)
    out = args.out / args.part / args.mode
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "watch.db"
        seconds, peak_mib, stderr = run_monitor(web.specs(), db)
        store = EventStore(db)
        cases = CaseBook(store).list(limit=1_000_000)
        (out / "cases.csv").write_text(cases_text(cases, "csv"))
        filed = {post_id(k): s for k, s in store.db.execute("SELECT key, score FROM case_posts")}
        done = {post_id(k) for (k,) in store.db.execute("SELECT key FROM done_items WHERE key LIKE 'post:%'")}
    web.server.shutdown()
    th = review_threshold()
    by_id = {s["id"]: s for s in served}
    rows = [{**by_id[p.id], "flagged": filed.get(p.id, 0.0) >= th} for p in posts]
    langs = sorted({p.lang for p in posts})
    groups = repost_groups(served, cases)
    text_groups = [g for g in groups if g.startswith("text")]
    photo_groups = [g for g in groups if g.startswith("photo")]
    one = lambda gs: sum(1 for g in gs if len(groups[g]) == 1 and None not in groups[g])
    queued = lambda gs: [g for g in gs if groups[g] - {None}]
    results = {
        "mode": args.mode, "part": args.part, "threshold": round(th, 4), "served_posts": len(served),
        "read_posts": len(done), "overall": figures(rows), "per_language": {lang: figures(
            [r for r in rows if r["lang"] == lang]) for lang in langs},
        "per_kind_flagged": {k: f"{sum(r['flagged'] for r in rows if r['kind'] == k)}/"
                                f"{sum(1 for r in rows if r['kind'] == k)}" for k in sorted({r['kind'] for r in rows})},
        # of the groups that reached the queue (a post the model misses and no repost of it reaches it is a miss of
        # recall, not of grouping), and of all groups
        "text_repost_groups_in_one_case": f"{one(text_groups)}/{len(queued(text_groups))} ({len(text_groups)} groups)",
        "photo_repost_groups_in_one_case": f"{one(photo_groups)}/{len(queued(photo_groups))} ({len(photo_groups)} "
                                           "groups)" if photo_groups else "",
        "repost_groups_split": {g: [s["text"][:80] for s in served if s["group"] == g] for g in groups
                                if len(groups[g]) != 1 or None in groups[g]},
        "cases": len(cases), "distinct_case_scores": len({c["score"] for c in cases}),
        "seconds": round(seconds, 2), "posts_per_second_end_to_end": round(len(served) / seconds, 1),
        "text_model_posts_per_second": round(text_model_rate(posts), 1), "peak_rss_mib": round(peak_mib, 1),
        "false_positives": [r["text"] for r in rows if r["flagged"] and not r["label"]],
        "misses": [r["text"] for r in rows if r["label"] and not r["flagged"]],
        "errors": [ln for ln in stderr.splitlines() if "skipped" in ln or "cannot" in ln][:20],
        "hostile_post_seconds": hostile_timings(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    report(results, len(served), th, seconds, peak_mib, bool(photo_groups))


def report(results: dict, served: int, th: float, seconds: float, peak_mib: float, photo_groups: bool) -> None:
    o = results["overall"]
    print(f"{results['mode']} mode, {results['part']} part: {o['posts']} posts ({o['trade']} trade, {o['harmless']} "
          f"hard harmless), {served} served with reposts; threshold {th:.3f}")
    print(f"overall: precision {o['precision']:.3f}  recall {o['recall']:.3f}  hard harmless flagged "
          f"{o['hard_harmless_flagged']:.3f}")
    print("lang  posts  precision  recall  harmless_flagged")
    for lang, f in results["per_language"].items():
        print(f"{lang:4}  {f['posts']:5}  {f['precision']:9.3f}  {f['recall']:6.3f}  {f['hard_harmless_flagged']:16.3f}")
    print(f"reposts in one case: text {results['text_repost_groups_in_one_case']}"
          + (f", photo {results['photo_repost_groups_in_one_case']}" if photo_groups else ""))
    print(f"cases {results['cases']}, distinct scores {results['distinct_case_scores']}")
    print(f"{results['posts_per_second_end_to_end']} posts/s end to end ({seconds:.1f} s, model load included), "
          f"text model alone {results['text_model_posts_per_second']} posts/s; peak RSS {peak_mib:.0f} MiB")
    for name, sec in results["hostile_post_seconds"].items():
        print(f"hostile: {name}: {sec:.3f} s to read and score")


if __name__ == "__main__":
    main()
