"""Training data from a prepared dataset (docs/datasets.md, format_version 1).

Items are loaded once into memory (datasets here are tens of MB). ``PatchSampler`` draws random
aligned crops: the HR crop origin is a multiple of ``scale`` so LR pixel *i* of the crop covers
HR pixels ``[i·s, (i+1)·s)`` of it; flips/rot90 are applied identically to HR, LR and both
masks. Its state is a numpy ``Generator`` whose state is JSON-serialisable, so a resumed run
draws the same batches as an uninterrupted one. For ``low-dose-ct`` datasets ``lr`` is the noisy
image at the same size (scale 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import HiresError
from ..intensity import Normaliser


@dataclass
class Sample:
    id: str
    hr: np.ndarray  # (C, H, W) float32, physical units
    lr: np.ndarray  # (C, h, w)
    valid: np.ndarray  # (H, W) bool
    lr_valid: np.ndarray  # (h, w) bool


def load_split(dataset_dir, manifest: dict, split: str, limit: int | None = None) -> list[Sample]:
    out = []
    for rec in manifest["items"]:
        if rec["split"] != split:
            continue
        with np.load(Path(dataset_dir) / rec["file"]) as z:
            out.append(Sample(rec["id"], z["hr"].astype(np.float32), z["lr"].astype(np.float32),
                              z["valid"].astype(bool), z["lr_valid"].astype(bool)))
        if limit and len(out) >= limit:
            break
    return out


def dataset_domain(manifest: dict) -> str:
    """Registry domain of a dataset: 'raster' for satellite, 'medical' otherwise."""
    return "raster" if manifest["domain"] == "satellite" else "medical"


class PatchSampler:
    """Random aligned HR/LR crops as normalised torch batches."""

    def __init__(self, samples: list[Sample], scale: int, patch: int, normaliser: Normaliser, seed: int,
                 augment: bool = True, min_valid: float = 0.5):
        self.samples = [s for s in samples if min(s.hr.shape[-2:]) >= patch]
        if not self.samples:
            biggest = max((min(s.hr.shape[-2:]) for s in samples), default=0)
            raise HiresError(f"field 'train.patch_size': {patch} is larger than every training item "
                             f"(largest side {biggest})")
        # draw items in proportion to their area, so whole slices and small patches mix fairly
        area = np.array([s.hr.shape[-1] * s.hr.shape[-2] for s in self.samples], float)
        self.p = area / area.sum()
        self.scale, self.patch, self.norm = scale, patch, normaliser
        self.augment, self.min_valid = augment, min_valid
        self.rng = np.random.default_rng(seed)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def _crop(self):
        s, p, k = self.scale, self.patch, self.scale
        for attempt in range(20):
            item = self.samples[self.rng.choice(len(self.samples), p=self.p)]
            H, W = item.hr.shape[-2:]
            y = int(self.rng.integers(0, (H - p) // k + 1)) * k
            x = int(self.rng.integers(0, (W - p) // k + 1)) * k
            valid = item.valid[y:y + p, x:x + p]
            if valid.mean() >= self.min_valid or attempt == 19:
                break
        hr = item.hr[:, y:y + p, x:x + p]
        lr = item.lr[:, y // s:(y + p) // s, x // s:(x + p) // s]
        lr_valid = item.lr_valid[y // s:(y + p) // s, x // s:(x + p) // s]
        arrays = [hr, lr, valid[None], lr_valid[None]]
        if self.augment:
            if self.rng.random() < 0.5:
                arrays = [a[..., ::-1] for a in arrays]
            if self.rng.random() < 0.5:
                arrays = [a[..., ::-1, :] for a in arrays]
            r = int(self.rng.integers(0, 4))
            arrays = [np.rot90(a, r, axes=(-2, -1)) for a in arrays]
        return [np.ascontiguousarray(a) for a in arrays]

    def batch(self, n: int, device, shard: tuple[int, int] = (0, 1)) -> dict[str, torch.Tensor]:
        """``n`` crops; ``shard=(rank, ranks)`` keeps every ranks-th from rank (all are drawn, so
        the generator stays in step on every rank)."""
        crops = [self._crop() for _ in range(n)][shard[0]::shard[1]]
        hr, lr, valid, lr_valid = (torch.from_numpy(np.stack(c)) for c in zip(*crops))
        return {"hr": self.norm.forward(hr).to(device), "lr": self.norm.forward(lr).to(device),
                "valid": valid.to(device, torch.float32), "lr_valid": lr_valid.to(device, torch.float32)}


def centre_crop(sample: Sample, scale: int, side: int) -> Sample:
    """A centre crop of at most ``side`` HR pixels (multiple of ``scale``) for quick validation."""
    H, W = sample.hr.shape[-2:]
    h, w = min(H, side) // scale * scale, min(W, side) // scale * scale
    y, x = (H - h) // 2 // scale * scale, (W - w) // 2 // scale * scale
    return Sample(sample.id, sample.hr[:, y:y + h, x:x + w], sample.lr[:, y // scale:(y + h) // scale,
                  x // scale:(x + w) // scale], sample.valid[y:y + h, x:x + w],
                  sample.lr_valid[y // scale:(y + h) // scale, x // scale:(x + w) // scale])
