"""SRGAN-family generators: MSRResNet (SRResNet without BN) and RRDB (ESRGAN), written for
any number of input/output bands and scale 1 (denoising), 2 and 4.

Both learn a *residual* on top of a fixed base path: bicubic upsampling of the input (identity
at x1; torch ``interpolate`` bicubic, the same as the ``bicubic`` baseline model). With the last
layer zero-initialised (``zero_last=True``, the default) an untrained network is exactly that
baseline, and training starts from it. When input and output band counts differ the base path
is a learnt 1x1 projection of the bicubic image.

Every generator reports ``receptive_radius()``: input (LR) pixels of context per side that one
output pixel depends on, used as the model's tiling ``halo`` so tiled output equals whole-image
output (tests check it against a gradient probe). ``forward(x, margins)`` is told how many input
pixels per side are halo the caller will discard: the trunk runs on them, but its features (and
the input of the base path) are cropped to what the upsampling tail and the bicubic still need,
so the tail, most of the work of an x2/x4 network, runs on the tile alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HiresError

SCALES = (1, 2, 4)
ARCHS = ("msrresnet", "rrdb", "dilated")  # dilated: the x1 denoiser of models/denoisers.py
BICUBIC_RADIUS = 2  # Keys cubic: 4 taps, two on each side

# size presets: (nf, nb[, gc])
PRESETS = {
    "msrresnet": {"tiny": dict(nf=8, nb=1), "small": dict(nf=32, nb=6), "medium": dict(nf=48, nb=10),
                  "full": dict(nf=64, nb=16)},
    "rrdb": {"tiny": dict(nf=8, nb=1, gc=8), "small": dict(nf=32, nb=3, gc=16), "medium": dict(nf=48, nb=8, gc=24),
             "full": dict(nf=64, nb=23, gc=32)},
}


def presets(arch: str) -> dict:
    """Size presets of ``arch``."""
    if arch == "dilated":
        from .denoisers import PRESETS as DENOISER_PRESETS

        return DENOISER_PRESETS
    return PRESETS[arch]


def _base(x: torch.Tensor, scale: int) -> torch.Tensor:
    if scale == 1:
        return x
    # on NCHW memory: torch's bicubic kernel is twice as fast there as on channels_last (same values)
    return F.interpolate(x.contiguous(), scale_factor=scale, mode="bicubic", align_corners=False)


def _check_scale(arch: str, scale: int) -> None:
    if scale not in SCALES:
        raise HiresError(f"generator '{arch}' supports scales {', '.join(map(str, SCALES))}, not {scale}")


class _Residual(nn.Module):
    """Shared base path + residual sum; subclasses implement ``body`` and ``last``."""

    def __init__(self, in_ch: int, out_ch: int, scale: int, zero_last: bool):
        super().__init__()
        self.in_ch, self.out_ch, self.scale = in_ch, out_ch, scale
        self.project = None if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)
        self._zero_last = zero_last
        # fixed per-band standardisation of the residual branch (set from the training data by
        # ``set_stats``; saved with the weights): the body sees (x - shift) / gain and its output
        # is multiplied by gain, so low-contrast inputs (reflectance ~0.02-0.3) train like unit-scale ones
        self.register_buffer("shift", torch.zeros(1, in_ch, 1, 1))
        self.register_buffer("gain", torch.ones(1, in_ch, 1, 1))
        self.register_buffer("out_gain", torch.ones(1, out_ch, 1, 1))

    def set_stats(self, mean, std) -> None:
        """Per-band mean/std (network units) of the training data for the residual branch."""
        mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6).view(1, -1, 1, 1)
        self.shift.copy_(mean)
        self.gain.copy_(std)
        self.out_gain.copy_(std if self.in_ch == self.out_ch else std.mean().expand_as(self.out_gain))

    def _init_last(self, conv: nn.Conv2d) -> None:
        if self._zero_last:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def base(self, x: torch.Tensor) -> torch.Tensor:
        b = _base(x, self.scale)
        return b if self.project is None else self.project(b)

    tail_radius = 0.0  # LR pixels of context the tail needs (subclasses)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The LR-resolution trunk."""
        raise NotImplementedError

    def tail(self, f: torch.Tensor) -> torch.Tensor:
        """Trunk features to the residual at output resolution."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, margins: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """``margins``: (top, bottom, left, right) input pixels of halo whose output the caller
        discards; the base path and the tail skip all but the context they need (those
        outputs are left at zero)."""
        f = self.features((x - self.shift) / self.gain)
        keep = max(math.ceil(self.tail_radius), BICUBIC_RADIUS if self.scale > 1 else 0)
        t, b, left, r = crop = tuple(max(0, m - keep) for m in (margins or (0, 0, 0, 0)))
        h, w = x.shape[-2:]
        if any(crop):
            x, f = (v[..., t:h - b, left:w - r] for v in (x, f))
        y = torch.addcmul(self.base(x), self.tail(f), self.out_gain)
        if not any(crop):
            return y
        k = self.scale
        out = y.new_zeros(*y.shape[:2], h * k, w * k)
        out[..., t * k:(h - b) * k, left * k:(w - r) * k] = y
        return out


def _upsampler(nf: int, scale: int, act) -> tuple[nn.Module, float]:
    """Pixel-shuffle stages (x2 each) and their receptive radius in LR pixels."""
    layers, radius, at = [], 0.0, 1
    for _ in range(int(math.log2(scale))):
        layers += [nn.Conv2d(nf, nf * 4, 3, 1, 1), nn.PixelShuffle(2), act()]
        radius += 1.0 / at  # a 3x3 conv at resolution ``at`` reaches 1/at LR pixels
        at *= 2
    return nn.Sequential(*layers), radius


def _lrelu():
    return nn.LeakyReLU(0.2, inplace=True)


class ResidualBlockNoBN(nn.Module):
    def __init__(self, nf: int, res_scale: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.res_scale = res_scale
        for c in (self.conv1, self.conv2):  # small init keeps deep residual stacks stable (BasicSR)
            nn.init.kaiming_normal_(c.weight, a=0, mode="fan_in")
            c.weight.data *= 0.1
            nn.init.zeros_(c.bias)

    def forward(self, x):
        r = self.conv2(F.relu(self.conv1(x), inplace=True))
        return x + r if self.res_scale == 1.0 else x + self.res_scale * r


class MSRResNet(_Residual):
    """conv → ``nb`` residual blocks (no BN) → pixel-shuffle x2 stages → conv → conv (+ base)."""

    arch = "msrresnet"

    def __init__(self, in_ch: int = 1, out_ch: int = 1, scale: int = 4, nf: int = 64, nb: int = 16,
                 zero_last: bool = True):
        _check_scale(self.arch, scale)
        super().__init__(in_ch, out_ch, scale, zero_last)
        self.nf, self.nb = nf, nb
        self.conv_first = nn.Conv2d(in_ch, nf, 3, 1, 1)
        self.body = nn.Sequential(*[ResidualBlockNoBN(nf) for _ in range(nb)])
        self.upsample, self._up_radius = _upsampler(nf, scale, _lrelu)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_ch, 3, 1, 1)
        self._init_last(self.conv_last)
        self.tail_radius = self._up_radius + 2.0 / scale

    def features(self, x):
        return self.body(F.leaky_relu(self.conv_first(x), 0.2, inplace=True))

    def tail(self, f):
        return self.conv_last(F.leaky_relu(self.conv_hr(self.upsample(f)), 0.2, inplace=True))

    def receptive_radius(self) -> int:
        net = 1 + 2 * self.nb + self._up_radius + 2.0 / self.scale
        return max(BICUBIC_RADIUS if self.scale > 1 else 0, math.ceil(net))

    def hparams(self) -> dict:
        return {"arch": self.arch, "in_ch": self.in_ch, "out_ch": self.out_ch, "scale": self.scale,
                "nf": self.nf, "nb": self.nb}


class ResidualDenseBlock(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(nf + i * gc, gc if i < 4 else nf, 3, 1, 1) for i in range(5))
        for c in self.convs:
            nn.init.kaiming_normal_(c.weight)
            c.weight.data *= 0.1
            nn.init.zeros_(c.bias)

    def forward(self, x):
        feats = [x]
        for i, conv in enumerate(self.convs):
            y = conv(torch.cat(feats, 1))
            if i < 4:
                feats.append(F.leaky_relu(y, 0.2))
        return x + 0.2 * y


class RRDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdbs = nn.Sequential(*[ResidualDenseBlock(nf, gc) for _ in range(3)])

    def forward(self, x):
        return x + 0.2 * self.rdbs(x)


class RRDBNet(_Residual):
    """ESRGAN's RRDB network: conv → ``nb`` RRDBs → conv (+ skip) → nearest x2 + conv stages →
    conv → conv (+ base)."""

    arch = "rrdb"

    def __init__(self, in_ch: int = 1, out_ch: int = 1, scale: int = 4, nf: int = 64, nb: int = 23, gc: int = 32,
                 zero_last: bool = True):
        _check_scale(self.arch, scale)
        super().__init__(in_ch, out_ch, scale, zero_last)
        self.nf, self.nb, self.gc = nf, nb, gc
        self.conv_first = nn.Conv2d(in_ch, nf, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.ups = nn.ModuleList(nn.Conv2d(nf, nf, 3, 1, 1) for _ in range(int(math.log2(scale))))
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_ch, 3, 1, 1)
        self._init_last(self.conv_last)
        self.tail_radius = sum(1.0 / 2 ** (i + 1) for i in range(len(self.ups))) + 2.0 / scale

    def features(self, x):
        f = self.conv_first(x)
        return f + self.conv_body(self.body(f))

    def tail(self, f):
        for conv in self.ups:
            f = F.leaky_relu(conv(F.interpolate(f, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(f), 0.2))

    def receptive_radius(self) -> int:
        up = sum(1.0 / 2 ** (i + 1) for i in range(len(self.ups)))  # conv after each x2 nearest
        net = 1 + 15 * self.nb + 1 + up + 2.0 / self.scale
        return max(BICUBIC_RADIUS if self.scale > 1 else 0, math.ceil(net))

    def hparams(self) -> dict:
        return {"arch": self.arch, "in_ch": self.in_ch, "out_ch": self.out_ch, "scale": self.scale,
                "nf": self.nf, "nb": self.nb, "gc": self.gc}


def resolve_hparams(arch: str, size: str | None = None, **overrides) -> dict:
    """Preset values for ``arch``/``size`` with explicit ``nf``/``nb``/``gc``/``dilations``
    overrides (None ignored)."""
    if arch not in ARCHS:
        raise HiresError(f"unknown generator '{arch}'; known: {', '.join(ARCHS)}")
    size = size or "small"
    table = presets(arch)
    if size not in table:
        raise HiresError(f"unknown generator size '{size}'; known: {', '.join(table)}")
    hp = dict(table[size])
    hp.update({k: v for k, v in overrides.items() if v is not None and k in hp})
    return hp


def build_generator(arch: str, in_ch: int, out_ch: int, scale: int, zero_last: bool = True, **hp) -> nn.Module:
    """A generator from ``hparams()``-style arguments (``nf``, ``nb``, ``gc``, ``dilations``)."""
    if arch == "msrresnet":
        return MSRResNet(in_ch, out_ch, scale, nf=hp.get("nf", 64), nb=hp.get("nb", 16), zero_last=zero_last)
    if arch == "rrdb":
        return RRDBNet(in_ch, out_ch, scale, nf=hp.get("nf", 64), nb=hp.get("nb", 23), gc=hp.get("gc", 32),
                       zero_last=zero_last)
    if arch == "dilated":
        from .denoisers import DilatedDenoiser

        return DilatedDenoiser(in_ch, out_ch, scale, nf=hp.get("nf", 48), dilations=hp.get("dilations", (1, 2, 1)),
                               zero_last=zero_last)
    raise HiresError(f"unknown generator '{arch}'; known: {', '.join(ARCHS)}")
