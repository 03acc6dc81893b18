"""Registered models run one after the other as one model (``family: "cascade"``), e.g.
``s2-sharpen+x4``: every Sentinel-2 band sharpened to 10 m, then the whole cube ×4 to 2.5 m.

The tiler sees a single model: its halo is the stages' halos added up on the input grid, its
phase their least common multiple, so tiles still equal the whole image. JSON::

    {"format": "hires-model", "format_version": 1, "name": "s2-sharpen+x4", "family": "cascade",
     "summary": "...", "domain": "raster", "stages": ["s2-sharpen", "s2-cube-x4"], "card": "..."}

Each stage is a registered model by name; only the first may change nothing but band values (x1).
"""

from __future__ import annotations

import math

import torch

from ..errors import HiresError
from . import Model, ModelInfo, get_model


class CascadeModel(Model):
    """``stages[0]`` (x1) then ``stages[1]`` (its own scales), one model to the tiler."""

    def __init__(self, json_path, meta: dict):
        names = list(meta.get("stages") or [])
        if len(names) != 2:
            raise HiresError(f"model file {json_path}: a cascade needs two 'stages', got {names}")
        self.meta = meta
        self.first, self.second = (get_model(n) for n in names)
        a, b = self.first.info, self.second.info
        if a.scales != (1,):
            raise HiresError(f"model '{meta['name']}': its first stage '{a.name}' must be x1")
        if a.bands is not None and b.bands is not None and a.bands != b.bands:
            raise HiresError(f"model '{meta['name']}': '{a.name}' gives {a.bands} bands, '{b.name}' takes {b.bands}")
        self.info = ModelInfo(meta["name"], meta.get("summary", ""), "cascade", (meta["domain"],), b.scales,
                              a.bands, a.halo + b.halo, math.lcm(a.phase, b.phase), meta.get("card", ""))
        self.input_domain = self.first.input_domain  # the first stage sees the user's input
        self.exact_tiles = self.first.exact_tiles and self.second.exact_tiles
        self.reduced_precision = self.first.reduced_precision and self.second.reduced_precision
        checks = [self.first.precision_checks or {}, self.second.precision_checks or {}]
        # a reduced precision is checked for the cascade when it is for both stages (the larger loss)
        self.precision_checks = {p: min((c[p] for c in checks), key=lambda c: c.get("delta_db", -1e9))
                                 for p in set(checks[0]) & set(checks[1])}

    @property
    def precision(self) -> str:
        return self.first.precision

    @precision.setter
    def precision(self, value: str) -> None:
        self.first.precision = self.second.precision = value

    def activation_bytes(self) -> float:
        return self.first.activation_bytes() + self.second.activation_bytes()

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        return self.second.predict(self.first.predict(x, 1), scale)
