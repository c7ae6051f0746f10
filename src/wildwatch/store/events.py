"""The events store: sightings in SQLite (WAL), snapshots kept inside the database, and the
monitor's own state (source progress, finished files and posts, the alert outbox).

Snapshots are stored as JPEG bytes in the database and addressed only by the sighting's integer
id, so serving them never touches a path given by a client. Everything one batch of frames
changes (sightings, queued alerts, how far each source got) is written in one transaction, so a
monitor killed at any moment restarts from a consistent state: nothing is lost and nothing is
recorded twice.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from wildwatch.errors import UnknownNameError, WildwatchError

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
    snapshot BLOB,
    open INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    keywords TEXT NOT NULL DEFAULT '',
    link TEXT NOT NULL DEFAULT '',
    frame_wall_time REAL
);
CREATE INDEX IF NOT EXISTS sightings_wall_start ON sightings (wall_start);
CREATE INDEX IF NOT EXISTS sightings_species ON sightings (species);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS source_progress (source TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS done_items (key TEXT PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sighting_id INTEGER NOT NULL,
    sink TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    delivered_at REAL,
    failed_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered_at, failed_at, next_attempt_at);
"""

# columns added after the first release: older databases get them on open
_LATER_COLUMNS = {"open": "INTEGER NOT NULL DEFAULT 0", "priority": "INTEGER NOT NULL DEFAULT 0",
                  "keywords": "TEXT NOT NULL DEFAULT ''", "link": "TEXT NOT NULL DEFAULT ''",
                  "frame_wall_time": "REAL"}



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
    priority: int = 0
    keywords: str = ""
    link: str = ""
    frame_wall_time: float | None = None
    id: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger id cannot be a sighting


class EventStoreError(WildwatchError):
    """The events database cannot be used as it is; the message says how to recover."""


def row_id(cursor: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just wrote."""
    if cursor.lastrowid is None:
        raise EventStoreError("the database gave no id for the row just written")
    return cursor.lastrowid


class _Damaged(sqlite3.DatabaseError):
    """quick_check found damaged pages."""


def _check_file(path: Path) -> None:
    """Refuse an empty or foreign file before SQLite touches it (SQLite would turn an empty file
    into a new, empty database: every sighting silently gone)."""
    if not path.exists():
        return
    if not path.is_file():
        raise EventStoreError(f"{path}: not a file; give --db a file path")
    if path.stat().st_size == 0:
        raise EventStoreError(f"{path}: the events database is empty (0 bytes), so its sightings are gone or it "
                              f"was never one; nothing was changed. Restore it from a backup, or move it away "
                              f"(mv {path} {path}.empty) to start a new database")
    with open(path, "rb") as f:
        head = f.read(16)
    if head != SQLITE_MAGIC:
        raise EventStoreError(f"{path}: not an SQLite database (damaged, or another file); nothing was changed. "
                              f"Restore it from a backup, or move it away to start a new database")


def explain_sqlite(path: Path, exc: sqlite3.Error) -> EventStoreError:
    """What an SQLite error means for the events database, in words, with what to do."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    text = str(exc).lower()
    if code == 8 or "readonly" in text or "read-only" in text:  # SQLITE_READONLY
        why = ("the database is read-only for this user; nothing was changed. Give it write access to the file "
               "and its folder (SQLite writes its -wal and -shm files beside it), or use another --db")
    elif code == 13 or "disk is full" in text:  # SQLITE_FULL
        why = ("the disk is full; what was recorded before is intact. Free some space and run again: the "
               "monitor goes on where it stopped")
    elif code in (3, 23) or "permission" in text:  # SQLITE_PERM, SQLITE_AUTH
        why = "permission denied; nothing was changed. Give this user access to the file and its folder"
    elif code == 14 or "unable to open" in text:  # SQLITE_CANTOPEN
        why = "cannot open the database file: does its folder exist, and may this user write there?"
    elif code in (5, 6) or "locked" in text:  # SQLITE_BUSY, SQLITE_LOCKED
        why = "the database is locked by another program; try again when it is done"
    elif code == 10:  # SQLITE_IOERR
        why = "the disk could not be read or written (an input/output error); check the disk, then run again"
    elif code in (11, 26) or "malformed" in text or "not a database" in text:  # SQLITE_CORRUPT, SQLITE_NOTADB
        why = (f"the events database is damaged; nothing was changed. Recover what can be read with: sqlite3 "
               f"{path} .recover | sqlite3 recovered.db, then use --db recovered.db; or restore it from a backup")
    else:
        why = "cannot use the events database"
    return EventStoreError(f"{path}: {why} ({exc})")


class WriterLock:
    """One monitor per database: an exclusive lock on ``DB.lock``, released when the process ends
    (even by kill -9)."""

    def __init__(self, db_path: Path):
        import fcntl

        self.path = Path(f"{db_path}.lock")
        self.file = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime; closed by release
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise EventStoreError(f"{db_path}: another wildwatch monitor ({holder}) is writing to this database; "
                                  "stop it, or give this one its own --db") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")
        self.file.flush()

    def release(self) -> None:
        import fcntl

        if not self.file.closed:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()


class EventStore:
    """Sightings and their snapshots in one SQLite file (WAL mode: readers never block the writer).

    ``writer=True`` (the monitor) takes the database's single-writer lock. An empty, foreign or
    damaged file is refused with a message that says how to recover; it is never replaced."""

    def __init__(self, path: str | Path, writer: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _check_file(self.path)
        self.created = not self.path.exists()  # a new database: discard() may remove it again
        self.writer = WriterLock(self.path) if writer else None
        try:
            self._open(check=writer)
        except sqlite3.Error as exc:
            if self.writer:
                self.writer.release()
            damaged = isinstance(exc, _Damaged)
            raise explain_sqlite(self.path, sqlite3.DatabaseError(f"database disk image is malformed: {exc}")
                                 if damaged else exc) from None
        st = os.stat(self.path)
        self.identity = (st.st_dev, st.st_ino)  # to notice the file being deleted or replaced under us

    def check_file(self) -> None:
        """Raise EventStoreError if the database file was deleted or replaced since it was opened
        (writes would go to a file nobody can read again)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self.identity:
            raise EventStoreError(f"{self.path}: the events database was {'deleted' if st is None else 'replaced'} "
                                  "while the monitor was writing to it; stopped, so that nothing more is lost. "
                                  "Restore it from a backup, or start again with a new database (alerts keep "
                                  "their idempotency keys, so receivers can drop the ones sent before)")

    def _open(self, check: bool) -> None:
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        if check:
            result = self.db.execute("PRAGMA quick_check").fetchone()[0]
            if result != "ok":
                raise _Damaged(result)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.lock = threading.RLock()
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(sightings)")}
        if cols:
            for name, decl in _LATER_COLUMNS.items():
                if name not in cols:
                    self.db.execute(f"ALTER TABLE sightings ADD COLUMN {name} {decl}")
        self.db.executescript(SCHEMA)
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?)", (uuid.uuid4().hex,))
        self.instance = self.db.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()[0]

    @classmethod
    def open_existing(cls, path: str | Path) -> EventStore:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no events database here (wildwatch monitor writes one with --db)")
        return cls(path)

    def add(self, s: Sighting, snapshot_jpeg: bytes | None = None, open_: bool = False) -> int:
        with self.lock, self.db:
            return self.insert(s, snapshot_jpeg, open_)

    def insert(self, s: Sighting, snapshot_jpeg: bytes | None = None, open_: bool = False) -> int:
        """Insert inside a transaction the caller holds (``with store.transaction():``)."""
        cols = [k for k in Sighting.__dataclass_fields__ if k != "id"]
        values = [getattr(s, k) for k in cols]
        cur = self.db.execute(
            f"INSERT INTO sightings ({', '.join(cols)}, snapshot, open) VALUES ({', '.join('?' * len(cols))}, ?, ?)",
            [*values, snapshot_jpeg, int(open_)])
        return row_id(cur)

    @contextmanager
    def transaction(self):
        """One atomic write: everything inside commits together or not at all."""
        with self.lock, self.db:
            yield self.db

    def update_sighting(self, sighting_id: int, **values) -> None:
        """Inside a transaction: set columns of a sighting (``snapshot`` and ``open`` included)."""
        allowed = set(Sighting.__dataclass_fields__) | {"snapshot", "open"}
        bad = set(values) - allowed
        if bad:
            raise UnknownNameError(f"not sighting columns: {', '.join(sorted(bad))}")
        sets = ", ".join(f"{k} = ?" for k in values)
        self.db.execute(f"UPDATE sightings SET {sets} WHERE id = ?", [*values.values(), int(sighting_id)])

    def open_sightings(self, source: str | None = None) -> list[tuple[Sighting, bytes | None]]:
        query, args = "SELECT * FROM sightings WHERE open = 1", []
        if source is not None:
            query += " AND source = ?"
            args.append(source)
        with self.lock:
            cur = self.db.execute(query + " ORDER BY id", args)
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
        out = []
        for d in rows:
            snap = d.pop("snapshot", None)
            d.pop("open", None)
            d["threatened"] = bool(d["threatened"])
            out.append((Sighting(**d), snap))
        return out

    # -- monitor state

    def get(self, source: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT state FROM source_progress WHERE source = ?", (source,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_progress(self, source: str, state: dict) -> None:
        """Inside a transaction."""
        self.db.execute("INSERT INTO source_progress (source, state) VALUES (?, ?) "
                        "ON CONFLICT(source) DO UPDATE SET state = excluded.state", (source, json.dumps(state)))

    def is_done(self, key: str) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1 FROM done_items WHERE key = ?", (key,)).fetchone() is not None

    def mark_done(self, key: str) -> None:
        """Inside a transaction."""
        self.db.execute("INSERT OR IGNORE INTO done_items (key, at) VALUES (?, ?)", (key, utc_now()))

    def count(self) -> int:
        with self.lock:
            return int(self.db.execute("SELECT COUNT(*) FROM sightings").fetchone()[0])

    def list(self, since: str | None = None, species: str | None = None, limit: int | None = None,
             newest: bool = False) -> list[Sighting]:
        """Sightings, oldest first; ``since`` is an ISO date or time (UTC). ``limit`` pages in SQL: the
        first ``limit`` sightings, or with ``newest`` the last ``limit`` (still oldest first). Snapshots
        are never read: a listing costs the rows' text, whatever the database holds."""
        cols = list(Sighting.__dataclass_fields__)
        query, args = f"SELECT {', '.join(cols)} FROM sightings WHERE 1=1", list[object]()
        if since:
            query += " AND wall_start >= ?"
            args.append(since)
        if species:
            query += " AND species = ?"
            args.append(species)
        query += " ORDER BY wall_start DESC, id DESC" if newest else " ORDER BY wall_start, id"
        if limit:
            query += " LIMIT ?"
            args.append(int(limit))
        with self.lock:
            rows = self.db.execute(query, args).fetchall()
        if newest:
            rows.reverse()
        out = []
        for row in rows:
            d = dict(zip(cols, row))
            d["threatened"] = bool(d["threatened"])
            out.append(Sighting(**d))
        return out

    def snapshot(self, sighting_id: int) -> bytes | None:
        if not 0 < int(sighting_id) <= MAX_ID:
            return None
        with self.lock:
            row = self.db.execute(
                "SELECT snapshot FROM sightings WHERE id = ?", (int(sighting_id),)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.db.close()
        if self.writer:
            self.writer.release()

    def discard(self) -> None:
        """Close; and when this store made a new database that holds nothing yet (a run that could
        not start), remove it and its lock, so a mistyped source leaves no files behind."""
        with self.lock:
            empty = self.created and not any(self.db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                                             for table in ("sightings", "source_progress", "done_items", "outbox"))
        self.close()
        if empty:
            for suffix in ("", "-wal", "-shm", ".lock"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
