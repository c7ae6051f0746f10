"""The events store: sightings in SQLite (WAL), snapshots kept inside the database.

Snapshots are stored as JPEG bytes in the database and addressed only by the sighting's integer
id, so serving them never touches a path given by a client.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS sightings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    species TEXT NOT NULL,
    common_name TEXT NOT NULL DEFAULT '',
    iucn_status TEXT NOT NULL DEFAULT '',
    threatened INTEGER NOT NULL DEFAULT 0,
    peak_confidence REAL NOT NULL,
    frame_index INTEGER,
    stream_start_s REAL,
    stream_end_s REAL,
    wall_start TEXT NOT NULL,
    wall_end TEXT NOT NULL,
    country TEXT,
    latitude REAL,
    longitude REAL,
    snapshot BLOB
);
CREATE INDEX IF NOT EXISTS sightings_wall_start ON sightings (wall_start);
CREATE INDEX IF NOT EXISTS sightings_species ON sightings (species);
"""


@dataclass
class Sighting:
    """One species seen at one source over a span of time."""

    source: str
    species: str
    peak_confidence: float
    wall_start: str
    wall_end: str
    common_name: str = ""
    iucn_status: str = ""
    threatened: bool = False
    frame_index: int | None = None
    stream_start_s: float | None = None
    stream_end_s: float | None = None
    country: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    id: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class EventStore:
    """Sightings and their snapshots in one SQLite file (WAL mode: readers never block the writer)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    @classmethod
    def open_existing(cls, path: str | Path) -> "EventStore":
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no events database here (wildwatch monitor writes one with --db)")
        return cls(path)

    def add(self, s: Sighting, snapshot_jpeg: bytes | None = None) -> int:
        cols = [k for k in Sighting.__dataclass_fields__ if k != "id"]
        values = [getattr(s, k) for k in cols]
        with self.db:
            cur = self.db.execute(
                f"INSERT INTO sightings ({', '.join(cols)}, snapshot) VALUES ({', '.join('?' * len(cols))}, ?)",
                [*values, snapshot_jpeg])
        return int(cur.lastrowid)

    def list(self, since: str | None = None, species: str | None = None, limit: int | None = None) -> list[Sighting]:
        """Sightings, oldest first; ``since`` is an ISO date or time (UTC)."""
        query, args = "SELECT * FROM sightings WHERE 1=1", []
        if since:
            query += " AND wall_start >= ?"
            args.append(since)
        if species:
            query += " AND species = ?"
            args.append(species)
        query += " ORDER BY wall_start, id"
        if limit:
            query += " LIMIT ?"
            args.append(int(limit))
        cur = self.db.execute(query, args)
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            d = dict(zip(names, row))
            d.pop("snapshot", None)
            d["threatened"] = bool(d["threatened"])
            out.append(Sighting(**d))
        return out

    def snapshot(self, sighting_id: int) -> bytes | None:
        row = self.db.execute("SELECT snapshot FROM sightings WHERE id = ?", (int(sighting_id),)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.db.close()
