"""Training configs (YAML), validated with pydantic v2: unknown keys, wrong types, a missing
dataset or a scale the generator cannot do are refused with one line naming the field:
``config PATH: field 'train.batch_size': ...``. Relative paths are relative to the config file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import HiresError
from ..models.generators import SCALES, presets
from ..settings_files import read_mapping, validation_error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _RunPaths(_Strict):
    """``dataset``/``output`` paths relative to the config file (``_base``, set at load time)."""

    _base: Path = Path(".")

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self._base / p)

    @property
    def dataset_dir(self) -> Path:
        return self.path(self.dataset)

    @property
    def output_dir(self) -> Path:
        return self.path(self.output)


class GeneratorCfg(_Strict):
    arch: Literal["msrresnet", "rrdb", "dilated"] = "msrresnet"  # dilated: x1 denoisers only
    size: Literal["tiny", "small", "medium", "full"] = "small"
    nf: Optional[int] = Field(None, ge=1)
    nb: Optional[int] = Field(None, ge=0)
    gc: Optional[int] = Field(None, ge=1)
    dilations: Optional[list[int]] = Field(None, min_length=1)  # dilated only


class DiscriminatorCfg(_Strict):
    arch: Literal["unet", "vgg"] = "unet"
    nf: int = Field(32, ge=1)
    depth: int = Field(4, ge=1, le=6)  # vgg only


class LossCfg(_Strict):
    l1: float = Field(1.0, ge=0)
    ssim: float = Field(0.0, ge=0)
    sam: float = Field(0.0, ge=0)  # spectral angle, multi-band only
    perceptual: float = Field(0.0, ge=0)  # VGG19, only when its weights are found offline
    window_l1: float = Field(0.0, ge=0)  # L1 inside a display window (CT only), divided by its width
    window: tuple[float, float] = (-160.0, 240.0)  # HU; default the soft-tissue window C40/W400
    gan: float = Field(0.005, ge=0)  # adversarial phase only
    feature_match: float = Field(0.0, ge=0)  # adversarial phase only


class TrainCfg(_Strict):
    batch_size: int = Field(8, ge=1)
    patch_size: int = Field(64, ge=8)  # HR pixels
    pretrain_steps: int = Field(1000, ge=0)  # phase 1: L1 (+SSIM, SAM, perceptual)
    gan_steps: int = Field(0, ge=0)  # phase 2: + adversarial (needs a discriminator)
    lr_g: float = Field(2e-4, gt=0)
    lr_g_gan: float = Field(1e-4, gt=0)
    lr_d: float = Field(1e-4, gt=0)
    schedule: Literal["constant", "cosine"] = "cosine"  # per phase
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: Optional[float] = Field(None, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    augment: bool = True  # flips and 90° rotations
    min_valid: float = Field(0.5, ge=0, le=1)  # crops with fewer valid HR pixels are redrawn
    log_every: int = Field(10, ge=1)
    val_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    threads: Optional[int] = Field(None, ge=1)  # torch CPU threads
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast of the generator's forward pass


class ValCfg(_Strict):
    max_items: int = Field(8, ge=1)  # validation items scored (first N of the val split)
    max_side: int = Field(256, ge=16)  # centre crop of larger items (HR pixels), for speed


class ExportCfg(_Strict):
    name: str
    dir: Optional[str] = None  # default: <output>/export
    summary: str = ""
    card: str = ""
    self_ensemble: Literal[1, 8] = 1  # 8: the model runs averaged over rotations and flips (8x compute)


class TrainConfig(_RunPaths):
    name: str
    seed: int = 0
    dataset: str  # prepared dataset directory (manifest.json)
    output: str  # run directory: checkpoints/, log.csv, final/
    init: Optional[str] = None  # exported generator weights (.safetensors) to start from (a warm start)
    generator: GeneratorCfg = GeneratorCfg()
    discriminator: Optional[DiscriminatorCfg] = None
    losses: LossCfg = LossCfg()
    train: TrainCfg = TrainCfg()
    validation: ValCfg = ValCfg()
    export: Optional[ExportCfg] = None

    @model_validator(mode="after")
    def _gan_needs_d(self):
        if self.train.gan_steps > 0 and self.discriminator is None:
            raise ValueError("gan_steps > 0 needs a 'discriminator' section")
        if self.train.pretrain_steps + self.train.gan_steps == 0:
            raise ValueError("pretrain_steps + gan_steps must be > 0")
        return self

    @property
    def total_steps(self) -> int:
        return self.train.pretrain_steps + self.train.gan_steps


def parse_config(data: dict, where: str = "config", base: Path = Path(".")) -> TrainConfig:
    if not isinstance(data, dict):
        raise HiresError(f"{where}: expected a mapping of fields, got {type(data).__name__}")
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise validation_error(where, exc) from None
    cfg._base = Path(base)
    return cfg


def load_config(path):
    """Read, validate and check a config against its dataset (exists, scale supported); a config
    with a ``stage`` key is a latent-diffusion stage (``ldm_config.LdmConfig``), one with
    ``family: sharpen`` the guided band sharpener (``sharpen.SharpenConfig``)."""
    path = Path(path)
    where = f"config {path}"
    data = read_mapping(path, where)
    if isinstance(data, dict) and "stage" in data:
        from .ldm_config import parse_ldm_config

        return parse_ldm_config(data, where, path.resolve().parent)
    if isinstance(data, dict) and data.get("family") == "sharpen":
        from .sharpen import parse_sharpen_config

        return parse_sharpen_config(data, where, path.resolve().parent)
    cfg = parse_config(data, where, path.resolve().parent)
    check_dataset(cfg, where)
    return cfg


def read_manifest(dataset_dir: Path, where: str = "config") -> dict:
    m = Path(dataset_dir) / "manifest.json"
    if not m.is_file():
        raise HiresError(f"{where}: field 'dataset': no prepared dataset at {dataset_dir} (manifest.json missing; "
                         f"run `hires prepare RECIPE {dataset_dir}`)")
    manifest = json.loads(m.read_text())
    if manifest.get("format") != "hires-dataset":
        raise HiresError(f"{where}: field 'dataset': {m} is not a hires dataset manifest")
    return manifest


def check_dataset(cfg: TrainConfig, where: str = "config") -> dict:
    manifest = read_manifest(cfg.dataset_dir, where)
    scale = int(manifest["scale"])
    if scale not in SCALES:
        raise HiresError(f"{where}: field 'generator.arch': dataset scale x{scale} not supported by "
                         f"'{cfg.generator.arch}' (supports {', '.join(f'x{s}' for s in SCALES)})")
    if cfg.train.patch_size % scale:
        raise HiresError(f"{where}: field 'train.patch_size': {cfg.train.patch_size} is not a multiple of "
                         f"the dataset scale {scale}")
    if cfg.discriminator is not None:
        mult = 8 if cfg.discriminator.arch == "unet" else 2 ** cfg.discriminator.depth
        if cfg.train.patch_size % mult:
            raise HiresError(f"{where}: field 'train.patch_size': {cfg.train.patch_size} must be a multiple of "
                             f"{mult} for the {cfg.discriminator.arch} discriminator")
    if cfg.generator.size not in presets(cfg.generator.arch):
        raise HiresError(f"{where}: field 'generator.size': unknown size")
    counts = manifest.get("counts", {})
    for split in ("train", "val"):
        if not counts.get(split):
            raise HiresError(f"{where}: field 'dataset': the dataset has no '{split}' items")
    return manifest
