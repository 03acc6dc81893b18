"""One image model for every format: channels-first pixels plus exact geometry and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import geometry


@dataclass
class Image:
    """Pixels ``(C, *spatial)`` with geometry, intensity semantics and format metadata.

    ``data`` is a numpy array, or for rasters a lazy windowed source (``tiling.Source``) so that
    scenes larger than memory are never loaded whole. ``affine`` follows ``geometry``'s
    pixel-centre convention. ``meta`` holds what the format's writer needs to write back
    (source DICOM headers, NIfTI header, raster profile, tags, scales/offsets).
    """

    data: Any
    affine: np.ndarray
    frame: str  # 'LPS' (DICOM patient), 'RAS' (NIfTI), 'map' (raster CRS)
    kind: str  # 'dicom' | 'nifti' | 'raster': which writer understands ``meta``
    units: str = ""  # 'HU', 'DN', ... : what the values in ``data`` mean
    nodata: float | None = None
    band_names: tuple[str, ...] = ()
    crs: str | None = None
    meta: dict = field(default_factory=dict)
    source_path: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def spacing(self) -> np.ndarray:
        return geometry.spacing(self.affine)

    def array(self) -> np.ndarray:
        """All pixels as float32 (loads a lazy source whole: use only when it fits)."""
        if isinstance(self.data, np.ndarray):
            return self.data.astype(np.float32, copy=False)
        return self.data.read(tuple(slice(0, n) for n in self.spatial_shape))[0]

    def with_data(self, data, factors=1.0, **changes) -> "Image":
        """A new image on the grid refined by ``factors`` (footprint kept), sharing metadata."""
        affine = geometry.upscaled_affine(self.affine, factors)
        return replace(self, data=data, affine=affine, **changes)
