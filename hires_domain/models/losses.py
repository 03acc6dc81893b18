"""Training losses, all on network units ``(B, C, H, W)`` and all respecting a validity mask.

``mask`` is ``(B, 1, H, W)`` (or ``(B, H, W)``) with 1 for real data and 0 for nodata/padding; a
masked pixel contributes nothing to any loss (means are taken over valid pixels only).

SSIM is written here rather than taken from torchmetrics: torchmetrics' functional SSIM is
differentiable but pools the SSIM map over every pixel, and a window touching nodata/padding
must be left out (as ``hires_domain.metrics.ssim`` does for evaluation). Here the SSIM map is
computed with a Gaussian window (σ 1.5, 11 px, valid convolution) and averaged only where the
whole window is valid.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

VGG19_FILE = "vgg19-dcbd5cb1.pth"  # torchvision's download name (https://download.pytorch.org/models/)


def _mask(mask, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones((like.shape[0], 1, *like.shape[-2:]), dtype=like.dtype, device=like.device)
    mask = mask.to(like.dtype)
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.shape[-2:] != like.shape[-2:]:  # patch logits: a patch counts when all its pixels are valid
        mask = -F.adaptive_max_pool2d(-mask, like.shape[-2:])
    return mask


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, C, H, W) over valid pixels (mask broadcast over channels)."""
    weight = mask.expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def l1_loss(pred, target, mask=None):
    return _masked_mean((pred - target).abs(), _mask(mask, pred))


def window_l1_loss(pred, target, lo: float, hi: float, mask=None):
    """L1 between both images clamped to the display window ``[lo, hi]`` (network units), divided
    by its width: the error a reader sees in that window (CT soft tissue), at unit scale."""
    return l1_loss(pred.clamp(lo, hi), target.clamp(lo, hi), mask) / (hi - lo)


def _gaussian(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(pred, target, data_range: float, win: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-window SSIM ``(B, C, H-win+1, W-win+1)`` (Wang et al. 2004 constants K1 .01, K2 .03)."""
    c = pred.shape[1]
    k = _gaussian(win, sigma, pred.dtype, pred.device).expand(c, 1, win, win)
    filt = lambda t: F.conv2d(t, k, groups=c)  # noqa: E731
    mu_x, mu_y = filt(pred), filt(target)
    sxx = filt(pred * pred) - mu_x ** 2
    syy = filt(target * target) - mu_y ** 2
    sxy = filt(pred * target) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))


def ssim_loss(pred, target, mask=None, data_range: float = 1.0, win: int = 11):
    """1 − mean SSIM over windows lying wholly on valid pixels (invalid pixels zeroed first)."""
    m = _mask(mask, pred)
    if min(pred.shape[-2:]) < win:
        return pred.new_zeros(())
    p, t = pred * m, target * m
    inner = -F.max_pool2d(-m, win, stride=1)  # 1 where the whole window is valid
    return 1.0 - _masked_mean(ssim_map(p, t, data_range, win), inner)


def spectral_angle(pred, target, eps: float = 1e-8) -> torch.Tensor:
    """Per-pixel angle (radians) between band vectors, ``(B, 1, H, W)``; exactly 0 when equal.

    Computed as ``2·asin(|â − b̂| / 2)`` from unit vectors (well conditioned near 0, unlike acos).
    """
    a = pred / pred.norm(dim=1, keepdim=True).clamp_min(eps)
    b = target / target.norm(dim=1, keepdim=True).clamp_min(eps)
    d2 = ((a - b) ** 2).sum(1, keepdim=True)
    chord = torch.where(d2 > 0, d2.clamp_min(1e-30).sqrt(), torch.zeros_like(d2))
    return 2 * torch.asin((chord / 2).clamp(max=1.0))


def sam_loss(pred, target, mask=None):
    """Mean spectral angle (radians) over valid pixels; needs 2+ bands."""
    return _masked_mean(spectral_angle(pred, target), _mask(mask, pred))


def _relativistic(real_logits, fake_logits, mask, real_is_real: bool):
    """Relativistic average GAN (ESRGAN eq. 1-2): each side's logits against the other side's
    mean, averaged over valid pixels; ``real_is_real`` False swaps the labels (generator side)."""
    m = _mask(mask, fake_logits)
    real_mean, fake_mean = _masked_mean(real_logits, m), _masked_mean(fake_logits, m)
    bce = F.binary_cross_entropy_with_logits
    target = torch.ones_like if real_is_real else torch.zeros_like
    other = torch.zeros_like if real_is_real else torch.ones_like
    loss_real = bce(real_logits - fake_mean, target(real_logits), reduction="none")
    loss_fake = bce(fake_logits - real_mean, other(fake_logits), reduction="none")
    return 0.5 * (_masked_mean(loss_real, m) + _masked_mean(loss_fake, m))


def relativistic_d_loss(real_logits, fake_logits, mask=None):
    """Discriminator side: real should look *more* real than the average fake, fake less real
    than the average real."""
    return _relativistic(real_logits, fake_logits, mask, real_is_real=True)


def relativistic_g_loss(real_logits, fake_logits, mask=None):
    """Generator side: the labels swapped, real logits detached."""
    return _relativistic(real_logits.detach(), fake_logits, mask, real_is_real=False)


def feature_matching_loss(fake_feats, real_feats, mask=None):
    """Mean L1 between discriminator features of fake and (detached) real images, per layer,
    each layer masked at its own resolution (a feature counts when its pixels are all valid)."""
    total = 0.0
    for f, r in zip(fake_feats, real_feats):
        total = total + _masked_mean((f - r.detach()).abs(), _mask(mask, f))
    return total / max(len(fake_feats), 1)


# ---------------------------------------------------------------- optional VGG perceptual loss

_VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]
_CONV5_4 = 34  # torchvision features index of conv5_4 (ESRGAN: before its ReLU)


def perceptual_status(weights_dir=None) -> tuple[str | None, str | None]:
    """``(path, None)`` when VGG19 weights are found offline, else ``(None, reason)``."""
    from ..metrics.weights import find_file, search_dirs

    path = find_file(VGG19_FILE, weights_dir)
    if path is None:
        where = ", ".join(str(d) for d, _ in search_dirs(weights_dir))
        return None, f"{VGG19_FILE} not found in {where} (set $HIRES_WEIGHTS_DIR)"
    return str(path), None


class PerceptualLoss(nn.Module):
    """L1 between VGG19 conv5_4 features (pre-activation) of prediction and target.

    Each band is mapped to [0, 1] with ``(x − lo) / (hi − lo)``, replicated to RGB, normalised
    with ImageNet statistics and compared; band losses are averaged. Masked pixels are set to the
    target's values in both images before the network, so they add nothing. The VGG weights are
    read with ``torch.load(weights_only=True)`` (no arbitrary pickle objects) and frozen.
    """

    def __init__(self, weights_path: str, lo: float = 0.0, hi: float = 1.0):
        super().__init__()
        layers, ch = [], 3
        for v in _VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, v, 3, 1, 1), nn.ReLU(inplace=False)]
                ch = v
        features = nn.Sequential(*layers[: _CONV5_4 + 1])
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        features.load_state_dict({k[len("features."):]: v for k, v in state.items()
                                  if k.startswith("features.") and int(k.split(".")[1]) <= _CONV5_4})
        for p in features.parameters():
            p.requires_grad_(False)
        self.features = features.eval()
        self.lo, self.hi = lo, hi
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, pred, target, mask=None):
        m = _mask(mask, pred)
        pred = pred * m + target * (1 - m)
        loss = 0.0
        for c in range(pred.shape[1]):
            p, t = ((x[:, c:c + 1] - self.lo) / (self.hi - self.lo) for x in (pred, target))
            p, t = ((x.expand(-1, 3, -1, -1) - self.mean) / self.std for x in (p, t))
            loss = loss + F.l1_loss(self.features(p), self.features(t).detach())
        return loss / pred.shape[1]
