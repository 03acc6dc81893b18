"""Conditional latent diffusion as a registry model: ``<name>.json`` + ``<name>.safetensors``.

The cascade: a deterministic first stage (an embedded SRGAN generator, or bicubic) gives the
mean ``m``; the diffusion samples the residual in latent space, ``r = (E(HR) − E(m)) / latent_scale``,
conditioned on the normalised LR and ``E(m)``; the output is ``D(E(m) + latent_scale · r)``.
``E``/``D`` is the codec (``ldm_nets``): the latent grid is the LR grid.

JSON (``family: "diffusion"``)::

    {"format": "hires-model", "format_version": 1, "name", "summary", "family": "diffusion",
     "domain", "scale", "bands", "normalisation", "halo", "card", "training", "input_domain",
     "diffusion": {"codec": {...}, "denoiser": {...}, "first_stage": {"kind": "bicubic"} |
                   {"kind": "generator", "generator": {arch, ...}},
                   "scheduler": {num_train_timesteps, beta_schedule, prediction_type},
                   "latent_scale", "max_level", "defaults": {steps, sampler, tile, overlap,
                   "halo", "level", "consistency"}}}

Weights: ``denoiser.*``, ``first_stage.*`` (generator), ``codec.*`` (autoencoder-kl), read with
safetensors only. ``predict_at`` takes physical units and the tiles' global origins (noise is
keyed by position) and returns the output, followed by the per-pixel standard deviation over
the samples when ``Sampling.uncertainty`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import HiresError
from ..intensity import Normaliser
from ..precision import autocast
from .generators import _base, build_generator
from .ldm_nets import build_codec, build_denoiser
from .ldm_sampling import SAMPLERS, denoise_jointly, make_scheduler, noise_field, project_consistent
from .neural import NeuralModel

CONSISTENCY = ("auto", "enforce", "off")


@dataclass(frozen=True)
class Sampling:
    """How a diffusion model samples (``Settings`` carries the user's choices)."""

    steps: int = 20
    seed: int = 0
    samples: int = 1
    sampler: str = "dpm++"
    consistency: str = "auto"  # auto: enforce for medical models, off for rasters
    sample_output: bool = False  # output one sample (the first) instead of the mean
    uncertainty: bool = False  # append the per-pixel standard deviation over the samples
    level: float | None = None  # LR augmentation level 0..1 (None: the model's default)
    temperature: float | None = None  # scale of the initial noise, 0..1.5 (None: the model's default)
    strength: float = 1.0  # SDEdit: start from the first stage noised to step strength·T (0: the first stage)

    def __post_init__(self):
        for name in ("steps", "samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise HiresError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise HiresError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.sampler not in SAMPLERS:
            raise HiresError(f"unknown sampler '{self.sampler}': use {' or '.join(SAMPLERS)}")
        if self.consistency not in CONSISTENCY:
            raise HiresError(f"consistency must be one of {', '.join(CONSISTENCY)}, got '{self.consistency}'")
        if self.temperature is not None and not 0.0 <= float(self.temperature) <= 1.5:
            raise HiresError(f"temperature must be from 0 to 1.5, got {self.temperature}")
        if not 0.0 <= float(self.strength) <= 1.0:  # also refuses NaN
            raise HiresError(f"strength must be from 0 to 1 (0: the first stage, 1: full sampling), got {self.strength}")
        if self.level is not None and not 0.0 <= float(self.level) <= 1.0:
            raise HiresError(f"noise-augmentation level must be from 0 to 1, got {self.level}")


def scale_map(mean: torch.Tensor, scale: int, floor: float | None) -> torch.Tensor | float:
    """Where the residual is expected to be large: the first stage's local gradient magnitude
    (band mean of squared differences, averaged over each LR pixel's block and its 3 × 3 LR
    neighbourhood), floored at ``floor``; ``(B, 1, h, w)`` on the latent grid. The diffusion
    models ``residual / (latent_scale · map)``, so even a briefly trained model puts its samples'
    spread (the uncertainty) at edges and texture rather than uniformly. None: no map (1)."""
    if floor is None:
        return 1.0
    gy = torch.nn.functional.pad(mean[..., 1:, :] - mean[..., :-1, :], (0, 0, 0, 1))
    gx = torch.nn.functional.pad(mean[..., :, 1:] - mean[..., :, :-1], (0, 1, 0, 0))
    g2 = torch.nn.functional.avg_pool2d((gy ** 2 + gx ** 2).mean(1, keepdim=True), scale)
    g2 = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(g2, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return torch.sqrt(g2 + floor ** 2)


class DiffusionModel(NeuralModel):
    """An LR-conditioned latent diffusion model loaded from its JSON and safetensors. Its first
    stage and denoiser run under ``self.precision``'s autocast (the latent, the solver and the
    codec stay fp32); its outer tiles are blended (noise and joint denoising make a tile's
    samples depend on its extent)."""

    crops_halo = False  # its own predict: no margins
    exact_tiles = False

    def __init__(self, json_path, meta: dict | None = None):
        super().__init__(json_path, meta)
        d = self.meta["diffusion"]
        self.diffusion = d
        self.defaults = d.get("defaults", {})
        self.sampling = Sampling(steps=int(self.defaults.get("steps", 20)),
                                 sampler=self.defaults.get("sampler", "dpm++"))
        self._nets = None
        self.on_step = None  # callable(step, steps) after every denoising step; raising in it cancels

    def with_sampling(self, sampling: Sampling) -> "DiffusionModel":
        self.sampling = sampling
        return self

    @property
    def enforce(self) -> bool:
        c = self.sampling.consistency
        return c == "enforce" or (c == "auto" and self.defaults.get("consistency", "off") == "enforce")

    @property
    def nets(self):
        """(codec, denoiser, first stage or None), loaded once."""
        if self._nets is None:
            from safetensors.torch import load_file

            st = self.path.with_suffix(".safetensors")
            if not st.is_file():
                raise HiresError(f"model '{self.info.name}': weights file {st} missing")
            d = self.diffusion
            codec, denoiser = build_codec(d["codec"]), build_denoiser(d["denoiser"])
            first = None
            if d["first_stage"]["kind"] == "generator":
                g = dict(d["first_stage"]["generator"])
                first = build_generator(g.pop("arch"), g.pop("in_ch"), g.pop("out_ch"), g.pop("scale"), **g)
            state = load_file(str(st))
            try:
                for prefix, net in (("denoiser.", denoiser), ("first_stage.", first), ("codec.", codec)):
                    part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                    if net is not None and (part or list(net.state_dict())):
                        net.load_state_dict(part)
            except RuntimeError as exc:
                raise HiresError(f"model '{self.info.name}': weights do not match its JSON "
                                 f"({str(exc).splitlines()[0]})") from None
            self._nets = tuple(n.eval() if n is not None else None for n in (codec, denoiser, first))
        return self._nets

    def first_stage(self, lr: torch.Tensor) -> torch.Tensor:
        """The deterministic mean, network units."""
        first = self.nets[2]
        return _base(lr, self.info.scales[0]) if first is None else first(lr)

    def predict(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        return self.predict_at(x, scale, [(0,) * 2] * x.shape[0])

    @torch.inference_mode()
    def predict_at(self, x: torch.Tensor, scale: int, origins) -> torch.Tensor:
        """``x`` ``(B, C, h, w)`` physical units; ``origins``: each tile's global position (the last
        two entries are the LR row/column of ``x[b, :, 0, 0]``, any before them the slice)."""
        if scale != self.info.scales[0]:
            raise HiresError(f"model '{self.info.name}' cannot do x{scale}; it supports x{self.info.scales[0]}")
        codec, denoiser, first = self.nets
        for net in (codec, denoiser, first):
            if net is not None and any(p.device != x.device for p in net.parameters()):
                net.to(x.device)
        outs = [self._sample_one(x[b:b + 1].float(), tuple(int(o) for o in origins[b])) for b in range(x.shape[0])]
        return torch.cat(outs).to(x.dtype)

    def _sample_one(self, x: torch.Tensor, origin: tuple[int, ...]) -> torch.Tensor:
        codec, denoiser, _ = self.nets
        s, d, smp = self.info.scales[0], self.diffusion, self.sampling
        m = denoiser.multiple
        h, w = x.shape[-2:]
        ph, pw = -h % m, -w % m
        lr = self.normaliser.forward(x)
        pad = lambda a, k: torch.nn.functional.pad(a, (0, pw * k, 0, ph * k), mode="replicate") if ph or pw else a  # noqa: E731
        lr_pad = pad(lr, 1)
        with autocast(self.precision, x.device):  # on the tile as given: the first stage's own output
            mean = pad(self.first_stage(lr).float(), s)
        z_mean = codec.encode(mean)
        cond = torch.cat([lr_pad, z_mean], 1)
        level = float(self.defaults.get("level", 0.0) if smp.level is None else smp.level)
        noise = torch.stack([noise_field(smp.seed, k, origin[-2:], tuple(lr_pad.shape[-2:]), denoiser.latent_channels,
                                         origin[:-2]) for k in range(smp.samples)]).to(x.device)
        scheduler = make_scheduler(d["scheduler"], smp.sampler, smp.steps)
        tau = float(self.defaults.get("temperature", 1.0) if smp.temperature is None else smp.temperature)
        start = steps_skipped(smp.steps, smp.strength)
        if start == smp.steps:  # strength 0: the first stage itself (no codec trip, no sample to project)
            y = mean.expand(smp.samples, -1, -1, -1)[..., :h * s, :w * s]
        else:
            x0 = noise * tau
            x0 = x0 * scheduler.init_noise_sigma if start == 0 else scheduler.add_noise(
                torch.zeros_like(x0), x0, scheduler.timesteps[start:start + 1])  # r = 0 (the first stage), noised
            with autocast(self.precision, x.device):
                r = denoise_jointly(denoiser, x0, cond, scheduler, level, int(self.defaults.get("tile", 256)),
                                    int(self.defaults.get("overlap", 32)), int(self.defaults.get("halo", 16)),
                                    self.on_step, start=start)
            smap = scale_map(mean, s, d.get("scale_map_floor"))
            y = codec.decode(z_mean + float(d["latent_scale"]) * smap * r)[..., :h * s, :w * s]
        if self.enforce and start < smp.steps:
            y = project_consistent(y, lr, s)
        y = self.normaliser.inverse(y)
        out = y[:1] if smp.sample_output else y.mean(0, keepdim=True)
        if smp.uncertainty:
            std = y.std(0, keepdim=True, unbiased=False) if smp.samples > 1 else torch.zeros_like(out)
            out = torch.cat([out, std], 1)
        return out


def steps_skipped(steps: int, strength: float) -> int:
    """Sampler steps skipped at ``strength``: SDEdit runs the last ``round(strength · steps)``."""
    return steps - round(float(strength) * steps)


def diffusion_json(name: str, normaliser: Normaliser, domain: str, bands, scale: int, diffusion: dict, halo: int,
                   summary: str = "", card: str = "", training: dict | None = None,
                   input_domain: dict | None = None) -> dict:
    meta = {"format": "hires-model", "format_version": 1, "name": name,
            "summary": summary or f"latent diffusion x{scale} ({domain}, {len(bands)} band(s))",
            "family": "diffusion", "domain": domain, "scale": scale, "bands": list(bands),
            "normalisation": normaliser.to_dict(), "halo": halo, "card": card, "training": training or {},
            "diffusion": diffusion}
    if input_domain is not None:
        meta["input_domain"] = input_domain
    return meta


def is_diffusion(model) -> bool:
    return isinstance(model, DiffusionModel) or getattr(getattr(model, "info", None), "family", "") == "diffusion"


def sampling_for(model, **choices) -> Sampling:
    """The model's default Sampling with the user's choices (None = default) applied."""
    base = model.sampling if isinstance(model, DiffusionModel) else Sampling()
    return replace(base, **{k: v for k, v in choices.items() if v is not None})
