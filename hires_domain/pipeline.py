"""enhance: image → model through the tiler → image, in memory or streamed file to file."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import psutil
import torch

from . import __version__, geometry, io, through_plane, tiling
from .errors import HiresError
from .image import Image
from .intensity import HU_PADDING_BELOW
from .models import Model, get_model, resolve_scale
from .models import domain as input_domain
from .models.ldm import is_diffusion, sampling_for, steps_skipped
from .models.self_sr import DEFAULT_TRAIN_SECONDS
from .precision import check_precision, resolve_precision

Progress = Callable[[int, int], None]
GIB = 1024**3
XONE_FAMILIES = ("interpolation", "self-supervised")  # x1 in-plane leaves their pixels unchanged
MAX_TIFF_SIDE = 2**31 - 1


@dataclass(frozen=True)
class Settings:
    """What the user asked for. ``None`` means automatic: ``scale`` the model's own (its only
    one; 2 for the baselines), ``tile``/``overlap``/``batch_size`` sized to the model, device
    and memory (``auto_tiling``). ``resolve_run`` turns settings into what actually runs."""

    model: str = "bicubic"
    scale: int | None = None
    tile: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    strict: bool = False  # refuse inputs unlike the model's training inputs (check_domain)
    strength: float = 1.0  # how far the result may move from the deterministic answer (check_strength)
    # diffusion models only (None: the model's default; ldm.Sampling checks the values)
    steps: int | None = None
    seed: int | None = None
    samples: int | None = None
    sampler: str | None = None
    consistency: str | None = None  # auto | enforce | off
    temperature: float | None = None  # scale of the initial noise (below 1: samples nearer the mean)
    sample_output: bool = False  # one sample instead of the mean of the samples
    uncertainty: bool = False  # also produce the per-pixel std over the samples
    # through-plane refinement (through_plane.py): K slices per slice; self-sr's training choices
    z_scale: int = 1
    train_seconds: float | None = None  # None: models/self_sr.DEFAULT_TRAIN_SECONDS
    keep_model: bool = False  # cache self-sr's weights next to the output
    slice_profile: str | None = None  # box | gaussian (None: box)
    thickness: float | None = None  # mm (None: DICOM SliceThickness, else the slice spacing)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (precision.py)

    def __post_init__(self):
        check_z_settings(self)
        if self.scale is None and self.z_scale > 1 and get_model(self.model).info.family in XONE_FAMILIES:
            object.__setattr__(self, "scale", 1)  # z only, unless a trained in-plane model is named
        object.__setattr__(self, "scale", resolve_scale(self.model, self.scale))
        object.__setattr__(self, "strength", check_strength(self.strength, self.model, self.scale))
        object.__setattr__(self, "sampling", check_sampling(self))
        check_tiling(self.tile, self.overlap, self.batch_size)
        check_precision(self.precision)

    def describe(self, tile=None, overlap=None, precision=None) -> str:
        """The request in one line (``Run.describe`` fills in the resolved tiling and precision)."""
        auto = lambda given, resolved: resolved if resolved is not None else "auto" if given is None else given  # noqa: E731
        d = self.sampling
        strength = f" strength={self.strength:g}" if self.scale == 1 or d is not None else ""
        diffusion = "" if d is None else (
            f" steps={d.steps} seed={d.seed} samples={d.samples} sampler={d.sampler} consistency={d.consistency}"
            f"{'' if d.temperature is None else f' temperature={d.temperature:g}'}"
            f"{' output=sample' if d.sample_output else ''}")
        z = "" if self.z_scale == 1 else f" z_scale={self.z_scale} z_method={through_plane.z_method(self.model)}"
        training = ""
        if self.model == "self-sr":
            seconds = DEFAULT_TRAIN_SECONDS if self.train_seconds is None else self.train_seconds
            training = (f" train_seconds={seconds:g} slice_profile={self.slice_profile or 'box'}"
                        f"{'' if self.thickness is None else f' thickness={self.thickness:g}'}")
        return (f"hires-domain {__version__} model={self.model} scale={self.scale}{z}{strength} "  # z early: NIfTI keeps 80 chars
                f"tile={auto(self.tile, tile)} overlap={auto(self.overlap, overlap)} "
                f"precision={precision or self.precision}{diffusion}{training}")


def check_tiling(tile: int | None, overlap: int | None, batch_size: int | None) -> None:
    """One-line HiresError for a tile, overlap or batch size that cannot work (None = automatic)."""
    if tile is not None and tile < 1 or overlap is not None and overlap < 0 or batch_size is not None and batch_size < 1:
        raise HiresError(f"need tile >= 1, overlap >= 0 and batch size >= 1, got tile={tile} overlap={overlap} "
                         f"batch size={batch_size}")
    if tile is not None and overlap is not None and overlap >= tile:
        raise HiresError(f"need overlap < tile, got tile={tile} overlap={overlap}")


@dataclass(frozen=True)
class Run:
    """Settings resolved once for one image: the model instance, device, precision, tiling and
    per-axis factors that every later step uses; ``describe`` is the output's provenance."""

    settings: Settings
    model: Model
    device: torch.device
    precision: str
    tile: int
    overlap: int
    batch_size: int
    factors: tuple[int, ...]

    def describe(self) -> str:
        return self.settings.describe(self.tile, self.overlap, self.precision)


TILE_BUDGET = 768 * 1024**2  # activation memory of one model call, at most (CPU)
TILE_RANGE = (64, 1024)  # automatic tiles: multiples of 64 input pixels (whole output blocks)


def auto_tiling(model: Model, device: torch.device, spatial: tuple[int, ...]) -> tuple[int, int, int]:
    """(tile, overlap, batch) for ``model`` at its run precision: the largest tile (a multiple
    of 64) whose model call with halo fits the memory budget (``TILE_BUDGET`` or a quarter of the
    free memory on CPU, half the free GPU memory on CUDA), no blending overlap when tiles are
    exact (the halo covers the receptive field), and on CUDA as many tiles per call as fit.
    Diffusion models keep 256 / 32 (their samples are blended across tiles)."""
    if not model.exact_tiles:
        return 256, 32, 1
    if device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] / 2
    else:
        budget = min(TILE_BUDGET, psutil.virtual_memory().available / 4)
    per_pixel, h = model.activation_bytes(), model.info.halo
    lo, hi = TILE_RANGE
    side = max(spatial[-2:])
    tile = max(lo, min(hi, -(-side // lo) * lo))
    while tile > lo and (tile + 2 * h) ** 2 * per_pixel > budget:
        tile -= lo
    batch = 1
    if device.type == "cuda":
        batch = int(max(1, min(16, budget // ((tile + 2 * h) ** 2 * per_pixel))))
    return tile, 0, batch


def resolve_run(image: Image, s: Settings) -> Run:
    """Check the model against the image and resolve device, precision and tiling, once."""
    model = get_model(s.model)
    model.check(s.scale, image.channels, domain_of(image), image.band_names)
    device = tiling.resolve_device(s.device)
    model.precision = resolve_precision(s.precision, model, device)
    if s.sampling is not None:
        model.with_sampling(s.sampling)
    tile, overlap, batch = auto_tiling(model, device, image.spatial_shape)
    if s.tile is not None:
        tile = s.tile
        if s.overlap is None:
            overlap = 0 if model.exact_tiles else min(32, tile // 4)
    overlap = overlap if s.overlap is None else s.overlap
    check_tiling(tile, overlap, s.batch_size)
    use_threads(device)
    return Run(s, model, device, model.precision, tile, overlap, batch if s.batch_size is None else s.batch_size,
               inplane_factors(image, s.scale))


def use_threads(device: torch.device) -> None:
    """Torch's CPU threads = the cores this process may use (affinity and cgroup quota), unless
    the user set OMP_NUM_THREADS."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)


SELF_SR_ONLY = ("train_seconds", "slice_profile", "thickness")


def check_z_settings(s: Settings) -> None:
    """One-line refusals: a z-scale out of range, self-sr without one, self-sr choices for
    other models, uncertainty with a z refinement."""
    object.__setattr__(s, "z_scale", through_plane.check_z_scale(s.z_scale))
    if s.model == "self-sr" and s.z_scale == 1:
        raise HiresError("self-sr refines the slice axis: give --z-scale K (2 or more)")
    given = [k.replace("_", "-") for k in SELF_SR_ONLY if getattr(s, k) is not None]
    given += ["keep-model"] if s.keep_model else []
    if given and s.model != "self-sr":
        raise HiresError(f"self-sr option(s) given ({', '.join(given)}) but the model is '{s.model}'")
    if s.uncertainty and s.z_scale > 1:
        raise HiresError("--uncertainty is not available with --z-scale")
    through_plane.check_self_sr_options(s.slice_profile, s.thickness, s.train_seconds)


DIFFUSION_ONLY = ("steps", "seed", "samples", "sampler", "consistency", "temperature")


def check_sampling(s: Settings):
    """The diffusion model's ``ldm.Sampling`` for these settings (None for other models, which
    refuse every diffusion choice with one line)."""
    model = get_model(s.model)
    given = [k for k in DIFFUSION_ONLY if getattr(s, k) is not None]
    given += [k.replace("_", "-") for k in ("sample_output", "uncertainty") if getattr(s, k)]
    if not is_diffusion(model):
        if given:
            raise HiresError(f"diffusion-only option(s) given ({', '.join(given)}) but '{s.model}' is a "
                             f"{model.info.family} model")
        return None
    return sampling_for(model, **{k: getattr(s, k) for k in DIFFUSION_ONLY},
                        sample_output=s.sample_output, uncertainty=s.uncertainty, strength=s.strength)


def check_strength(strength, model: str, scale: int) -> float:
    """A strength in [0, 1]: how far the result may move from the deterministic answer. x1 models:
    output = input + strength × (model − input); diffusion models (SDEdit): sampling starts from the
    first stage noised to step strength·T (0: the first stage, 1: full sampling). Anything but 1
    for another model is a one-line HiresError."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise HiresError(f"strength must be a number from 0 to 1, got {strength!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise HiresError(f"strength must be from 0 to 1 (0: the deterministic answer, the input for x1 "
                         f"models and the first stage for diffusion models; 1: the model's output), got {value:g}")
    if value != 1.0 and scale != 1 and not is_diffusion(get_model(model)):
        raise HiresError(f"strength applies to x1 (denoising) models such as ct-denoise and to diffusion "
                         f"models; {model} runs at x{scale}")
    return value


@dataclass
class Summary:
    """What a run did, for the CLI and ``hires demo``."""

    input: str
    output: str
    model: str
    scale: int
    in_shape: tuple
    out_shape: tuple
    seconds: float
    device: str
    clipped: int = 0
    precision: str = "fp32"
    notes: list = field(default_factory=list)


def domain_of(image: Image) -> str:
    return "raster" if image.kind == "raster" else "medical"


def output_block(scale: int) -> int:
    """GeoTIFF block size for a ×scale output: 64·scale, so tiles aligned to 64 input pixels
    finish whole blocks (a multiple of 16, as TIFF requires)."""
    return 64 * scale


def _plan(image: Image, run: Run, block: int | None = None) -> tuple[tiling.TileSpec, Callable]:
    """TileSpec over the image's spatial axes; a 2-D model runs slice by slice on volumes.

    ``block``: the writer's output block size; tiles then start on multiples of block/scale so
    that finished cells are whole blocks (written once, without buffering). CT (HU) outputs are
    floored at −1024 HU: lower values are padding by convention (intensity.mark_ct_padding).
    A Sentinel-2 product's ``dn_offsets`` are added before the model and removed after.
    """
    s, model = run.settings, run.model
    lead = len(image.spatial_shape) - 2
    h = model.info.halo
    a = block // s.scale if block and block % s.scale == 0 else 1
    a = math.lcm(a, model.info.phase)
    spec = tiling.TileSpec(
        tile=(1,) * lead + (run.tile, run.tile), overlap=(0,) * lead + (run.overlap, run.overlap),
        halo=(0,) * lead + (h, h), scale=(1,) * lead + (s.scale, s.scale), align=(1,) * lead + (a, a))

    floor = HU_PADDING_BELOW if image.units == "HU" else None
    offsets = image.meta.get("dn_offsets")  # Sentinel-2 baseline >= 04.00: models see DN + offset
    shift = torch.tensor(offsets, dtype=torch.float32).view(1, -1, 1, 1) if offsets and any(offsets) else None

    def predict(x, origins=None, margins=None):
        flat = x.reshape(x.shape[0], x.shape[1], *x.shape[-2:])
        if shift is not None:
            flat = flat + shift.to(flat.device, flat.dtype)
        if origins is not None:
            y = model.predict_at(flat, s.scale, origins)
        elif margins is not None:  # the 2-D model's halo: the last two axes
            y = model.predict(flat, s.scale, margins=margins[-4:])
        else:
            y = model.predict(flat, s.scale)
        if floor is not None:  # CT output below -1024 HU would read back as padding
            y[:, :image.channels] = y[:, :image.channels].clamp_min(floor)
        if s.strength != 1.0 and s.sampling is None:  # x1: a blend per tile, before the (linear) tile blending;
            y = flat + s.strength * (y - flat)  # invalid pixels are written as nodata by the sink anyway
        if shift is not None:
            y[:, :image.channels] = y[:, :image.channels] - shift.to(y.device, y.dtype)
        return y.reshape(x.shape[0], y.shape[1], *(1,) * lead, *y.shape[-2:])

    predict.wants_origin = s.sampling is not None  # diffusion: noise is keyed by global position
    predict.crops_halo = getattr(model, "crops_halo", False)
    return spec, predict


def inplane_factors(image: Image, scale: int) -> tuple[int, ...]:
    """Per-axis refinement of an in-plane ``scale`` (slices and other leading axes unchanged)."""
    lead = len(image.spatial_shape) - 2
    return (1,) * lead + (scale, scale)


def _human(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB / 10 else f"{nbytes / 1024**2:.1f} MiB"


def output_factors(image: Image, scale: int, z_scale: int = 1) -> tuple[int, ...]:
    """Per-axis refinement: ``scale`` in-plane, ``z_scale`` along the slices of a volume."""
    f = inplane_factors(image, scale)
    return f if z_scale == 1 else (z_scale, *f[1:])


def check_size(image: Image, scale: int, streamed_to: Path | None = None, z_scale: int = 1) -> tuple[int, ...]:
    """Refuse absurd outputs before allocating anything; returns the output spatial shape."""
    out = geometry.upscaled_shape(image.spatial_shape, output_factors(image, scale, z_scale))
    dims = " x ".join(str(n) for n in (image.channels, *out))
    if streamed_to is None:
        need = 4 * image.channels * int(np.prod(out, dtype=np.float64))
        avail = psutil.virtual_memory().available
        if need > avail / 2:
            raise HiresError(f"output would be {_human(need)} in memory ({dims} float32), more than "
                             f"half the available memory ({_human(avail)})")
        return out
    if max(out) > MAX_TIFF_SIDE:
        raise HiresError(f"output would be {dims} pixels: larger than GeoTIFF allows per side")
    need = np.dtype(image.data.dtype).itemsize * image.channels * float(np.prod(out, dtype=np.float64))
    free = shutil.disk_usage(streamed_to.resolve().parent).free
    if need > free:
        raise HiresError(f"output would be {_human(need)} uncompressed ({dims}), more than the "
                         f"{_human(free)} free at {streamed_to.resolve().parent}")
    return out


def domain_note(image: Image, model: Model, strict: bool = False) -> str | None:
    """The input-domain guard (``models/domain.py``): one line saying how ``image`` differs
    from ``model``'s training inputs, or None. With ``strict`` a difference is a HiresError
    instead. Models that record no training inputs (every baseline) are never checked."""
    note = input_domain.check(image, model.input_domain, model.info.name, max(model.info.scales))
    if note and strict:
        raise HiresError(f"{note}; refused (--strict / strict=True)")
    return note


def check_domain(image: Image, model: Model, strict: bool = False) -> str | None:
    """``domain_note`` once per run, before anything is written: a difference becomes one
    ``UserWarning`` (``hires`` prints it as one 'warning: ...' line) and is returned."""
    note = domain_note(image, model, strict)
    if note:
        warnings.warn(note, UserWarning, stacklevel=3)
    return note


def iter_enhance(image: Image, sink: tiling.Sink, s: Settings | Run, on_step: Progress | None = None,
                 select: Callable[[tuple[int, ...]], bool] | None = None) -> Iterator[tuple[int, int]]:
    """Tile-by-tile generator over ``image`` into ``sink``; yields (done, total) tiles. The caller
    runs the input-domain guard first, once (``check_domain``, or ``domain_note`` in napari), and
    may pass the ``Run`` it resolved (Settings are resolved here otherwise).

    Diffusion models: ``sink`` receives the output channels followed, with ``s.uncertainty``, by
    the per-pixel standard deviation (``tiling.SplitSink`` separates them); ``on_step(done,
    total)`` counts denoising steps over all tiles, and raising in it stops within one step.
    ``select``: only some tiles (``tiling.iter_tiled``), for a row band on a cluster worker."""
    run = s if isinstance(s, Run) else resolve_run(image, s)
    s = run.settings
    spec, predict = _plan(image, run, block=getattr(sink, "block", None))
    if s.sampling is not None and on_step is not None:
        steps = s.sampling.steps - steps_skipped(s.sampling.steps, s.sampling.strength)
        total = len(tiling.TilePlan(tuple(image.spatial_shape), spec).tiles()) * steps
        done = itertools.count(1)
        run.model.on_step = lambda step, steps: on_step(next(done), total)
    source = image.data if not isinstance(image.data, np.ndarray) else tiling.ArraySource(image.data, image.nodata)
    if image.units == "HU":
        sink = _FlooredSink(sink, image.channels)
    yield from tiling.iter_tiled(source, sink, predict, spec, run.batch_size, run.device, select)


class _FlooredSink:
    """Writes CT channels floored at -1024 HU after tile blending (whose rounding can dip a hair
    below a floored model output: -1024.0001 would read back as padding); the rest passes through."""

    def __init__(self, sink: tiling.Sink, channels: int):
        self._sink, self._channels = sink, channels

    def write(self, region, data: np.ndarray, valid: np.ndarray) -> None:
        np.maximum(data[:self._channels], HU_PADDING_BELOW, out=data[:self._channels])
        self._sink.write(region, data, valid)

    def __getattr__(self, name):
        return getattr(self._sink, name)


def _drain(gen: Iterator[tuple[int, int]], progress: Progress | None) -> None:
    for done, total in gen:
        if progress:
            progress(done, total)


def enhance(image: Image, model: str = "bicubic", scale: int | None = None, tile: int | None = None,
            overlap: int | None = None, batch_size: int | None = None, device: str = "auto",
            progress: Progress | None = None, strict: bool = False, strength: float = 1.0,
            precision: str = "auto", **diffusion):
    """Super-resolve ``image`` in memory; returns an Image on the refined grid, metadata kept.
    ``scale=None``: the model's own scale (its only one; 2 for the baselines); ``tile``,
    ``overlap``, ``batch_size`` None: sized automatically (``auto_tiling``); ``precision``: auto,
    fp32, bf16 or fp16 (``precision.py``).

    An input unlike the model's training inputs gives one UserWarning (``check_domain``), or
    with ``strict`` a HiresError. ``strength`` (0..1; ``check_strength``): x1 models give input +
    strength × (model − input), diffusion models sample from their first stage noised to step
    strength·T; 1 is the model's own output. Diffusion models take ``steps``, ``seed``,
    ``samples``, ``sampler``, ``consistency``, ``sample_output`` and ``uncertainty`` (see
    ``Settings``); with ``uncertainty=True`` the result is ``(image, std_image)``, the second
    the per-pixel standard deviation over the samples on the same grid. Volumes take
    ``z_scale`` (and for ``self-sr`` ``train_seconds``, ``slice_profile``, ``thickness``):
    the slice axis refined after the in-plane pass (``through_plane``)."""
    s = Settings(model, scale, tile, overlap, batch_size, device, strict=strict, strength=strength,
                 precision=precision, **diffusion)
    run = resolve_run(image, s)
    through_plane.check_volume(image, s.z_scale)
    check_domain(image, run.model, strict)
    result, std = _enhance_volume(image, run, progress)
    return (result, std) if s.uncertainty else result


def _enhance_checked(image: Image, run: Run, progress: Progress | None) -> tuple[Image, Image | None]:
    """``enhance`` after the model and domain checks: the result and, with ``s.uncertainty``,
    the uncertainty image."""
    s = run.settings
    out = check_size(image, s.scale)
    fill = np.nan if image.nodata is None else image.nodata
    sink = tiling.ArraySink((image.channels, *out), fill=fill)
    extra = tiling.ArraySink((image.channels, *out), fill=np.nan) if s.uncertainty else None
    target = tiling.SplitSink(sink, extra, image.channels) if extra is not None else sink
    _drain(iter_enhance(image, target, run, on_step=progress if s.sampling is not None else None),
           None if s.sampling is not None else progress)
    result = image.with_data(sink.array, factors=run.factors, meta={**image.meta, "provenance": run.describe()})
    if extra is None:
        return result, None
    std = image.with_data(extra.array, factors=run.factors,
                          meta={**image.meta, "provenance": uncertainty_description(run), "nodata": None,
                                "dtype": "float32"})
    std.nodata = None
    return result, std


def inplane_is_identity(s: Settings) -> bool:
    """x1 in-plane with a model that leaves pixels unchanged there (baselines, self-sr)."""
    return s.scale == 1 and get_model(s.model).info.family in XONE_FAMILIES


def _enhance_volume(image: Image, run: Run, progress: Progress | None, cache_dir: Path | None = None,
                    notes: list | None = None) -> tuple[Image, Image | None]:
    """The in-memory path with ``s.z_scale``: in-plane first (the model through the tiler; skipped
    when it is the identity), then the slice axis (``through_plane.refine``), so a trained
    in-plane model sees acquired slices, never interpolated ones."""
    s = run.settings
    if s.z_scale == 1:
        return _enhance_checked(image, run, progress)
    check_size(image, s.scale, z_scale=s.z_scale)
    if inplane_is_identity(s):
        inplane = image
    else:
        inplane = _enhance_checked(image, run, progress)[0]
    result = through_plane.refine(inplane, run, progress, cache_dir, notes)
    return dataclasses.replace(result, meta={**image.meta, "provenance": run.describe()}), None


def uncertainty_description(run: Run) -> str:
    return (f"{run.describe()} output=uncertainty (per-pixel standard deviation over "
            f"{run.settings.sampling.samples} sample(s))")


def enhance_file(src, dst, settings: Settings = Settings(), series: str | None = None,
                 overwrite: bool = False, cog: bool = False, progress: Progress | None = None,
                 uncertainty=None, bands: tuple[str, ...] | None = None) -> Summary:
    """Read ``src``, enhance, write ``dst`` atomically; rasters stream window by window.
    ``uncertainty`` (diffusion models): also write the per-pixel standard deviation over the
    samples there, with the output's geometry and format (GeoTIFF, NIfTI or DICOM series).
    Diffusion runs report ``progress`` in denoising steps over all tiles. ``bands``: which bands of
    a Sentinel-2 product to read (default every band but B10)."""
    src, dst = Path(src), Path(dst)
    if uncertainty is not None:
        settings = dataclasses.replace(settings, uncertainty=True)
    image = io.read(src, series=series, bands=bands)
    try:
        return _enhance_image_to(image, src, dst, settings, overwrite, cog, progress,
                                 None if uncertainty is None else Path(uncertainty))
    finally:
        if hasattr(image.data, "close"):
            image.data.close()


def _enhance_image_to(image: Image, src: Path, dst: Path, settings: Settings, overwrite: bool, cog: bool,
                      progress: Progress | None, unc: Path | None = None) -> Summary:
    kind = io.output_kind(image, dst)
    io.check_output(dst, overwrite, src=src)
    if unc is not None:
        if io.output_kind(image, unc) != kind:
            raise HiresError(f"--uncertainty {unc}: write it in the output's format ({kind})")
        io.check_output(unc, overwrite, src=src)
        if unc.resolve() == dst.resolve():
            raise HiresError(f"--uncertainty {unc} is the output path: choose another")
    if cog and kind != "raster":
        raise HiresError("--cog applies to GeoTIFF output only")
    run = resolve_run(image, settings)
    through_plane.check_volume(image, settings.z_scale)
    note = check_domain(image, run.model, settings.strict)  # before any output exists
    start = time.perf_counter()
    clipped = 0
    notes = [note] if note else []
    diffusion = settings.sampling is not None
    steps, tiles = (progress, None) if diffusion else (None, progress)
    if kind == "raster":
        from .io.raster import RasterSink

        out = check_size(image, settings.scale, streamed_to=dst)
        affine = geometry.upscaled_affine(image.affine, run.factors)
        shape, block = (image.channels, *out), output_block(settings.scale)
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(io.atomic_output(dst))
            meta = {**image.meta, "nodata": image.nodata}
            sink = stack.enter_context(RasterSink(tmp, shape, affine, meta, crs=image.crs,
                                                  provenance=run.describe(), cog=cog, block=block))
            target = sink
            if unc is not None:
                unc_tmp = stack.enter_context(io.atomic_output(unc))
                unc_meta = {**image.meta, "nodata": None, "dtype": "float32"}
                extra = stack.enter_context(RasterSink(unc_tmp, shape, affine, unc_meta, crs=image.crs,
                                                       provenance=uncertainty_description(run), cog=cog,
                                                       block=block))
                target = tiling.SplitSink(sink, extra, image.channels)
            _drain(iter_enhance(image, target, run, on_step=steps), tiles)
        clipped = sink.clipped
    else:
        result, std = _enhance_volume(image, run, progress, dst.parent if settings.keep_model else None, notes)
        out = result.spatial_shape
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(io.atomic_output(dst, is_dir=kind == "dicom"))
            io.write_to(result, tmp, kind, description=run.describe())
            if unc is not None:
                unc_tmp = stack.enter_context(io.atomic_output(unc, is_dir=kind == "dicom"))
                io.write_to(std, unc_tmp, kind, description=uncertainty_description(run))
    return Summary(str(src), str(dst), settings.model, settings.scale, image.shape,
                   (image.channels, *out), time.perf_counter() - start, str(run.device), clipped,
                   notes=notes, precision=run.precision)
