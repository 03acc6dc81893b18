"""Running the node: the SCP in background threads, the worker in the calling thread, the log
on stderr and in ``node.log`` under the data directory (UIDs and AE titles, never patient data)."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import sys
import time
import warnings
from pathlib import Path

from ..errors import HiresError, one_line
from .config import NodeConfig
from .queue import Queue
from .scp import Receiver, start_server
from .worker import Worker, ours

log = logging.getLogger("hires_domain.dicom_node")
POLL = 0.2  # seconds between worker steps when idle
ERROR_PAUSE = 5.0  # seconds after a worker step failed


@contextlib.contextmanager
def node_logging(data_dir: Path, verbose: bool = False):
    """Our log lines (and pynetdicom's errors) to stderr and a rotating ``node.log``; warnings from
    libraries, which may quote attribute values, are dropped."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handlers = [logging.StreamHandler(sys.stderr),
                logging.handlers.RotatingFileHandler(Path(data_dir) / "node.log", maxBytes=10 * 2**20, backupCount=5)]
    loggers = {log: logging.DEBUG if verbose else logging.INFO, logging.getLogger("pynetdicom"): logging.ERROR}
    for h in handlers:
        h.setFormatter(fmt)
    saved = {lg: (lg.level, lg.propagate) for lg in loggers}
    for lg, level in loggers.items():
        lg.setLevel(level)
        lg.propagate = False
        for h in handlers:
            lg.addHandler(h)

    def show(message, category, filename, lineno, file=None, line=None):
        if ours(filename):
            log.warning("%s", one_line(message))

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        for lg, (level, propagate) in saved.items():
            for h in handlers:
                lg.removeHandler(h)
            lg.setLevel(level)
            lg.propagate = propagate
        for h in handlers:
            h.close()


def run(cfg: NodeConfig, verbose: bool = False, stop=lambda: False) -> None:
    """Receive, enhance and send until stopped (a signal, or ``stop()`` returning True)."""
    data_dir = Path(cfg.data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HiresError(f"cannot create --data-dir {data_dir}: {exc.strerror or exc}") from None
    queue = Queue(data_dir)
    with node_logging(data_dir, verbose):
        requeued = queue.recover()
        receiver, worker = Receiver(queue, data_dir), Worker(cfg, queue)
        try:
            server = start_server(cfg, receiver)
        except OSError as exc:
            raise HiresError(f"cannot listen on {cfg.bind}:{cfg.port}: {exc.strerror or exc}") from None
        log.info("%s listening on %s:%d%s; %s; data in %s%s", cfg.aet, cfg.bind, cfg.port, " (TLS)" if cfg.tls else "",
                 "; ".join(r.describe() for r in cfg.rules), data_dir,
                 f"; {requeued} interrupted series queued again" if requeued else "")
        if not cfg.allow_aet:
            log.warning("any calling AE title may store to this node: restrict it with --allow-aet")
        try:
            while not stop():
                try:
                    busy = worker.step()
                except Exception as exc:  # noqa: BLE001 - e.g. a full disk: say so, keep serving, try again
                    log.error("worker: %s: %s", type(exc).__name__, one_line(exc))
                    time.sleep(ERROR_PAUSE)
                    continue
                if not busy:
                    time.sleep(POLL)
        finally:
            server.shutdown()
            log.info("stopped")
