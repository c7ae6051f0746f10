"""The alert outbox table: one row per alert and sink, with an idempotency key that never changes.

Rows are added inside the transaction that writes their sighting (or case); the delivery loop
(``monitor.alerts.Outbox``) takes the due rows, and marks each delivered, to retry at a later
time, or failed. Everything SQL about alerts is here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from wildwatch.store.events import EventStore


@dataclass(frozen=True)
class QueuedAlert:
    """A row of the outbox that is due."""

    id: int
    sighting_id: int
    sink: str
    key: str
    payload: str  # JSON
    attempts: int


class OutboxTable:
    def __init__(self, store: EventStore):
        self.store = store

    def add(self, sighting_id: int, sink: str, key: str, payload: str, priority: int, not_before: float) -> None:
        """Inside the store's transaction; an alert whose key is there already is left as it is."""
        self.store.db.execute(
            "INSERT OR IGNORE INTO outbox (sighting_id, sink, idempotency_key, payload, priority, next_attempt_at, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?)", (sighting_id, sink, key, payload, priority, not_before, time.time()))

    def counts(self) -> dict:
        with self.store.lock:
            row = self.store.db.execute(
                "SELECT SUM(delivered_at IS NULL AND failed_at IS NULL), SUM(delivered_at IS NOT NULL), "
                "SUM(failed_at IS NOT NULL) FROM outbox").fetchone()
        return {"pending": int(row[0] or 0), "delivered": int(row[1] or 0), "failed": int(row[2] or 0)}

    def due(self, now: float, limit: int = 50, sink: str | None = None) -> list[QueuedAlert]:
        """Pending alerts whose time has come (to one sink, or to all), most urgent first."""
        only = "AND sink = ? " if sink is not None else ""
        with self.store.lock:
            rows = self.store.db.execute(
                "SELECT id, sighting_id, sink, idempotency_key, payload, attempts FROM outbox WHERE delivered_at IS NULL "
                f"AND failed_at IS NULL AND next_attempt_at <= ? {only}ORDER BY priority DESC, id LIMIT ?",
                (now, *([sink] if sink is not None else []), limit)).fetchall()
        return [QueuedAlert(*row) for row in rows]

    def delivered(self, row_id: int, attempts: int) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE outbox SET attempts = ?, delivered_at = ?, last_error = NULL WHERE id = ?",
                       (attempts, time.time(), row_id))

    def retry_at(self, row_id: int, attempts: int, when: float, error: str) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ? WHERE id = ?",
                       (attempts, when, error, row_id))

    def failed(self, row_id: int, attempts: int, error: str) -> None:
        """Refused for good (kept in the table, as failed)."""
        with self.store.transaction() as db:
            db.execute("UPDATE outbox SET attempts = ?, failed_at = ?, last_error = ? WHERE id = ?",
                       (attempts, time.time(), error, row_id))

    def next_due_in(self, sink: str | None = None) -> float | None:
        """Seconds until the next pending alert is due (0 when one is due now), or None."""
        only, args = ("AND sink = ?", (sink,)) if sink is not None else ("", ())
        with self.store.lock:
            row = self.store.db.execute("SELECT MIN(next_attempt_at) FROM outbox WHERE delivered_at IS NULL "
                                        f"AND failed_at IS NULL {only}", args).fetchone()
        return None if row[0] is None else max(0.0, row[0] - time.time())
