"""Streaming N-d tiler: halo for model context, overlap blending at output resolution.

Tiles are planned on the input grid; each is read with a halo of ``halo`` extra input pixels
(clipped at the image border, never padded, so a convolutional model sees exactly what it sees
on the whole image), run through the model in batches, cropped back to the tile, weighted and
accumulated. The output is cut into *cells* by every tile boundary; a cell is written to the
sink the moment the last tile covering it has been blended, so memory holds only the unfinished
band of cells (the overlap behind the current tile row), never the whole output.

Blending weights are computed at output resolution, per axis: 1 inside a tile, a Hann
(sin²) ramp across the region shared with the neighbouring tile on that side, and 1 up to
the image edge (no footprint is lost). The output is Σ w·pred / Σ w, so any overlap gives
a convex combination of the tiles' predictions.

Nodata/NaN: a pixel is valid only if every band is finite and not the nodata value. Invalid
input pixels are replaced by the nearest valid pixel of the same tile before the model sees
them (so nodata never leaks into context as a value), and each output pixel is valid exactly
when the input pixel under its centre is valid; invalid output pixels get the sink's nodata.
"""

from __future__ import annotations

import collections
import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from scipy import ndimage

from .errors import HiresError

Region = tuple[slice, ...]


class Source(Protocol):
    """Windowed input: ``read`` returns float32 ``(C, *region)`` and a bool valid mask."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, region: Region) -> tuple[np.ndarray, np.ndarray]: ...


class Sink(Protocol):
    """Windowed output: receives finished float32 ``(C, *region)`` pixels and validity;
    ``finish`` raises unless every output pixel was written exactly once."""

    def write(self, region: Region, data: np.ndarray, valid: np.ndarray) -> None: ...

    def finish(self) -> None: ...


class ArraySource:
    """In-memory ``(C, *spatial)`` array as a Source; ``nodata`` marks invalid pixels."""

    def __init__(self, array: np.ndarray, nodata: float | None = None):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.nodata = nodata

    def read(self, region: Region) -> tuple[np.ndarray, np.ndarray]:
        data = np.asarray(self.array[(slice(None), *region)], dtype=np.float32)
        return data, valid_mask(data, self.nodata)


class IncompleteOutput(HiresError):
    """An output pixel was never written, or written twice: the output must not be kept."""


class Coverage:
    """Exactly-once ledger of written output pixels, kept per block of a block grid.

    A finished block is one flag; only blocks still partly written keep a pixel mask, so the
    ledger costs memory in proportion to the unfinished band, not the output. ``add`` raises
    on a pixel written twice or outside the output; ``check`` names the unwritten region.
    """

    def __init__(self, shape: tuple[int, ...], block: tuple[int, ...]):
        self.shape = tuple(int(n) for n in shape)
        self.block = tuple(max(1, min(int(b), n)) for b, n in zip(block, self.shape))
        self.done = np.zeros([-(-n // b) for n, b in zip(self.shape, self.block)], dtype=bool)
        self.partial: dict[tuple[int, ...], np.ndarray] = {}

    def block_region(self, idx: tuple[int, ...]) -> Region:
        return tuple(slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(idx, self.block, self.shape))

    def add(self, region: Region) -> list[tuple[tuple[int, ...], Region, bool]]:
        """Mark ``region`` written; returns ``(block, part of region in it, block now complete)``
        for every block it touches."""
        if len(region) != len(self.shape) or any(
                r.start < 0 or r.stop > n or r.start >= r.stop for r, n in zip(region, self.shape)):
            raise IncompleteOutput(f"write outside the output grid: {_describe(region)} of {self.shape}")
        touched = []
        ranges = [range(r.start // b, -(-r.stop // b)) for r, b in zip(region, self.block)]
        for idx in itertools.product(*ranges):
            whole = self.block_region(idx)
            part = tuple(slice(max(r.start, w.start), min(r.stop, w.stop)) for r, w in zip(region, whole))
            if self.done[idx]:
                raise IncompleteOutput(f"output pixels written twice: {_describe(part)}")
            if part == whole and idx not in self.partial:
                self.done[idx] = True
                touched.append((idx, part, True))
                continue
            mask = self.partial.setdefault(idx, np.zeros([w.stop - w.start for w in whole], dtype=bool))
            local = tuple(slice(p.start - w.start, p.stop - w.start) for p, w in zip(part, whole))
            if mask[local].any():
                twice = np.argwhere(mask[local]) + [p.start for p in part]
                box = tuple(slice(int(a), int(b) + 1) for a, b in zip(twice.min(0), twice.max(0)))
                raise IncompleteOutput(f"output pixels written twice: {_describe(box)}")
            mask[local] = True
            complete = bool(mask.all())
            if complete:
                del self.partial[idx]
                self.done[idx] = True
            touched.append((idx, part, complete))
        return touched

    def missing(self) -> tuple[int, Region | None]:
        """Number of unwritten pixels and their bounding box (None when complete)."""
        count, lo, hi = 0, None, None
        for idx in zip(*np.nonzero(~self.done)):
            idx = tuple(int(i) for i in idx)
            whole = self.block_region(idx)
            mask = self.partial.get(idx)
            holes = np.argwhere(~mask) if mask is not None else None
            if holes is None:
                first = np.array([w.start for w in whole])
                last = np.array([w.stop - 1 for w in whole])
                count += int(np.prod([w.stop - w.start for w in whole]))
            else:
                offset = np.array([w.start for w in whole])
                first, last = holes.min(0) + offset, holes.max(0) + offset
                count += len(holes)
            lo = first if lo is None else np.minimum(lo, first)
            hi = last if hi is None else np.maximum(hi, last)
        if lo is None:
            return 0, None
        return count, tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))

    def check(self) -> None:
        """Raise ``IncompleteOutput`` naming the unwritten region unless every pixel was written."""
        if self.done.all():
            return
        count, box = self.missing()
        total = int(np.prod(self.shape))
        raise IncompleteOutput(f"{count} of {total} output pixels were never written (within {_describe(box)}); "
                               "the output was not kept")


def _describe(region: Region) -> str:
    """'rows 1024-1051, cols 0-1023' (inclusive), with 'slices' first for volumes."""
    names = ("slices", "rows", "cols")[-len(region):] if len(region) <= 3 else [f"axis {d}" for d in range(len(region))]
    return ", ".join(f"{n} {r.start}-{r.stop - 1}" for n, r in zip(names, region))


class ArraySink:
    """Collects the output in memory as float32, invalid pixels set to ``fill``."""

    def __init__(self, shape: tuple[int, ...], fill: float = np.nan):
        self.array = np.empty(shape, dtype=np.float32)
        self.valid = np.zeros(shape[1:], dtype=bool)
        self.fill = fill
        self.coverage = Coverage(shape[1:], shape[1:])

    def write(self, region: Region, data: np.ndarray, valid: np.ndarray) -> None:
        self.coverage.add(region)
        self.array[(slice(None), *region)] = np.where(valid, data, self.fill)
        self.valid[region] = valid

    def finish(self) -> None:
        self.coverage.check()


class SplitSink:
    """Sends the first ``channels`` output channels to ``main`` and the rest to ``extra`` (a
    diffusion model's output followed by its uncertainty)."""

    def __init__(self, main: Sink, extra: Sink, channels: int):
        self.main, self.extra, self.channels = main, extra, channels
        self.block = getattr(main, "block", None)

    def write(self, region: Region, data: np.ndarray, valid: np.ndarray) -> None:
        self.main.write(region, data[:self.channels], valid)
        self.extra.write(region, data[self.channels:], valid)

    def finish(self) -> None:
        self.main.finish()
        self.extra.finish()


def valid_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """Pixels where every band is finite and differs from ``nodata``."""
    ok = np.all(np.isfinite(data), axis=0)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        ok &= np.all(data != nodata, axis=0)
    return ok


@dataclass(frozen=True)
class TileSpec:
    """Per-axis tiling parameters on the input grid (one entry per spatial axis)."""

    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    halo: tuple[int, ...]
    scale: tuple[int, ...]
    align: tuple[int, ...] | None = None  # tile starts are multiples of this (input pixels)


def axis_starts(n: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Tile starts along one axis: a uniform step of ``tile − overlap`` rounded down to a
    multiple of ``align`` (kept when that leaves a positive step), until the image is covered.

    Every neighbouring pair overlaps by the same amount (at least ``overlap``), so the band of
    unfinished output never grows beyond one overlap; the last tile is clipped at the edge.
    Aligned starts put every cell boundary on the writer's block grid.
    """
    step = (tile - overlap) // align * align or tile - overlap
    starts = [0]
    while starts[-1] + tile < n:
        starts.append(starts[-1] + step)
    return starts


def ramp_weights(n_out: int, lead: int, trail: int) -> np.ndarray:
    """1-D weights: Hann ramp up over ``lead`` pixels, down over ``trail``, 1 between."""
    w = np.ones(n_out, dtype=np.float64)
    if lead:
        w[:lead] = np.sin(0.5 * np.pi * (np.arange(lead) + 0.5) / lead) ** 2
    if trail:
        w[n_out - trail:] *= np.sin(0.5 * np.pi * (np.arange(trail)[::-1] + 0.5) / trail) ** 2
    return w


@dataclass(frozen=True)
class _Axis:
    n: int
    starts: list[int]
    tile: int
    scale: int

    def extent(self, i: int) -> int:
        """Length of tile ``i`` (the last one is clipped at the edge)."""
        return min(self.tile, self.n - self.starts[i])

    @cached_property
    def breaks(self) -> np.ndarray:
        """Output-grid cell boundaries: every tile start and end."""
        k = self.scale
        return np.array(sorted({s * k for s in self.starts} | {(s + self.extent(i)) * k
                                                                for i, s in enumerate(self.starts)}))

    def cells(self, i: int) -> range:
        s, e = self.starts[i] * self.scale, (self.starts[i] + self.extent(i)) * self.scale
        return range(int(np.searchsorted(self.breaks, s)), int(np.searchsorted(self.breaks, e)))

    def weights(self, i: int) -> np.ndarray:
        s, k = self.starts[i], self.scale
        lead = (self.starts[i - 1] + self.extent(i - 1) - s) * k if i > 0 else 0
        trail = (s + self.extent(i) - self.starts[i + 1]) * k if i + 1 < len(self.starts) else 0
        return ramp_weights(self.extent(i) * k, lead, trail)

    def weight_sum(self) -> np.ndarray:
        """Σ of every tile's weights along this axis, at output resolution."""
        total = np.zeros(self.n * self.scale, dtype=np.float64)
        for i, s in enumerate(self.starts):
            total[s * self.scale:(s + self.extent(i)) * self.scale] += self.weights(i)
        return total

    def coverage(self) -> np.ndarray:
        count = np.zeros(len(self.breaks) - 1, dtype=int)
        for i in range(len(self.starts)):
            count[list(self.cells(i))] += 1
        return count


class TilePlan:
    """Tiles, cells and blending weights for one input shape and TileSpec."""

    def __init__(self, shape: tuple[int, ...], spec: TileSpec):
        self.shape, self.spec = shape, spec
        self.axes = []
        align = spec.align or (1,) * len(shape)
        for n, t, o, k, a in zip(shape, spec.tile, spec.overlap, spec.scale, align):
            t = min(t, n)
            self.axes.append(_Axis(n, axis_starts(n, t, min(o, t - 1), a), t, k))
        self.weight_sums = [a.weight_sum() for a in self.axes]
        self.coverage = _outer([a.coverage() for a in self.axes], dtype=int)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(n * k for n, k in zip(self.shape, self.spec.scale))

    def tiles(self) -> list[tuple[int, ...]]:
        return list(itertools.product(*(range(len(a.starts)) for a in self.axes)))

    def read_region(self, tile: tuple[int, ...]) -> Region:
        """Input window of a tile including its halo, clipped to the image."""
        return tuple(
            slice(max(0, a.starts[i] - h), min(n, a.starts[i] + a.extent(i) + h))
            for a, i, h, n in zip(self.axes, tile, self.spec.halo, self.shape)
        )

    def core_regions(self, tile: tuple[int, ...]) -> tuple[Region, Region]:
        """The tile's own output pixels (halo cropped): as a region of the output, and as a region
        of its prediction (which covers the read window)."""
        read = self.read_region(tile)
        core, local = [], []
        for a, i, r, k in zip(self.axes, tile, read, self.spec.scale):
            s, n = a.starts[i] * k, a.extent(i) * k
            core.append(slice(s, s + n))
            local.append(slice(s - r.start * k, s - r.start * k + n))
        return tuple(core), tuple(local)

    def margins(self, tile: tuple[int, ...]) -> tuple[int, ...]:
        """Halo actually read around the tile, in input pixels: (before, after) per axis, flattened."""
        read = self.read_region(tile)
        return tuple(m for a, i, r in zip(self.axes, tile, read)
                     for m in (a.starts[i] - r.start, r.stop - a.starts[i] - a.extent(i)))

    def tile_weights(self, tile: tuple[int, ...]) -> np.ndarray:
        """Blending weights of a tile over its own output pixels."""
        return _outer([a.weights(i) for a, i in zip(self.axes, tile)])

    def cell_region(self, cell: tuple[int, ...]) -> Region:
        return tuple(slice(int(a.breaks[c]), int(a.breaks[c + 1])) for a, c in zip(self.axes, cell))

    def weight_total(self, region: Region) -> np.ndarray:
        """Σ w over all tiles in ``region``: weights are separable, so this is an outer product
        of per-axis sums and never needs to be accumulated pixel by pixel."""
        return _outer([ws[r] for ws, r in zip(self.weight_sums, region)])


def _outer(vectors: list[np.ndarray], dtype=np.float32) -> np.ndarray:
    """Outer product of 1-D arrays as an N-d array."""
    out = np.ones([len(v) for v in vectors], dtype=np.result_type(dtype, *vectors))
    for d, v in enumerate(vectors):
        shape = [1] * len(vectors)
        shape[d] = -1
        out = out * v.reshape(shape)
    return out.astype(dtype)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise HiresError("device 'cuda' requested but no CUDA GPU is available (use --device cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise HiresError("device 'mps' requested but Apple MPS is not available (use --device cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise HiresError(f"unknown device '{name}': use auto, cpu, cuda or mps")
    return torch.device(name)


def fill_invalid(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid pixels by their nearest valid pixel (zeros when none is valid)."""
    if valid.all():
        return data
    if not valid.any():
        return np.zeros_like(data)
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return data[(slice(None), *idx)]


Predict = Callable[[torch.Tensor], torch.Tensor]


def iter_tiled(
    source: Source,
    sink: Sink,
    predict: Predict,
    spec: TileSpec,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    select: Callable[[tuple[int, ...]], bool] | None = None,
) -> Iterator[tuple[int, int]]:
    """Run ``predict`` over ``source`` tile by tile into ``sink``; yields (done, total) tiles.

    ``predict`` maps a float32 tensor ``(B, C, *tile)`` on ``device`` to
    ``(B, C_out, *tile·scale)``; one with ``wants_origin = True`` also gets each read window's
    global start (a list of tuples), for models whose output depends on position (diffusion
    noise); one with ``crops_halo = True`` gets ``margins``, the halo read on each side of the
    batch's tiles ((before, after) per axis: ``TilePlan.margins``), whose output it may leave
    uncomputed (it is cropped away). The next batch is read (and nodata filled, and pinned for a
    GPU) in a helper thread while the model runs, and finished cells are written by another (``WriteBehind``),
    so file I/O and compression overlap compute. Being a generator, the caller can stop between
    batches (the napari worker cancels this way); both helpers are stopped before it returns.
    After the last tile ``sink.finish()`` checks that every output pixel was written exactly once.

    ``select(tile)``: run only the batches holding a selected tile (a row band on a cluster
    worker, ``cluster/bands.py``); batches are formed as for the whole plan, so each tile's
    prediction is bit-identical to a whole run. Cells that unrun tiles also cover are never
    finished, so never written.
    """
    device = torch.device(device)
    plan = TilePlan(tuple(source.shape[1:]), spec)
    remaining = plan.coverage.copy()
    cells: dict[tuple[int, ...], list] = {}
    batches = [b for b in _batches(plan, plan.tiles(), batch_size) if select is None or any(map(select, b))]
    total, done = sum(map(len, batches)), 0
    pin = device.type == "cuda"
    with ThreadPoolExecutor(1, thread_name_prefix="hires-read") as reader, WriteBehind(sink) as writer:
        ahead = reader.submit(_read_batch, source, plan, batches[0], pin) if batches else None
        for i, batch in enumerate(batches):
            x, valids = ahead.result()
            if i + 1 < len(batches):
                ahead = reader.submit(_read_batch, source, plan, batches[i + 1], pin)
            with torch.inference_mode():
                x = x.to(device, non_blocking=pin)
                if getattr(predict, "wants_origin", False):
                    y = predict(x, [tuple(r.start for r in plan.read_region(t)) for t in batch])
                elif getattr(predict, "crops_halo", False):
                    y = predict(x, margins=plan.margins(batch[0]))
                else:
                    y = predict(x)
                y = y.float().cpu().numpy()
            for t, pred, valid in zip(batch, y, valids):
                _blend_tile(plan, t, pred, valid, cells, remaining, writer)
            done += len(batch)
            if done == total:
                writer.finish()
            yield done, total


def _read_batch(source: Source, plan: TilePlan, batch, pin: bool) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Read a batch's windows (with halo), fill invalid pixels, stack; pinned for a GPU copy."""
    inputs, valids = [], []
    for t in batch:
        data, valid = source.read(plan.read_region(t))
        inputs.append(fill_invalid(data, valid))
        valids.append(valid)
    x = torch.from_numpy(np.stack(inputs))
    return (x.pin_memory() if pin else x), valids


class WriteBehind:
    """``Sink`` writes in one background thread, in order, so compression and disk I/O overlap
    the model; at most ``depth`` writes wait (bounded memory). A write's error is raised by the
    next ``write`` or by ``finish``; leaving the context drops queued writes and joins the thread,
    so the caller may close the sink right after."""

    def __init__(self, sink: Sink, depth: int = 2):
        self.sink, self.depth = sink, depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="hires-write")
        self.pending: collections.deque = collections.deque()

    def write(self, region: Region, data: np.ndarray, valid: np.ndarray) -> None:
        self._reap(self.depth - 1)
        self.pending.append(self.pool.submit(self.sink.write, region, data, valid))

    def _reap(self, keep: int) -> None:
        while self.pending and (len(self.pending) > keep or self.pending[0].done()):
            self.pending.popleft().result()

    def finish(self) -> None:
        self._reap(0)
        self.sink.finish()

    def __enter__(self) -> "WriteBehind":
        return self

    def __exit__(self, *exc) -> None:
        for f in self.pending:
            f.cancel()
        self.pool.shutdown(wait=True)


def _batches(plan: TilePlan, tiles, batch_size: int):
    """Consecutive tiles with identical read shapes and margins, at most ``batch_size`` at a time."""
    def shape(t):
        return tuple(s.stop - s.start for s in plan.read_region(t)), plan.margins(t)

    for _, group in itertools.groupby(tiles, key=shape):
        group = list(group)
        for i in range(0, len(group), batch_size):
            yield group[i:i + batch_size]


def _blend_tile(plan, t, pred, valid, cells, remaining, sink) -> None:
    read = plan.read_region(t)
    k = plan.spec.scale
    out_region, local = plan.core_regions(t)  # crop the halo away
    core = pred[(slice(None), *local)]
    starts = [a.starts[i] for a, i in zip(plan.axes, t)]
    extents = [a.extent(i) for a, i in zip(plan.axes, t)]
    vcore = valid[tuple(slice(s - r.start, s - r.start + e) for s, r, e in zip(starts, read, extents))]
    for d, kk in enumerate(k):  # output pixel valid iff the input pixel under its centre is
        vcore = np.repeat(vcore, kk, axis=d)
    w = plan.tile_weights(t)
    origin = [r.start for r in out_region]
    for cell in itertools.product(*(a.cells(i) for a, i in zip(plan.axes, t))):
        region = plan.cell_region(cell)
        local = tuple(slice(r.start - o, r.stop - o) for r, o in zip(region, origin))
        remaining[cell] -= 1
        if remaining[cell] == 0 and cell not in cells:  # this tile's alone: its weights are 1 here
            sink.write(region, core[(slice(None), *local)], vcore[local])
            continue
        contribution = w[local] * core[(slice(None), *local)]
        if cell in cells:
            cells[cell][0] += contribution
        else:
            cells[cell] = [contribution, vcore[local]]
        if remaining[cell] == 0:
            num, valid = cells.pop(cell)
            sink.write(region, num / plan.weight_total(region), valid)
