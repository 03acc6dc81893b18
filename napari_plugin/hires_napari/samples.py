"""npe2 sample data: the bundled CT head series, low-dose CT slice and Sentinel-2 crop, opened by the readers."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from . import layers
from .readers import read_layers


def sample_path(name: str) -> Path:
    """A file or directory under ``hires_domain/samples``."""
    return Path(str(resources.files("hires_domain") / "samples" / name))


def ct_series() -> list[tuple]:
    """CT head series (bundled): 12 axial slices, soft-tissue window."""
    return read_layers(sample_path("ct_head_series"), layers.BANDS)


def ct_lowdose() -> list[tuple]:
    """A real CT slice (693_UNCI) at a simulated low dose (bundled NIfTI, noisy padding outside
    the field of view as scanners write it): soft-tissue window, ready for ct-denoise."""
    return read_layers(sample_path("ct_lowdose.nii.gz"), layers.BANDS)


def s2_crop() -> list[tuple]:
    """Sentinel-2 B02,B03,B04,B08 crop (bundled): true-colour composite and hidden band layers,
    as File → Open shows it."""
    return read_layers(sample_path("s2_crop.tif"), layers.TRUE_COLOUR)
