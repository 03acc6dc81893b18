"""`hires` command line: info, enhance, prepare, train, models, serve, dicom-node, qgis, demo. Errors are one line and exit non-zero."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import HiresError, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Domain-correct super-resolution for DICOM/NIfTI volumes and satellite rasters.")
out = Console()
err = Console(stderr=True)

DEVICE_HELP = "auto, cpu, cuda or mps (auto: CUDA, then MPS, then CPU)"
TILE_OPTION = typer.Option(None, help="tile size in input pixels [default: the largest that fits the memory budget]")
OVERLAP_OPTION = typer.Option(None, help="blending overlap between tiles, input pixels [default: 0 where tiles are "
                                         "exact (the halo covers the model's receptive field), else min(32, tile/4)]")
BATCH_OPTION = typer.Option(None, help="tiles per model call [default: 1 on CPU, what fits on a GPU]")
PRECISION_OPTION = typer.Option("auto", help="auto, fp32, bf16 or fp16; auto = bf16/fp16 where the device is fast "
                                             "at it and the model was checked against fp32 on held-out data, else fp32")
JOBS_OPTION = typer.Option(1, "--jobs", "-j", help="Dask worker processes on this machine (1: in-process, no Dask)")
SCHEDULER_OPTION = typer.Option(None, help="address of an existing Dask scheduler, e.g. tcp://host:8786")
PROGRESS_OPTION = typer.Option("bar", "--progress", help="bar (on a terminal), or jsonl: one JSON object a line on "
                                                         'stderr, {"done": n, "total": m, "unit": "tiles"}')


def _line(msg: str) -> None:
    """One unwrapped line on stderr (errors and warnings must stay one line)."""
    print(one_line(msg), file=sys.stderr)


def _say(quiet: bool):
    """Where a cluster's dashboard line goes: stdout, unwrapped, unless quiet."""
    return None if quiet else (lambda msg: out.print(msg, soft_wrap=True))


def _scales(scales) -> str:
    lo, hi = min(scales), max(scales)
    return f"x{lo}-x{hi}" if list(scales) == list(range(lo, hi + 1)) and hi > lo else ",".join(f"x{s}" for s in scales)


def _progress_bar(quiet: bool, label: str, unit: str = "tiles"):
    # not on a pipe or file: rich cannot animate there and leaves a stray empty line on stderr
    if quiet or not err.is_terminal:
        return None
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                    TimeRemainingColumn(), console=err, transient=True)


def _run_with_progress(fn, quiet: bool, label: str, unit: str = "tiles", stream: str = "bar"):
    if stream not in ("bar", "jsonl"):
        raise HiresError(f"--progress must be bar or jsonl, not {stream!r}")
    if stream == "jsonl":  # for programs running `hires` (the QGIS plugin): unaffected by --quiet
        return fn(lambda done, total: print(json.dumps({"done": done, "total": total, "unit": unit}),
                                            file=sys.stderr, flush=True))
    bar = _progress_bar(quiet, label, unit)
    if bar is None:
        return fn(None)
    with bar:
        task = bar.add_task(label, total=None)
        return fn(lambda done, total: bar.update(task, completed=done, total=total))


@app.command()
def info(path: Path = typer.Argument(..., help="DICOM directory/file, NIfTI or raster"),
         series: Optional[str] = typer.Option(None, help="DICOM SeriesInstanceUID to describe"),
         as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Geometry, series, bands and an intensity summary of an input."""
    from .info import describe, render

    d = describe(path, series)
    if as_json:
        print(json.dumps(d, indent=2))
    else:
        render(d, out)


@app.command()
def enhance(src: Path = typer.Argument(..., help="input: DICOM directory/file, .nii/.nii.gz, raster, or a "
                                        "Sentinel-2 product (.SAFE directory or .zip, or a directory of band files)"),
            dst: Path = typer.Argument(..., help="output: DICOM directory, .nii/.nii.gz or .tif"),
            model: str = typer.Option("bicubic", help="model name (see `hires models`)"),
            scale: Optional[int] = typer.Option(
                None, help="in-plane scale factor [default: the model's own; 2 for the baselines]"),
            tile: Optional[int] = TILE_OPTION, overlap: Optional[int] = OVERLAP_OPTION,
            batch_size: Optional[int] = BATCH_OPTION, device: str = typer.Option("auto", help=DEVICE_HELP),
            precision: str = PRECISION_OPTION,
            series: Optional[str] = typer.Option(None, help="DICOM SeriesInstanceUID when a directory holds several"),
            bands: Optional[str] = typer.Option(
                None, help="Sentinel-2 products: bands to read, by name in this order, e.g. B02,B03,B04,B08,B10 "
                           "[default: every band but B10, in Sentinel-2 order]"),
            cog: bool = typer.Option(False, "--cog", help="write a Cloud Optimized GeoTIFF"),
            overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output"),
            strict: bool = typer.Option(False, "--strict", help="refuse (exit 2, nothing written) an input unlike "
                                        "the trained model's training data instead of warning"),
            strength: Optional[float] = typer.Option(
                None, help="0-1, how far the result may move from the deterministic answer: x1 (denoising) "
                           "models give input + strength x (model - input); diffusion models start sampling "
                           "from their first stage noised to step strength x T (SDEdit; 0: the first stage, "
                           "fewer steps run below 1) [default: 1, the model's output]"),
            steps: Optional[int] = typer.Option(None, help="diffusion models: sampler steps [default: the model's, 20]"),
            seed: Optional[int] = typer.Option(None, help="diffusion models: noise seed [default: 0]"),
            samples: Optional[int] = typer.Option(
                None, help="diffusion models: samples drawn; the output is their mean [default: 1]"),
            sampler: Optional[str] = typer.Option(None, help="diffusion models: dpm++ (DPM-Solver++) or ddim"),
            consistency: Optional[str] = typer.Option(
                None, help="diffusion models: enforce (area downsampling of the output equals the input), off, "
                           "or auto (enforce for medical models) [default: auto]"),
            temperature: Optional[float] = typer.Option(
                None, help="diffusion models: scale of the initial noise, 0-1.5; below 1 samples lie nearer "
                           "the mean (less texture) [default: the model's]"),
            sample_output: bool = typer.Option(
                False, "--sample-output", help="diffusion models: write one sample instead of the mean"),
            uncertainty: Optional[Path] = typer.Option(
                None, help="diffusion models: also write the per-pixel standard deviation over the samples "
                           "here (same format and geometry as the output)"),
            z_scale: int = typer.Option(
                1, help="volumes: output slices per input slice (through-plane); with --model self-sr, "
                        "nearest, linear, or cubic for every other model (see docs/through-plane.md)"),
            train_seconds: Optional[float] = typer.Option(
                None, help="self-sr: training time budget in seconds [default: 180; at most 3000 steps]"),
            keep_model: bool = typer.Option(
                False, "--keep-model", help="self-sr: keep the trained weights next to the output (a rerun "
                                            "on the same input and settings reuses them)"),
            slice_profile: Optional[str] = typer.Option(
                None, help="self-sr: box or gaussian profile of the acquired slices [default: box]"),
            thickness: Optional[float] = typer.Option(
                None, help="self-sr: slice thickness (box width or Gaussian FWHM) in mm "
                           "[default: DICOM SliceThickness, else the slice spacing]"),
            jobs: int = JOBS_OPTION, scheduler: Optional[str] = SCHEDULER_OPTION,
            quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or summary"),
            progress: str = PROGRESS_OPTION):
    """Super-resolve one input into a new output (written atomically; the input is never changed).
    With --jobs N or --scheduler a raster is split into row bands run on Dask workers."""
    from .cluster import client_for
    from .pipeline import Settings, enhance_file

    settings = Settings(model, scale, tile, overlap, batch_size, device, strict=strict, precision=precision,
                        strength=1.0 if strength is None else strength, steps=steps, seed=seed, samples=samples,
                        sampler=sampler, consistency=consistency, temperature=temperature,
                        sample_output=sample_output,
                        uncertainty=uncertainty is not None, z_scale=z_scale, train_seconds=train_seconds,
                        keep_model=keep_model, slice_profile=slice_profile, thickness=thickness)
    if strength is not None and settings.scale != 1 and settings.sampling is None:  # Settings refuses only below 1
        raise HiresError(f"--strength applies to x1 (denoising) models such as ct-denoise and to diffusion "
                         f"models; {model} runs at x{settings.scale}")
    label = f"{model} x{settings.scale}" + (f" z x{z_scale}" if z_scale > 1 else "")
    with client_for(jobs, scheduler, say=_say(quiet)) as client:
        if client is not None:
            from .cluster.bands import enhance_bands

            s = _run_with_progress(lambda p: enhance_bands(src, dst, settings, client, overwrite=overwrite, cog=cog,
                                                           progress=p, series=series, uncertainty=uncertainty),
                                   quiet, label, unit="bands", stream=progress)
        else:
            s = _run_with_progress(
                lambda p: enhance_file(src, dst, settings, series=series, overwrite=overwrite, cog=cog, progress=p,
                                       uncertainty=uncertainty, bands=_band_names(bands)),
                quiet, label, unit="tiles" if settings.sampling is None and z_scale == 1 else "steps", stream=progress)
    if s.clipped:
        _line(f"warning: {s.clipped} values clipped to the output data type's range")
    if not quiet:
        shape = lambda t: "x".join(map(str, t))  # noqa: E731
        out.print(f"wrote {s.output}: {shape(s.in_shape)} -> {shape(s.out_shape)} "
                  f"({s.model} x{s.scale}{f' z x{z_scale}' if z_scale > 1 else ''}, {s.device} {s.precision}, "
                  f"{s.seconds:.1f} s)")
        for note in s.notes:
            if note.startswith("self-sr:"):
                out.print(note)
        if uncertainty is not None:
            out.print(f"wrote {uncertainty}: per-pixel standard deviation over {settings.sampling.samples} sample(s)")


@app.command()
def prepare(recipe: Path = typer.Argument(..., help="dataset recipe (YAML), e.g. datasets/s2-sr-x4.yaml"),
            out_dir: Path = typer.Argument(..., help="output directory (manifest.json + train/ val/)"),
            overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory"),
            jobs: int = JOBS_OPTION, scheduler: Optional[str] = SCHEDULER_OPTION,
            quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or summary")):
    """Build a training dataset (HR/LR pairs with a manifest) from a recipe; written atomically.
    With --jobs N or --scheduler the items are made on Dask workers (same bytes as one process)."""
    from .cluster import client_for, in_order
    from .data.prepare import prepare as run_prepare

    with client_for(jobs, scheduler, say=_say(quiet)) as client:
        mapper = None
        if client is not None:
            mapper = lambda fn, items, progress: in_order(client, fn, items, progress)  # noqa: E731
        m = _run_with_progress(lambda p: run_prepare(recipe, out_dir, overwrite=overwrite, progress=p, mapper=mapper),
                               quiet, f"prepare {recipe.stem}", unit="items")
    if not quiet:
        counts = ", ".join(f"{n} {split}" for split, n in m["counts"].items())
        out.print(f"wrote {out_dir}: {counts} items ({m['domain']}, x{m['scale']}, {m['skipped']} skipped)")


@app.command()
def batch(inputs: Optional[list[str]] = typer.Argument(
              None, help="files, DICOM series directories, directories to search, or globs"),
          out_dir: Path = typer.Option(..., "--out-dir", "-o", help="output directory (mirrors the input tree)"),
          manifest: Optional[Path] = typer.Option(
              None, help="CSV or JSON-lines file of items: input, optional output, model, scale"),
          model: str = typer.Option("bicubic", help="model name (see `hires models`)"),
          scale: Optional[int] = typer.Option(None, help="scale factor [default: the model's own]"),
          tile: Optional[int] = TILE_OPTION, overlap: Optional[int] = OVERLAP_OPTION,
          batch_size: Optional[int] = BATCH_OPTION, device: str = typer.Option("auto", help=DEVICE_HELP),
          precision: str = PRECISION_OPTION,
          cog: bool = typer.Option(False, "--cog", help="write rasters as Cloud Optimized GeoTIFFs"),
          strict: bool = typer.Option(False, "--strict", help="refuse inputs unlike the model's training data"),
          jobs: int = JOBS_OPTION, scheduler: Optional[str] = SCHEDULER_OPTION,
          resume: bool = typer.Option(False, "--resume", help="skip items whose output exists (it is complete)"),
          overwrite: bool = typer.Option(False, "--overwrite", help="replace existing outputs"),
          retries: int = typer.Option(0, help="tries again after a crash or a lost worker (not after a bad input)"),
          results: Optional[Path] = typer.Option(None, help="results file, a JSON line per item "
                                                            "[default: OUT_DIR/results.jsonl]"),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or summary")):
    """Enhance many inputs (in-process or on Dask workers); exit 1 if any item failed."""
    from .cluster import batch as b
    from .cluster import client_for

    if bool(inputs) == bool(manifest):
        raise HiresError("give INPUTS or --manifest (one of them)")
    if resume and overwrite:
        raise HiresError("--resume and --overwrite exclude each other")
    if retries < 0:
        raise HiresError(f"--retries must be 0 or more, got {retries}")
    items = b.read_manifest(manifest, out_dir) if manifest else b.discover(inputs, out_dir)
    from .pipeline import Settings

    settings = Settings(model, scale, tile, overlap, batch_size, device, strict=strict, precision=precision)
    options = b.Options(settings, cog, overwrite)
    b.check_plan(items, out_dir, resume, overwrite)  # refuse before a cluster starts
    try:
        with client_for(jobs, scheduler, say=_say(quiet)) as client:
            outcome = _run_with_progress(
                lambda p: b.run_batch(items, out_dir, options, results, resume, retries, client, p),
                quiet, "batch", unit="items")
    finally:  # after the cluster is shut down: temporaries of its killed workers
        b.sweep(items)
    if not quiet or outcome.failed:
        out.print(outcome.line(), soft_wrap=True)
    if outcome.failed:
        raise typer.Exit(1)


@app.command()
def train(config: Path = typer.Argument(..., help="training config (YAML), e.g. configs/s2-sr-x4.yaml"),
          resume: Optional[Path] = typer.Option(None, help="run or checkpoint directory to continue from"),
          device: str = typer.Option("auto", help=DEVICE_HELP),
          export: Optional[str] = typer.Option(None, help="also write the final EMA generator as model NAME"),
          export_dir: Optional[Path] = typer.Option(
              None, help="where --export writes NAME.{safetensors,json} [default: config export.dir or OUTPUT/export]"),
          max_steps: Optional[int] = typer.Option(None, help="stop (with a checkpoint) after this step"),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar or summary")):
    """Train a generator (L1 pre-training, then adversarial fine-tuning) on a prepared dataset.
    Under torchrun: DistributedDataParallel, rank 0 reports and writes."""
    from .train import train as run_train

    quiet = quiet or os.environ.get("RANK", "0") != "0"

    s = _run_with_progress(
        lambda p: run_train(config, resume=resume, device=device, progress=p, export=export, export_dir=export_dir,
                            stop_at=max_steps, say=_line),
        quiet, f"train {config.stem}", unit="steps")
    if not quiet:
        v, b = s["val"] or {}, s["val_base"] or {}
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        out.print(f"{s['name']}: {s['steps']}/{s['total_steps']} steps in {s['seconds']:.0f} s on {s['device']}; "
                  f"val PSNR {fmt(v.get('val_psnr'))} dB (base {fmt(b.get('val_psnr'))}), "
                  f"SSIM {fmt(v.get('val_ssim'))} (base {fmt(b.get('val_ssim'))})")
        for key in ("final", "exported"):
            if key in s:
                out.print(f"{key}: {s[key]}")


def _ints(text: Optional[str], one_based: bool = True) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(v) - (1 if one_based else 0) for v in text.split(",")]
    except ValueError:
        raise HiresError(f"expected comma-separated integers, got '{text}'")


def _band_names(text: Optional[str]) -> Optional[tuple[str, ...]]:
    """``--bands B02,B8A`` → ('B02', 'B8A') (upper case)."""
    return tuple(b.strip().upper() for b in text.split(",") if b.strip()) if text else None


def _names(text: str) -> list[str]:
    """Comma-separated model names, each checked against the registry."""
    from .models import get_model

    names = [m.strip() for m in text.split(",") if m.strip()]
    for m in names:
        get_model(m)
    return names


def _range(text: Optional[str]) -> Optional[tuple[float, float]]:
    if not text:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise HiresError(f"--range needs lo,hi (two numbers), got '{text}'")
    return lo, hi


def _print_metrics(rows: list[tuple[str, dict]]) -> None:
    """One row per metric, one column per model (n/a: see the JSON for the reason)."""
    t = Table("metric", *[name for name, _ in rows], "unit", "better")
    for k, first in rows[0][1].items():
        values = [m.get(k, {}).get("value") for _, m in rows]
        t.add_row(k, *["n/a" if v is None else f"{v:.4g}" for v in values], first.get("unit", ""),
                  str(first.get("better", "")))
    out.print(t)


WINDOW_HELP = "CT window: soft-tissue, lung, bone, brain, or hu (raw HU, -1024..3071; the default)"
BANDS_HELP = "1-based bands to compare, e.g. 3,2,1 (default all)"
IS_OPT = typer.Option(False, "--is", help="also the Inception Score of the outputs (the FID network's offline "
                      "weights; refuses without them; a natural-image score, weakly meaningful for CT/satellite)")
REPORT_OPTS = dict(json_path=typer.Option(None, "--json", help="write every number with its settings"),
                   report=typer.Option(None, help="self-contained HTML report"),
                   figures=typer.Option(None, help="directory for the report's PNG figures"))


@app.command()
def evaluate(pred: Path = typer.Argument(..., help="prediction file (or directory of files)"),
             ref: Path = typer.Argument(..., help="reference file (or directory with the same file names)"),
             lr: Optional[Path] = typer.Option(None, help="the LR input, for the consistency metrics"),
             window: Optional[str] = typer.Option(None, help=WINDOW_HELP),
             bands: Optional[str] = typer.Option(None, help=BANDS_HELP),
             data_range: Optional[str] = typer.Option(None, "--range", help="explicit lo,hi on stored values"),
             resample: bool = typer.Option(False, "--resample", help="resample the prediction onto the reference grid"),
             tile: Optional[int] = typer.Option(None, help="tile size of the run that made PRED (seam score)"),
             overlap: int = typer.Option(0, help="its overlap (seam score)"),
             baselines: str = typer.Option("bicubic", help="with --lr: models run on LR for comparison ('' for none)"),
             device: str = typer.Option("auto", help=DEVICE_HELP),
             weights_dir: Optional[Path] = typer.Option(None, help="directory with LPIPS/FID/IS backbone weights"),
             inception_score: bool = IS_OPT,
             json_path: Optional[Path] = REPORT_OPTS["json_path"], report: Optional[Path] = REPORT_OPTS["report"],
             figures: Optional[Path] = REPORT_OPTS["figures"],
             overwrite: bool = typer.Option(False, "--overwrite", help="replace existing JSON/report")):
    """PSNR/SSIM/MS-SSIM, LPIPS/FID (and IS with --is) and domain metrics of PRED against REF (and LR)."""
    from .evaluation import evaluate_paths, write_outputs

    for p in (json_path, report):
        if p:
            from .io.common import check_output
            check_output(p, overwrite)
    result, figs = evaluate_paths(pred, ref, lr, window=window, bands=_ints(bands), data_range=_range(data_range),
                                  resample=resample, tiling={"tile": tile, "overlap": overlap} if tile else None,
                                  weights_dir=weights_dir, baselines=_names(baselines), device=device,
                                  inception_score=inception_score)
    write_outputs(result, figs, f"hires evaluate: {pred.name} vs {ref.name}", json_path, report, figures, overwrite)
    _print_metrics([("prediction", result["metrics"]), *result.get("baselines", {}).items()])


@app.command()
def benchmark(manifest: Path = typer.Argument(..., help='JSON manifest {"items": [{"id", "lr", "hr"}]}'),
              models: str = typer.Option("bicubic,lanczos", help="comma-separated model names"),
              window: Optional[str] = typer.Option(None, help=WINDOW_HELP),
              bands: Optional[str] = typer.Option(None, help=BANDS_HELP),
              tile: int = typer.Option(256, help="tile size"), overlap: int = typer.Option(32, help="overlap"),
              device: str = typer.Option("auto", help=DEVICE_HELP),
              weights_dir: Optional[Path] = typer.Option(None, help="directory with LPIPS/FID/IS backbone weights"),
              inception_score: bool = IS_OPT,
              json_path: Optional[Path] = REPORT_OPTS["json_path"], report: Optional[Path] = REPORT_OPTS["report"],
              figures: Optional[Path] = REPORT_OPTS["figures"],
              overwrite: bool = typer.Option(False, "--overwrite", help="replace existing JSON/report")):
    """Models side by side on a manifest of LR/HR pairs, against the same references."""
    from .evaluation import benchmark as run_benchmark
    from .evaluation import write_outputs

    names = _names(models)
    for p in (json_path, report):
        if p:
            from .io.common import check_output
            check_output(p, overwrite)
    result, figs = run_benchmark(manifest, names, window=window, bands=_ints(bands), tile=tile, overlap=overlap,
                                 device=device, weights_dir=weights_dir, inception_score=inception_score)
    write_outputs(result, figs, f"hires benchmark: {manifest.name}", json_path, report, figures, overwrite)
    _print_metrics([(m, r["metrics"]) for m, r in result["models"].items()])


@app.command()
def weights(weights_dir: Optional[Path] = typer.Option(None, help="extra directory to search first")):
    """Which LPIPS/FID/IS backbone weights and packages are present (looked up offline only)."""
    from .metrics.weights import render_weights_status, weights_status

    for line in render_weights_status(weights_status(weights_dir)):
        print(line)


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Models: name, family, domains, scales, bands and a short card."""
    from dataclasses import asdict

    from .models import list_models

    infos = list_models()
    if as_json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return
    t = Table("name", "family", "domains", "scales", "bands", "halo", "summary")
    for i in infos:
        t.add_row(i.name, i.family, ",".join(i.domains), _scales(i.scales),
                  "any" if i.bands is None else str(i.bands), str(i.halo), i.summary)
    out.print(t)


@app.command()
def serve(host: str = typer.Option("127.0.0.1", help="address to listen on (other than localhost: needs --tokens)"),
          port: int = typer.Option(8000, help="TCP port"),
          jobs: int = typer.Option(1, help="worker processes running tasks on this machine"),
          scheduler: Optional[str] = typer.Option(
              None, help="run tasks on this Dask scheduler, e.g. tcp://host:8786 (workers must see --data-dir)"),
          data_dir: Path = typer.Option(Path("hires-serve-data"), help="task store (SQLite), uploads and results"),
          tokens: Optional[Path] = typer.Option(None, help="bearer tokens file (hashed; see --add-token)"),
          add_token: Optional[str] = typer.Option(None, help="print a new token for NAME, store its hash in "
                                                  "--tokens FILE, and exit"),
          max_upload: str = typer.Option("2GiB", help="largest request body (413 above)"),
          max_unzipped: Optional[str] = typer.Option(None, help="largest DICOM zip unpacked [default: 4 x --max-upload]"),
          allow_root: Optional[Path] = typer.Option(None, help="JSON 'source' paths must lie under this directory"),
          allow_url_host: Optional[list[str]] = typer.Option(
              None, metavar="HOST", help="a host whose http(s) URLs a JSON 'source_image' may name (repeat, or a comma list); "
                         "none by default"),
          max_running: int = typer.Option(2, help="running tasks per token"),
          max_queued: int = typer.Option(100, help="queued + running tasks per token (429 above)"),
          device: str = typer.Option("auto", help=DEVICE_HELP)):
    """The asynchronous upscale API (POST /v1/images/upscale) and a web page; needs the serve extra."""
    if add_token is not None:
        if tokens is None:
            raise HiresError("--add-token needs --tokens FILE (where its hash is stored)")
        from .serve.security import add_token as new_token

        print(new_token(tokens, add_token))
        return
    from .serve import start

    try:
        start(host, port, jobs, scheduler, data_dir, tokens, max_upload, max_unzipped, allow_root, max_running,
              max_queued, device, _line, allow_url_host or ())
    except _Stopped:  # uvicorn shut down cleanly, then passed the signal on
        _line("hires serve: stopped")


@app.command()
def demo(out_dir: Path = typer.Option(Path("hires-demo"), "--out", help="where outputs and summary go"),
         device: str = typer.Option("auto", help=DEVICE_HELP),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars")):
    """The main job on the bundled real samples: a CT series, a NIfTI volume, a Sentinel-2 crop."""
    from .demo import run_demo

    run_demo(out_dir, device=device, quiet=quiet, console=out, runner=_run_with_progress)


from .dicom_node.cli import app as _dicom_node_app  # noqa: E402 - typer only; pynetdicom loads when it runs

app.add_typer(_dicom_node_app, name="dicom-node")

from .qgis_plugin.cli import app as _qgis_app  # noqa: E402 - typer only

app.add_typer(_qgis_app, name="qgis")


@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="print the version")):
    if version:
        print(__version__)
        raise typer.Exit()


class _Stopped(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM while a command runs. A BaseException, so that
    no ``except Exception`` on the way swallows it, and not a KeyboardInterrupt, which typer would
    turn into a bare exit code (non-standalone mode returns it) without our message."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame):
    # cleanup (removing the temporary output) must finish: later signals are ignored from here
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    raise _Stopped(signum)


@contextlib.contextmanager
def _stop_on_signals():
    """SIGINT (Ctrl-C) and SIGTERM stop the command through ``finally`` blocks, so temporaries
    are removed; the previous handlers come back afterwards (in-process callers, tests)."""
    try:
        previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signal handling to the host program
        previous = None
    try:
        yield
    finally:
        for s, handler in (previous or {}).items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _usage_error(exc: Exception) -> bool:
    """A click usage/parameter error. typer >= 0.26 vendors click as ``typer._click``, whose
    exceptions derive from ``typer.TyperException``, not ``click.ClickException`` (older typer
    raises the latter)."""
    if isinstance(exc, getattr(typer, "TyperException", ())) and hasattr(exc, "format_message"):
        return True
    try:
        import click
    except ImportError:
        return False
    return isinstance(exc, click.ClickException)


def _show_usage_error(exc: Exception) -> int:
    """The command's usage line, where to get help, then ``error: <one line>``; click's exit code."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed already
        return exc.exit_code
    ctx = getattr(exc, "ctx", None)
    usage, path = (ctx.get_usage(), ctx.command_path) if ctx is not None else _usage_of_argv()
    if usage:
        print(usage, file=sys.stderr)
        print(f"Try '{path} --help' for help.", file=sys.stderr)
    _line(f"error: {exc.format_message()}")
    return exc.exit_code


def _usage_of_argv() -> tuple[str, str]:
    """Usage of the command named on the command line, for the parser errors click raises
    without a context (e.g. an option missing its value)."""
    try:
        group = typer.main.get_command(app)
        with group.make_context("hires", [], resilient_parsing=True) as parent:
            name = next((a for a in sys.argv[1:] if group.get_command(parent, a) is not None), None)
            if name is None:
                return parent.get_usage(), "hires"
            command = group.get_command(parent, name)
            with command.make_context(name, [], parent=parent, resilient_parsing=True) as ctx:
                return ctx.get_usage(), ctx.command_path
    except Exception:  # noqa: BLE001 - best effort: the error line itself still follows
        return "", ""


def main() -> None:
    """Entry point: HiresError → one line on stderr, exit 2; usage errors → usage and one line,
    exit 2; Ctrl-C (SIGINT) → exit 130, SIGTERM → exit 143, one line each, after the temporary
    output is removed; other exceptions → one line, exit 1. Warnings are shown as one line each
    after a successful run only (a failed run has no output for them to describe)."""
    with warnings.catch_warnings(record=True) as caught, _stop_on_signals():
        warnings.simplefilter("always", UserWarning)
        try:
            rv = app(standalone_mode=False, prog_name="hires")  # also under `python -m hires_domain`
            # non-standalone typer returns an Exit's code, and maps KeyboardInterrupt to 130
            code = rv if isinstance(rv, int) else 0
            if code == 130:
                _line("error: interrupted; no output was written")
        except HiresError as exc:
            _line(f"error: {exc}")
            code = 2
        except _Stopped as exc:
            name = signal.Signals(exc.signum).name
            _line("error: interrupted; no output was written" if exc.signum == signal.SIGINT
                  else f"error: stopped by {name}; no output was written")
            code = 128 + exc.signum
        except (typer.Abort, KeyboardInterrupt):
            _line("error: interrupted; no output was written")
            code = 130
        except typer.Exit as exc:
            code = exc.exit_code
        except Exception as exc:  # click usage errors and genuine bugs
            if _usage_error(exc):
                code = _show_usage_error(exc)
            elif os.environ.get("HIRES_DEBUG"):
                raise
            else:
                _line(f"error: internal error ({type(exc).__name__}: {exc}); "
                      "rerun with HIRES_DEBUG=1 for a traceback")
                code = 1
    shown = dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning))
    for message in shown if code == 0 else ():  # each distinct warning once
        _line(f"warning: {message}")
    sys.exit(code)
