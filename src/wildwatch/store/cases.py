"""Cases, not detections: posts that share a photo (a perceptual hash within a few bits, so
re-encoded or resized copies too), a link, or nearly the same text (MinHash of the normalised
text: a repost with another price, an emoji or a contact added) are one case, listing every post,
account and site, across sources.

The review queue orders cases by their calibrated score (the best post's probability of being
trade, full precision), then by how far they spread (accounts, sites, posts), then by age: no two
cases share a place. An analyst's marks ("reported", "not_relevant") export as labelled posts
(``cases_text(..., "labels")``) that ``benchmarks/train_relevance.py --extra`` trains on.

A case alerts once, when it first reaches the review threshold, and again only when it grows
(a new account or a new site). An analyst marks it "reviewed", "reported" (to an agency) or
"not_relevant"; marks live in the events database beside the sightings, so no restart loses them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import numpy as np

from wildwatch.data.splits import hamming
from wildwatch.errors import UsageError
from wildwatch.store.events import EventStore, row_id
from wildwatch.text import normalise, spreadsheet_text

SAME_PHOTO_BITS = 10  # of 64: re-encoding and resizing move a dHash by a few bits, another photo by ~32
# a flat image (a blank frame, one colour) has a hash of nearly all zeros or ones: it says nothing
# about which photo it is, and is never used to group posts
MIN_HASH_BITS, MAX_HASH_BITS = 8, 56


# near-duplicate texts: MinHash over character 4-grams of the normalised text (letters and digits
# only), 64 hashes in 32 bands of 2 for candidates, then an estimated Jaccard similarity of at
# least SAME_TEXT_JACCARD; texts shorter than MIN_TEXT_CHARS ("for sale", "good morning") never group
MINHASH, BANDS, SAME_TEXT_JACCARD, MIN_TEXT_CHARS, SHINGLE = 64, 32, 0.5, 24, 4
_SEEDS = np.random.default_rng(20240531).integers(1, 2**63, size=MINHASH, dtype=np.uint64)
_MUL = np.uint64(0x100000001B3)


def distinctive(h: int) -> bool:
    return MIN_HASH_BITS <= h.bit_count() <= MAX_HASH_BITS


def text_signature(text: str) -> np.ndarray | None:
    """The MinHash signature (64 uint64) of a text's character 4-grams, or None for a short text."""
    low = "".join(c for c in normalise(text) if c.isalnum() or c == " ")
    low = " ".join(w for w in low.split() if not w.startswith(("http", "www")))
    # a Chinese or Thai character carries about as much as a short word: it counts three
    if sum(3 if "\u0e00" <= c <= "\u0e7f" or c >= "\u2e80" else 1 for c in low) < MIN_TEXT_CHARS or len(low) < 8:
        return None
    codes = np.frombuffer(low.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    m = len(codes) - SHINGLE + 1
    with np.errstate(over="ignore"):
        h = np.full(m, np.uint64(0xCBF29CE484222325), dtype=np.uint64)
        for j in range(SHINGLE):
            h = (h ^ codes[j:j + m]) * _MUL
        h = np.unique(h)
        mixed = (h[None, :] ^ _SEEDS[:, None]) * _MUL
        mixed ^= mixed >> np.uint64(29)
        mixed *= _MUL
    return mixed.min(axis=1)


def _bands(sig: np.ndarray) -> list[tuple[int, int]]:
    rows = MINHASH // BANDS
    with np.errstate(over="ignore"):
        vals = [(int(b), int(np.bitwise_xor.reduce(sig[b * rows:(b + 1) * rows] * _MUL ** np.arange(1, rows + 1,
                                                                                                    dtype=np.uint64))))
                for b in range(BANDS)]
    return [(b, _signed(v)) for b, v in vals]


STATUSES = ("new", "reviewed", "reported", "not_relevant")

SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    score REAL NOT NULL,
    reason TEXT NOT NULL,
    species TEXT NOT NULL DEFAULT '',
    iucn_status TEXT NOT NULL DEFAULT '',
    terms TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL DEFAULT 'new',
    status_at REAL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    alerts INTEGER NOT NULL DEFAULT 0,
    alerted_accounts INTEGER NOT NULL DEFAULT 0,
    alerted_sites INTEGER NOT NULL DEFAULT 0,
    thumbnail BLOB
);
CREATE TABLE IF NOT EXISTS case_posts (
    key TEXT PRIMARY KEY,
    case_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    site TEXT NOT NULL,
    account TEXT NOT NULL DEFAULT '',
    link TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL DEFAULT '',
    score REAL NOT NULL,
    reason TEXT NOT NULL,
    seen_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS case_posts_case ON case_posts (case_id);
CREATE TABLE IF NOT EXISTS case_photos (hash INTEGER NOT NULL, case_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS case_links (link TEXT PRIMARY KEY, case_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS case_text_bands (band INTEGER NOT NULL, value INTEGER NOT NULL, case_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS case_text_bands_value ON case_text_bands (band, value);
CREATE TABLE IF NOT EXISTS case_text_sigs (case_id INTEGER NOT NULL, sig BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS case_text_sigs_case ON case_text_sigs (case_id);
"""


@dataclass
class Post:
    """A post as the sources give it to the case book."""

    key: str  # unique: source and post id
    source: str
    link: str
    text: str
    account: str = ""
    site: str = ""


class _Term(Protocol):
    @property
    def text(self) -> str: ...


class CaseEvidence(Protocol):
    """What the case book reads of a post's evidence (``monitor.evidence.Evidence`` is one); it
    reads, never writes, so each member is a read-only property."""

    @property
    def score(self) -> float: ...

    @property
    def reason(self) -> str: ...

    @property
    def species(self) -> str: ...

    @property
    def iucn_status(self) -> str: ...

    @property
    def terms(self) -> Sequence[_Term]: ...

    @property
    def threshold(self) -> float:
        """A case reaches review at this score."""

    @property
    def flagged(self) -> bool: ...


@dataclass
class CaseUpdate:
    case_id: int
    is_new_case: bool
    alert: str | None  # why it alerts now ("new case", "grew: 2 accounts, 1 site"), or None


def normal_link(link: str) -> str:
    u = urlsplit(link.strip())
    return f"{u.netloc.lower()}{u.path.rstrip('/')}" + (f"?{u.query}" if u.query else "") if u.netloc else link.strip()


def site_of(link: str, source: str) -> str:
    return (urlsplit(link).hostname or urlsplit(source).hostname or source).lower()


class CaseBook:
    def __init__(self, store: EventStore):
        self.store = store
        with store.transaction() as db:
            db.executescript(SCHEMA)

    # -- writing (inside the store's transaction)

    def add_post(self, post: Post, ev: CaseEvidence, hashes: list[int], thumbnail: bytes | None) -> CaseUpdate | None:
        """File a post under its case (a new one, or the one sharing a photo or the link); None when
        the post was filed before (a restart) or says nothing worth a case."""
        db = self.store.db
        if db.execute("SELECT 1 FROM case_posts WHERE key = ?", (post.key,)).fetchone():
            return None
        hashes = [h for h in hashes if distinctive(h)]
        sig = text_signature(post.text)
        matches = self._matching_cases(hashes, post.link, sig)
        case_id = matches[0] if matches else None
        if len(matches) > 1:  # the post ties cases together (a photo of one, the text of another): one case now
            self._merge(matches[0], matches[1:])
        if case_id is None and not ev.flagged:
            return None  # nothing to review, and nothing to join
        now = time.time()
        site = post.site or site_of(post.link, post.source)
        is_new = case_id is None
        if case_id is None:
            case_id = row_id(db.execute(
                "INSERT INTO cases (score, reason, species, iucn_status, terms, first_seen, last_seen, thumbnail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ev.score, ev.reason, ev.species, ev.iucn_status, json.dumps([t.text for t in ev.terms]), now, now,
                 thumbnail)))
        else:
            row = db.execute("SELECT score FROM cases WHERE id = ?", (case_id,)).fetchone()
            if ev.score > row[0]:
                db.execute("UPDATE cases SET score = ?, reason = ?, species = ?, iucn_status = ?, terms = ?, "
                           "thumbnail = COALESCE(?, thumbnail) WHERE id = ?",
                           (ev.score, ev.reason, ev.species, ev.iucn_status, json.dumps([t.text for t in ev.terms]),
                            thumbnail, case_id))
            db.execute("UPDATE cases SET last_seen = ? WHERE id = ?", (now, case_id))
        db.execute("INSERT INTO case_posts (key, case_id, source, site, account, link, text, score, reason, seen_at) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (post.key, case_id, post.source, site, post.account, post.link, post.text[:4000], ev.score,
                    ev.reason, now))
        db.executemany("INSERT INTO case_photos (hash, case_id) VALUES (?, ?)",
                       [(_signed(h), case_id) for h in hashes])
        if post.link:
            db.execute("INSERT OR IGNORE INTO case_links (link, case_id) VALUES (?, ?)", (normal_link(post.link), case_id))
        if sig is not None:
            db.executemany("INSERT INTO case_text_bands (band, value, case_id) VALUES (?, ?, ?)",
                           [(b, v, case_id) for b, v in _bands(sig)])
            db.execute("INSERT INTO case_text_sigs (case_id, sig) VALUES (?, ?)", (case_id, sig.tobytes()))
        return CaseUpdate(case_id, is_new, self._alert_due(case_id, ev.threshold))

    def _matching_cases(self, hashes: list[int], link: str, sig: np.ndarray | None = None) -> list[int]:
        """Every case that shares the link, a photo or nearly the text, oldest first."""
        db = self.store.db
        found: set[int] = set()
        if link:
            row = db.execute("SELECT case_id FROM case_links WHERE link = ?", (normal_link(link),)).fetchone()
            if row:
                found.add(int(row[0]))
        if hashes:
            for h, case_id in db.execute("SELECT hash, case_id FROM case_photos"):
                if any(hamming(_unsigned(h), mine) <= SAME_PHOTO_BITS for mine in hashes):
                    found.add(int(case_id))
        if sig is not None:
            found |= self._same_text_cases(sig)
        return sorted(found)

    def _same_text_cases(self, sig: np.ndarray) -> set[int]:
        """The cases holding a text whose estimated Jaccard similarity to ``sig`` is high enough."""
        db = self.store.db
        bands = _bands(sig)
        where = " OR ".join("(band = ? AND value = ?)" for _ in bands)
        candidates = {r[0] for r in db.execute(f"SELECT DISTINCT case_id FROM case_text_bands WHERE {where}",
                                                [x for bv in bands for x in bv])}
        out = set()
        for case_id in candidates:
            for (blob,) in db.execute("SELECT sig FROM case_text_sigs WHERE case_id = ?", (case_id,)):
                if float((np.frombuffer(blob, dtype=np.uint64) == sig).mean()) >= SAME_TEXT_JACCARD:
                    out.add(int(case_id))
                    break
        return out

    def _merge(self, into: int, others: list[int]) -> None:
        """Move the posts, photos, links and texts of ``others`` into case ``into``, which keeps the
        best score and reason, and the analyst's mark when it has one; the others are deleted."""
        db = self.store.db
        marks = ",".join("?" * len(others))
        for table in ("case_posts", "case_photos", "case_text_bands", "case_text_sigs"):
            db.execute(f"UPDATE {table} SET case_id = ? WHERE case_id IN ({marks})", (into, *others))
        db.execute(f"UPDATE OR IGNORE case_links SET case_id = ? WHERE case_id IN ({marks})", (into, *others))
        best = db.execute(f"SELECT score, reason, species, iucn_status, terms, thumbnail, status, status_at, first_seen "
                          f"FROM cases WHERE id IN (?, {marks}) ORDER BY score DESC LIMIT 1", (into, *others)).fetchone()
        db.execute("UPDATE cases SET score = ?, reason = ?, species = ?, iucn_status = ?, terms = ?, "
                   "thumbnail = COALESCE(?, thumbnail), first_seen = MIN(first_seen, ?) WHERE id = ?",
                   (*best[:6], best[8], into))
        db.execute("UPDATE cases SET status = ?, status_at = ? WHERE id = ? AND status = 'new'", (best[6], best[7], into))
        db.execute(f"DELETE FROM cases WHERE id IN ({marks})", others)

    def _alert_due(self, case_id: int, threshold: float) -> str | None:
        db = self.store.db
        score, alerts, accounts_then, sites_then = db.execute(
            "SELECT score, alerts, alerted_accounts, alerted_sites FROM cases WHERE id = ?", (case_id,)).fetchone()
        if score < threshold:
            return None
        accounts, sites = db.execute("SELECT COUNT(DISTINCT site || '|' || account), COUNT(DISTINCT site) "
                                     "FROM case_posts WHERE case_id = ?", (case_id,)).fetchone()
        if alerts and accounts <= accounts_then and sites <= sites_then:
            return None
        why = "new case" if not alerts else (f"case grew: {accounts} accounts, {sites} sites (was {accounts_then}, "
                                             f"{sites_then})")
        db.execute("UPDATE cases SET alerts = alerts + 1, alerted_accounts = ?, alerted_sites = ? WHERE id = ?",
                   (accounts, sites, case_id))
        return why

    # -- reading and marking

    def mark(self, case_id: int, status: str) -> None:
        if status not in STATUSES:
            raise UsageError(f"status {status!r}: use one of {', '.join(STATUSES)}")
        with self.store.transaction() as db:
            if db.execute("UPDATE cases SET status = ?, status_at = ? WHERE id = ?",
                          (status, time.time(), int(case_id))).rowcount == 0:
                raise KeyError(case_id)

    def get(self, case_id: int) -> dict | None:
        found = self.list(case_id=case_id)
        return found[0] if found else None

    def list(self, status: str | None = None, limit: int = 200, case_id: int | None = None) -> list[dict]:
        """The review queue: cases by score (highest first), then by accounts, sites and posts (more
        first), then oldest first; each with its posts and its place (``rank``, from 1)."""
        where: list[str] = []
        args: list[object] = []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if case_id is not None:
            where.append("id = ?")
            args.append(int(case_id))
        sql = ("SELECT id, score, reason, species, iucn_status, terms, status, status_at, first_seen, last_seen, alerts "
               "FROM cases" + (f" WHERE {' AND '.join(where)}" if where else "") +
               " ORDER BY score DESC, (SELECT COUNT(DISTINCT site || '|' || account) FROM case_posts WHERE case_id = "
               "cases.id) DESC, (SELECT COUNT(*) FROM case_posts WHERE case_id = cases.id) DESC, first_seen, id "
               "LIMIT ?")
        with self.store.lock:
            rows = self.store.db.execute(sql, (*args, limit)).fetchall()
            out: list[dict] = []
            for r in rows:
                posts = self.store.db.execute(
                    "SELECT key, source, site, account, link, text, score, reason, seen_at FROM case_posts "
                    "WHERE case_id = ? ORDER BY seen_at", (r[0],)).fetchall()
                out.append({"id": r[0], "score": r[1], "reason": r[2], "species": r[3], "iucn_status": r[4],
                            "terms": json.loads(r[5]), "status": r[6], "status_at": r[7], "first_seen": r[8],
                            "last_seen": r[9], "alerts": r[10],
                            "accounts": sorted({f"{p[3] or '(no account)'}@{p[2]}" for p in posts}),
                            "sites": sorted({p[2] for p in posts}),
                            "posts": [{"key": p[0], "source": p[1], "site": p[2], "account": p[3], "link": p[4],
                                       "text": p[5], "score": p[6], "reason": p[7], "seen_at": p[8]} for p in posts],
                            "rank": len(out) + 1})
        return out

    def thumbnail(self, case_id: int) -> bytes | None:
        return case_thumbnail(self.store, case_id)


def case_thumbnail(store: EventStore, case_id: int) -> bytes | None:
    """A case's photo (JPEG), or None; also what an email alert attaches."""
    if not 0 < int(case_id) < 2**63:
        return None
    with store.lock:
        row = store.db.execute("SELECT thumbnail FROM cases WHERE id = ?", (int(case_id),)).fetchone()
    return row[0] if row else None


LABELS = {"reported": 1, "not_relevant": 0}


def labelled_posts(cases: list[dict]) -> list[dict]:
    """The analyst's marks as training data: each post of a case marked "reported" (label 1) or
    "not_relevant" (label 0), once per distinct text."""
    rows, seen = [], set()
    for c in cases:
        if c["status"] not in LABELS:
            continue
        for p in c["posts"]:
            if p["text"] and p["text"] not in seen:
                seen.add(p["text"])
                rows.append({"text": p["text"], "label": LABELS[c["status"]], "status": c["status"],
                             "case_id": c["id"], "post": p["key"], "link": p["link"], "marked_at": c["status_at"]})
    return rows


def cases_text(cases: list[dict], fmt: str) -> str:
    """Cases as JSON (with their posts), CSV (one row per post, the case's columns repeated), or
    ``labels``: the analyst's marks as labelled posts, one JSON object a line (for retraining)."""
    if fmt == "json":
        return json.dumps(cases, indent=1, ensure_ascii=False)
    if fmt == "labels":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in labelled_posts(cases))
    if fmt != "csv":
        raise UsageError(f"unknown format {fmt!r} for cases: use csv, json or labels")
    import csv
    import io

    buf = io.StringIO()
    cols = ["case_id", "score", "status", "species", "iucn_status", "reason", "terms", "post", "site", "account",
            "link", "post_score", "post_reason", "text"]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for c in cases:
        for p in c["posts"]:
            w.writerow({"case_id": c["id"], "score": c["score"], "status": c["status"],
                        **{k: spreadsheet_text(v) for k, v in (
                            ("species", c["species"]), ("iucn_status", c["iucn_status"]), ("reason", c["reason"]),
                            ("terms", "|".join(c["terms"])), ("post", p["key"]), ("site", p["site"]),
                            ("account", p["account"]), ("link", p["link"]), ("post_reason", p["reason"]),
                            ("text", p["text"]))},
                        "post_score": p["score"]})
    return buf.getvalue()


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h  # SQLite integers are signed 64-bit


def _unsigned(h: int) -> int:
    return h + (1 << 64) if h < 0 else h
