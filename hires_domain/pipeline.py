"""enhance: image → model through the tiler → image, in memory or streamed file to file."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import psutil

from . import __version__, geometry, io, tiling
from .errors import HiresError
from .image import Image
from .intensity import HU_PADDING_BELOW
from .models import Model, get_model, resolve_scale
from .models import domain as input_domain
from .models.ldm import is_diffusion, sampling_for

Progress = Callable[[int, int], None]
GIB = 1024**3
MAX_TIFF_SIDE = 2**31 - 1


@dataclass(frozen=True)
class Settings:
    """What the user asked for; ``describe`` goes into the output's provenance. ``scale=None``
    means the model's own scale (its only one; 2 for the baselines)."""

    model: str = "bicubic"
    scale: int | None = None
    tile: int = 256
    overlap: int = 32
    batch_size: int = 4
    device: str = "auto"
    strict: bool = False  # refuse inputs unlike the model's training inputs (check_domain)
    strength: float = 1.0  # x1 (denoising) models: output = input + strength * (model - input)
    # diffusion models only (None: the model's default; ldm.Sampling checks the values)
    steps: int | None = None
    seed: int | None = None
    samples: int | None = None
    sampler: str | None = None
    consistency: str | None = None  # auto | enforce | off
    temperature: float | None = None  # scale of the initial noise (below 1: samples nearer the mean)
    sample_output: bool = False  # one sample instead of the mean of the samples
    uncertainty: bool = False  # also produce the per-pixel std over the samples

    def __post_init__(self):
        object.__setattr__(self, "scale", resolve_scale(self.model, self.scale))
        object.__setattr__(self, "strength", check_strength(self.strength, self.model, self.scale))
        object.__setattr__(self, "sampling", check_sampling(self))

    def describe(self) -> str:
        strength = f" strength={self.strength:g}" if self.scale == 1 else ""
        d = self.sampling
        diffusion = "" if d is None else (
            f" steps={d.steps} seed={d.seed} samples={d.samples} sampler={d.sampler} consistency={d.consistency}"
            f"{'' if d.temperature is None else f' temperature={d.temperature:g}'}"
            f"{' output=sample' if d.sample_output else ''}")
        return (f"hires-domain {__version__} model={self.model} scale={self.scale} "
                f"tile={self.tile} overlap={self.overlap}{strength}{diffusion}")


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
                        sample_output=s.sample_output, uncertainty=s.uncertainty)


def check_strength(strength, model: str, scale: int) -> float:
    """A denoising strength in [0, 1]; anything but 1 only for a x1 model (one-line HiresError)."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise HiresError(f"strength must be a number from 0 to 1, got {strength!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise HiresError(f"strength must be from 0 to 1 (0: the input unchanged, 1: the model's output), got {value:g}")
    if value != 1.0 and scale != 1:
        raise HiresError(f"strength applies to x1 (denoising) models such as ct-denoise; "
                         f"{model} runs at x{scale}")
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
    notes: list = field(default_factory=list)


def domain_of(image: Image) -> str:
    return "raster" if image.kind == "raster" else "medical"


def output_block(scale: int) -> int:
    """GeoTIFF block size for a ×scale output: 64·scale, so tiles aligned to 64 input pixels
    finish whole blocks (a multiple of 16, as TIFF requires)."""
    return 64 * scale


def _plan(image: Image, model: Model, s: Settings, block: int | None = None) -> tuple[tiling.TileSpec, Callable]:
    """TileSpec over the image's spatial axes; a 2-D model runs slice by slice on volumes.

    ``block``: the writer's output block size; tiles then start on multiples of block/scale so
    that finished cells are whole blocks (written once, without buffering). CT (HU) outputs are
    floored at −1024 HU: lower values are padding by convention (intensity.mark_ct_padding).
    """
    model.check(s.scale, image.channels, domain_of(image))
    if s.tile < 1 or s.overlap < 0 or s.overlap >= s.tile:
        raise HiresError(f"need tile >= 1 and 0 <= overlap < tile, got tile={s.tile} overlap={s.overlap}")
    lead = len(image.spatial_shape) - 2
    h = model.info.halo
    a = block // s.scale if block and block % s.scale == 0 else 1
    spec = tiling.TileSpec(
        tile=(1,) * lead + (s.tile, s.tile), overlap=(0,) * lead + (s.overlap, s.overlap),
        halo=(0,) * lead + (h, h), scale=(1,) * lead + (s.scale, s.scale), align=(1,) * lead + (a, a))

    floor = HU_PADDING_BELOW if image.units == "HU" else None
    if s.sampling is not None:
        model.with_sampling(s.sampling)

    def predict(x, origins=None):
        flat = x.reshape(x.shape[0], x.shape[1], *x.shape[-2:])
        y = model.predict(flat, s.scale) if origins is None else model.predict_at(flat, s.scale, origins)
        if floor is not None:  # CT output below -1024 HU would read back as padding
            y[:, :image.channels] = y[:, :image.channels].clamp_min(floor)
        if s.strength != 1.0:  # x1 only (Settings): a blend per tile, before the (linear) tile blending;
            y = flat + s.strength * (y - flat)  # invalid pixels are written as nodata by the sink anyway
        return y.reshape(x.shape[0], y.shape[1], *(1,) * lead, *y.shape[-2:])

    predict.wants_origin = s.sampling is not None  # diffusion: noise is keyed by global position
    return spec, predict


def inplane_factors(image: Image, scale: int) -> tuple[int, ...]:
    """Per-axis refinement of an in-plane ``scale`` (slices and other leading axes unchanged)."""
    lead = len(image.spatial_shape) - 2
    return (1,) * lead + (scale, scale)


def _human(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB / 10 else f"{nbytes / 1024**2:.1f} MiB"


def check_size(image: Image, scale: int, streamed_to: Path | None = None) -> tuple[int, ...]:
    """Refuse absurd outputs before allocating anything; returns the output spatial shape."""
    out = geometry.upscaled_shape(image.spatial_shape, inplane_factors(image, scale))
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


def iter_enhance(image: Image, sink: tiling.Sink, s: Settings, on_step: Progress | None = None,
                 select: Callable[[tuple[int, ...]], bool] | None = None) -> Iterator[tuple[int, int]]:
    """Tile-by-tile generator over ``image`` into ``sink``; yields (done, total) tiles. The caller
    runs the input-domain guard first, once (``check_domain``, or ``domain_note`` in napari).

    Diffusion models: ``sink`` receives the output channels followed, with ``s.uncertainty``, by
    the per-pixel standard deviation (``tiling.SplitSink`` separates them); ``on_step(done,
    total)`` counts denoising steps over all tiles, and raising in it stops within one step.
    ``select``: only some tiles (``tiling.iter_tiled``), for a row band on a cluster worker."""
    model = get_model(s.model)
    spec, predict = _plan(image, model, s, block=getattr(sink, "block", None))
    if s.sampling is not None and on_step is not None:
        total = len(tiling.TilePlan(tuple(image.spatial_shape), spec).tiles()) * s.sampling.steps
        done = itertools.count(1)
        model.on_step = lambda step, steps: on_step(next(done), total)
    device = tiling.resolve_device(s.device)
    source = image.data if not isinstance(image.data, np.ndarray) else tiling.ArraySource(image.data, image.nodata)
    yield from tiling.iter_tiled(source, sink, predict, spec, s.batch_size, device, select)


def _drain(gen: Iterator[tuple[int, int]], progress: Progress | None) -> None:
    for done, total in gen:
        if progress:
            progress(done, total)


def enhance(image: Image, model: str = "bicubic", scale: int | None = None, tile: int = 256, overlap: int = 32,
            batch_size: int = 4, device: str = "auto", progress: Progress | None = None, strict: bool = False,
            strength: float = 1.0, **diffusion):
    """Super-resolve ``image`` in memory; returns an Image on the refined grid, metadata kept.
    ``scale=None``: the model's own scale (its only one; 2 for the baselines).

    An input unlike the model's training inputs gives one UserWarning (``check_domain``), or
    with ``strict`` a HiresError. ``strength`` (x1 models, 0..1): output = input + strength ×
    (model − input); 1 is the model's own output. Diffusion models take ``steps``, ``seed``,
    ``samples``, ``sampler``, ``consistency``, ``sample_output`` and ``uncertainty`` (see
    ``Settings``); with ``uncertainty=True`` the result is ``(image, std_image)``, the second
    the per-pixel standard deviation over the samples on the same grid."""
    s = Settings(model, scale, tile, overlap, batch_size, device, strict=strict, strength=strength, **diffusion)
    m = get_model(model)
    m.check(s.scale, image.channels, domain_of(image))
    check_domain(image, m, strict)
    result, std = _enhance_checked(image, s, progress)
    return (result, std) if s.uncertainty else result


def _enhance_checked(image: Image, s: Settings, progress: Progress | None) -> tuple[Image, Image | None]:
    """``enhance`` after the model and domain checks: the result and, with ``s.uncertainty``,
    the uncertainty image."""
    out = check_size(image, s.scale)
    fill = np.nan if image.nodata is None else image.nodata
    sink = tiling.ArraySink((image.channels, *out), fill=fill)
    extra = tiling.ArraySink((image.channels, *out), fill=np.nan) if s.uncertainty else None
    target = tiling.SplitSink(sink, extra, image.channels) if extra is not None else sink
    _drain(iter_enhance(image, target, s, on_step=progress if s.sampling is not None else None),
           None if s.sampling is not None else progress)
    factors = inplane_factors(image, s.scale)
    result = image.with_data(sink.array, factors=factors, meta={**image.meta, "provenance": s.describe()})
    if extra is None:
        return result, None
    std = image.with_data(extra.array, factors=factors,
                          meta={**image.meta, "provenance": uncertainty_description(s), "nodata": None,
                                "dtype": "float32"})
    std.nodata = None
    return result, std


def uncertainty_description(s: Settings) -> str:
    return f"{s.describe()} output=uncertainty (per-pixel standard deviation over {s.sampling.samples} sample(s))"


def enhance_file(src, dst, settings: Settings = Settings(), series: str | None = None,
                 overwrite: bool = False, cog: bool = False, progress: Progress | None = None,
                 uncertainty=None) -> Summary:
    """Read ``src``, enhance, write ``dst`` atomically; rasters stream window by window.
    ``uncertainty`` (diffusion models): also write the per-pixel standard deviation over the
    samples there, with the output's geometry and format (GeoTIFF, NIfTI or DICOM series).
    Diffusion runs report ``progress`` in denoising steps over all tiles."""
    src, dst = Path(src), Path(dst)
    if uncertainty is not None:
        settings = dataclasses.replace(settings, uncertainty=True)
    image = io.read(src, series=series)
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
    model = get_model(settings.model)
    model.check(settings.scale, image.channels, domain_of(image))
    note = check_domain(image, model, settings.strict)  # before any output exists
    device = tiling.resolve_device(settings.device)
    start = time.perf_counter()
    clipped = 0
    diffusion = settings.sampling is not None
    steps, tiles = (progress, None) if diffusion else (None, progress)
    if kind == "raster":
        from .io.raster import RasterSink

        out = check_size(image, settings.scale, streamed_to=dst)
        affine = geometry.upscaled_affine(image.affine, inplane_factors(image, settings.scale))
        shape, block = (image.channels, *out), output_block(settings.scale)
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(io.atomic_output(dst))
            meta = {**image.meta, "nodata": image.nodata}
            sink = stack.enter_context(RasterSink(tmp, shape, affine, meta, crs=image.crs,
                                                  provenance=settings.describe(), cog=cog, block=block))
            target = sink
            if unc is not None:
                unc_tmp = stack.enter_context(io.atomic_output(unc))
                unc_meta = {**image.meta, "nodata": None, "dtype": "float32"}
                extra = stack.enter_context(RasterSink(unc_tmp, shape, affine, unc_meta, crs=image.crs,
                                                       provenance=uncertainty_description(settings), cog=cog,
                                                       block=block))
                target = tiling.SplitSink(sink, extra, image.channels)
            _drain(iter_enhance(image, target, settings, on_step=steps), tiles)
        clipped = sink.clipped
    else:
        result, std = _enhance_checked(image, settings, progress)
        out = result.spatial_shape
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(io.atomic_output(dst, is_dir=kind == "dicom"))
            io.write_to(result, tmp, kind, description=settings.describe())
            if unc is not None:
                unc_tmp = stack.enter_context(io.atomic_output(unc, is_dir=kind == "dicom"))
                io.write_to(std, unc_tmp, kind, description=uncertainty_description(settings))
    return Summary(str(src), str(dst), settings.model, settings.scale, image.shape,
                   (image.channels, *out), time.perf_counter() - start, str(device), clipped,
                   notes=[note] if note else [])
