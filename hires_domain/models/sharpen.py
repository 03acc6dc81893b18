"""Guided band sharpening (``family: "sharpen"``): coarse bands brought to the finest band's
detail, guided by the fine bands, on the fine grid (a x1 model: the reader has already put every
band on that grid with ``resample``).

A DSen2-style network per stage (Lanaras et al. 2018): the stage's input bands (guides and the
cubic-upsampled coarse bands, normalised) → conv → residual blocks → conv, added to the stage's
target bands. Every band that is no stage's target passes through bit for bit. JSON::

    {..., "family": "sharpen", "scale": 1, "bands": [...], "normalisation": {...},
     "sharpen": {"stages": [{"name": "20m", "ratio": 2, "inputs": [...], "targets": [...],
                             "nf": 48, "nb": 6}, ...]}}

Weights ``<stage>.*`` in one safetensors file, read with safetensors only.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import HiresError
from ..precision import autocast
from .generators import ResidualBlockNoBN
from .neural import NeuralModel


class GuidedResNet(nn.Module):
    """``in_ch`` bands → residual for ``out_ch`` bands; the last conv starts at zero (identity)."""

    def __init__(self, in_ch: int, out_ch: int, nf: int = 48, nb: int = 6):
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(in_ch, nf, 3, 1, 1), nn.ReLU(inplace=True))
        self.body = nn.Sequential(*[ResidualBlockNoBN(nf, res_scale=0.1) for _ in range(nb)])
        self.tail = nn.Conv2d(nf, out_ch, 3, 1, 1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        self.nb = nb

    def receptive_radius(self) -> int:
        return 2 + 2 * self.nb

    def forward(self, x):
        return self.tail(self.body(self.head(x)))


def build_stages(bands: list[str], stages: list[dict]) -> nn.ModuleDict:
    for st in stages:
        missing = [b for b in st["inputs"] + st["targets"] if b not in bands]
        if missing:
            raise HiresError(f"sharpen stage '{st['name']}': bands {missing} are not among {bands}")
    return nn.ModuleDict({st["name"]: GuidedResNet(len(st["inputs"]), len(st["targets"]), st["nf"], st["nb"])
                          for st in stages})


def sharpen(nets: nn.ModuleDict, stages: list[dict], bands: list[str], xn: torch.Tensor) -> torch.Tensor:
    """Normalised ``(B, C, H, W)`` on the fine grid → the same with each stage's targets sharpened
    (stages read the unsharpened input, as DSen2 does)."""
    y = xn.clone()
    for st in stages:
        inp = xn[:, [bands.index(b) for b in st["inputs"]]]
        t = [bands.index(b) for b in st["targets"]]
        y[:, t] = xn[:, t] + nets[st["name"]](inp).to(xn.dtype)
    return y


class SharpenModel(NeuralModel):
    """A registry model over ``sharpen``: physical units (DN) in and out."""

    crops_halo = False  # its own predict: no margins

    def activation_bytes(self) -> float:
        per_value = 4.0 if self.precision == "fp32" else 2.3
        return 3 * per_value * max(st["nf"] for st in self.stages) + 8.0 * len(self.bands)

    def check(self, scale: int, channels: int, domain: str, band_names: tuple[str, ...] = ()) -> None:
        """Also takes the product's bands with B10 (``--bands``): B10, which no stage sharpens,
        passes through on the fine grid like the guides."""
        if channels == len(self.bands) + 1 and tuple(band_names) == self._with_b10():
            channels = len(self.bands)
        super().check(scale, channels, domain, band_names)

    def _with_b10(self) -> tuple[str, ...]:
        from ..io.s2_product import S2_ORDER

        return tuple(b for b in S2_ORDER if b in self.bands or b == "B10")

    @property
    def stages(self) -> list[dict]:
        return self.meta["sharpen"]["stages"]

    @property
    def bands(self) -> list[str]:
        return list(self.meta["bands"])

    @property
    def net(self) -> nn.ModuleDict:
        if self._net is None:
            from safetensors.torch import load_file

            st = self.path.with_suffix(".safetensors")
            if not st.is_file():
                raise HiresError(f"model '{self.info.name}': weights file {st} missing")
            nets = build_stages(self.bands, self.stages)
            try:
                nets.load_state_dict(load_file(str(st)))
            except RuntimeError as exc:
                raise HiresError(f"model '{self.info.name}': weights do not match its JSON "
                                 f"({str(exc).splitlines()[0]})") from None
            self._net = nets.eval().to(memory_format=torch.channels_last)
        return self._net

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        if scale != 1:
            raise HiresError(f"model '{self.info.name}' cannot do x{scale}; it works on the finest band's grid (x1)")
        if x.shape[1] == len(self.bands) + 1:  # B10 among them (checked by name): it passes through
            b10 = self._with_b10().index("B10")
            keep = [k for k in range(x.shape[1]) if k != b10]
            out = x.clone()
            out[:, keep] = self.predict(x[:, keep], scale)
            return out
        nets = self.net
        if next(nets.parameters()).device != x.device:
            nets.to(x.device)
        xf = x.to(torch.float32)
        with autocast(self.precision, x.device):
            y = sharpen(nets, self.stages, self.bands,
                        self.normaliser.forward(xf).contiguous(memory_format=torch.channels_last))
        y = self.normaliser.inverse(y.float())
        targets = [self.bands.index(b) for st in self.stages for b in st["targets"]]
        out = xf.clone()  # guides and any other band pass through unchanged
        out[:, targets] = y[:, targets]
        return out.to(x.dtype)
