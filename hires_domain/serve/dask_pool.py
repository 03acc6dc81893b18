"""``hires serve --scheduler ADDR``: tasks run on an existing Dask cluster.

The server claims queued tasks from its store and submits ``runner.execute`` for each to the
cluster, never more at once than the cluster has worker threads (the rest stay queued, and
cancellable, in the store). Workers read and write the task directories and the SQLite store
directly, so ``--data-dir`` must be on a filesystem every worker sees at the same path.
Each claim has its own id: an execution whose claim was taken back (shutdown, restart) stops
within one tile without touching the task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from ..errors import HiresError
from .runner import POLL_S, execute
from .store import Store

log = logging.getLogger("hires.serve")
CHECK_S = 10  # how long the workers have to say whether they see the data directory


def _run_claim(data_dir: str, task: dict, device: str, claim: int) -> None:
    """On a Dask worker: run one claimed task unless its claim was taken back (models load once
    per worker, as in ``hires batch``)."""
    from ..models import keep_models

    keep_models()
    store = Store(Path(data_dir))
    execute(store, task, device, lambda: None if store.claimed_by(task["id"]) == claim else "orphaned")


class DaskPool:
    """Runs tasks on the Dask scheduler at ``address`` (connected here, so an unreachable one is a
    one-line error before the server starts)."""

    def __init__(self, data_dir: Path, address: str, max_running: int, device: str = "auto", say=None):
        from ..cluster import connect

        self.data_dir = str(Path(data_dir).resolve())
        self.store = Store(Path(data_dir))
        self.max_running, self.device = max_running, device
        self._stack = contextlib.ExitStack()
        self.client = self._stack.enter_context(connect(scheduler=address, say=say))
        self._check_workers(say)
        self.workers = len(self.client.nthreads())
        self.running: dict[int, tuple[str, object]] = {}  # claim id -> (task id, future)
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, daemon=True, name="hires-dask-dispatch")

    def _check_workers(self, say) -> None:
        """Refuse workers that cannot see the data directory; say which did not answer in time."""
        asked = {w: self.client.submit(os.path.isdir, self.data_dir, workers=[w], allow_other_workers=False,
                                       pure=False) for w in self.client.nthreads()}
        end = time.monotonic() + CHECK_S
        while not all(f.done() for f in asked.values()) and time.monotonic() < end:
            time.sleep(POLL_S)
        blind = [w for w, f in asked.items() if f.status == "finished" and not f.result()]
        silent = [w for w, f in asked.items() if not f.done()]
        if blind:
            self._stack.close()
            raise HiresError(f"{len(blind)} Dask worker(s) cannot see --data-dir {self.data_dir} "
                             f"(e.g. {blind[0]}): it must be on a filesystem shared at the same path")
        if silent and say is not None:
            say(f"dask: {len(silent)} worker(s) did not answer within {CHECK_S} s; they must see {self.data_dir}")

    def start(self) -> None:
        self._thread.start()

    def _dispatch(self) -> None:
        while not self.stopping.wait(POLL_S):
            try:
                self._reap()
                capacity = max(1, sum(self.client.nthreads().values()))
                while len(self.running) < capacity and not self.stopping.is_set():
                    claim = -(uuid.uuid4().int >> 66)  # negative: never a process id; unique across restarts
                    task = self.store.claim(self.max_running, claim)
                    if task is None:
                        break
                    future = self.client.submit(_run_claim, self.data_dir, task, self.device, claim, pure=False,
                                                key=f"hires-task-{task['id']}{claim}")
                    self.running[claim] = (task["id"], future)
            except Exception as exc:  # noqa: BLE001 - the dispatcher must outlive a lost scheduler
                log.error("dask dispatch: %s: %s", type(exc).__name__, str(exc).split("\n")[0])

    def _reap(self) -> None:
        """Forget finished executions; one that failed outside ``execute`` (its worker died more
        often than Dask retries) is queued again or failed, as when a local worker dies."""
        for claim, (tid, future) in list(self.running.items()):
            if not future.done():
                continue
            del self.running[claim]
            if future.status != "finished":
                requeued, failed = self.store.recover(worker=claim)
                log.info("task %s: its Dask execution ended with %s: %s", tid, future.status,
                         "queued again" if requeued else "failed" if failed else "no change")

    def stop(self, timeout: float = 10.0) -> None:
        """Take the claims back (each execution stops within one tile; its task runs again at the
        next start) and close the client."""
        self.stopping.set()
        self._thread.join(timeout)
        for tid, _ in self.running.values():
            self.store.requeue(tid)
        self._stack.close()
