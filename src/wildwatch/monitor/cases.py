"""Cases, not detections: posts that share a photo (a perceptual hash within a few bits, so
re-encoded or resized copies too) or a link are one case, listing every post, account and site.

A case alerts once, when it first reaches the review threshold, and again only when it grows
(a new account or a new site). An analyst marks it "reviewed", "reported" (to an agency) or
"not_relevant"; marks live in the events database beside the sightings, so no restart loses them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from wildwatch.data.splits import hamming
from wildwatch.errors import UsageError
from wildwatch.monitor.events import EventStore
from wildwatch.monitor.evidence import REVIEW_THRESHOLD, Evidence

SAME_PHOTO_BITS = 10  # of 64: re-encoding and resizing move a dHash by a few bits, another photo by ~32
# a flat image (a blank frame, one colour) has a hash of nearly all zeros or ones: it says nothing
# about which photo it is, and is never used to group posts
MIN_HASH_BITS, MAX_HASH_BITS = 8, 56


def distinctive(h: int) -> bool:
    return MIN_HASH_BITS <= h.bit_count() <= MAX_HASH_BITS
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

    def add_post(self, post: Post, ev: Evidence, hashes: list[int], thumbnail: bytes | None) -> CaseUpdate | None:
        """File a post under its case (a new one, or the one sharing a photo or the link); None when
        the post was filed before (a restart) or says nothing worth a case."""
        db = self.store.db
        if db.execute("SELECT 1 FROM case_posts WHERE key = ?", (post.key,)).fetchone():
            return None
        hashes = [h for h in hashes if distinctive(h)]
        case_id = self._matching_case(hashes, post.link)
        if case_id is None and not ev.flagged:
            return None  # nothing to review, and nothing to join
        now = time.time()
        site = post.site or site_of(post.link, post.source)
        is_new = case_id is None
        if is_new:
            case_id = int(db.execute(
                "INSERT INTO cases (score, reason, species, iucn_status, terms, first_seen, last_seen, thumbnail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ev.score, ev.reason, ev.species, ev.iucn_status, json.dumps([t.text for t in ev.terms]), now, now,
                 thumbnail)).lastrowid)
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
        return CaseUpdate(case_id, is_new, self._alert_due(case_id))

    def _matching_case(self, hashes: list[int], link: str) -> int | None:
        db = self.store.db
        if link:
            row = db.execute("SELECT case_id FROM case_links WHERE link = ?", (normal_link(link),)).fetchone()
            if row:
                return int(row[0])
        best = None
        for h, case_id in db.execute("SELECT hash, case_id FROM case_photos"):
            if any(hamming(_unsigned(h), mine) <= SAME_PHOTO_BITS for mine in hashes):
                best = case_id if best is None else min(best, case_id)
        return best

    def _alert_due(self, case_id: int) -> str | None:
        db = self.store.db
        score, alerts, accounts_then, sites_then = db.execute(
            "SELECT score, alerts, alerted_accounts, alerted_sites FROM cases WHERE id = ?", (case_id,)).fetchone()
        if score < REVIEW_THRESHOLD:
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
        """Cases by score, highest first, each with its posts."""
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if case_id is not None:
            where.append("id = ?")
            args.append(int(case_id))
        sql = ("SELECT id, score, reason, species, iucn_status, terms, status, status_at, first_seen, last_seen, alerts "
               "FROM cases" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY score DESC, id LIMIT ?")
        with self.store.lock:
            rows = self.store.db.execute(sql, (*args, limit)).fetchall()
            out = []
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
                                       "text": p[5], "score": p[6], "reason": p[7], "seen_at": p[8]} for p in posts]})
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


def cases_text(cases: list[dict], fmt: str) -> str:
    """Cases as JSON (with their posts) or CSV (one row per post, the case's columns repeated)."""
    if fmt == "json":
        return json.dumps(cases, indent=1, ensure_ascii=False)
    if fmt != "csv":
        raise UsageError(f"unknown format {fmt!r} for cases: use csv or json")
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


FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_text(value: str) -> str:
    """Text from a post made inert for a spreadsheet: a cell that would start a formula (=, +, -, @,
    a tab or line break, or their full-width forms) gets a leading apostrophe, so ``=HYPERLINK(...)``
    or ``=cmd|...`` is shown as text and never run when the CSV is opened."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h  # SQLite integers are signed 64-bit


def _unsigned(h: int) -> int:
    return h + (1 << 64) if h < 0 else h
