"""``self-sr``: through-plane super-resolution learnt from the input volume itself (SMORE-style).

The scan's own in-plane slices are the high-resolution truth. Training pairs are in-plane
patches made thick along one in-plane axis with the slice profile (``degradations.thick_slices``:
a box of the slice thickness, or a Gaussian of that FWHM, in output-slice units) and decimated by
K; a small 2-D network learns to undo that (``AxialSR``: ×K along one axis). It is then applied
to every (z, x) and every (z, y) reformat and the two results are averaged.

The network learns in output-pixel units, so it transfers exactly when the output slice
spacing (old spacing / K) equals the in-plane pixel spacing and approximately otherwise.
Training is seeded, bounded by a step count and a time budget, reports every step to
``progress`` (raising there stops it within one step), and its weights can be cached as
safetensors keyed by a hash of the input and every setting that shapes them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.degradations import thick_slices
from ..precision import autocast
from . import Model, ModelInfo, register
from .generators import ResidualBlockNoBN

SEED = 0
MAX_STEPS = 3000
DEFAULT_TRAIN_SECONDS = 180.0
BATCH = 16
PATCH = 64  # HR patch side (output pixels)
LR_RATE = 1e-3
FORMAT = "hires-self-sr"
HPARAMS = {"nf": 32, "nb": 4, "nf_hr": 16}
PLANES_PER_CALL = 8

Progress = Callable[[int, int], None]


class AxialSR(nn.Module):
    """(B, 1, h, W) → (B, 1, h·K, W): cubic upsampling along axis -2 plus a learnt residual.

    The residual is computed on the input grid, widened to ``nf_hr·K`` channels, shuffled into
    K output rows per input row (a 1-D pixel shuffle) and projected by a zero-initialised conv, so
    an untrained network equals cubic interpolation along the axis (the ``bicubic`` baseline's
    kernel, positions (i + 0.5)/K − 0.5). ``shift``/``scale`` normalise intensities.
    """

    def __init__(self, factor: int, nf: int = 32, nb: int = 4, nf_hr: int = 16):
        super().__init__()
        self.factor, self.nf, self.nb, self.nf_hr = factor, nf, nb, nf_hr
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))
        self.conv_first = nn.Conv2d(1, nf, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(nf) for _ in range(nb)])
        self.conv_up = nn.Conv2d(nf, nf_hr * factor, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf_hr, nf_hr, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf_hr, 1, 3, 1, 1)
        nn.init.zeros_(self.conv_last.weight)
        nn.init.zeros_(self.conv_last.bias)

    def base(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=(self.factor, 1), mode="bicubic", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = (x - self.shift) / self.scale
        f = F.leaky_relu(self.conv_first(u), 0.2)
        f = self.conv_up(self.body(f))
        b, _, h, w = f.shape
        f = f.view(b, self.nf_hr, self.factor, h, w).permute(0, 1, 3, 2, 4).reshape(b, self.nf_hr, h * self.factor, w)
        r = self.conv_last(F.leaky_relu(self.conv_hr(F.leaky_relu(f, 0.2)), 0.2))
        return self.base(x) + r.float() * self.scale


class SelfSR(Model):
    """Registry entry: in-plane it is the identity (x1); ``through_plane`` runs the z training."""

    info = ModelInfo("self-sr", "through-plane SR trained on the input itself at enhance time (use --z-scale K)",
                     "self-supervised", ("medical",), (1,), card="docs/models/self-sr.md")

    reduced_precision = True  # training and inference run under the resolved precision's autocast
    # checked in docs/through-plane.md: bf16 output 91 dB PSNR from fp32, the same score against the truth
    precision_checks = {"bf16": {"delta_db": 0.0, "source": "docs/through-plane.md"}}

    def predict(self, x, scale):
        return x


register(SelfSR.info.name, SelfSR)


def cache_key(volume: np.ndarray, affine: np.ndarray, **settings) -> str:
    """SHA-256 of the voxels, the geometry and every setting that shapes the weights."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(volume, dtype=np.float32).tobytes())
    h.update(np.asarray(affine, dtype=np.float64).tobytes())
    h.update(json.dumps({**settings, "hparams": HPARAMS, "seed": SEED, "max_steps": MAX_STEPS, "batch": BATCH,
                         "patch": PATCH, "format": FORMAT}, sort_keys=True).encode())
    return h.hexdigest()


def cache_path(directory, key: str) -> Path:
    return Path(directory) / f"self-sr-{key[:16]}.safetensors"


def save(net: AxialSR, path: Path, key: str, steps: int, seconds: float) -> None:
    """Weights to ``path`` (safetensors, written to a temporary name and renamed)."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "key": key, "factor": str(net.factor), "steps": str(steps),
            "seconds": f"{seconds:.1f}", "hparams": json.dumps({"nf": net.nf, "nb": net.nb, "nf_hr": net.nf_hr})}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load(path: Path, key: str) -> tuple[AxialSR, dict] | None:
    """The cached network for ``key``, or None when the file is missing or for other inputs."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT or meta.get("key") != key:
        return None
    net = AxialSR(int(meta["factor"]), **json.loads(meta["hparams"]))
    net.load_state_dict(load_file(str(path)))
    return net.eval(), meta


def intensity_range(volume: np.ndarray) -> tuple[float, float]:
    """(shift, scale) mapping the volume's 1st..99th percentile to 0..1."""
    lo, hi = np.percentile(volume, [1, 99])
    return float(lo), float(max(hi - lo, 1e-6))


def _batch(volume: np.ndarray, factor: int, profile: str, width: float, rng: np.random.Generator):
    """(LR, HR) training pairs: HR in-plane patches (rotated/flipped at random) made thick along
    axis -2 with the slice profile. A margin of K LR rows is degraded with them and cut off, so
    the profile sees real context; of 2·BATCH candidates the BATCH with most structure are kept."""
    z, h, w = volume.shape
    p = min(PATCH, min(h, w) - 2 * factor) // factor  # LR rows per patch (smaller slices: smaller patches)
    if p < 4:
        raise ValueError(f"slices of {h}x{w} are too small for self-sr training at x{factor}")
    rows, cols = (p + 2) * factor, p * factor
    cands = []
    for _ in range(2 * BATCH):
        plane = volume[rng.integers(z)]
        if rng.integers(2):
            plane = plane.T
        ph, pw = plane.shape
        i, j = rng.integers(ph - rows + 1), rng.integers(pw - cols + 1)
        patch = plane[i:i + rows, j:j + cols]
        if rng.integers(2):
            patch = patch[::-1]
        if rng.integers(2):
            patch = patch[:, ::-1]
        cands.append(patch)
    cands.sort(key=lambda c: -float(c.std()))
    hr = np.stack(cands[:BATCH])[:, None]  # (B, 1, rows, cols)
    lr = thick_slices(hr[..., None], factor, profile, width)[..., 0]  # axis -3 of (..., rows, cols, 1)
    return (torch.from_numpy(np.ascontiguousarray(lr[:, :, 1:1 + p], dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(hr[:, :, factor:factor + p * factor], dtype=np.float32)))


def train(volume: np.ndarray, factor: int, profile: str, width: float, seconds: float,
          progress: Progress | None = None, total: int | None = None,
          device: torch.device = torch.device("cpu"), precision: str = "fp32") -> tuple[AxialSR, int, float]:
    """Train on ``volume`` (Z, Y, X, physical units) for at most ``MAX_STEPS`` steps or ``seconds``;
    returns (network, steps, seconds). ``progress(step, total)`` runs after every step."""
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    net = AxialSR(factor, **HPARAMS)
    shift, scale = intensity_range(volume)
    net.shift.fill_(shift)
    net.scale.fill_(scale)
    net = net.to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(net.parameters(), lr=LR_RATE)
    start, step = time.perf_counter(), 0
    total = total or MAX_STEPS
    while step < MAX_STEPS and time.perf_counter() - start < seconds:
        lr, hr = _batch(volume, factor, profile, width, rng)
        for group in opt.param_groups:  # cosine decay over the step budget
            group["lr"] = LR_RATE * 0.5 * (1 + math.cos(math.pi * step / MAX_STEPS))
        with autocast(precision, device):
            out = net(lr.to(device).contiguous(memory_format=torch.channels_last))
        loss = F.l1_loss(out, hr.to(device)) / scale
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if progress is not None:
            progress(step, total)
    return net.eval(), step, time.perf_counter() - start


@torch.inference_mode()
def apply(net: AxialSR, volume: np.ndarray, progress: Progress | None = None, done: int = 0,
          total: int | None = None, device: torch.device = torch.device("cpu"), precision: str = "fp32") -> np.ndarray:
    """×K along axis 0 of ``volume`` (Z, Y, X): the network on every (z, x) plane and every (z, y)
    plane, averaged. ``progress(done, total)`` after each batch of planes."""
    z, h, w = volume.shape
    k = net.factor
    net = net.to(device).to(memory_format=torch.channels_last)  # as trained: cached weights give the same output
    out = np.zeros((z * k, h, w), dtype=np.float32)
    total = total or done + h + w
    for axis in (1, 2):  # planes at fixed y (z, x), then at fixed x (z, y)
        planes = np.moveaxis(volume, axis, 0)  # (n, Z, other)
        for i in range(0, planes.shape[0], PLANES_PER_CALL):
            x = torch.from_numpy(np.ascontiguousarray(planes[i:i + PLANES_PER_CALL], dtype=np.float32))[:, None]
            with autocast(precision, device):
                y = net(x.to(device).contiguous(memory_format=torch.channels_last))
            y = y[:, 0].float().cpu().numpy()  # (b, Z·K, other)
            if axis == 1:
                out[:, i:i + len(y), :] += 0.5 * y.transpose(1, 0, 2)
            else:
                out[:, :, i:i + len(y)] += 0.5 * y.transpose(1, 2, 0)
            done += len(y)
            if progress is not None:
                progress(done, total)
    return out
