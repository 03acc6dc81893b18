"""Tasks in SQLite under the data directory: safe across threads and processes, and restarts.

Statuses: queued → running → done | failed | cancelled. Workers claim queued tasks in one
transaction (at most ``max_running`` per owner), so the store is also the queue.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path

MAX_ATTEMPTS = 2  # a task the server stopped under this many times is failed, not re-run
FINISHED = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker INTEGER,
    error TEXT,
    warning TEXT,
    outputs TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (status, created);
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks (owner, status);
"""


class Store:
    """One SQLite file, ``tasks.sqlite3`` in ``data_dir``; one connection per thread."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "tasks.sqlite3"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _db(self):
        """This thread's connection: kept open, because closing a WAL database's last connection
        checkpoints it (an fsync per operation)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync per commit; a killed process loses nothing
            db.row_factory = sqlite3.Row
            self._local.db = db
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def task_dir(self, task_id: str) -> Path:
        return self.data_dir / "tasks" / task_id

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def create(self, task_id: str, owner: str, params: dict) -> None:
        with self._db() as db:
            db.execute("INSERT INTO tasks (id, owner, status, params, created) VALUES (?, ?, 'queued', ?, ?)",
                       (task_id, owner, json.dumps(params), time.time()))

    def get(self, task_id: str, owner: str | None = None) -> dict | None:
        """The task as a dict (params and outputs decoded); None if absent or another owner's."""
        with self._db() as db:
            row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None or (owner is not None and row["owner"] != owner):
            return None
        task = dict(row)
        task["params"], task["outputs"] = json.loads(task["params"]), json.loads(task["outputs"])
        return task

    def status(self, task_id: str) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else row[0]

    def claimed_by(self, task_id: str) -> int | None:
        """The worker (process id, or a Dask claim id) of the task's latest claim."""
        with self._db() as db:
            row = db.execute("SELECT worker FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else row[0]

    def count_active(self, owner: str) -> int:
        with self._db() as db:
            return db.execute("SELECT count(*) FROM tasks WHERE owner = ? AND status IN ('queued', 'running')",
                              (owner,)).fetchone()[0]

    def claim(self, max_running: int, worker: int) -> dict | None:
        """Mark the oldest queued task whose owner runs fewer than ``max_running`` tasks as
        running by process ``worker`` and return it (None when there is none)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT id FROM tasks t WHERE status = 'queued' AND (SELECT count(*) FROM tasks r "
                "WHERE r.owner = t.owner AND r.status = 'running') < ? ORDER BY created LIMIT 1",
                (max_running,)).fetchone()
            if row is not None:
                db.execute("UPDATE tasks SET status = 'running', started = ?, attempts = attempts + 1, "
                           "done = 0, total = 0, worker = ? WHERE id = ?", (time.time(), worker, row[0]))
            db.execute("COMMIT")
        return None if row is None else self.get(row[0])

    def requeue(self, task_id: str) -> None:
        """A running task stopped by a shutdown (not by itself): queued again, the attempt not counted."""
        with self._db() as db:
            db.execute("UPDATE tasks SET status = 'queued', done = 0, total = 0, attempts = max(attempts - 1, 0) "
                       "WHERE id = ? AND status = 'running'", (task_id,))

    def progress(self, task_id: str, done: int, total: int) -> None:
        with self._db() as db:
            db.execute("UPDATE tasks SET done = ?, total = ? WHERE id = ? AND status = 'running'",
                       (done, total, task_id))

    def finish(self, task_id: str, status: str, error: str | None = None, warning: str | None = None,
               outputs: dict | None = None) -> bool:
        """Set a final status unless the task was cancelled meanwhile; True when set."""
        with self._db() as db:
            cur = db.execute(
                "UPDATE tasks SET status = ?, finished = ?, error = ?, warning = coalesce(?, warning), "
                "outputs = ? WHERE id = ? AND status NOT IN ('cancelled', 'failed', 'done')",
                (status, time.time(), error, warning, json.dumps(outputs or {}), task_id))
            return cur.rowcount == 1

    def set_warning(self, task_id: str, warning: str) -> None:
        with self._db() as db:
            db.execute("UPDATE tasks SET warning = ? WHERE id = ?", (warning, task_id))

    def cancel(self, task_id: str) -> str | None:
        """queued/running → cancelled; returns the status before (None: no such task)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT status FROM tasks WHERE id = ?", (task_id,)).fetchone()
            if row is not None and row[0] in ("queued", "running"):
                db.execute("UPDATE tasks SET status = 'cancelled', finished = ? WHERE id = ?", (time.time(), task_id))
            db.execute("COMMIT")
        return None if row is None else row[0]

    def delete(self, task_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))

    def recover(self, worker: int | None = None) -> tuple[list[str], list[str]]:
        """Tasks left 'running' by a stopped server (or by the dead process ``worker``) are
        queued again, or failed with the reason after MAX_ATTEMPTS. Returns (requeued, failed) ids."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            query = "SELECT id, attempts FROM tasks WHERE status = 'running'"
            rows = db.execute(query + ("" if worker is None else " AND worker = ?"),
                              () if worker is None else (worker,)).fetchall()
            requeued = [r[0] for r in rows if r[1] < MAX_ATTEMPTS]
            failed = [r[0] for r in rows if r[1] >= MAX_ATTEMPTS]
            why = "the server stopped" if worker is None else "its worker process died"
            db.executemany("UPDATE tasks SET status = 'queued', done = 0, total = 0 WHERE id = ?",
                           [(i,) for i in requeued])
            db.executemany("UPDATE tasks SET status = 'failed', finished = ?, error = ? WHERE id = ?",
                           [(time.time(), f"{why} {MAX_ATTEMPTS} times while running this task (out of memory?); "
                             "not retried again", i) for i in failed])
            db.execute("COMMIT")
        return requeued, failed
