"""Training of the latent-diffusion family, two stages (``hires train`` picks this by ``stage``):

- ``vae``: a diffusers AutoencoderKL (factor = scale) on HR patches in the Normaliser's space,
  L1 + SSIM + a small KL term; validated by held-out reconstruction PSNR (it caps the cascade).
- ``ldm``: the denoiser on the residual between the HR latent and the first stage's latent,
  v-prediction, LR noise augmentation (level through the class embedding), EMA; validated by
  sampling the held-out crops (mean of a few samples) against the first stage.

Checkpoints (safetensors + JSON, never pickle), resume and the CSV log work as for the SRGAN
loop; the final EMA model is written in the shipped format (``models/ldm.py``).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import HiresError
from ..intensity import Normaliser
from ..models import domain as input_domain
from ..models import losses as L
from ..models.ldm import DiffusionModel, Sampling, diffusion_json, scale_map
from ..models.ldm_nets import KLCodec, UnshuffleCodec, build_codec, build_denoiser
from ..models.neural import NeuralModel, read_model_json
from ..tiling import resolve_device
from .config import read_manifest
from .dataset import PatchSampler, centre_crop, dataset_domain, load_split
from .ldm_config import LdmConfig
from .checkpoints import (commit_checkpoint, find_checkpoint, flatten_optim, load_tensors, open_checkpoint,
                          save_tensors, unflatten_optim)
from .loop import CsvLog, _band_stats, metric_range, score

CODEC_FORMAT = "hires-codec"


def save_codec(directory, name: str, codec: KLCodec, normaliser: Normaliser, training: dict) -> Path:
    """``<dir>/<name>.safetensors`` + ``<name>.json`` (format hires-codec) for the ldm stage."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().float().contiguous() for k, v in codec.state_dict().items()},
              str(d / f"{name}.safetensors"))
    js = d / f"{name}.json"
    js.write_text(json.dumps({"format": CODEC_FORMAT, "format_version": 1, "name": name, "codec": codec.hparams(),
                              "normalisation": normaliser.to_dict(), "training": training}, indent=1))
    return js


def load_codec(json_path) -> KLCodec:
    from safetensors.torch import load_file

    js = Path(json_path)
    try:
        meta = json.loads(js.read_text())
    except (OSError, ValueError) as exc:
        raise HiresError(f"codec file {js}: {exc}") from None
    if meta.get("format") != CODEC_FORMAT:
        raise HiresError(f"codec file {js}: not a {CODEC_FORMAT} JSON (train it with a 'stage: vae' config)")
    codec = build_codec(meta["codec"])
    codec.load_state_dict(load_file(str(js.with_suffix(".safetensors"))))
    return codec.eval()


TEMPERATURES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)


@torch.no_grad()
def calibrate_temperature(model: DiffusionModel, items, grid=TEMPERATURES) -> tuple[float, dict]:
    """The noise temperature whose single samples have the reference's high-frequency energy:
    for each value, one sample per item (``train.dataset.Sample``, physical units); the
    geometric mean of ``metrics.hf_energy_ratio`` over items; the value closest to 1 wins.
    Run on training items, never on the held-out split."""
    from ..metrics import hf_energy_ratio

    base = model.sampling
    table = {}
    for tau in grid:
        model.with_sampling(replace(base, samples=1, temperature=tau, uncertainty=False, sample_output=False))
        ratios = []
        for i, s in enumerate(items):
            model.with_sampling(replace(model.sampling, seed=i))
            y = model.predict(torch.from_numpy(s.lr)[None], model.info.scales[0])[0].double().numpy()
            r = hf_energy_ratio(y, s.hr.astype(np.float64), s.valid).value
            if r is not None and r > 0:
                ratios.append(r)
        table[tau] = float(np.exp(np.mean(np.log(ratios)))) if ratios else float("nan")
    model.with_sampling(base)
    best = min(table, key=lambda t: abs(math.log(table[t])) if table[t] > 0 else math.inf)
    return best, table


class LdmTrainer:
    def __init__(self, cfg: LdmConfig, device: str = "auto", say: Callable[[str], None] | None = None):
        self.cfg, self.say = cfg, say or (lambda m: None)
        self.device = resolve_device(device)
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.manifest = read_manifest(cfg.dataset_dir, "config")
        self.scale = int(self.manifest["scale"])
        self.bands = list(self.manifest["bands"])
        self.domain = dataset_domain(self.manifest)
        self.norm = Normaliser.from_manifest(self.manifest["normalisation"])
        c = len(self.bands)
        torch.manual_seed(cfg.seed)
        items = load_split(cfg.dataset_dir, self.manifest, "train")
        self.sampler = PatchSampler(items, self.scale, t.patch_size, self.norm, cfg.seed, t.augment, t.min_valid)
        v = cfg.validation
        self.val = [centre_crop(s, self.scale, v.max_side)
                    for s in load_split(cfg.dataset_dir, self.manifest, "val", v.max_items)]
        self.probe = [centre_crop(s, self.scale, v.max_side) for s in items[::max(1, len(items) // 16)][:16]]
        self.temperature, self.calibration = cfg.sampling.temperature, None
        self.first, self.first_meta = None, {"kind": "bicubic"}
        if cfg.stage == "vae":
            k = cfg.codec
            mean, std = _band_stats(items, self.norm)
            self.net = KLCodec(c, self.scale, k.latent_channels, tuple(k.channels) if k.channels else None,
                               k.layers_per_block, mean.tolist(), std.tolist()).to(self.device)
        else:
            self.codec = self._codec(c).to(self.device)
            if cfg.first_stage.kind == "generator":
                g = NeuralModel(cfg.path(cfg.first_stage.model))
                if g.info.scales[0] != self.scale or g.info.bands != c:
                    raise HiresError(f"config: field 'first_stage.model': {g.info.name} is x{g.info.scales[0]} with "
                                     f"{g.info.bands} band(s); the dataset is x{self.scale} with {c}")
                self.first = g.net.to(self.device).eval()
                self.first_meta = {"kind": "generator", "generator": g.meta["generator"], "from": g.info.name}
            d = cfg.denoiser
            self.net = build_denoiser({"latent_channels": self.codec.latent_channels,
                                       "cond_channels": c + self.codec.latent_channels,
                                       "channels": d.channels, "layers_per_block": d.layers_per_block}).to(self.device)
            df = cfg.diffusion
            self.sched_cfg = {"num_train_timesteps": df.timesteps, "beta_schedule": df.beta_schedule,
                              "prediction_type": df.prediction}
            from diffusers import DDPMScheduler

            self.ddpm = DDPMScheduler(**self.sched_cfg)
            self.floor = self._floor() if df.scale_map else None
            self.latent_scale = self._latent_scale()
        self.ema = copy.deepcopy(self.net).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=t.lr, betas=t.betas)
        self.step, self.elapsed = 0, 0.0

    def _codec(self, c: int):
        k = self.cfg.codec
        if k.kind == "pixel-unshuffle":
            return UnshuffleCodec(c, self.scale)
        codec = load_codec(self.cfg.path(k.weights))
        if codec.bands != c or codec.scale != self.scale:
            raise HiresError(f"config: field 'codec.weights': the autoencoder is x{codec.scale} with {codec.bands} "
                             f"band(s); the dataset is x{self.scale} with {c}")
        for p in codec.parameters():
            p.requires_grad_(False)
        return codec

    @torch.no_grad()
    def _mean(self, lr):
        return self.first(lr) if self.first is not None else torch.nn.functional.interpolate(
            lr, scale_factor=self.scale, mode="bicubic", align_corners=False)

    @torch.no_grad()
    def _batches(self, n: int = 16):
        """``n`` training batches drawn from a copy of the sampler's state (training batches unchanged)."""
        state = copy.deepcopy(self.sampler.state())
        out = [self.sampler.batch(self.cfg.train.batch_size, self.device) for _ in range(n)]
        self.sampler.set_state(state)
        return out

    @torch.no_grad()
    def _floor(self) -> float:
        """The scale map's floor: the median local gradient of the first stage on training batches."""
        maps = [scale_map(self._mean(b["lr"]), self.scale, 0.0).flatten() for b in self._batches()]
        return float(torch.cat(maps).median().clamp_min(1e-6))

    @torch.no_grad()
    def _latent_scale(self) -> float:
        """Std of the residual latent (divided by the scale map) over 16 training batches."""
        values = []
        for b in self._batches():
            mean = self._mean(b["lr"])
            r = self.codec.encode(b["hr"]) - self.codec.encode(mean)
            values.append((r / scale_map(mean, self.scale, self.floor)).flatten())
        return float(torch.cat(values).std().clamp_min(1e-6))

    @torch.no_grad()
    def probe_loss(self, batches: int = 4) -> float:
        """The training loss of the current network on fixed batches with fixed noise and
        timesteps (the same every call): how far training has come, without sampling noise."""
        state, rng = copy.deepcopy(self.sampler.state()), torch.get_rng_state()
        self.sampler.set_state(np.random.default_rng(self.cfg.seed + 1).bit_generator.state)
        torch.manual_seed(self.cfg.seed + 1)
        was = self.net.training
        self.net.eval()
        values = []
        for _ in range(batches):
            b = self.sampler.batch(self.cfg.train.batch_size, self.device)
            if self.cfg.stage == "vae":
                hr = b["hr"]
                values.append(float(L.l1_loss(self.net.decode(self.net.encode(hr)), hr, b["valid"])))
            else:
                values.append(float(self._ldm_loss(b)["loss"]))
        self.net.train(was)
        self.sampler.set_state(state)
        torch.set_rng_state(rng)
        return float(np.mean(values))

    # -- steps
    def lr_at(self, step: int) -> float:
        t = self.cfg.train
        if t.schedule == "constant":
            return t.lr
        return t.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(t.steps, 1))))

    def train_step(self) -> dict:
        t = self.cfg.train
        lr_now = self.lr_at(self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr_now
        b = self.sampler.batch(t.batch_size, self.device)
        self.net.train()
        with torch.autocast(self.device.type, torch.bfloat16, enabled=t.bf16):
            parts = self._vae_loss(b) if self.cfg.stage == "vae" else self._ldm_loss(b)
        loss = parts["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), t.grad_clip)
        self.opt.step()
        decay = min(t.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.net.parameters()):
                e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        self.step += 1
        row = {k: float(v.detach()) for k, v in parts.items()}
        row.update(step=self.step, phase=self.cfg.stage, lr=lr_now)
        if not math.isfinite(row["loss"]):
            raise HiresError(f"training diverged at step {self.step} (loss {row['loss']}); lower train.lr")
        return row

    def _vae_loss(self, b) -> dict:
        w = self.cfg.losses
        post = self.net.posterior(b["hr"])
        rec = self.net.decode(post.sample())
        parts = {"l1": L.l1_loss(rec, b["hr"], b["valid"]), "kl": post.kl().mean() / rec[0].numel()}
        if w.ssim > 0:
            parts["ssim"] = L.ssim_loss(rec, b["hr"], b["valid"], self.norm.data_range)
        parts["loss"] = w.l1 * parts["l1"] + w.kl * parts["kl"] + w.ssim * parts.get("ssim", 0.0)
        return parts

    def _ldm_loss(self, b) -> dict:
        df = self.cfg.diffusion
        with torch.no_grad():
            mean = self._mean(b["lr"])
            z_mean = self.codec.encode(mean)
            z0 = (self.codec.encode(b["hr"]) - z_mean) / (self.latent_scale * scale_map(mean, self.scale, self.floor))
        n = z0.shape[0]
        noise = torch.randn_like(z0)
        ts = torch.randint(0, df.timesteps, (n,), device=z0.device)
        x_t = self.ddpm.add_noise(z0, noise, ts)
        target = {"v_prediction": lambda: self.ddpm.get_velocity(z0, noise, ts), "epsilon": lambda: noise,
                  "sample": lambda: z0}[df.prediction]()
        level = torch.rand(n, device=z0.device) * (torch.rand(n, device=z0.device) < df.level_prob)
        lr = b["lr"] + (level * df.max_level).view(-1, 1, 1, 1) * torch.randn_like(b["lr"])
        pred = self.net(x_t, ts, torch.cat([lr, z_mean], 1), level)
        m = b["lr_valid"]
        mse = (((pred.float() - target) ** 2).mean(1, keepdim=True) * m).sum() / m.sum().clamp_min(1)
        return {"loss": mse, "mse": mse}

    # -- validation / export
    def model(self, name: str = "", training: dict | None = None, card: str = "", summary: str = ""):
        """The EMA network as a shipped-format (json, tensors) pair."""
        if self.cfg.stage == "vae":
            raise HiresError("the vae stage exports a codec, not a model")
        s = self.cfg.sampling
        halo = s.halo + s.overlap  # outer tiles: context for the inner tiles and blending
        diffusion = {"codec": self.codec.hparams(), "denoiser": self.ema.hparams(), "first_stage": self.first_meta,
                     "scheduler": self.sched_cfg, "latent_scale": self.latent_scale, "scale_map_floor": self.floor,
                     "max_level": self.cfg.diffusion.max_level,
                     "defaults": {"steps": s.steps, "sampler": s.sampler, "tile": s.tile, "overlap": s.overlap,
                                  "halo": s.halo, "level": s.level, "consistency": s.consistency,
                                  "temperature": 1.0 if self.temperature is None else self.temperature}}
        meta = diffusion_json(name or self.cfg.name, self.norm, self.domain, self.bands, self.scale, diffusion,
                              halo, summary, card, training)
        tensors = {f"denoiser.{k}": v for k, v in self.ema.state_dict().items()}
        if self.first is not None:
            tensors.update({f"first_stage.{k}": v for k, v in self.first.state_dict().items()})
        if isinstance(self.codec, KLCodec):
            tensors.update({f"codec.{k}": v for k, v in self.codec.state_dict().items()})
        return meta, tensors

    @property
    def metric_range(self) -> float:
        return metric_range(self.norm)

    @torch.no_grad()
    def validate(self, base: bool = False) -> dict:
        """Held-out PSNR/SSIM: vae → reconstruction; ldm → mean of samples (``base``: first stage)."""
        preds = []
        if self.cfg.stage == "vae":
            for s in self.val:
                hr = self.norm.forward(torch.from_numpy(s.hr)[None].to(self.device))
                rec = self.ema.decode(self.ema.encode(hr)) if not base else hr
                preds.append(self.norm.inverse(rec)[0].cpu().numpy())
            return score(self.norm, self.val, preds)
        v = self.cfg.validation
        model = self.sampling_model(Sampling(steps=v.steps, samples=v.samples, consistency="off"))
        for s in self.val:
            lr = torch.from_numpy(s.lr)[None].to(self.device)
            if base:
                y = self.norm.inverse(self._mean(self.norm.forward(lr)))
            else:
                y = model.predict(lr, self.scale)
            preds.append(y[0].float().cpu().numpy())
        return score(self.norm, self.val, preds)

    def sampling_model(self, sampling: Sampling) -> DiffusionModel:
        meta, _ = self.model()
        m = DiffusionModel(self.cfg.output_dir / "in-memory.json", meta)
        m._nets = (self.codec, self.ema, self.first)
        return m.with_sampling(sampling)

    # -- checkpoints
    def save_checkpoint(self) -> Path:
        final, tmp = open_checkpoint(self.cfg.output_dir, self.step)
        save_tensors(self.net.state_dict(), tmp / "net.safetensors")
        save_tensors(self.ema.state_dict(), tmp / "ema.safetensors")
        tensors, optim = flatten_optim(self.opt)
        save_tensors(tensors, tmp / "optim.safetensors")
        save_tensors({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
        state = {"format": "hires-checkpoint", "format_version": 1, "stage": self.cfg.stage, "step": self.step,
                 "elapsed": self.elapsed, "sampler_rng": self.sampler.state(), "optim": optim,
                 "latent_scale": getattr(self, "latent_scale", None), "floor": getattr(self, "floor", None),
                 "config": self.cfg.model_dump(mode="json")}
        return commit_checkpoint(final, tmp, state)

    def load_checkpoint(self, directory) -> Path:
        d, state = find_checkpoint(directory)
        if state.get("stage") != self.cfg.stage:
            raise HiresError(f"--resume {d}: a '{state.get('stage')}' checkpoint, the config is stage '{self.cfg.stage}'")
        try:
            self.net.load_state_dict(load_tensors(d / "net.safetensors"))
            self.ema.load_state_dict(load_tensors(d / "ema.safetensors"))
            self.opt.load_state_dict(unflatten_optim(load_tensors(d / "optim.safetensors"), state["optim"]))
        except (RuntimeError, KeyError, ValueError) as exc:
            raise HiresError(f"--resume {d}: checkpoint does not fit this config ({str(exc).splitlines()[0]})") from None
        torch.set_rng_state(load_tensors(d / "rng.safetensors")["torch"])
        self.sampler.set_state(state["sampler_rng"])
        if state.get("latent_scale") is not None:
            self.latent_scale = float(state["latent_scale"])
            self.floor = state.get("floor")
        self.step, self.elapsed = int(state["step"]), float(state.get("elapsed", 0.0))
        return d


CSV_FIELDS = ["step", "phase", "loss", "l1", "ssim", "kl", "mse", "val_psnr", "val_ssim", "lr", "seconds"]


def train_ldm(cfg: LdmConfig, resume=None, device: str = "auto", progress: Optional[Callable[[int, int], None]] = None,
              export: str | None = None, export_dir=None, stop_at: int | None = None,
              say: Callable[[str], None] | None = None) -> dict:
    """Run one diffusion stage; returns the summary (also ``summary.json`` in the run directory)."""
    say = say or (lambda m: None)
    tr = LdmTrainer(cfg, device, say)
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    resumed_from = str(tr.load_checkpoint(resume)) if resume is not None else None
    if resumed_from:
        say(f"resumed from {resumed_from} at step {tr.step}")
    csvlog = CsvLog(out / "log.csv", tr.step if resume is not None else None, CSV_FIELDS)
    total, t = cfg.total_steps, cfg.train
    end = min(total, stop_at) if stop_at is not None else total
    base = tr.validate(base=True)
    probe_initial = tr.probe_loss()
    start = time.perf_counter() - tr.elapsed
    first_loss, val = None, {}
    if progress:
        progress(tr.step, total)
    while tr.step < end:
        row = tr.train_step()
        first_loss = row["loss"] if first_loss is None else first_loss
        s = tr.step
        if s % t.val_every == 0 or s == total:
            val = tr.validate()
            row.update(val)
        if s % t.log_every == 0 or "val_psnr" in row or s == end:
            row["seconds"] = time.perf_counter() - start
            csvlog.write(row)
        tr.elapsed = time.perf_counter() - start
        if s % t.checkpoint_every == 0 or s == end:
            tr.save_checkpoint()
        if progress:
            progress(s, total)
    summary = {"name": cfg.name, "stage": cfg.stage, "steps": tr.step, "total_steps": total,
               "finished": tr.step >= total, "seconds": round(tr.elapsed, 2), "device": str(tr.device),
               "resumed_from": resumed_from, "first_loss": first_loss, "probe_loss_initial": probe_initial,
               "probe_loss_final": tr.probe_loss(), "val_base": base, "val": val,
               "metric_range": tr.metric_range, "dataset": str(cfg.dataset_dir), "dataset_name": tr.manifest["name"],
               "seed": cfg.seed}
    if summary["finished"] and cfg.stage == "ldm" and tr.temperature is None:
        s = cfg.sampling
        model = tr.sampling_model(Sampling(steps=s.steps, sampler=s.sampler, consistency=s.consistency))
        tr.temperature, tr.calibration = calibrate_temperature(model, tr.probe)
        summary["temperature"] = {"chosen": tr.temperature, "hf_energy_ratio_on_train_items": tr.calibration}
        say(f"temperature {tr.temperature} (single-sample HF energy ratio on training items: "
            f"{tr.calibration[tr.temperature]:.3f})")
    if summary["finished"]:
        training = {k: summary[k] for k in ("stage", "steps", "seconds", "device", "val_base", "val", "dataset_name",
                                            "seed")}
        training["config"] = cfg.model_dump(mode="json")
        if "temperature" in summary:
            training["temperature"] = summary["temperature"]
        ex = cfg.export
        name = export or (ex.name if ex else cfg.name)
        targets = [out / "final"]
        if export or ex:
            targets.append(Path(export_dir) if export_dir else (cfg.path(ex.dir) if ex and ex.dir else out / "export"))
        for key, target in zip(("final", "exported"), targets):
            summary[key] = str(_export(tr, target, name, training, ex))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _export(tr: LdmTrainer, directory: Path, name: str, training: dict, ex) -> Path:
    if tr.cfg.stage == "vae":
        return save_codec(directory, name, tr.ema, tr.norm, training)
    from safetensors.torch import save_file

    meta, tensors = tr.model(name, training, ex.card if ex else "", ex.summary if ex else "")
    meta["input_domain"] = input_domain.from_dataset(tr.cfg.dataset_dir, tr.manifest)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().float().contiguous() for k, v in tensors.items()},
              str(directory / f"{name}.safetensors"), metadata={"format": "hires-model", "name": name})
    js = directory / f"{name}.json"
    js.write_text(json.dumps(meta, indent=1))
    read_model_json(js)  # what we wrote must read back
    return js
