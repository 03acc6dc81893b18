"""Discriminators for adversarial fine-tuning. Both return ``(logits, features)``:

- ``UNetDiscriminatorSN`` (Real-ESRGAN style): a U-Net with spectral normalisation on every
  conv but the first, giving a realness logit *per pixel* ``(B, 1, H, W)`` so masks apply
  per pixel and local artefacts are judged locally. Input sides must be multiples of 8.
- ``VGGStyleDiscriminator`` (SRGAN style): conv/stride-2 stages (optionally spectral-normed),
  fully convolutional, giving a logit per patch ``(B, 1, H/2^depth, W/2^depth)``.

``features`` is the list of intermediate activations used by the feature-matching loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from ..errors import HiresError

ARCHS = ("unet", "vgg")


class UNetDiscriminatorSN(nn.Module):
    arch = "unet"

    def __init__(self, in_ch: int = 1, nf: int = 64, skip: bool = True):
        super().__init__()
        self.skip = skip
        sn = spectral_norm
        self.conv0 = nn.Conv2d(in_ch, nf, 3, 1, 1)
        self.conv1 = sn(nn.Conv2d(nf, nf * 2, 4, 2, 1, bias=False))
        self.conv2 = sn(nn.Conv2d(nf * 2, nf * 4, 4, 2, 1, bias=False))
        self.conv3 = sn(nn.Conv2d(nf * 4, nf * 8, 4, 2, 1, bias=False))
        self.conv4 = sn(nn.Conv2d(nf * 8, nf * 4, 3, 1, 1, bias=False))
        self.conv5 = sn(nn.Conv2d(nf * 4, nf * 2, 3, 1, 1, bias=False))
        self.conv6 = sn(nn.Conv2d(nf * 2, nf, 3, 1, 1, bias=False))
        self.conv7 = sn(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv8 = sn(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(nf, 1, 3, 1, 1)

    def forward(self, x):
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise HiresError(f"U-Net discriminator needs sides that are multiples of 8, got {tuple(x.shape[-2:])}")
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(up(x3)))
        if self.skip:
            x4 = x4 + x2
        x5 = act(self.conv5(up(x4)))
        if self.skip:
            x5 = x5 + x1
        x6 = act(self.conv6(up(x5)))
        if self.skip:
            x6 = x6 + x0
        out = act(self.conv7(x6))
        out = act(self.conv8(out))
        return self.conv9(out), [x1, x2, x3, x4, x5, x6]


class VGGStyleDiscriminator(nn.Module):
    arch = "vgg"

    def __init__(self, in_ch: int = 1, nf: int = 64, depth: int = 4, spectral: bool = True):
        super().__init__()
        wrap = spectral_norm if spectral else (lambda m: m)
        self.stages = nn.ModuleList()
        ch = in_ch
        for i in range(depth):
            out = nf * min(2 ** i, 8)
            first = nn.Conv2d(ch, out, 3, 1, 1) if i == 0 else wrap(nn.Conv2d(ch, out, 3, 1, 1))
            self.stages.append(nn.Sequential(first, nn.LeakyReLU(0.2, True),
                                             wrap(nn.Conv2d(out, out, 4, 2, 1)), nn.LeakyReLU(0.2, True)))
            ch = out
        self.head = nn.Conv2d(ch, 1, 3, 1, 1)
        self.depth = depth

    def forward(self, x):
        f = 2 ** self.depth
        if x.shape[-1] % f or x.shape[-2] % f:
            raise HiresError(f"VGG discriminator (depth {self.depth}) needs sides that are multiples of {f}, "
                             f"got {tuple(x.shape[-2:])}")
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return self.head(x), feats


def build_discriminator(arch: str, in_ch: int, nf: int = 64, **kw) -> nn.Module:
    if arch == "unet":
        return UNetDiscriminatorSN(in_ch, nf, skip=kw.get("skip", True))
    if arch == "vgg":
        return VGGStyleDiscriminator(in_ch, nf, depth=kw.get("depth", 4), spectral=kw.get("spectral", True))
    raise HiresError(f"unknown discriminator '{arch}'; known: {', '.join(ARCHS)}")
