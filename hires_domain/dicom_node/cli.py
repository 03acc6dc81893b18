"""`hires dicom-node [options]` runs the node; `hires dicom-node status` shows its queue."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import HiresError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False,
                  help="DICOM node: receive series from a scanner or PACS (C-STORE), enhance them, send the "
                       "derived series back (needs the dicom-node extra; see docs/dicom-node.md). "
                       "Without a command: run the node.")
DATA_DIR = typer.Option(None, help="received instances, derived series, the queue (SQLite) and node.log "
                                   "(default: hires-node-data)")


@app.callback(invoke_without_command=True)
def run(ctx: typer.Context,
        config: Optional[Path] = typer.Option(None, help="rules file (YAML): node settings, destinations, rules"),
        aet: Optional[str] = typer.Option(None, help="this node's AE title (default: HIRES)"),
        port: Optional[int] = typer.Option(None, help="DICOM port to listen on (default: 11112)"),
        bind: Optional[str] = typer.Option(None, help="address to listen on (default: 127.0.0.1; 0.0.0.0: all)"),
        data_dir: Optional[Path] = DATA_DIR,
        model: Optional[str] = typer.Option(None, help="model for every series (a rule after the file's)"),
        send_to: Optional[str] = typer.Option(None, help="where --model's results go: AET@host:port"),
        strength: Optional[float] = typer.Option(None, help="with --model, x1 models: 0-1 (see hires enhance)"),
        series_timeout: Optional[float] = typer.Option(
            None, help="a series is complete when no instance came for this many seconds (default: 10)"),
        allow_aet: Optional[str] = typer.Option(
            None, help="comma-separated calling AE titles allowed to associate (default: any)"),
        tls_cert: Optional[Path] = typer.Option(None, help="TLS: this node's certificate (PEM)"),
        tls_key: Optional[Path] = typer.Option(None, help="TLS: its private key (PEM)"),
        tls_ca: Optional[Path] = typer.Option(None, help="TLS: callers must present a certificate signed by this CA"),
        retry_initial: Optional[float] = typer.Option(
            None, help="seconds before the first retry of a send (default: 5)"),
        retry_max: Optional[float] = typer.Option(None, help="longest wait between retries, seconds (default: 300)"),
        give_up_after: Optional[float] = typer.Option(
            None, help="fail a series unsent this many seconds after its first failed send; 0: never (default: 86400)"),
        keep_days: Optional[float] = typer.Option(
            None, help="remove the files of finished series after this many days; 0: keep (default: 7)"),
        device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps (default: auto)"),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="log every stored instance")):
    """Run the node until stopped (Ctrl-C or SIGTERM)."""
    flags = dict(aet=aet, port=port, bind=bind, data_dir=data_dir, series_timeout=series_timeout,
                 allow_aet=allow_aet, retry_initial=retry_initial, retry_max=retry_max, give_up_after=give_up_after,
                 keep_days=keep_days, device=device)
    tls = (tls_cert, tls_key, tls_ca)
    if ctx.invoked_subcommand is not None:
        if config or model or send_to or strength is not None or any(tls) or any(v is not None for v in flags.values()):
            raise HiresError(f"options before '{ctx.invoked_subcommand}' run the node: give them after "
                             f"'{ctx.invoked_subcommand}'")
        return
    _need_pynetdicom()
    from ..cli import _Stopped
    from .config import node_config
    from .node import run as run_node

    cfg = node_config(config, model, send_to, strength, tls, **flags)
    try:
        run_node(cfg, verbose)
    except _Stopped:
        pass  # the node logged "stopped"


@app.command()
def status(data_dir: Path = typer.Option(Path("hires-node-data"), help="the node's --data-dir"),
           as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Series received, queued, sent and failed, with reasons (one line each)."""
    from .queue import Queue

    if not (data_dir / "node.sqlite3").is_file():
        raise HiresError(f"no DICOM node data in {data_dir} (node.sqlite3 missing)")
    queue = Queue(data_dir)
    rows = queue.select()
    if as_json:
        print(json.dumps({"counts": queue.counts(), "series": rows}, indent=2))
        return
    print(", ".join(f"{n} {s}" for s, n in queue.counts().items()))
    for s in rows:
        print(" ".join(_describe(s).split()))


def _describe(s: dict) -> str:
    """One line: series UID, modality, instances, status, then what happened."""
    head = f"{s['uid']} {s['modality'] or '-'} {s['instances']} instances {s['status']}"
    if s["status"] == "sent":
        return f"{head}: {s['rule']} derived series {s['derived_uid']} sent to {s['destination']}"
    if s["status"] == "sending" and s["attempts"]:
        wait = max(0.0, (s["next_try"] or 0) - time.time())
        return f"{head}: attempt {s['attempts']} failed, next in {wait:.0f} s: {s['reason']}"
    if s["status"] == "failed":
        return f"{head}: {s['reason']}"
    return head + (f": {s['rule']}" if s["rule"] else "")


def _need_pynetdicom() -> None:
    try:
        import pynetdicom  # noqa: F401
    except ImportError:
        raise HiresError("the DICOM node needs pynetdicom: pip install 'hires-domain[dicom-node]'") from None
