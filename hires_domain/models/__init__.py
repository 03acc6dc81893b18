"""Model registry: every model, baselines included, goes through the same tiler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import HiresError


@dataclass(frozen=True)
class ModelInfo:
    """What a model can take and do; shown by ``hires models`` and checked before a run."""

    name: str
    summary: str
    family: str  # 'interpolation' | 'srgan' | 'sharpen' | 'diffusion' | 'cascade'
    domains: tuple[str, ...]  # subset of ('medical', 'raster')
    scales: tuple[int, ...]  # in-plane factors it can do
    bands: int | None = None  # channels it takes; None = any
    halo: int = 0  # input pixels of context per side needed for seam-free tiling
    phase: int = 1  # tile input windows must start on multiples of this (2: networks on 2x2 sub-images)
    card: str = ""  # model card path under docs/

    @property
    def default_scale(self) -> int:
        """The scale used when none is given: a model's only scale, else 2 (baselines)."""
        return self.scales[0] if len(self.scales) == 1 else 2


class Model:
    """A 2-D model: ``predict`` maps ``(B, C, H, W)`` to ``(B, C, H·k, W·k)``."""

    info: ModelInfo
    input_domain: dict | None = None  # what a trained model's inputs looked like (models/domain.py)
    exact_tiles = True  # the halo covers the receptive field: tiles equal the whole image, no blending needed
    reduced_precision = False  # a network that can run under bf16/fp16 autocast (precision.py)
    precision_checks: dict | None = None  # held-out reduced-precision checks from the model JSON
    precision = "fp32"  # set for a run by pipeline.resolve_run

    def activation_bytes(self) -> float:
        """Estimated peak memory per input pixel of one forward pass at ``self.precision``
        (sizes the automatic tile): input and output planes, float32."""
        return 4.0 * 3 * (self.info.bands or 1) * (1 + max(self.info.scales) ** 2)

    def predict(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        raise NotImplementedError

    def check(self, scale: int, channels: int, domain: str, band_names: tuple[str, ...] = ()) -> None:
        """Refuse a scale, band count or domain this model cannot take (one-line errors);
        ``band_names``: the input's, for models that place bands by name."""
        i = self.info
        if scale not in i.scales:
            can = ", ".join(f"x{s}" for s in i.scales)
            raise HiresError(f"model '{i.name}' cannot do x{scale}; it supports {can}")
        if i.bands is not None and channels != i.bands:
            raise HiresError(f"model '{i.name}' takes {i.bands} band(s), the input has {channels}")
        if domain not in i.domains:
            raise HiresError(f"model '{i.name}' is for {'/'.join(i.domains)} images, not {domain}")


_REGISTRY: dict[str, Callable[[], Model]] = {}
_KEPT: dict[str, Model] | None = None  # per-process model instances, once keep_models() is called


def register(name: str, factory: Callable[[], Model]) -> None:
    _REGISTRY[name] = factory


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_model(name: str) -> Model:
    """Instantiate a registered model or fail with the list of known names."""
    if name not in _REGISTRY:
        raise HiresError(f"unknown model '{name}'; available: {', '.join(available())}")
    if _KEPT is None:
        return _REGISTRY[name]()
    return _KEPT[name] if name in _KEPT else _KEPT.setdefault(name, _REGISTRY[name]())


def keep_models() -> None:
    """From now on ``get_model`` returns one instance per name in this process, so weights load
    once: for batch workers, which run one item at a time (not for threads sharing models)."""
    global _KEPT
    if _KEPT is None:
        _KEPT = {}


def resolve_scale(model: str, scale: int | None) -> int:
    """``scale``, or the model's default when None (``s2-sr-x4`` → 4, ``bicubic`` → 2)."""
    return get_model(model).info.default_scale if scale is None else int(scale)


def list_models() -> list[ModelInfo]:
    return [get_model(n).info for n in available()]


from . import baselines  # noqa: E402,F401  (registers the baselines)
from . import self_sr  # noqa: E402,F401  (registers self-sr)
from . import neural  # noqa: E402,F401  (registers trained models in hires_domain/weights/)
