"""The training loop: seeded, resumable, pickle-free.

Phase 1 (``pretrain``, steps ``[0, pretrain_steps)``): L1 (+ SSIM, spectral angle, perceptual).
Phase 2 (``gan``, the next ``gan_steps``): the same plus relativistic-average GAN and
discriminator feature matching, against a U-Net (per-pixel) or VGG-style discriminator.
An EMA of the generator weights is validated (PSNR/SSIM on the held-out split through
``hires_domain.metrics`` with an explicit data range) and exported.

Run directory (``output`` in the config)::

    log.csv                        step, phase, losses, val psnr/ssim, lr, seconds
    checkpoints/step_0000500/      generator/ema/discriminator/optim_g/optim_d/rng .safetensors + state.json
    checkpoints/latest.txt         name of the newest complete checkpoint
    final/<name>.{safetensors,json}  the EMA generator in the shipped-model format (models/neural.py)
    summary.json

Checkpoints are written to a temporary directory and renamed when complete; optimiser states
are flattened into safetensors tensors plus JSON (never ``torch.save``/pickle).
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .. import __version__
from ..errors import HiresError
from ..intensity import HU_SCALE, Normaliser
from ..metrics import psnr, ssim
from ..models import domain as input_domain
from ..models import losses as L
from ..models.discriminators import build_discriminator
from ..models.generators import build_generator, resolve_hparams
from ..models.neural import save_model
from ..tiling import resolve_device
from .checkpoints import (commit_checkpoint, find_checkpoint, flatten_optim, load_tensors, open_checkpoint,
                          save_tensors, unflatten_optim)
from .config import TrainConfig, check_dataset, load_config
from . import distributed as ddp
from .dataset import PatchSampler, centre_crop, dataset_domain, load_split
from .ldm_config import LdmConfig

log = logging.getLogger("hires_domain.train")

CSV_FIELDS = ["step", "phase", "loss", "l1", "ssim", "sam", "perceptual", "gan", "feature_match", "d_loss", "window_l1",
              "val_psnr", "val_ssim", "lr", "seconds"]
def metric_units(norm: Normaliser, x: np.ndarray) -> np.ndarray:
    """Physical -> metric units: CT HU clipped to −1024..3071 (range 4095); reflectance (range 1)."""
    if norm.kind == "hu":
        return np.clip(x, *norm.clip)
    return norm.forward(torch.from_numpy(x)[None])[0].numpy()


def metric_range(norm: Normaliser) -> float:
    return norm.clip[1] - norm.clip[0] if norm.kind == "hu" else 1.0


def score(norm: Normaliser, items, preds) -> dict:
    """Mean PSNR/SSIM of ``preds`` (physical units) against the items' HR, in metric units with an
    explicit range, over their valid pixels."""
    ps, ss, rng = [], [], metric_range(norm)
    for s, pred in zip(items, preds):
        a, r = metric_units(norm, pred), metric_units(norm, s.hr)
        p, q = psnr(a, r, rng, s.valid).value, ssim(a, r, rng, s.valid).value
        if p is not None and math.isfinite(p):
            ps.append(p)
        if q is not None:
            ss.append(q)
    return {"val_psnr": float(np.mean(ps)) if ps else None, "val_ssim": float(np.mean(ss)) if ss else None}


# ---------------------------------------------------------------- pieces


def _band_stats(items, norm: Normaliser) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean/std of the normalised HR training pixels (valid only, first 200 items)."""
    total, sq, n = 0.0, 0.0, 0
    for s in items[:200]:
        x = norm.forward(torch.from_numpy(s.hr)[None])[0].double().numpy()[:, s.valid]
        total, sq, n = total + x.sum(1), sq + (x ** 2).sum(1), n + x.shape[1]
    if n == 0:
        c = items[0].hr.shape[0]
        return np.zeros(c), np.ones(c)
    mean = total / n
    return mean, np.sqrt(np.maximum(sq / n - mean ** 2, 1e-12))


class Trainer:
    def __init__(self, cfg: TrainConfig, device: str = "auto", say: Callable[[str], None] | None = None):
        self.cfg, self.say = cfg, say or (lambda m: log.info(m))
        self.world = ddp.world()  # torchrun: DDP, a shard of each global batch per rank
        self.device = ddp.rank_device(resolve_device(device), self.world)
        ddp.check_batch(cfg.train.batch_size, self.world)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.manifest = check_dataset(cfg)
        self.scale = int(self.manifest["scale"])
        self.bands = list(self.manifest["bands"])
        self.domain = dataset_domain(self.manifest)
        self.norm = Normaliser.from_manifest(self.manifest["normalisation"])
        c = len(self.bands)

        torch.manual_seed(cfg.seed)
        g = cfg.generator
        self.hp = resolve_hparams(g.arch, g.size, nf=g.nf, nb=g.nb, gc=g.gc, dilations=g.dilations)
        self.G = build_generator(g.arch, c, c, self.scale, **self.hp).to(self.device)
        root = cfg.dataset_dir
        train_items = load_split(root, self.manifest, "train")
        self.G.set_stats(*_band_stats(train_items, self.norm))
        if cfg.init is not None:  # a warm start: the weights (and input statistics) of an exported model
            self._load_generator(cfg.path(cfg.init))
        self.ema = copy.deepcopy(self.G).eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        t = cfg.train
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=t.lr_g, betas=t.betas)
        self.D = self.opt_d = None
        if cfg.discriminator is not None and t.gan_steps > 0:
            d = cfg.discriminator
            self.D = build_discriminator(d.arch, c, d.nf, depth=d.depth).to(self.device)
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=t.lr_d, betas=t.betas)
        self.G_ddp, self.D_ddp = ddp.wrap(self.G, self.world, self.device), ddp.wrap(self.D, self.world, self.device)

        w = cfg.losses
        self.w = w.model_dump()
        if w.sam > 0 and c < 2:
            self.say("spectral-angle loss disabled: the dataset has 1 band")
            self.w["sam"] = 0.0
        if w.window_l1 > 0 and self.norm.kind != "hu":
            raise HiresError("losses.window_l1 needs a CT (HU) dataset")
        self.window = tuple(float(v) / HU_SCALE for v in np.clip(w.window, *self.norm.clip)) if self.norm.kind == "hu" else None
        self.perceptual = None
        if w.perceptual > 0:
            path, why = L.perceptual_status()
            if path is None:
                self.say(f"perceptual loss disabled: {why}")
                self.w["perceptual"] = 0.0
            else:
                lo, hi = ((self.norm.clip[0] / 1000, self.norm.clip[1] / 1000) if self.norm.kind == "hu" else (0.0, 1.0))
                self.perceptual = L.PerceptualLoss(path, lo, hi).to(self.device)

        self.sampler = PatchSampler(train_items, self.scale, t.patch_size,
                                    self.norm, cfg.seed, t.augment, t.min_valid)
        v = cfg.validation
        self.val = [centre_crop(s, self.scale, v.max_side)
                    for s in load_split(root, self.manifest, "val", v.max_items)]
        # fixed training items to measure progress on (whole items, no augmentation)
        self.probe = [centre_crop(x, self.scale, v.max_side) for x in train_items[:: max(1, len(train_items) // 16)][:16]]
        self.step = 0
        self.elapsed = 0.0

    # -- schedule
    def phase(self, step: int) -> str:
        return "pretrain" if step < self.cfg.train.pretrain_steps else "gan"

    def lr(self, step: int) -> float:
        t = self.cfg.train
        if self.phase(step) == "pretrain":
            base, start, n = t.lr_g, 0, t.pretrain_steps
        else:
            base, start, n = t.lr_g_gan, t.pretrain_steps, t.gan_steps
        if t.schedule == "constant" or n <= 1:
            return base
        return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - start) / n)))

    # -- losses
    def pixel_losses(self, fake, hr, mask) -> dict:
        out = {"l1": L.l1_loss(fake, hr, mask)}
        if self.w["window_l1"] > 0:
            out["window_l1"] = L.window_l1_loss(fake, hr, *self.window, mask)
        if self.w["ssim"] > 0:
            out["ssim"] = L.ssim_loss(fake, hr, mask, self.norm.data_range)
        if self.w["sam"] > 0:
            out["sam"] = L.sam_loss(fake, hr, mask)
        if self.perceptual is not None:
            out["perceptual"] = self.perceptual(fake, hr, mask)
        return out

    @torch.no_grad()
    def probe_loss(self) -> float:
        """Mean masked L1 (network units) of the generator on the fixed probe training items."""
        was = self.G.training
        self.G.eval()
        values = []
        for x in self.probe:
            lr, hr = (self.norm.forward(torch.from_numpy(a)[None].to(self.device)) for a in (x.lr, x.hr))
            values.append(float(L.l1_loss(self.G(lr), hr, torch.from_numpy(x.valid)[None].to(self.device))))
        self.G.train(was)
        return float(np.mean(values))

    def train_step(self) -> dict:
        t, step = self.cfg.train, self.step
        phase = self.phase(step)
        lr = self.lr(step)
        for group in self.opt_g.param_groups:
            group["lr"] = lr
        b = self.sampler.batch(t.batch_size, self.device, self.world.shard)
        hr, mask = b["hr"], b["valid"]
        self.G.train()
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=t.precision == "bf16"):
            fake = self.G_ddp(b["lr"])
        fake = fake.float()
        parts = self.pixel_losses(fake, hr, mask)
        loss = sum(self.w[k] * v for k, v in parts.items())
        d_loss = None
        if phase == "gan":
            for p in self.D.parameters():
                p.requires_grad_(False)
            real_logits, real_feats = self.D(hr)
            fake_logits, fake_feats = self.D(fake)
            parts["gan"] = L.relativistic_g_loss(real_logits, fake_logits, mask)
            loss = loss + self.w["gan"] * parts["gan"]
            if self.w["feature_match"] > 0:
                parts["feature_match"] = L.feature_matching_loss(fake_feats, real_feats, mask)
                loss = loss + self.w["feature_match"] * parts["feature_match"]
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.G.parameters(), t.grad_clip)
        self.opt_g.step()
        if phase == "gan":
            for p in self.D.parameters():
                p.requires_grad_(True)
            real_logits, _ = self.D_ddp(hr)
            fake_logits, _ = self.D_ddp(fake.detach())
            d = L.relativistic_d_loss(real_logits, fake_logits, mask)
            self.opt_d.zero_grad(set_to_none=True)
            d.backward()
            self.opt_d.step()
            d_loss = float(d.detach())
        self.update_ema()
        self.step += 1
        row = {k: float(v.detach()) for k, v in parts.items()}
        row.update(loss=float(loss.detach()), d_loss=d_loss)
        row = {**ddp.mean_over_ranks(row, self.world), "step": self.step, "phase": phase, "lr": lr}
        if not math.isfinite(row["loss"]):
            raise HiresError(f"training diverged at step {self.step} (loss {row['loss']}); lower train.lr_g")
        return row

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = min(self.cfg.train.ema_decay, (1 + self.step) / (10 + self.step))  # warm-up for short runs
        for e, p in zip(self.ema.parameters(), self.G.parameters()):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        for e, b in zip(self.ema.buffers(), self.G.buffers()):
            e.copy_(b)

    # -- validation
    @property
    def metric_range(self) -> float:
        return metric_range(self.norm)

    @torch.no_grad()
    def validate(self, net: torch.nn.Module | None = None) -> dict:
        """Mean PSNR/SSIM over the validation items (physical units -> metric units, explicit range);
        ``net`` None scores the base path (bicubic, identity at x1)."""
        preds = []
        for s in self.val:
            lr = self.norm.forward(torch.from_numpy(s.lr)[None].to(self.device))
            if net is None:
                y = self.G.base(lr) if self.G.project is None else lr
            else:
                net.eval()
                y = net(lr)
            preds.append(self.norm.inverse(y)[0].float().cpu().numpy())
        return score(self.norm, self.val, preds)

    # -- checkpoints
    def state_json(self) -> dict:
        return {"format": "hires-checkpoint", "format_version": 1, "step": self.step, "elapsed": self.elapsed,
                "phase": self.phase(max(self.step - 1, 0)), "sampler_rng": self.sampler.state(),
                "config": self.cfg.model_dump(mode="json"), "normalisation": self.norm.to_dict(),
                "generator": self.G.hparams(), "bands": self.bands, "domain": self.domain,
                "hires_domain_version": __version__, "torch_version": torch.__version__}

    def save_checkpoint(self) -> Path:
        final, tmp = open_checkpoint(self.cfg.output_dir, self.step)
        save_tensors(self.G.state_dict(), tmp / "generator.safetensors")
        save_tensors(self.ema.state_dict(), tmp / "ema.safetensors")
        state = self.state_json()
        tensors, meta = flatten_optim(self.opt_g)
        save_tensors(tensors, tmp / "optim_g.safetensors")
        state["optim_g"] = meta
        if self.D is not None:
            save_tensors(self.D.state_dict(), tmp / "discriminator.safetensors")
            tensors, meta = flatten_optim(self.opt_d)
            save_tensors(tensors, tmp / "optim_d.safetensors")
            state["optim_d"] = meta
        save_tensors({"torch": torch.get_rng_state()}, tmp / "rng.safetensors")
        return commit_checkpoint(final, tmp, state)

    def _load_generator(self, path: Path) -> None:
        if not path.is_file():
            raise HiresError(f"config field 'init': {path} not found")
        try:
            self.G.load_state_dict(load_tensors(path))
        except (RuntimeError, ValueError) as exc:
            raise HiresError(f"config field 'init': {path} does not fit the generator "
                             f"({str(exc).splitlines()[0]})") from None

    def load_checkpoint(self, directory) -> Path:
        d, state = find_checkpoint(directory)
        if state.get("generator") != self.G.hparams():
            raise HiresError(f"--resume {d}: checkpoint generator {state.get('generator')} differs from the "
                             f"config's {self.G.hparams()}")
        try:
            self.G.load_state_dict(load_tensors(d / "generator.safetensors"))
            self.ema.load_state_dict(load_tensors(d / "ema.safetensors"))
            self.opt_g.load_state_dict(unflatten_optim(load_tensors(d / "optim_g.safetensors"), state["optim_g"]))
            if self.D is not None and (d / "discriminator.safetensors").is_file():
                self.D.load_state_dict(load_tensors(d / "discriminator.safetensors"))
                self.opt_d.load_state_dict(unflatten_optim(load_tensors(d / "optim_d.safetensors"),
                                                            state["optim_d"]))
        except (RuntimeError, KeyError, ValueError) as exc:
            raise HiresError(f"--resume {d}: checkpoint does not fit this config "
                             f"({str(exc).splitlines()[0]})") from None
        torch.set_rng_state(load_tensors(d / "rng.safetensors")["torch"])
        self.sampler.set_state(state["sampler_rng"])
        self.step, self.elapsed = int(state["step"]), float(state.get("elapsed", 0.0))
        return d


# ---------------------------------------------------------------- CSV log


class CsvLog:
    def __init__(self, path: Path, resume_step: int | None, fields: list[str] = CSV_FIELDS):
        self.path, self.fields = path, fields
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if resume_step is not None and path.is_file():  # drop rows written after the checkpoint
            with path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.fields, extrasaction="ignore").writerow(
                {k: ("" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]))
                 for k in self.fields})


# ---------------------------------------------------------------- entry point


def train(config, resume=None, device: str = "auto", progress: Optional[Callable[[int, int], None]] = None,
          export: str | None = None, export_dir=None, stop_at: int | None = None,
          say: Callable[[str], None] | None = None) -> dict:
    """Train from a config (path or ``TrainConfig``); returns the run summary (also summary.json).

    ``resume``: a run directory or checkpoint directory to continue from. ``export``: name of the
    shipped-model files to write from the final EMA generator into ``export_dir`` (default the
    config's ``export`` section). ``stop_at``: stop (with a checkpoint) after this step.
    """
    from .sharpen import SharpenConfig, train_sharpen

    cfg = config if isinstance(config, (TrainConfig, LdmConfig, SharpenConfig)) else load_config(config)
    say = say or (lambda m: log.info(m))
    if isinstance(cfg, SharpenConfig):  # the guided band sharpener (train/sharpen.py)
        if ddp.world().size > 1:
            raise HiresError("the band sharpener does not run under torchrun: start one process")
        return train_sharpen(cfg, resume, progress, export, export_dir, stop_at, say)
    if isinstance(cfg, LdmConfig):  # the latent-diffusion stages (train/ldm_loop.py)
        from .ldm_loop import train_ldm

        if ddp.world().size > 1:
            raise HiresError("the diffusion stages (stage: vae/ldm) do not run under torchrun yet: start one process")

        return train_ldm(cfg, resume, device, progress, export, export_dir, stop_at, say)
    with ddp.process_group(resolve_device(device)):
        return _train(cfg, resume, device, progress, export, export_dir, stop_at, say)


def _train(cfg, resume, device, progress, export, export_dir, stop_at, say) -> dict:
    tr = Trainer(cfg, device, say)
    main = tr.world.main  # only rank 0 writes
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    resumed_from = None
    if resume is not None:
        resumed_from = str(tr.load_checkpoint(resume))
        say(f"resumed from {resumed_from} at step {tr.step}")
    csvlog = CsvLog(out / "log.csv", tr.step if resume is not None else None) if main else None
    total = cfg.total_steps
    end = min(total, stop_at) if stop_at is not None else total
    t = cfg.train
    probe_initial = tr.probe_loss()
    base = tr.validate(None)
    first_val = tr.validate(tr.ema) if tr.step == 0 else None
    if first_val is not None and main:
        csvlog.write({"step": 0, "phase": "init", **first_val, "seconds": 0.0})
    start = time.perf_counter() - tr.elapsed
    val = first_val or {}
    if progress:
        progress(tr.step, total)
    while tr.step < end:
        row = tr.train_step()
        s = tr.step
        if s % t.val_every == 0 or s == total:
            val = tr.validate(tr.ema)
            row.update(val)
        if main and (s % t.log_every == 0 or "val_psnr" in row or s == end):
            row["seconds"] = time.perf_counter() - start
            csvlog.write(row)
        tr.elapsed = time.perf_counter() - start
        if main and (s % t.checkpoint_every == 0 or s == end):
            tr.save_checkpoint()
        if progress:
            progress(s, total)
    probe_final = tr.probe_loss()
    summary = {"name": cfg.name, "steps": tr.step, "total_steps": total, "finished": tr.step >= total,
               "seconds": round(tr.elapsed, 2), "device": str(tr.device), "resumed_from": resumed_from,
               "probe_l1_initial": probe_initial, "probe_l1_final": probe_final,
               "val_base": base, "val": val, "metric_range": tr.metric_range,
               "losses": {k: v for k, v in tr.w.items() if not isinstance(v, (int, float)) or v > 0}, "dataset": str(cfg.dataset_dir),
               "dataset_name": tr.manifest["name"], "generator": tr.G.hparams(), "seed": cfg.seed}
    if summary["finished"] and main:
        training = {k: summary[k] for k in ("steps", "seconds", "device", "val_base", "val", "dataset_name", "seed")}
        training["config"] = cfg.model_dump(mode="json")
        ex = cfg.export
        name = export or (ex.name if ex else cfg.name)
        summ, card, ens = (ex.summary, ex.card, ex.self_ensemble) if ex else ("", "", 1)
        seen = input_domain.from_dataset(cfg.dataset_dir, tr.manifest)  # what the model's inputs looked like
        st, js = save_model(out / "final", name, tr.ema, tr.norm, tr.domain, tr.bands, summ, card, training, seen, ens)
        summary["final"] = str(js)
        if export or ex:
            target = Path(export_dir) if export_dir else (cfg.path(ex.dir) if ex and ex.dir else out / "export")
            st, js = save_model(target, name, tr.ema, tr.norm, tr.domain, tr.bands, summ, card, training, seen, ens)
            summary["exported"] = str(js)
    if main:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
