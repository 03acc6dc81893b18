"""What the napari widgets do, without Qt: capture a job, run it tile by tile, build layers, compare.

The widgets (``widgets.py``) only read controls, call these functions on the main thread, and
run ``run`` in a napari generator worker. Nothing here imports Qt or napari, so it is tested with
plain pytest.

- ``capture`` (main thread): a frozen snapshot of a layer: a read-only copy of its pixels (or of
  a region of them) as an ``Image`` with exact geometry, the validated ``Settings``, and a
  ``Fingerprint`` of the layer (identity, data identity/shape/dtype, a checksum, geometry).
  ``Job.note`` says how the snapshot differs from the model's training inputs (input-domain
  guard, ``pipeline.domain_note``; None when it does not, and for baselines).
  ``band_sets``/``capture_bands`` do the same for all band layers of a multi-band raster at
  once, for models that take every band (``s2-sr-x4``).
- ``run`` (worker thread): a generator over ``pipeline.iter_enhance`` into a ``tiling.ArraySink``
  that yields ``(done, total)`` per batch of tiles (one tile per batch by default, so a cancel
  between yields stops within one tile) and returns an ``Outcome``. Diffusion models yield
  ``(done, total)`` denoising steps over all tiles instead (total = tiles × steps) and stop
  within one step once the ``cancel`` event is set; with ``Settings.uncertainty`` the Outcome
  also holds the per-pixel standard deviation over the samples (``uncertainty_layers``).
- ``diffusion_defaults`` / ``parse_seed``: what the widget's diffusion controls start from and
  how a typed seed is read (bad values are one-line ``HiresError``s, as ``ldm.Sampling`` gives).
- ``stale_reason`` (main thread, when the result arrives): why a result must not be attached
  because its layer changed or went away meanwhile (``None`` when it is still current).
- ``output_layer``: the result as a layer data tuple ``<input> [<model> x<scale>]`` whose geometry comes
  from ``layers.geometry_kwargs`` (so it overlays the input exactly) and whose metadata keeps
  the Image for the writers.
- ``compare`` / ``difference_layer``: metrics table rows from ``metrics.evaluate_pair`` and a
  ``pred − ref`` layer on the reference grid; ``run_compare`` does both in the Compare widget's
  worker thread, ``band_set_image`` stacks a raster's band layers for an 'all bands' comparison.
"""

from __future__ import annotations

import math
import queue
import re
import threading
import zlib
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Callable, Generator, Sequence

import numpy as np

from hires_domain import geometry, metrics, pipeline, through_plane, tiling
from hires_domain.errors import HiresError
from hires_domain.image import Image
from hires_domain.intensity import CT_WINDOWS
from hires_domain.models import ModelInfo, available, get_model, list_models
from hires_domain.precision import PRECISIONS  # noqa: F401  (the widget's precision choices)
from hires_domain.models.ldm import DiffusionModel, Sampling, is_diffusion
from hires_domain.models.ldm_sampling import SAMPLERS  # noqa: F401  (the widget's sampler choices)

from . import layers

DEVICES = ("auto", "cpu", "cuda", "mps")
PRESETS = ("soft-tissue", "lung", "bone", "brain")  # the one-click CT windows
FULL_CHECKSUM_BYTES = 256 * 1024**2  # above this, checksum a strided sample only
SAMPLE_ELEMENTS = 1 << 20
WHOLE, VIEW, DRAWN = "whole layer", "current view", "drawn rectangle"
REGION_MODES = (WHOLE, VIEW, DRAWN)
REGION_LAYER = "hires region"


# --- layers → Images -----------------------------------------------------------------------

def layer_image(data, metadata: dict | None, name: str = "layer") -> Image:
    """The Image behind an image layer (its pixels as shown, its source geometry)."""
    if not metadata or layers.META not in metadata:
        raise HiresError(f"layer '{name}' was not opened by hires-domain: it has no source geometry "
                         "(open the file with the hires-domain reader)")
    return layers.to_image(data, metadata)


def is_hires_layer(metadata: dict | None) -> bool:
    """Whether a layer carries an Image the widgets can use (RGB composites are display only)."""
    return bool(metadata) and layers.META in metadata and metadata.get("rgb_bands") is None


def is_volume(metadata: dict | None, shape: Sequence[int]) -> bool:
    """A 3-D medical layer (data ``shape``) of two or more slices: the Enhance widget offers
    --z-scale for it."""
    if not is_hires_layer(metadata):
        return False
    return metadata[layers.META].kind != "raster" and len(shape) == 3 and shape[0] > 1


# --- fingerprints: detect a layer that changed while a job ran -------------------------------

@dataclass(frozen=True)
class Fingerprint:
    layer_id: int
    data_id: int
    shape: tuple[int, ...]
    dtype: str
    checksum: int
    geometry: tuple = ()


def checksum(data) -> int:
    """Adler-32 of the pixels (a strided sample of at most 1 Mi elements above 256 MiB); 0 for
    lazy arrays (dask, zarr), which are never loaded whole just to be fingerprinted."""
    if not isinstance(data, np.ndarray):
        return 0
    a = data
    if a.nbytes > FULL_CHECKSUM_BYTES:
        flat = a.reshape(-1)
        a = flat[:: max(1, flat.size // SAMPLE_ELEMENTS)]
    return zlib.adler32(np.ascontiguousarray(a).view(np.uint8).reshape(-1))


def _geometry_key(geo) -> tuple:
    if geo is None:
        return ()
    return tuple(np.round(np.asarray(geo, dtype=float), 9).reshape(-1).tolist())


def fingerprint(layer_id: int, data, geo=None) -> Fingerprint:
    """``geo``: the layer's data-to-world matrix (or anything array-like describing its placement)."""
    return Fingerprint(layer_id, id(data), tuple(np.shape(data)), str(data.dtype), checksum(data), _geometry_key(geo))


def stale_reason(job: "Job", layer_id: int | None, data=None, geo=None, fp: Fingerprint | None = None) -> str | None:
    """Why ``job``'s result must not be attached to its layer any more; None when still current.

    ``layer_id`` None: the layer is gone. Replaced data, a new shape/dtype, edited pixels or a
    moved layer all count as a change. ``fp``: which of a band-set job's layers (default: its first).
    """
    fp = fp or job.fingerprint
    what = f"layer '{job.name}'"
    if layer_id is None or layer_id != fp.layer_id:
        return f"{what} was removed while enhancing; the result was not added"
    if id(data) != fp.data_id or tuple(np.shape(data)) != fp.shape or str(data.dtype) != fp.dtype:
        return f"{what} got new data while enhancing; the result was not added (run again)"
    if checksum(data) != fp.checksum:
        return f"{what} was edited while enhancing; the result was not added (run again)"
    if _geometry_key(geo) != fp.geometry:
        return f"{what} was moved or rescaled while enhancing; the result was not added (run again)"
    return None


# --- regions (data coordinates of the layer) -----------------------------------------------

@dataclass(frozen=True)
class Region:
    """A box of array indices ``[start, stop)`` per axis of the layer's data."""

    starts: tuple[int, ...]
    stops: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.starts, self.stops))

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.starts, self.stops))


def region_from_points(points, shape: Sequence[int]) -> Region:
    """Pixels of a layer (``shape``) touched by the bounding box of data-coordinate ``points``.

    Pixel ``i`` spans ``[i − 0.5, i + 0.5]``; a box of zero extent along an axis (the current
    slice of a volume) selects the pixel it lies in. Clipped to the layer; refuses an empty box.
    """
    pts = np.atleast_2d(np.asarray(points, dtype=float))
    n = len(shape)
    if pts.shape[1] < n:
        raise HiresError(f"region points have {pts.shape[1]} coordinates, the layer {n} axes")
    pts = pts[:, -n:]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    starts, stops = [], []
    for a, b, size in zip(lo, hi, shape):
        start = int(math.floor(a + 0.5))
        stop = max(int(math.ceil(b + 0.5)), start + 1)
        starts.append(min(max(start, 0), size))
        stops.append(min(max(stop, 0), size))
    region = Region(tuple(starts), tuple(stops))
    if any(s <= 0 for s in region.shape):
        raise HiresError("the region does not overlap the layer")
    return region


def view_corners(point: Sequence[float], displayed: Sequence[int], center: Sequence[float],
                 canvas_size: Sequence[float], zoom: float) -> np.ndarray:
    """World coordinates (4, ndim) of the visible canvas corners in a 2-D view.

    ``point``: the viewer's current world position (gives the slice of non-displayed axes),
    ``displayed``: the two displayed world axes, ``center``: camera centre of those axes,
    ``canvas_size``: (height, width) in screen pixels, ``zoom``: screen pixels per world unit.
    """
    if len(displayed) != 2:
        raise HiresError("'current view' needs a 2-D view (switch off 3-D display)")
    half = np.asarray(canvas_size, dtype=float) / float(zoom) / 2.0
    c = np.asarray(center, dtype=float)[-2:]
    out = np.tile(np.asarray(point, dtype=float), (4, 1))
    for i, (sy, sx) in enumerate(((-1, -1), (-1, 1), (1, -1), (1, 1))):
        out[i, displayed[0]] = c[0] + sy * half[0]
        out[i, displayed[1]] = c[1] + sx * half[1]
    return out


def crop(image: Image, region: Region) -> Image:
    """The part of ``image`` inside ``region`` (spatial axes), geometry shifted accordingly."""
    if len(region.starts) != len(image.spatial_shape):
        raise HiresError(f"region has {len(region.starts)} axes, the image {len(image.spatial_shape)}")
    data = np.asarray(image.data)[(slice(None), *region.slices)]
    return replace(image, data=data, affine=geometry.cropped_affine(image.affine, region.starts))


# --- models and devices --------------------------------------------------------------------

def models_for(image: Image, scale: int | None = None) -> list[ModelInfo]:
    """Registered models that can take ``image`` (domain, band count) at ``scale`` (any when None)."""
    domain, out = pipeline.domain_of(image), []
    for info in list_models():
        scales = [scale] if scale is not None else list(info.scales)
        for s in scales:
            try:
                get_model(info.name).check(s, image.channels, domain, image.band_names)
            except HiresError:
                continue
            out.append(info)
            break
    return out


def model_info(name: str) -> ModelInfo | None:
    """The registry entry of ``name``, or None for an empty or unknown name."""
    try:
        return get_model(name).info
    except HiresError:
        return None


def model_family(name: str) -> str:
    info = model_info(name)
    return info.family if info else ""


def takes_precision(name: str) -> bool:
    """A network that can run in bf16/fp16 (``precision.resolve_precision``); others run fp32."""
    return name in available() and get_model(name).reduced_precision


def takes_strength(name: str) -> bool:
    """A x1 (denoising) model such as ct-denoise, or a diffusion model: the widget offers a
    strength (Settings.strength, ``pipeline.check_strength``)."""
    info = model_info(name)
    return info is not None and (tuple(info.scales) == (1,) and info.family != "self-supervised"
                                 or info.family == "diffusion")


def diffusion_defaults(name: str) -> Sampling | None:
    """A diffusion model's own sampling defaults (steps, sampler, ...) for the widget's
    controls; None for any other model (and for an empty or unknown name)."""
    try:
        model = get_model(name)
    except HiresError:
        return None
    if not is_diffusion(model):
        return None
    return model.sampling if isinstance(model, DiffusionModel) else Sampling()


def parse_seed(text) -> int | None:
    """The seed as typed: empty → None (the model's default), else an integer (``ldm.Sampling``
    refuses a negative one); anything else is a one-line HiresError."""
    t = str(text).strip()
    if not t:
        return None
    try:
        return int(t)
    except ValueError:
        raise HiresError(f"seed must be a non-negative integer, got '{t}'") from None


def device_in_use(name: str) -> str:
    """What ``name`` resolves to here ('cuda', 'cpu', ...), or why it cannot be used."""
    try:
        return str(tiling.resolve_device(name))
    except HiresError as e:
        return f"unavailable: {e}"


def window_limits(name: str) -> tuple[float, float]:
    """Contrast limits (HU) of a named CT window."""
    if name not in CT_WINDOWS:
        raise HiresError(f"unknown window '{name}'; known: {', '.join(CT_WINDOWS)}")
    c, w = CT_WINDOWS[name]
    return (c - w / 2, c + w / 2)


# --- enhance jobs --------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """Everything a run needs, captured on the main thread; the worker touches nothing else."""

    name: str
    image: Image  # snapshot: read-only float32 copy (of the region)
    settings: pipeline.Settings
    fingerprint: Fingerprint
    region: Region | None = None
    others: tuple[Fingerprint, ...] = ()  # the other band layers of a band-set job
    note: str | None = None  # how the input differs from the model's training inputs (pipeline.domain_note)
    resolved: pipeline.Run | None = None  # model, device, precision and tiling, resolved at capture

    @property
    def fingerprints(self) -> tuple[Fingerprint, ...]:
        return (self.fingerprint, *self.others)

    @property
    def output_name(self) -> str:
        """``<input> [<model> x<scale>]`` (``preview`` for a region): a rerun with the same
        settings replaces its layer, other settings add one."""
        base = f"{self.name} [{result_label(self.settings)}]"
        return base if self.region is None else f"{base} preview"

    @property
    def unit(self) -> str:
        """What ``run`` counts: denoising 'steps' (over all tiles) for diffusion models, else 'tiles'."""
        return "steps" if getattr(self.settings, "sampling", None) is not None else "tiles"


def result_label(settings: pipeline.Settings) -> str:
    """What made a result, for its layer name: model and scale (and a denoising strength below 1)."""
    label = f"{settings.model} x{settings.scale}"
    if getattr(settings, "z_scale", 1) > 1:
        label += f" z x{settings.z_scale}"
    strength = getattr(settings, "strength", None)
    if strength is not None and float(strength) != 1.0:
        label += f" strength {float(strength):g}"
    return label


@dataclass(frozen=True)
class Outcome:
    """What a finished run returns: the result Image (and, for a diffusion run with
    ``Settings.uncertainty``, the per-pixel standard deviation over the samples), the one-line
    error of a refused run, or ``cancelled`` (nothing made)."""

    job: Job
    image: Image | None = None
    error: str | None = None
    uncertainty: Image | None = None
    cancelled: bool = False


class Cancelled(Exception):
    """Raised in a diffusion model's step callback once the job is cancelled (``run`` turns it
    into ``Outcome(cancelled=True)``)."""


def capture(data, metadata: dict | None, name: str, settings: pipeline.Settings, layer_id: int,
            region: Region | None = None, geo=None) -> Job:
    """Snapshot a layer for a run (call on the main thread); refuses what the run would refuse.

    The pixels (of ``region`` only, when given) are copied to a read-only float32 array, so
    later edits of the layer cannot reach the worker; ``geo`` (the layer's data-to-world
    matrix) goes into the fingerprint.
    """
    if not is_hires_layer(metadata):
        layer_image(None, metadata, name)  # the one-line error for foreign layers
        if metadata.get("rgb_bands") is not None:
            raise HiresError(f"layer '{name}' is an RGB composite, for display only: enhance its band layers")
    snap = _snapshot(data, region, name)
    return _job(name, layer_image(snap, metadata, name), settings, [fingerprint(layer_id, data, geo)], region)


def band_sets(entries: Sequence[tuple[str, dict | None]]) -> dict[str, list[str]]:
    """Complete band sets among layers ``(name, metadata)``: ``'<raster> [all N bands]'`` → the
    names of its band layers in band order, for models that take every band of a raster. A
    raster with a band layer missing is not offered."""
    found: dict[str, dict] = {}
    for name, meta in entries:
        group = (meta or {}).get(layers.GROUP) if is_hires_layer(meta) else None
        if group:
            entry = found.setdefault(group["id"], {"name": group["name"], "n": meta["channels"], "bands": {}})
            entry["bands"][meta["band"]] = name
    out = {}
    for entry in found.values():
        if sorted(entry["bands"]) == list(range(entry["n"])):
            label = f"{entry['name']} [all {entry['n']} bands]"
            while label in out:
                label += "'"
            out[label] = [entry["bands"][b] for b in range(entry["n"])]
    return out


def product_sets(entries: Sequence[tuple[str, dict | None]]) -> dict[str, list[str]]:
    """Sentinel-2 products among layers ``(name, metadata)``: ``'<product> [whole product]'`` →
    its band layers' names, for models that read the whole product (every band on the 10 m grid:
    ``s2-sharpen``). A product with a band layer removed is still offered: it is read from its files."""
    found: dict[str, dict] = {}
    for name, meta in entries:
        product = (meta or {}).get(layers.PRODUCT) if is_hires_layer(meta) else None
        if product:
            found.setdefault(product["id"], {"name": product["name"], "layers": []})["layers"].append(name)
    out = {}
    for entry in found.values():
        label = f"{entry['name']} [whole product]"
        while label in out:
            label += "'"
        out[label] = entry["layers"]
    return out


def product_image(metadata: dict) -> Image:
    """The product behind a product band layer, opened as ``hires enhance`` opens it: every band
    (B10 aside) lazily on the finest grid, with the product's radiometry."""
    import hires_domain

    return hires_domain.read(metadata[layers.PRODUCT]["path"])


def capture_product(members: Sequence[tuple], settings: pipeline.Settings, mode: str = WHOLE) -> Job:
    """A run on a whole Sentinel-2 product (main thread). ``members``: ``(data, metadata,
    layer_id, geo)`` of its band layers (their fingerprints keep a result from being added
    after they changed); the pixels are read from the product's files, as the CLI reads them.
    ``mode``: the region choice; a product is enhanced whole."""
    ids = {(m[1] or {}).get(layers.PRODUCT, {}).get("id") for m in members}
    if len(ids) != 1 or None in ids:
        raise HiresError("the chosen layers are not the band layers of one Sentinel-2 product")
    product = members[0][1][layers.PRODUCT]
    if mode != WHOLE:
        raise HiresError(f"the whole product '{product['name']}' is enhanced as a whole: choose "
                         f"'{WHOLE}', or enhance one band layer")
    fps = [fingerprint(layer_id, data, geo) for data, _, layer_id, geo in members]
    return _job(product["name"], product_image(members[0][1]), settings, fps, None)


def capture_bands(members: Sequence[tuple], name: str, settings: pipeline.Settings,
                  region: Region | None = None) -> Job:
    """Snapshot every band layer of one raster as one multi-band input (main thread).

    ``members``: ``(data, metadata, layer_id, geo)`` per band layer in band order, as ``band_sets``
    lists them; they must still be the raster's complete, unmoved band set.
    """
    metas = [m[1] for m in members]
    groups = {(meta or {}).get(layers.GROUP, {}).get("id") for meta in metas}
    if len(groups) != 1 or None in groups or [meta.get("band") for meta in metas] != list(range(metas[0]["channels"])):
        raise HiresError(f"'{name}' is no longer a complete set of band layers of one raster")
    if len({_geometry_key(m[3]) for m in members}) > 1:
        raise HiresError(f"the band layers of '{name}' were moved apart: put them back on one grid")
    snaps = [_snapshot(data, region, name) for data, *_ in members]
    if len({a.shape for a in snaps}) > 1:
        raise HiresError(f"the band layers of '{name}' have different shapes")
    stack = np.stack(snaps)
    stack.flags.writeable = False
    image = replace(metas[0][layers.META], data=stack)
    fps = [fingerprint(layer_id, data, geo) for data, _, layer_id, geo in members]
    return _job(name, image, settings, fps, region)


def _snapshot(data, region: Region | None, name: str) -> np.ndarray:
    ndim = len(np.shape(data))
    if region is not None and len(region.starts) != ndim:
        raise HiresError(f"region has {len(region.starts)} axes, layer '{name}' {ndim}")
    part = data[region.slices] if region is not None else data  # lazy arrays: only the region is read
    snap = np.array(part, dtype=np.float32, copy=True)
    snap.flags.writeable = False
    return snap


def _job(name: str, image: Image, settings: pipeline.Settings, fps: list[Fingerprint],
         region: Region | None) -> Job:
    if region is not None:
        image = replace(image, affine=geometry.cropped_affine(image.affine, region.starts))
    run = pipeline.resolve_run(image, settings)  # model, scale, bands, device, precision, tiling
    through_plane.check_volume(image, settings.z_scale)
    pipeline.check_size(image, settings.scale, z_scale=settings.z_scale)
    note = pipeline.domain_note(image, run.model, settings.strict)  # once, on the snapshot; strict refuses here
    return Job(name, image, settings, fps[0], region, tuple(fps[1:]), note, run)


def run(job: Job, cancel: threading.Event | None = None) -> Generator[tuple[int, int], None, Outcome]:
    """Enhance ``job.image`` tile by tile: yields ``(done, total)``, returns an ``Outcome``.

    Diffusion models count denoising steps over all tiles (total = tiles × steps) and stop
    within one step once ``cancel`` is set (``Outcome.cancelled``); other models count tiles,
    and a consumer stops them between tiles by not resuming the generator. With
    ``Settings.uncertainty`` the per-pixel standard deviation over the samples comes back as
    ``Outcome.uncertainty`` (the sink is split, ``tiling.SplitSink``). A ``HiresError``
    (device gone, out of memory check, ...) becomes ``Outcome.error``; anything
    else propagates (a bug, shown with its traceback). With ``Settings.z_scale`` > 1 the slice
    axis is refined after the in-plane pass (``through_plane.refine``), counted in its own steps
    (self-sr: training steps, then planes) and cancelled within one step.
    """
    image, s = job.image, job.settings
    extra = None
    try:
        resolved = job.resolved
        if pipeline.inplane_is_identity(s):  # z only (--z-scale with a baseline or self-sr)
            result = replace(image, meta={**image.meta, "provenance": resolved.describe()})
        else:
            out = pipeline.check_size(image, s.scale)
            fill = np.nan if image.nodata is None else image.nodata
            sink = tiling.ArraySink((image.channels, *out), fill=fill)
            extra = tiling.ArraySink((image.channels, *out), fill=np.nan) if s.uncertainty else None
            target = tiling.SplitSink(sink, extra, image.channels) if extra is not None else sink
            if getattr(s, "sampling", None) is not None:
                yield from _callback_steps(lambda on_step: deque(pipeline.iter_enhance(
                    image, target, resolved, on_step=on_step), maxlen=0), cancel)
            else:
                yield from pipeline.iter_enhance(image, target, resolved)  # the domain was checked at capture
            factors = resolved.factors
            result = image.with_data(sink.array, factors=factors, meta={**image.meta, "provenance": resolved.describe()})
        if s.z_scale > 1:  # then the slice axis; self-sr trains here (steps, then planes)
            refined = []
            yield from _callback_steps(lambda on_step: refined.append(through_plane.refine(result, resolved, on_step)),
                                       cancel)
            result = replace(refined[0], meta=result.meta)
    except Cancelled:
        return Outcome(job, cancelled=True)
    except HiresError as e:
        return Outcome(job, error=str(e))
    std = None
    if extra is not None:
        std = image.with_data(extra.array, factors=factors, nodata=None,
                              meta={**image.meta, "provenance": pipeline.uncertainty_description(resolved),
                                    "nodata": None, "dtype": "float32"})  # saved as float, not the input's ints
    return Outcome(job, image=result, uncertainty=std)


_END = object()


def _callback_steps(work: Callable[[Callable[[int, int], None]], None], cancel: threading.Event | None):
    """Run ``work(on_step)`` (diffusion sampling, self-sr training and inference), yielding
    ``(done, total)`` per step. The work runs in a helper thread whose step callback hands each
    step over here and raises ``Cancelled`` once ``cancel`` is set or this generator is closed,
    so it stops within one step; the helper is joined before this generator ends."""
    stop = threading.Event()
    reports: queue.Queue = queue.Queue()

    def on_step(done: int, total: int) -> None:
        if stop.is_set() or (cancel is not None and cancel.is_set()):
            raise Cancelled
        reports.put(((done, total), None))

    def run_work() -> None:
        try:
            work(on_step)
            reports.put((_END, None))
        except BaseException as exc:  # handed over to the generator's thread and raised there
            reports.put((_END, exc))

    helper = threading.Thread(target=run_work, name="hires-steps", daemon=True)
    helper.start()
    try:
        while True:
            item, error = reports.get()  # ((done, total), None) per step, then (_END, exception or None)
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        helper.join()


def run_all(job: Job) -> Outcome:
    """Run a job to the end (tests, scripts)."""
    gen = run(job)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def output_layers(job: Job, result: Image, contrast_limits=None, colormap=None) -> list[tuple[Any, dict, str]]:
    """Layer data tuples of the result: named ``<input> [<model> x<scale>]`` (one per band for a
    multi-band result), overlaying the input (geometry from ``layers.geometry_kwargs``), with
    the Image kept in metadata for writing; display settings copied from the input."""
    out = []
    for data, kwargs, kind in layers.to_layer_data(result, job.output_name):
        kwargs = dict(kwargs)
        if contrast_limits is not None:
            kwargs["contrast_limits"] = tuple(float(v) for v in contrast_limits)
        if colormap is not None:
            kwargs["colormap"] = colormap
        out.append((data, kwargs, kind))
    return out


UNCERTAINTY_COLORMAP = "magma"


def uncertainty_name(result_name: str) -> str:
    """The uncertainty layer of a result layer: ``<result name> uncertainty``."""
    return f"{result_name} uncertainty"


def uncertainty_layers(job: Job, std: Image, result_names: Sequence[str]) -> list[tuple[Any, dict, str]]:
    """Layer data tuples of a diffusion run's per-pixel standard deviation: one per result layer
    (``result_names``, in band order), named ``<result name> uncertainty``, with the result's
    geometry (``layers.geometry_kwargs``), a 'magma' colormap from 0 to its 99th percentile, and
    the Image in metadata so the writers can save it. An all-bands run's layers form their own
    band set ``<result> uncertainty``, hidden (show one band to look at it)."""
    out = []
    specs = layers.to_layer_data(std, uncertainty_name(job.output_name))
    if len(specs) != len(result_names):
        raise HiresError(f"{len(specs)} uncertainty layers for {len(result_names)} result layers")
    for (data, kwargs, kind), name in zip(specs, result_names):
        finite = np.asarray(data)[np.isfinite(data)]
        hi = float(np.percentile(finite, 99)) if finite.size else 1.0
        metadata = {k: v for k, v in kwargs["metadata"].items() if k != layers.WINDOW_REASON}
        kwargs = {**kwargs, "name": uncertainty_name(name), "metadata": metadata, "colormap": UNCERTAINTY_COLORMAP,
                  "contrast_limits": (0.0, hi if hi > 0 else 1.0), "blending": "translucent",
                  "visible": len(specs) == 1}
        out.append((data, kwargs, kind))
    return out


# --- compare -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    rows: list  # (metric, value text, unit, better)
    settings: dict
    resampled: bool
    summary: str
    warning: str | None = None  # different bands compared (band_mismatch)


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _on_same_grid(pred: Image, ref: Image) -> bool:
    try:
        metrics.check_same_grid(pred, ref)
        return True
    except HiresError:
        return False


def result_scale(image: Image) -> int | None:
    """The SR factor recorded in a result's provenance (``scale=N``), or None (not a result)."""
    found = re.search(r"\bscale=(\d+)", str(image.meta.get("provenance", "")))
    return int(found.group(1)) if found else None


def band_mismatch(pred: Image, ref: Image) -> str | None:
    """A warning when the two images hold different bands (B02 against B03), else None."""
    a, b = tuple(pred.band_names), tuple(ref.band_names)
    if not a or not b or a == b:
        return None
    return (f"different bands compared: {', '.join(a)} (result) against {', '.join(b)} (reference); "
            "the metrics mix two wavelengths")


def band_set_image(members: Sequence[tuple], name: str) -> Image:
    """One multi-band Image from every band layer ``(data, metadata)`` of one raster, in band
    order (a ``band_sets`` entry), for comparing all bands at once (SAM, ERGAS)."""
    metas = [m[1] for m in members]
    groups = {(meta or {}).get(layers.GROUP, {}).get("id") for meta in metas}
    if len(groups) != 1 or None in groups or [meta.get("band") for meta in metas] != list(range(metas[0]["channels"])):
        raise HiresError(f"'{name}' is no longer a complete set of band layers of one raster")
    arrays = [np.asarray(data, dtype=np.float32) for data, _ in members]
    if len({a.shape for a in arrays}) > 1:
        raise HiresError(f"the band layers of '{name}' have different shapes")
    return replace(metas[0][layers.META], data=np.stack(arrays))


def compare(pred: Image, ref: Image, window: str | None = None, bands: list[int] | None = None,
            scale: int | None = None) -> Comparison:
    """Metrics of ``pred`` against ``ref`` as table rows; ``pred`` is resampled (linear) onto
    ``ref``'s grid when they differ (for example a result compared with its own input).

    ``scale``: the SR factor for ERGAS (default: the one in ``pred``'s provenance). A metric
    that should come close to the reference's own value shows that value in its 'better' column."""
    same = _on_same_grid(pred, ref)
    scale = scale if scale is not None else result_scale(pred)
    report = metrics.evaluate_pair(pred, ref, window=window, bands=bands, resample=not same, scale=scale)
    rows = []
    for name, entry in report["metrics"].items():
        value = _fmt(entry.get("value"))
        if entry.get("value") is None and entry.get("reason"):
            value = f"n/a ({entry['reason']})"
        elif entry.get("value") is None and entry.get("note", "").startswith("infinite"):
            value = "inf (identical)"
        better = entry.get("better", "")
        if "ref_value" in entry:
            unit = f" {entry['unit']}" if entry.get("unit") else ""
            better = f"closer to the reference's {_fmt(entry['ref_value'])}{unit}"
        rows.append((name, value, entry.get("unit", ""), better))
    st = report["settings"]
    rng = st.get("data_range") or {}
    summary = (f"range: {rng.get('description', rng.get('name', ''))}; bands: {', '.join(map(str, st.get('bands', [])))}"
               + ("" if same else "; result resampled onto the reference grid"))
    return Comparison(rows, st, not same, summary, band_mismatch(pred, ref))


@dataclass(frozen=True)
class CompareOutcome:
    """What a Compare worker returns: the table and the difference layer, or a one-line error."""

    comparison: Comparison | None = None
    difference: tuple | None = None  # layer data tuple of ``<a> − <b>``
    error: str | None = None


def run_compare(pred: Image, ref: Image, name_a: str, name_b: str, window: str | None = None) -> CompareOutcome:
    """``compare`` and ``difference_layer`` together (worker thread): the Images are snapshots
    taken on the main thread; a ``HiresError`` becomes ``CompareOutcome.error``."""
    try:
        return CompareOutcome(compare(pred, ref, window=window), difference_layer(pred, ref, name_a, name_b))
    except HiresError as e:
        return CompareOutcome(error=str(e))


def difference(pred: Image, ref: Image) -> Image:
    """``pred − ref`` on ``ref``'s grid (``pred`` resampled when the grids differ)."""
    if not _on_same_grid(pred, ref):
        pred = metrics.resample_to(pred, ref)
    if pred.channels != ref.channels:
        raise HiresError(f"result has {pred.channels} bands, the reference {ref.channels}")
    p, _ = metrics.load_pixels(pred)
    r, _ = metrics.load_pixels(ref)
    return replace(ref, data=(p - r).astype(np.float32), nodata=None,
                   meta={**ref.meta, "provenance": "difference"})


def difference_layer(pred: Image, ref: Image, name_a: str, name_b: str) -> tuple[Any, dict, str]:
    """The ``<a> − <b>`` layer: a diverging colormap symmetric about zero, reference geometry."""
    diff = difference(pred, ref)
    data = diff.data[0] if diff.channels == 1 else diff.data
    finite = np.abs(data[np.isfinite(data)])
    m = float(np.percentile(finite, 99)) if finite.size else 1.0
    m = m if m > 0 else 1.0
    geo = layers.geometry_kwargs(diff)
    if diff.channels > 1:  # bands as a leading 'band' axis (scale 1, no offset)
        geo = _with_band_axis(geo)
    kwargs = {"name": f"{name_a} − {name_b}", "colormap": "PiYG", "contrast_limits": (-m, m),
              "metadata": {layers.META: replace(diff, data=None), "channels": diff.channels}, **geo}
    return data, kwargs, "image"


def _with_band_axis(geo: dict) -> dict:
    """Layer geometry kwargs with a leading band axis (identity) in front of the spatial ones."""
    out = dict(geo)
    if "affine" in out:
        a = np.asarray(out["affine"], dtype=float)
        out["affine"] = np.block([[np.ones((1, 1)), np.zeros((1, len(a)))], [np.zeros((len(a), 1)), a]])
    else:
        out["scale"] = (1.0, *out["scale"])
        out["translate"] = (0.0, *out["translate"])
    if "axis_labels" in out:
        out["axis_labels"] = ("band", *out["axis_labels"])
    return out
