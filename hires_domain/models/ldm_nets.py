"""Networks of the latent-diffusion family, built from diffusers (UNet2DModel, AutoencoderKL).

- **Codecs** map HR images (network units) to a latent on the LR grid and back: the factor is
  the scale, so the LR image concatenates to the latent directly. ``pixel-unshuffle`` is
  lossless and needs no training; ``autoencoder-kl`` is a diffusers ``AutoencoderKL`` trained
  by ``hires train`` (stage ``vae``). Both take any band count.
- **Denoiser**: a diffusers ``UNet2DModel`` on ``[noisy latent ‖ LR ‖ first-stage latent]``;
  the LR noise-augmentation level enters as a class embedding (``class_embed_type="timestep"``).

Both are made *local* (``make_local``): diffusers' GroupNorm pools statistics over the whole
spatial window and its attention blocks see every pixel, so a tile's output would depend on the
tile's size. GroupNorm is replaced by the same per-pixel normalisation over channel groups
(no spatial statistics; written here because no library offers it as a drop-in) and attention
is left out, so a tile read with enough halo gives what the whole image gives.

A 3-D variant slots in behind the same two interfaces (``Codec``: encode/decode; ``Denoiser``:
``forward(x_t, t, cond, level)``), e.g. MONAI's ``DiffusionModelUNet(spatial_dims=3)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HiresError


class PixelGroupNorm(nn.Module):
    """GroupNorm's per-group standardisation and affine, computed per pixel (local)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.groups, self.eps = num_groups, eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        dtype, x = x.dtype, x.float()  # statistics in fp32 under a bf16/fp16 autocast
        g = x.reshape(b, self.groups, c // self.groups, *x.shape[2:])
        g = (g - g.mean(2, keepdim=True)) * torch.rsqrt(g.var(2, keepdim=True, unbiased=False) + self.eps)
        x = g.reshape(x.shape)
        if self.weight is not None:
            shape = (1, c) + (1,) * (x.ndim - 2)
            x = x * self.weight.view(shape) + self.bias.view(shape)
        return x.to(dtype)


def make_local(module: nn.Module) -> nn.Module:
    """Replace every GroupNorm (in place) by a PixelGroupNorm with the same parameters."""
    for name, child in module.named_children():
        if isinstance(child, nn.GroupNorm):
            setattr(module, name, PixelGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine))
        else:
            make_local(child)
    return module


def _groups(channels: tuple[int, ...], wanted: int = 8, min_size: int = 4) -> int:
    """Groups for PixelGroupNorm: at most ``wanted``, dividing every count, with at least
    ``min_size`` channels per group where possible. Per pixel, a one-channel group normalises
    to a constant (the layer's input is lost) and a two-channel group to about ±1 (a sign)."""
    g = wanted
    while g > 1 and any(c % g or c // g < min_size for c in channels):
        g //= 2
    return max(g, 1)


# ---------------------------------------------------------------- codecs


class UnshuffleCodec(nn.Module):
    """Lossless latent: pixel-unshuffle by the scale (C·s² channels on the LR grid)."""

    kind = "pixel-unshuffle"

    def __init__(self, bands: int, scale: int):
        super().__init__()
        self.bands, self.scale = bands, scale
        self.latent_channels = bands * scale * scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.scale)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, self.scale)

    def hparams(self) -> dict:
        return {"kind": self.kind, "bands": self.bands, "scale": self.scale}


class KLCodec(nn.Module):
    """diffusers ``AutoencoderKL`` with downsampling factor = scale (log2(scale) down blocks);
    ``encode`` returns the posterior mean (deterministic). Inputs are standardised per band with
    the training pixels' ``mean``/``std`` first: the per-pixel normalisation would otherwise see
    features dominated by biases (reflectance varies by ~0.1) and learn to ignore the input."""

    kind = "autoencoder-kl"

    def __init__(self, bands: int, scale: int, latent_channels: int = 8, channels: tuple[int, ...] | None = None,
                 layers_per_block: int = 1, mean=None, std=None):
        super().__init__()
        from diffusers import AutoencoderKL

        levels = int(round(math.log2(scale)))
        if 2 ** levels != scale or scale < 2:
            raise HiresError(f"autoencoder-kl needs a power-of-two scale >= 2, got x{scale}")
        channels = tuple(channels or (32,) + (64,) * levels)
        if len(channels) != levels + 1:
            raise HiresError(f"autoencoder-kl at x{scale} needs {levels + 1} channel counts, got {len(channels)}")
        self.bands, self.scale, self.latent_channels = bands, scale, latent_channels
        self.channels, self.layers_per_block = channels, layers_per_block
        self.mean = [float(v) for v in (mean if mean is not None else [0.0] * bands)]
        self.std = [float(v) for v in (std if std is not None else [1.0] * bands)]
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, -1, 1, 1), persistent=False)
        self.vae = make_local(AutoencoderKL(
            in_channels=bands, out_channels=bands, latent_channels=latent_channels,
            down_block_types=("DownEncoderBlock2D",) * len(channels),
            up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=channels,
            layers_per_block=layers_per_block, norm_num_groups=_groups(channels), mid_block_add_attention=False))

    def posterior(self, x: torch.Tensor):
        return self.vae.encode((x - self._mean) / self._std).latent_dist

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x).mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample * self._std + self._mean

    def hparams(self) -> dict:
        return {"kind": self.kind, "bands": self.bands, "scale": self.scale, "latent_channels": self.latent_channels,
                "channels": list(self.channels), "layers_per_block": self.layers_per_block,
                "mean": self.mean, "std": self.std}


def build_codec(hp: dict) -> nn.Module:
    hp = dict(hp)
    kind = hp.pop("kind")
    if kind == UnshuffleCodec.kind:
        return UnshuffleCodec(hp["bands"], hp["scale"])
    if kind == KLCodec.kind:
        hp["channels"] = tuple(hp["channels"])
        return KLCodec(**hp)
    raise HiresError(f"unknown latent codec '{kind}' (pixel-unshuffle or autoencoder-kl)")


# ---------------------------------------------------------------- denoiser


class Denoiser(nn.Module):
    """UNet2DModel on ``[x_t ‖ cond]``; ``level`` (0..1, the LR augmentation noise relative to
    its maximum) through the class embedding. Input sides must be multiples of ``multiple``."""

    def __init__(self, latent_channels: int, cond_channels: int, channels: tuple[int, ...] = (64, 96, 128),
                 layers_per_block: int = 1):
        super().__init__()
        from diffusers import UNet2DModel

        self.latent_channels, self.cond_channels = latent_channels, cond_channels
        self.channels, self.layers_per_block = tuple(channels), layers_per_block
        n = len(self.channels)
        self.unet = make_local(UNet2DModel(
            in_channels=latent_channels + cond_channels, out_channels=latent_channels,
            down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
            block_out_channels=self.channels, layers_per_block=layers_per_block, add_attention=False,
            norm_num_groups=_groups(self.channels), class_embed_type="timestep"))

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        b = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).float().expand(b)
        level = torch.as_tensor(level, device=x_t.device).float().expand(b) * 999.0
        if cond.shape[0] != b:
            cond = cond.expand(b, *cond.shape[1:])
        return self.unet(torch.cat([x_t, cond], 1), t, class_labels=level).sample

    def hparams(self) -> dict:
        return {"latent_channels": self.latent_channels, "cond_channels": self.cond_channels,
                "channels": list(self.channels), "layers_per_block": self.layers_per_block}


def build_denoiser(hp: dict) -> Denoiser:
    hp = dict(hp)
    hp["channels"] = tuple(hp["channels"])
    return Denoiser(**hp)


def receptive_radius(net: Denoiser, size: int = 160) -> int:
    """Latent pixels of context the denoiser reads per side, measured: perturb the centre pixel
    of a random input and find the farthest output pixel that changes."""
    g = torch.Generator().manual_seed(0)
    c, lc = net.cond_channels, net.latent_channels
    x = torch.randn(1, lc, size, size, generator=g)
    cond = torch.randn(1, c, size, size, generator=g)
    with torch.no_grad():
        a = net(x, 500, cond, 0.0)
        x2 = x.clone()
        x2[..., size // 2, size // 2] += 10.0
        b = net(x2, 500, cond, 0.0)
    changed = ((a - b).abs().amax(1)[0] > 1e-6).nonzero()
    if len(changed) == 0:
        return 0
    return int((changed - size // 2).abs().max())
