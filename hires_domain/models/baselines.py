"""Interpolation baselines as models: the reference every trained model is compared against.

bicubic, linear and nearest use ``torch.nn.functional.interpolate`` (Keys a=-0.75 cubic, edge pixels
replicated); lanczos uses Pillow's Lanczos-3 resampler on float32 planes (torch has none).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from . import Model, ModelInfo, register

SCALES = tuple(range(1, 9))
BOTH = ("medical", "raster")


class Bicubic(Model):
    info = ModelInfo("bicubic", "bicubic interpolation (torch, a=-0.75)", "interpolation", BOTH, SCALES, halo=2)

    def predict(self, x, scale):
        if scale == 1:
            return x
        return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


class Cubic(Bicubic):
    """The name the through-plane baselines use (nearest, linear, cubic): bicubic in-plane."""

    info = ModelInfo("cubic", "cubic interpolation: bicubic in-plane, cubic along z with --z-scale", "interpolation",
                     BOTH, SCALES, halo=2)


class Linear(Model):
    info = ModelInfo("linear", "bilinear interpolation (torch); linear along z with --z-scale", "interpolation",
                     BOTH, SCALES, halo=1)

    def predict(self, x, scale):
        if scale == 1:
            return x
        return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


class Nearest(Model):
    info = ModelInfo("nearest", "nearest neighbour (pixel replication), for checks", "interpolation", BOTH, SCALES)

    def predict(self, x, scale):
        return x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


class Lanczos(Model):
    info = ModelInfo("lanczos", "Lanczos-3 interpolation (Pillow)", "interpolation", BOTH, SCALES, halo=4)

    def predict(self, x, scale):
        if scale == 1:
            return x
        planes = x.detach().cpu().numpy()
        b, c, h, w = planes.shape
        out = np.empty((b, c, h * scale, w * scale), dtype=np.float32)
        for i in range(b):
            for j in range(c):
                img = PILImage.fromarray(np.ascontiguousarray(planes[i, j]))
                out[i, j] = np.asarray(img.resize((w * scale, h * scale), PILImage.LANCZOS))
        return torch.from_numpy(out).to(x.device)


for _cls in (Bicubic, Cubic, Linear, Nearest, Lanczos):
    register(_cls.info.name, _cls)
