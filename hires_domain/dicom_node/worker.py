"""The node's worker: a series quiet for the series timeout is matched to a rule, enhanced into
``derived/<SeriesInstanceUID>`` by ``pipeline.enhance_file`` (what ``hires enhance`` runs on a
series directory) and sent, with back-off while the destination is down; every series ends
sent or failed with a one-line reason."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
import warnings
from pathlib import Path

import pydicom

from ..errors import HiresError, one_line
from .config import DAY, NodeConfig
from .queue import Queue
from .rules import match
from .send import SendError, send_files

log = logging.getLogger("hires_domain.dicom_node")


class Worker:
    """One step at a time, in the calling thread (``step``); state lives in the queue."""

    def __init__(self, cfg: NodeConfig, queue: Queue):
        self.cfg, self.queue = cfg, queue
        self.incoming = Path(cfg.data_dir) / "incoming"
        self.derived = Path(cfg.data_dir) / "derived"
        self.derived.mkdir(parents=True, exist_ok=True)
        self.rules = {r.name: r for r in cfg.rules}
        self.destinations = {r.destination.name: r.destination for r in cfg.rules}

    def output(self, uid: str) -> Path:
        """Where the derived series of source series ``uid`` is written (a name without a suffix)."""
        return self.derived / uid / "series"

    def step(self) -> bool:
        """Do what is due: queue complete series, enhance one, send the due ones, purge old files.
        Returns True when something was done (call again at once)."""
        now = time.time()
        busy = False
        for s in self.queue.complete(now - self.cfg.series_timeout):
            self._route(s)
            busy = True
        queued = self.queue.select("status = 'queued'", limit=1)
        if queued:
            self._enhance(queued[0])
            busy = True
        for s in self.queue.select("status = 'sending' AND coalesce(next_try, 0) <= ?", (time.time(),)):
            self._send(s)
            busy = True
        if self.cfg.keep_days:
            self._purge(now - self.cfg.keep_days * DAY)
        return busy

    def _fail(self, s: dict, old: str, reason: str) -> None:
        if self.queue.move(s["uid"], old, "failed", reason=reason):
            log.warning("series %s failed: %s", s["uid"], reason)

    def _configured(self, s: dict, key: str, known: dict):
        """The rule or destination ``s`` was routed to; None, and the series failed, when the
        configuration of a restarted node no longer has it."""
        found = known.get(s[key])
        if found is None:
            self._fail(s, s["status"], f"{key} '{s[key]}' is no longer configured")
        return found

    def _route(self, s: dict) -> None:
        rule = match(self.cfg.rules, s["modality"], s["description"], s["calling_aet"])
        if rule is None:
            self._fail(s, "received", f"no rule takes this series (Modality {s['modality'] or 'none'}, "
                                      f"calling AE {s['calling_aet']})")
            return
        if self.queue.move(s["uid"], "received", "queued", rule=rule.name, destination=rule.destination.name):
            log.info("series %s complete: %d instances from %s; %s", s["uid"], s["instances"], s["calling_aet"],
                     rule.describe())

    def _enhance(self, s: dict) -> None:
        uid = s["uid"]
        rule = self._configured(s, "rule", self.rules)
        if rule is None:
            return
        if not self.queue.move(uid, "queued", "enhancing"):
            return
        settings = dataclasses.replace(rule.settings, device=self.cfg.device)
        start = time.perf_counter()
        out = self.output(uid)
        try:
            from ..pipeline import enhance_file

            out.parent.mkdir(exist_ok=True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                enhance_file(self.incoming / uid, out, settings, overwrite=True)
        except Exception as exc:  # noqa: BLE001 - a bug too must fail this series, not stop the node
            with contextlib.suppress(OSError):
                out.parent.rmdir()  # made above, empty
            self._fail(s, "enhancing", _reason(exc))
            return
        for message in dict.fromkeys(str(w.message) for w in caught if ours(w.filename)):
            log.warning("series %s: %s", uid, one_line(message))
        first = pydicom.dcmread(next(out.glob("*.dcm")), stop_before_pixels=True)
        if self.queue.move(uid, "enhancing", "sending", derived_uid=str(first.SeriesInstanceUID)):
            log.info("series %s enhanced (%s) in %.1f s: derived series %s", uid, settings.model,
                     time.perf_counter() - start, first.SeriesInstanceUID)

    def _send(self, s: dict) -> None:
        uid = s["uid"]
        destination = self._configured(s, "destination", self.destinations)
        if destination is None:
            return
        try:
            n = send_files(sorted(self.output(uid).glob("*.dcm")), destination, self.cfg.aet)
        except SendError as exc:
            self._retry(s, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - e.g. derived files removed by hand: fail, go on
            self._fail(s, "sending", _reason(exc))
            return
        if self.queue.move(uid, "sending", "sent", reason=None, next_try=None):
            log.info("series %s sent: derived series %s (%d instances) to %s", uid, s["derived_uid"], n, destination)

    def _retry(self, s: dict, reason: str) -> None:
        retry = self.cfg.retry
        delay = retry.delay(s["attempts"] + 1)
        s = self.queue.retry_later(s["uid"], reason, time.time() + delay)
        if s is None or s["status"] != "sending":
            return
        if retry.give_up_after and time.time() - s["failing_since"] >= retry.give_up_after:
            self._fail(s, "sending", f"gave up after {s['attempts']} attempts: {reason}")
        else:
            log.warning("series %s not sent (attempt %d): %s; next try in %.0f s", s["uid"], s["attempts"],
                        reason, delay)

    def _purge(self, before: float) -> None:
        """Files of series finished before ``before``; their rows stay for ``status``."""
        for s in self.queue.select("status IN ('sent', 'failed') AND purged = 0 AND updated < ?", (before,)):
            for top in (self.incoming, self.derived):
                shutil.rmtree(top / s["uid"], ignore_errors=True)
            self.queue.mark_purged(s["uid"])
            log.info("series %s: files removed (finished over %g days ago)", s["uid"], self.cfg.keep_days)


def _reason(exc: Exception) -> str:
    return one_line(exc) if isinstance(exc, HiresError) else f"internal error ({type(exc).__name__}: {one_line(exc)})"


def ours(filename: str) -> bool:
    """A warning raised in this package (its messages name no patient data; a library's may quote values)."""
    return "hires_domain" in str(filename)
