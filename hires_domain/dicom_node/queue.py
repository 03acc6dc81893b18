"""The node's queue: one SQLite file, ``node.sqlite3`` under the data directory, one row per
received series and one per instance. Safe across the receiving threads, the worker and restarts.

A series moves received → queued → enhancing → sending → sent, or ends failed with a one-line
reason. Every move is a compare-and-set on the status it leaves, so a move made meanwhile (a
late instance reopening the series) wins over a stale one.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path

STATUSES = ("received", "queued", "enhancing", "sending", "sent", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    calling_aet TEXT NOT NULL,
    modality TEXT NOT NULL,
    description TEXT NOT NULL,
    status TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    updated REAL NOT NULL,
    rule TEXT,
    destination TEXT,
    derived_uid TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL,
    failing_since REAL,
    reason TEXT,
    purged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS series_status ON series (status, last_seen);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances (series_uid);
"""


class Queue:
    """The SQLite queue in ``data_dir``; one connection per thread."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / "node.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA synchronous=FULL")  # a success reply to the sender is durable
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextlib.contextmanager
    def _transaction(self):
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def add_instance(self, sop_uid: str, series_uid: str, study_uid: str, calling_aet: str, modality: str,
                     description: str) -> bool:
        """Record a stored instance; True when it is new. A new instance of a series that left
        'received' (it came after the series timeout) reopens the series: all of it runs again."""
        when = time.time()
        with self._transaction() as db:
            new = db.execute("INSERT OR IGNORE INTO instances VALUES (?, ?)", (sop_uid, series_uid)).rowcount == 1
            db.execute(
                "INSERT INTO series (uid, study_uid, calling_aet, modality, description, status, first_seen, "
                "last_seen, updated) VALUES (?, ?, ?, ?, ?, 'received', ?, ?, ?) ON CONFLICT (uid) DO UPDATE SET "
                "last_seen = excluded.last_seen, updated = excluded.updated",
                (series_uid, study_uid, calling_aet, modality, description, when, when, when))
            if new:
                db.execute("UPDATE series SET status = 'received', rule = NULL, destination = NULL, "
                           "derived_uid = NULL, attempts = 0, next_try = NULL, failing_since = NULL, reason = NULL, "
                           "purged = 0 WHERE uid = ? AND status != 'received'", (series_uid,))
        return new

    def move(self, uid: str, old: str, new: str, **fields) -> bool:
        """Set ``new`` status (and ``fields``) if the series is still ``old``; True when set."""
        sets = "".join(f", {k} = ?" for k in fields)
        cur = self._db().execute(f"UPDATE series SET status = ?, updated = ?{sets} WHERE uid = ? AND status = ?",
                                 (new, time.time(), *fields.values(), uid, old))
        return cur.rowcount == 1

    def retry_later(self, uid: str, reason: str, next_try: float) -> dict | None:
        """A failed send: one more attempt counted, the reason kept; returns the series (None if it moved)."""
        now = time.time()
        self._db().execute("UPDATE series SET attempts = attempts + 1, reason = ?, next_try = ?, updated = ?, "
                           "failing_since = coalesce(failing_since, ?) WHERE uid = ? AND status = 'sending'",
                           (reason, next_try, now, now, uid))
        return self.get(uid)

    def get(self, uid: str) -> dict | None:
        row = self._db().execute("SELECT * FROM series WHERE uid = ?", (uid,)).fetchone()
        return None if row is None else dict(row)

    def select(self, where: str = "1", args: tuple = (), limit: int = -1) -> list[dict]:
        """Series rows (with their instance count) matching an SQL condition, oldest first."""
        return [dict(r) for r in self._db().execute(
            "SELECT s.*, (SELECT count(*) FROM instances i WHERE i.series_uid = s.uid) AS instances "
            f"FROM series s WHERE {where} ORDER BY first_seen LIMIT ?", (*args, limit))]

    def complete(self, quiet_since: float) -> list[dict]:
        """Series still 'received' whose last instance arrived before ``quiet_since``."""
        return self.select("status = 'received' AND last_seen < ?", (quiet_since,))

    def recover(self) -> int:
        """At start-up: a series a stopped node was enhancing is queued again (its output, if any,
        was never sent). Returns how many."""
        return self._db().execute("UPDATE series SET status = 'queued' WHERE status = 'enhancing'").rowcount

    def counts(self) -> dict[str, int]:
        rows = dict(self._db().execute("SELECT status, count(*) FROM series GROUP BY status").fetchall())
        return {s: rows.get(s, 0) for s in STATUSES}

    def mark_purged(self, uid: str) -> None:
        self._db().execute("UPDATE series SET purged = 1 WHERE uid = ?", (uid,))
