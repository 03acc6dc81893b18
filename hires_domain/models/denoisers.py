"""A blind denoiser for x1 models: FFDNet's sub-image layout with IRCNN's dilated convolutions.

The input is split into its 2×2 polyphase sub-images (``pixel_unshuffle``), a plain stack of 3×3
convolutions with growing then shrinking dilation runs on them, and ``pixel_shuffle`` puts the
predicted residual back. Working at half resolution gives a receptive field of about ±50 pixels
for the cost of a much smaller network at full resolution; dilation instead of pooling keeps the
network shift-equivariant (on even shifts), so tiles whose input windows start on even pixels
give exactly the whole-image result. It is told nothing about the noise: it must read the dose,
view count and kernel from the image (trained across them: datasets/ct-denoise.yaml).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .generators import _Residual

PRESETS = {"tiny": dict(nf=8, dilations=(1, 2, 1)),
           "small": dict(nf=48, dilations=(1, 2, 3, 4, 5, 4, 3, 2, 1)),
           "medium": dict(nf=64, dilations=(1, 2, 3, 4, 6, 8, 6, 4, 3, 2, 1))}


class DilatedDenoiser(_Residual):
    """x1 residual denoiser on 2×2 sub-images; ``dilations`` gives the body's convolutions."""

    arch = "dilated"
    phase = 2  # tile windows start on even pixels (tiling.TileSpec.align)

    def __init__(self, in_ch: int = 1, out_ch: int = 1, scale: int = 1, nf: int = 48,
                 dilations=(1, 2, 3, 4, 5, 4, 3, 2, 1), zero_last: bool = True):
        from ..errors import HiresError

        if scale != 1:
            raise HiresError(f"generator 'dilated' is a denoiser: scale 1 only, not {scale}")
        super().__init__(in_ch, out_ch, 1, zero_last)
        self.nf, self.dilations = nf, tuple(int(d) for d in dilations)
        self.conv_first = nn.Conv2d(4 * in_ch, nf, 3, 1, 1)
        self.body = nn.ModuleList(nn.Conv2d(nf, nf, 3, 1, d, dilation=d) for d in self.dilations)
        self.conv_last = nn.Conv2d(nf, 4 * out_ch, 3, 1, 1)
        for conv in (self.conv_first, *self.body):  # He init: a deep plain ReLU stack keeps its signal
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        self._init_last(self.conv_last)
        self.tail_radius = float(self.receptive_radius())  # the whole network: nothing to crop

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")  # odd sizes: one replicated row/column
        f = F.relu(self.conv_first(F.pixel_unshuffle(x, 2)))
        for conv in self.body:
            f = F.relu(conv(f))
        return F.pixel_shuffle(self.conv_last(f), 2)[..., :h, :w]

    def receptive_radius(self) -> int:
        """Full-resolution pixels of context per side: twice the sub-image radius, plus the
        polyphase offset; even, so tile windows keep the sub-image phase."""
        return 2 * (2 + sum(self.dilations)) + 2

    def hparams(self) -> dict:
        return {"arch": self.arch, "in_ch": self.in_ch, "out_ch": self.out_ch, "scale": 1,
                "nf": self.nf, "dilations": list(self.dilations)}
