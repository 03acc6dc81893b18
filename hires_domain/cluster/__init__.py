"""Scale-out on Dask distributed: a local cluster of worker processes or an existing scheduler.

Dask is an optional dependency (``pip install 'hires-domain[cluster]'``): nothing here imports
it until a cluster is asked for, so ``--jobs 1`` (the default) runs in-process without it.
Each worker process runs one task at a time (``threads_per_worker=1``) with torch on one thread
(Dask's nannies set ``OMP_NUM_THREADS=1``), so N workers use N cores.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

from ..errors import HiresError

CONNECT_TIMEOUT_S = 5
# Dask's nannies set glibc's MALLOC_TRIM_THRESHOLD_ in workers, which also pins glibc's mmap
# threshold: every large array becomes a fresh mmap with page faults. Enhancement ran 28-33 %
# slower so (benchmarks/scaleout.py, docs/performance.md); local workers keep glibc's default.
KEEP_MALLOC = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
INSTALL = "install the cluster extra: pip install 'hires-domain[cluster]'"


def wants_cluster(jobs: int, scheduler: str | None) -> bool:
    """True when the user asked for Dask (``--jobs`` above 1 or ``--scheduler``); checks ``jobs``."""
    if jobs < 1:
        raise HiresError(f"--jobs must be at least 1, got {jobs}")
    if scheduler and jobs > 1:
        raise HiresError("give --jobs (a local cluster) or --scheduler (an existing one), not both")
    return jobs > 1 or bool(scheduler)


def _distributed():
    try:
        import distributed
    except ImportError:
        raise HiresError(f"--jobs/--scheduler need Dask distributed: {INSTALL}") from None
    return distributed


@contextlib.contextmanager
def connect(jobs: int = 2, scheduler: str | None = None,
            say: Callable[[str], None] | None = None) -> Iterator:
    """A ``distributed.Client``: to ``scheduler`` (an address such as ``tcp://host:8786``) or to a
    new LocalCluster of ``jobs`` worker processes. ``say`` gets the dashboard address. On exit
    (Ctrl-C included) the client is closed and a cluster started here is shut down."""
    distributed = _distributed()
    cluster = None
    with contextlib.ExitStack() as stack:
        if scheduler:
            try:
                client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                why = str(exc).split("\n")[0] or type(exc).__name__
                raise HiresError(f"cannot reach the Dask scheduler at {scheduler} ({why})") from None
        else:
            import dask

            with dask.config.set({KEEP_MALLOC: None}):
                cluster = distributed.LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                                   dashboard_address=":0", silence_logs=logging.ERROR)
            stack.callback(cluster.close)
            client = distributed.Client(cluster, set_as_default=False)
        stack.callback(client.close)
        if say is not None:
            link = client.dashboard_link if _has_dashboard(client) else "none (pip install bokeh)"
            say(f"dask: {len(client.scheduler_info(n_workers=-1)['workers'])} worker(s) at {client.scheduler.address}, "
                f"dashboard {link}")
        yield client


@contextlib.contextmanager
def client_for(jobs: int, scheduler: str | None, say: Callable[[str], None] | None = None) -> Iterator:
    """``connect(jobs, scheduler, say)`` when the user asked for Dask (``wants_cluster``), else
    None, without importing Dask."""
    if not wants_cluster(jobs, scheduler):
        yield None
        return
    with connect(jobs, scheduler, say) as client:
        yield client


def _has_dashboard(client) -> bool:
    try:
        return "dashboard" in client.scheduler_info(n_workers=-1).get("services", {})
    except Exception:  # noqa: BLE001 - an old scheduler without the field: assume none
        return False


def in_order(client, fn, items: list, progress: Callable[[int, int], None] | None = None) -> Iterator:
    """``map(fn, items)`` on the cluster: results in the order of ``items`` (tasks finish in any
    order; ``progress(done, total)`` counts finished ones). A task's exception is raised here."""
    distributed = _distributed()
    futures = [client.submit(fn, item, pure=False) for item in items]
    results, done, first = {}, 0, 0
    try:
        for fut in distributed.as_completed(futures, loop=client.loop):
            results[fut.key] = fut
            done += 1
            if progress:
                progress(done, len(items))
            while first < len(futures) and futures[first].key in results:
                yield results.pop(futures[first].key).result()
                first += 1
    finally:
        client.cancel(futures[first:])
