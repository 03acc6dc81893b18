"""Configs of the two latent-diffusion training stages (YAML with ``stage: vae`` or ``stage: ldm``),
validated like the SRGAN configs: unknown keys or wrong values → one line naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError, model_validator

from ..errors import HiresError
from ..settings_files import validation_error
from .config import ExportCfg, TrainCfg, ValCfg, _RunPaths, _Strict, read_manifest


class FirstStageCfg(_Strict):
    kind: Literal["bicubic", "generator"] = "bicubic"
    model: Optional[str] = None  # generator: a shipped SRGAN model JSON (embedded into the LDM)

    @model_validator(mode="after")
    def _model_given(self):
        if self.kind == "generator" and not self.model:
            raise ValueError("first_stage kind 'generator' needs 'model' (an SRGAN model JSON)")
        return self


class CodecCfg(_Strict):
    kind: Literal["pixel-unshuffle", "autoencoder-kl"] = "pixel-unshuffle"
    weights: Optional[str] = None  # ldm stage, autoencoder-kl: the vae stage's exported JSON
    latent_channels: int = Field(8, ge=1)  # vae stage
    channels: Optional[list[int]] = None  # vae stage: log2(scale)+1 counts
    layers_per_block: int = Field(1, ge=1)


class DenoiserCfg(_Strict):
    channels: list[int] = Field(default_factory=lambda: [48, 96], min_length=1)
    layers_per_block: int = Field(1, ge=1)


class DiffusionCfg(_Strict):
    timesteps: int = Field(1000, ge=10)
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    prediction: Literal["v_prediction", "epsilon", "sample"] = "v_prediction"
    max_level: float = Field(0.02, ge=0)  # LR noise augmentation: largest std in network units
    level_prob: float = Field(0.5, ge=0, le=1)  # share of training batches augmented
    scale_map: bool = True  # residual in units of the first stage's local gradient (ldm.scale_map)


class SamplingCfg(_Strict):
    steps: int = Field(20, ge=1)
    sampler: Literal["dpm++", "ddim"] = "dpm++"
    tile: int = Field(256, ge=8)  # latent (= LR) pixels per joint-denoising tile
    overlap: int = Field(32, ge=0)
    halo: int = Field(16, ge=0)
    level: float = Field(0.0, ge=0, le=1)
    consistency: Literal["enforce", "off"] = "off"  # what 'auto' means for this model
    temperature: Optional[float] = Field(None, ge=0, le=1.5)  # None: calibrated on training items at export


class LdmValCfg(ValCfg):
    steps: int = Field(10, ge=1)  # sampler steps at validation
    samples: int = Field(2, ge=1)


class LossVaeCfg(_Strict):
    l1: float = Field(1.0, ge=0)
    ssim: float = Field(0.2, ge=0)
    kl: float = Field(1e-6, ge=0)


class LdmTrainCfg(TrainCfg):
    steps: int = Field(1000, ge=1)
    lr: float = Field(2e-4, gt=0)
    bf16: bool = False  # autocast the forward pass to bfloat16 (CPU with AVX-512 BF16/AMX, or CUDA)
    pretrain_steps: int = 0  # unused by the diffusion stages
    gan_steps: int = 0


class LdmConfig(_RunPaths):
    name: str
    stage: Literal["vae", "ldm"]
    seed: int = 0
    dataset: str
    output: str
    first_stage: FirstStageCfg = FirstStageCfg()
    codec: CodecCfg = CodecCfg()
    denoiser: DenoiserCfg = DenoiserCfg()
    diffusion: DiffusionCfg = DiffusionCfg()
    sampling: SamplingCfg = SamplingCfg()
    losses: LossVaeCfg = LossVaeCfg()
    train: LdmTrainCfg = LdmTrainCfg()
    validation: LdmValCfg = LdmValCfg()
    export: Optional[ExportCfg] = None

    @model_validator(mode="after")
    def _stage_fits(self):
        if self.stage == "vae" and self.codec.kind != "autoencoder-kl":
            raise ValueError("stage 'vae' trains an autoencoder: codec kind must be 'autoencoder-kl'")
        if self.stage == "ldm" and self.codec.kind == "autoencoder-kl" and not self.codec.weights:
            raise ValueError("codec 'autoencoder-kl' needs 'weights' (the vae stage's exported JSON)")
        return self

    @property
    def total_steps(self) -> int:
        return self.train.steps


def parse_ldm_config(data: dict, where: str, base: Path) -> LdmConfig:
    try:
        cfg = LdmConfig.model_validate(data)
    except ValidationError as exc:  # the only whole-config check (_stage_fits) is about the codec
        raise validation_error(where, exc, root="codec") from None
    cfg._base = Path(base)
    manifest = read_manifest(cfg.dataset_dir, where)
    scale = int(manifest["scale"])
    if cfg.train.patch_size % scale or (cfg.train.patch_size // scale) % 2 ** (len(cfg.denoiser.channels) - 1):
        raise HiresError(f"{where}: field 'train.patch_size': {cfg.train.patch_size} must be a multiple of the "
                         f"scale {scale} times {2 ** (len(cfg.denoiser.channels) - 1)} (the denoiser's levels)")
    for split in ("train", "val"):
        if not manifest.get("counts", {}).get(split):
            raise HiresError(f"{where}: field 'dataset': the dataset has no '{split}' items")
    return cfg
