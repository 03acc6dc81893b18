"""Sampling for the latent-diffusion family without seams.

- ``noise_field``: Gaussian noise keyed by (seed, sample, slice, global latent position): it is
  drawn in fixed 32 × 32 blocks, each from its own generator seeded by a hash of its key, so a
  window's noise does not depend on how the image was cut into tiles or in which order.
- ``denoise_jointly``: every sampler step runs the denoiser on overlapping latent tiles (each
  read with a halo) and blends their predictions into ONE latent with the tiler's weights
  (MultiDiffusion-style), then steps the whole latent. Tiles never drift apart.
- ``project_consistent``: moves an output so that its area downsampling equals the input.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
import torch.nn.functional as F

from .. import tiling
from ..errors import HiresError

NOISE_BLOCK = 32
SAMPLERS = ("dpm++", "ddim")


def _key(*values: int) -> int:
    data = b"".join(int(v).to_bytes(8, "little", signed=True) for v in values)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & (2**63 - 1)


def noise_field(seed: int, sample: int, origin: tuple[int, int], shape: tuple[int, int], channels: int,
                lead: tuple[int, ...] = ()) -> torch.Tensor:
    """``(channels, *shape)`` standard normal noise of the window at global ``origin``."""
    (oy, ox), (h, w), b = origin, shape, NOISE_BLOCK
    out = torch.empty(channels, h, w)
    for by in range(oy // b, (oy + h - 1) // b + 1):
        for bx in range(ox // b, (ox + w - 1) // b + 1):
            g = torch.Generator().manual_seed(_key(seed, sample, channels, *lead, by, bx))
            block = torch.randn(channels, b, b, generator=g)
            y0, y1 = max(oy, by * b), min(oy + h, (by + 1) * b)
            x0, x1 = max(ox, bx * b), min(ox + w, (bx + 1) * b)
            out[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox] = block[:, y0 - by * b:y1 - by * b, x0 - bx * b:x1 - bx * b]
    return out


def make_scheduler(config: dict, sampler: str, steps: int):
    """A fresh diffusers scheduler (DPM-Solver++ or DDIM) for ``steps`` steps."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if sampler not in SAMPLERS:
        raise HiresError(f"unknown sampler '{sampler}': use {' or '.join(SAMPLERS)}")
    if sampler == "dpm++":
        s = DPMSolverMultistepScheduler(**config, algorithm_type="dpmsolver++", solver_order=2)
    else:
        s = DDIMScheduler(**config, clip_sample=False, set_alpha_to_one=True)
    s.set_timesteps(steps)
    return s


def denoise_jointly(net, x: torch.Tensor, cond: torch.Tensor, scheduler, level: float, tile: int, overlap: int,
                    halo: int, on_step: Callable[[int, int], None] | None = None, start: int = 0) -> torch.Tensor:
    """Run ``scheduler`` from its step ``start`` on ``x`` ``(N, Lc, H, W)`` (noise, or a latent noised
    to that step) given ``cond`` ``(1, Cc, H, W)``; H and W multiples of ``net.multiple``. Tiles of
    ``tile`` latent pixels (each read with ``halo``), blended over ``overlap``. ``on_step(step,
    steps)`` after each step run (raising in it cancels)."""
    m = net.multiple
    tile, overlap, halo = (max(m, v // m * m) for v in (tile, overlap, halo))
    overlap = min(overlap, tile - m)
    plan = tiling.TilePlan(tuple(x.shape[-2:]), tiling.TileSpec(
        tile=(tile, tile), overlap=(overlap, overlap), halo=(halo, halo), scale=(1, 1), align=(m, m)))
    tiles = plan.tiles()
    full = tuple(slice(0, n) for n in x.shape[-2:])
    total = torch.from_numpy(plan.weight_total(full)).to(x.device, x.dtype)
    if start and hasattr(scheduler, "set_begin_index"):  # multistep solvers index their history from here
        scheduler.set_begin_index(start)
    timesteps = scheduler.timesteps[start:]
    steps = len(timesteps)
    for i, t in enumerate(timesteps):
        if len(tiles) == 1:
            pred = net(x, t, cond, level).float()  # fp32 whatever the autocast: the solver steps in fp32
        else:
            pred = torch.zeros_like(x)
            for tl in tiles:
                read = plan.read_region(tl)
                out = net(x[(..., *read)], t, cond[(..., *read)], level)
                core, local = plan.core_regions(tl)
                w = torch.from_numpy(plan.tile_weights(tl)).to(x.device, x.dtype)
                pred[(..., *core)] += w * out[(..., *local)].float()
            pred = pred / total
        x = scheduler.step(pred, t, x).prev_sample
        if on_step is not None:
            on_step(i + 1, steps)
    return x


def area_down(y: torch.Tensor, scale: int) -> torch.Tensor:
    return F.avg_pool2d(y, scale) if scale > 1 else y


def project_consistent(y: torch.Tensor, lr: torch.Tensor, scale: int, iterations: int = 3) -> torch.Tensor:
    """Back-project ``lr − area(y)`` (bicubic, a few times: smooth), then a last nearest-neighbour
    step that makes ``area(y) == lr`` exactly."""
    if scale == 1:
        return y
    for _ in range(iterations):
        y = y + F.interpolate(lr - area_down(y, scale), scale_factor=scale, mode="bicubic", align_corners=False)
    return y + F.interpolate(lr - area_down(y, scale), scale_factor=scale, mode="nearest")
