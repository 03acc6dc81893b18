"""Training of the guided band sharpener (``models/sharpen.py``) at reduced scale (Wald's protocol).

For a stage of ratio ``r`` (20 m bands: 2, 60 m bands: 6) every band is made ``r`` times coarser
(sensor MTF blur + area decimation, ``data/degradations``), brought back onto the guides' reduced
grid with ``resample.upsample`` (exactly what the reader does at full scale), and the network
learns to recover the band at its native resolution. The scene's held-out rectangle (the
bottom-left quadrant, as in every recipe) never feeds a training patch, and is scored at the end
against bicubic (the resampled input) and a guided high-pass-injection baseline.

Recipe (``datasets/s2-sharpen.yaml``) and config (``configs/s2-sharpen.yaml``, ``family: sharpen``)
are validated with pydantic; checkpoints are safetensors (weights + Adam state) plus JSON, and a
run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from .. import resample
from ..data import degradations as deg
from ..errors import HiresError
from ..intensity import Normaliser
from ..models.sharpen import build_stages, sharpen
from ..settings_files import read_mapping, validation_error
from .checkpoints import (commit_checkpoint, find_checkpoint, flatten_optim, load_tensors, open_checkpoint,
                          save_tensors, unflatten_optim)

REFLECTANCE = 10000.0  # DN per unit reflectance: metrics are in reflectance (PSNR over a range of 1)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageRecipe(_Strict):
    name: str
    ratio: int = Field(ge=2)
    targets: list[str]
    inputs: list[str]  # guides first, then the stage's own coarse bands and any others


class SharpenRecipe(_Strict):
    name: str
    source: dict  # {package, dir} or {path}: a product (band directory or SAFE)
    bands: list[str]  # the model's bands, in Sentinel-2 order
    stages: list[StageRecipe]
    mtf_nyquist: tuple[float, float] = (0.45, 1.0)  # training blur, drawn per variant
    eval_mtf_nyquist: float = 0.7
    variants: int = Field(4, ge=1)
    holdout: dict = Field(default_factory=lambda: {"rows": [0.5, 1.0], "cols": [0.0, 0.5]})
    seed: int = 0


class StageTrain(_Strict):
    nf: int = Field(48, ge=8)
    nb: int = Field(6, ge=1)
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(16, ge=1)
    patch_size: int = Field(48, ge=8)
    lr: float = 1e-3


class SharpenConfig(_Strict):
    family: Literal["sharpen"]
    name: str
    recipe: str
    output: str
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "bf16"
    stages: dict[str, StageTrain]
    log_every: int = 50
    checkpoint_every: int = 250
    export: Optional[dict] = None  # {name, summary, card}
    _base: Path = Path(".")

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self._base / p


def parse_sharpen_config(data: dict, where: str, base: Path) -> SharpenConfig:
    try:
        cfg = SharpenConfig.model_validate(data)
    except Exception as exc:  # pydantic ValidationError
        raise validation_error(where, exc) from None
    cfg._base = Path(base)
    return cfg


def load_recipe(path) -> tuple[SharpenRecipe, Path]:
    path = Path(path)
    data = read_mapping(path, f"recipe {path}")
    try:
        return SharpenRecipe.model_validate(data), path.resolve().parent
    except Exception as exc:
        raise validation_error(f"recipe {path}", exc) from None


# ---------------------------------------------------------------- reduced-scale data


@dataclass
class StageData:
    """One stage at reduced scale on its working grid: ``inputs`` per degradation variant
    ``(V, C_in, H, W)`` (DN), ``target`` ``(C_t, H, W)``, ``train`` mask of pixels a patch may use,
    ``held`` the held-out rectangle (slices)."""

    inputs: np.ndarray
    target: np.ndarray
    train: np.ndarray
    held: tuple[slice, slice]


def source_bands(recipe: SharpenRecipe, base: Path) -> dict:
    """Band name → (array, rasterio transform) for the recipe's source product."""
    import rasterio

    from ..io.s2_product import open_product

    src = recipe.source
    if "package" in src:
        from importlib import resources

        root = Path(str(resources.files(src["package"]))) / src["dir"]
    else:
        root = (base / src["path"]).resolve()
    product = open_product(root)
    out = {}
    for name in recipe.bands:
        if name not in product.bands:
            raise HiresError(f"recipe: band {name} missing from {root}")
        with rasterio.open(product.bands[name].path) as ds:
            out[name] = (ds.read(1).astype(np.float32), ds.transform)
    return out


def nest(bands: dict, names: list[str], cell: float) -> dict:
    """Crop each band so that all start at the first corner of the coarsest band's pixels that lies
    on every band's pixel boundaries; all cover the same whole number of ``cell``-metre cells."""
    tr = {n: bands[n][1] for n in names}
    coarse = max(names, key=lambda n: abs(tr[n].a))
    corner, counts = [], []
    for axis in ("x", "y"):
        res = {n: (tr[n].a if axis == "x" else tr[n].e) for n in names}
        org = {n: (tr[n].c if axis == "x" else tr[n].f) for n in names}
        step = res[coarse]
        for k in range(64):
            pos = org[coarse] + k * step
            offs = {n: (pos - org[n]) / res[n] for n in names}
            if all(o >= -1e-6 and abs(o - round(o)) < 1e-6 for o in offs.values()):
                break
        else:
            raise HiresError(f"the grids of {names} never share a pixel corner")
        corner.append(pos)
        size = {n: bands[n][0].shape[1 if axis == "x" else 0] for n in names}
        counts.append(min(int((size[n] - round(offs[n])) * abs(res[n]) // cell) for n in names))
    out = {}
    for n in names:
        a, t = bands[n]
        c0, r0 = round((corner[0] - t.c) / t.a), round((corner[1] - t.f) / t.e)
        w, h = round(counts[0] * cell / abs(t.a)), round(counts[1] * cell / abs(t.e))
        out[n] = a[r0:r0 + h, c0:c0 + w]
    return out


def degrade(band: np.ndarray, ratio: int, mtf: float) -> np.ndarray:
    """A band seen by a sensor ``ratio`` times coarser: MTF blur, then area decimation."""
    return deg.decimate(deg.mtf_blur(band, mtf, ratio), ratio, "area").astype(np.float32)


def stage_inputs(nested: dict, stage: StageRecipe, guide_res: float, ratio: int, mtf: float) -> np.ndarray:
    """The stage's input bands at reduced scale, on the working grid (guide resolution × ratio)."""
    out = []
    for b in stage.inputs:
        arr, res = nested[b]
        up = int(round(res / guide_res))
        low = degrade(arr, ratio, mtf)
        out.append(low if up == 1 else resample.upsample(low, up))
    return np.stack(out)


def _holdout(shape, spec: dict) -> tuple[slice, slice]:
    (r0, r1), (c0, c1) = spec["rows"], spec["cols"]
    h, w = shape
    return slice(int(h * r0), int(h * r1)), slice(int(w * c0), int(w * c1))


def stage_data(bands: dict, recipe: SharpenRecipe, stage: StageRecipe, eval_only: bool = False) -> StageData:
    """Reduced-scale inputs (``variants`` MTF draws, or the one evaluation MTF) and targets."""
    names = sorted(set(stage.inputs) | set(stage.targets))
    res = {n: abs(bands[n][1].a) for n in names}
    guide_res = min(res.values())
    cell = max(res.values()) * stage.ratio  # a whole number of degraded coarsest pixels
    cropped = nest(bands, names, cell)
    nested = {n: (cropped[n], res[n]) for n in names}
    work = guide_res * stage.ratio
    for t in stage.targets:
        if abs(res[t] - work) > 1e-6:
            raise HiresError(f"stage {stage.name}: target {t} is at {res[t]:g} m, not guide × ratio = {work:g} m")
    target = np.stack([cropped[t] for t in stage.targets])
    rng = np.random.default_rng(recipe.seed)
    lo, hi = recipe.mtf_nyquist
    mtfs = [recipe.eval_mtf_nyquist] if eval_only else list(rng.uniform(lo, hi, recipe.variants))
    inputs = np.stack([stage_inputs(nested, stage, guide_res, stage.ratio, m) for m in mtfs])
    held = _holdout(target.shape[-2:], recipe.holdout)
    train = np.ones(target.shape[-2:], bool)
    margin = deg.support(deg.sigma_for_mtf(lo, stage.ratio)) + 2  # blurred inputs near it saw held-out pixels
    train[max(held[0].start - margin, 0):held[0].stop + margin, max(held[1].start - margin, 0):held[1].stop + margin] = False
    return StageData(inputs, target, train, held)


# ---------------------------------------------------------------- scores and baselines


def psnr(pred: np.ndarray, ref: np.ndarray) -> float:
    """PSNR in reflectance (range 1 = 10000 DN) over all pixels of ``(..., H, W)``."""
    mse = float(np.mean((np.asarray(pred, np.float64) - ref) ** 2)) / REFLECTANCE ** 2
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def sam_degrees(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean spectral angle (degrees) between ``(C, H, W)`` cubes."""
    p, r = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    cos = (p * r).sum(0) / (np.linalg.norm(p, axis=0) * np.linalg.norm(r, axis=0) + 1e-12)
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean())


def high_pass_baseline(d: StageData, stage: StageRecipe, guides: list[str], fit: np.ndarray, mtf: float) -> np.ndarray:
    """Guided high-pass injection: each target = its resampled input + a linear combination of the
    guides' high frequencies (the guide minus itself seen ``ratio`` times coarser with MTF ``mtf``
    and resampled back), least squares over the ``fit`` pixels. Returns ``(C_t, H, W)``."""
    x = d.inputs[0]
    high = np.stack([x[stage.inputs.index(g)] - resample.upsample(degrade(x[stage.inputs.index(g)], stage.ratio, mtf),
                                                                  stage.ratio) for g in guides])
    a = np.concatenate([high[:, fit].T, np.ones((int(fit.sum()), 1))], axis=1)
    out = []
    for k, t in enumerate(stage.targets):
        base = x[stage.inputs.index(t)]
        coef, *_ = np.linalg.lstsq(a, (d.target[k] - base)[fit], rcond=None)
        out.append(base + np.tensordot(coef[:-1], high, axes=1) + coef[-1])
    return np.stack(out).astype(np.float32)


def stage_scores(pred: np.ndarray, d: StageData, stage: StageRecipe) -> dict:
    """Per-band PSNR, mean PSNR and SAM over the held-out rectangle."""
    r = (slice(None), *d.held)
    p, t = pred[r], d.target[r]
    per = {b: round(psnr(p[k], t[k]), 3) for k, b in enumerate(stage.targets)}
    return {"psnr": per, "mean_psnr": round(float(np.mean(list(per.values()))), 3),
            "sam_deg": round(sam_degrees(p, t), 4)}


# ---------------------------------------------------------------- training


def band_normaliser(bands: dict, names: list[str]) -> Normaliser:
    """Per band: network = (DN − mean) / std over the whole scene."""
    mean = [float(bands[n][0].mean()) for n in names]
    std = [float(bands[n][0].std()) or 1.0 for n in names]
    return Normaliser("reflectance", [1 / s for s in std], [-m / s for m, s in zip(mean, std)], bands=names)


def _normalise(norm: Normaliser, names: list[str], x: np.ndarray) -> np.ndarray:
    """``(..., C, H, W)`` DN of bands ``names`` → network units."""
    idx = [norm.bands.index(n) for n in names]
    scale = np.asarray(norm.scale, np.float32)[idx][:, None, None]
    offset = np.asarray(norm.offset, np.float32)[idx][:, None, None]
    return x * scale + offset


class PatchDraw:
    """Random training patches of a stage: top-left corners whose whole patch is trainable."""

    def __init__(self, d: StageData, patch: int, rng: np.random.Generator):
        from scipy import ndimage

        ok = ndimage.minimum_filter(d.train.astype(np.uint8), size=patch, origin=-(patch // 2)) > 0
        ok[-patch + 1:, :] = False
        ok[:, -patch + 1:] = False
        self.corners = np.argwhere(ok)
        if not len(self.corners):
            raise HiresError(f"no {patch}² training patch fits outside the held-out area")
        self.d, self.patch, self.rng = d, patch, rng

    def batch(self, n: int, norm: Normaliser, stage: StageRecipe) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.patch
        xs, ys = [], []
        for _ in range(n):
            r, c = self.corners[self.rng.integers(len(self.corners))]
            v = self.rng.integers(self.d.inputs.shape[0])
            x = self.d.inputs[v, :, r:r + p, c:c + p]
            y = self.d.target[:, r:r + p, c:c + p]
            k, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
            x, y = np.rot90(x, k, (1, 2)), np.rot90(y, k, (1, 2))
            if flip:
                x, y = x[:, :, ::-1], y[:, :, ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        x = _normalise(norm, stage.inputs, np.stack(xs))
        y = _normalise(norm, stage.targets, np.stack(ys))
        return torch.from_numpy(x), torch.from_numpy(y)


def run_stage(net, x: np.ndarray, norm: Normaliser, stage: StageRecipe, precision: str = "fp32") -> np.ndarray:
    """The stage network on a whole reduced-scale input ``(C_in, H, W)`` (DN) → targets in DN."""
    from ..precision import autocast

    xn = torch.from_numpy(_normalise(norm, stage.inputs, x)[None])
    bands = list(stage.inputs)
    with torch.inference_mode(), autocast(precision, torch.device("cpu")):
        y = sharpen(torch.nn.ModuleDict({stage.name: net}), [stage.model_dump()], bands, xn).float()
    t = [bands.index(b) for b in stage.targets]
    idx = [norm.bands.index(b) for b in stage.targets]
    scale = np.asarray(norm.scale, np.float32)[idx][:, None, None]
    offset = np.asarray(norm.offset, np.float32)[idx][:, None, None]
    return (y[0, t].numpy() - offset) / scale


def evaluate_stage(net, bands: dict, recipe: SharpenRecipe, stage: StageRecipe, norm: Normaliser,
                   precision: str = "fp32", baselines: bool = True) -> dict:
    """Held-out scores at reduced scale (evaluation MTF): model, and bicubic / high-pass injection
    (its low-pass given the evaluation MTF, and given area integration only)."""
    d = stage_data(bands, recipe, stage, eval_only=True)
    out = {"model": stage_scores(run_stage(net, d.inputs[0], norm, stage, precision), d, stage)}
    if baselines:
        cubic = d.inputs[0][[stage.inputs.index(t) for t in stage.targets]]
        out["bicubic"] = stage_scores(cubic, d, stage)
        guides = [b for b in stage.inputs if abs(bands[b][1].a) == min(abs(bands[n][1].a) for n in stage.inputs)]
        hp = high_pass_baseline(d, stage, guides, d.train, recipe.eval_mtf_nyquist)
        out["high_pass"] = stage_scores(hp, d, stage)  # told the evaluation blur: an oracle's advantage
        hp = high_pass_baseline(d, stage, guides, d.train, 1.0)
        out["high_pass_area"] = stage_scores(hp, d, stage)  # area integration only, as a user would guess
    return out


def train_sharpen(cfg: SharpenConfig, resume=None, progress: Optional[Callable[[int, int], None]] = None,
                  export: str | None = None, export_dir=None, stop_at: int | None = None,
                  say: Callable[[str], None] = print) -> dict:
    """Train every stage in turn (resumable), score them on the held-out area, export the model."""
    from ..models.neural import FORMAT

    recipe, rbase = load_recipe(cfg.path(cfg.recipe))
    torch.manual_seed(cfg.seed)
    bands = source_bands(recipe, rbase)
    norm = band_normaliser(bands, recipe.bands)
    stages = {s.name: s for s in recipe.stages}
    unknown = set(cfg.stages) ^ set(stages)
    if unknown:
        raise HiresError(f"config {cfg.name}: field 'stages': {sorted(unknown)} do not match the recipe's stages")
    specs = [{**stages[n].model_dump(), "nf": cfg.stages[n].nf, "nb": cfg.stages[n].nb} for n in stages]
    nets = build_stages(recipe.bands, specs)
    total = sum(cfg.stages[n].steps for n in stages)
    out = cfg.path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    state = {"done": {n: 0 for n in stages}, "seconds": 0.0, "log": []}
    opt_state = None
    if resume is not None:
        ck, state = find_checkpoint(resume)
        nets.load_state_dict({k[4:]: v for k, v in load_tensors(ck / "weights.safetensors").items()})
        if (ck / "optim.safetensors").is_file():
            opt_state = (load_tensors(ck / "optim.safetensors"), state["optim"])
        say(f"resumed from {ck}")
    start = time.perf_counter() - state["seconds"]
    step_all = sum(state["done"].values())
    end = min(total, stop_at) if stop_at is not None else total
    rng = np.random.default_rng([cfg.seed, step_all])  # a resumed run draws on from its step
    for name, stage in stages.items():
        st = cfg.stages[name]
        if state["done"][name] >= st.steps or step_all >= end:
            continue
        d = stage_data(bands, recipe, stage)
        draw = PatchDraw(d, st.patch_size, rng)
        net = nets[name].train()
        opt = torch.optim.Adam(net.parameters(), lr=st.lr)
        if opt_state is not None and state.get("optim_stage") == name:
            opt.load_state_dict(unflatten_optim(*opt_state))
        opt_state = None
        sched = lambda s: 0.5 * st.lr * (1 + math.cos(math.pi * min(s / st.steps, 1.0)))  # noqa: E731
        while state["done"][name] < st.steps and step_all < end:
            s = state["done"][name]
            for g in opt.param_groups:
                g["lr"] = sched(s)
            x, y = draw.batch(st.batch_size, norm, stage)
            from ..precision import autocast

            with autocast(cfg.precision, torch.device("cpu")):
                pred = sharpen(torch.nn.ModuleDict({name: net}), [stage.model_dump()], stage.inputs, x)
            t = [stage.inputs.index(b) for b in stage.targets]
            loss = torch.nn.functional.l1_loss(pred[:, t].float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["done"][name] = s + 1
            step_all += 1
            if (s + 1) % cfg.log_every == 0:
                state["log"].append({"stage": name, "step": s + 1, "l1": round(loss.item(), 5),
                                     "seconds": round(time.perf_counter() - start, 1)})
            if (s + 1) % cfg.checkpoint_every == 0 or state["done"][name] == st.steps or step_all == end:
                state["seconds"] = time.perf_counter() - start
                final, tmp = open_checkpoint(out, step_all)
                save_tensors({f"net.{k}": v for k, v in nets.state_dict().items()}, tmp / "weights.safetensors")
                tensors, meta = flatten_optim(opt)
                save_tensors(tensors, tmp / "optim.safetensors")
                commit_checkpoint(final, tmp, {**state, "optim": meta, "optim_stage": name})
            if progress:
                progress(step_all, total)
        net.eval()
    seconds = time.perf_counter() - start
    summary = {"name": cfg.name, "steps": step_all, "total_steps": total, "finished": step_all >= total,
               "seconds": round(seconds, 1), "device": "cpu", "val": {}, "val_base": {}}
    if summary["finished"]:
        heldout = {n: evaluate_stage(nets[n], bands, recipe, stages[n], norm, cfg.precision) for n in stages}
        summary["heldout"] = heldout
        summary["val"] = {"val_psnr": float(np.mean([h["model"]["mean_psnr"] for h in heldout.values()]))}
        summary["val_base"] = {"val_psnr": float(np.mean([h["bicubic"]["mean_psnr"] for h in heldout.values()]))}
        ex = cfg.export or {}
        name = export or ex.get("name", cfg.name)
        meta = {"format": FORMAT, "format_version": 1, "name": name, "family": "sharpen",
                "summary": ex.get("summary", "Sentinel-2 guided sharpening: every band on the 10 m grid"),
                "domain": "raster", "scale": 1, "bands": recipe.bands, "normalisation": norm.to_dict(),
                "halo": max(nets[n].receptive_radius() for n in stages), "phase": 1, "card": ex.get("card", ""),
                "sharpen": {"stages": specs},
                "training": {"recipe": recipe.model_dump(mode="json"), "config": cfg.model_dump(mode="json"),
                             "steps": {n: state["done"][n] for n in stages}, "seconds": round(seconds, 1),
                             "device": "cpu", "precision": cfg.precision, "heldout": heldout, "log": state["log"]},
                "input_domain": _input_domain(bands, recipe.bands)}
        targets = [out / "final"]
        if export or export_dir or ex.get("dir"):
            targets.append(Path(export_dir) if export_dir else cfg.path(ex["dir"]) if ex.get("dir") else out / "export")
        for t in targets:
            t.mkdir(parents=True, exist_ok=True)
            from safetensors.torch import save_file

            save_file({k: v.detach().float().contiguous() for k, v in nets.state_dict().items()},
                      str(t / f"{name}.safetensors"), metadata={"format": FORMAT, "name": name})
            (t / f"{name}.json").write_text(json.dumps(meta, indent=1))
        summary["final"] = str(out / "final" / f"{name}.json")
        if len(targets) > 1:
            summary["exported"] = str(targets[-1] / f"{name}.json")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _input_domain(bands: dict, names: list[str], n: int = 1 << 17) -> dict:
    """What the training scene's values looked like (``models/domain.py`` checks inputs against
    it): ``n`` pixels drawn per band at its native resolution; the network runs on the 10 m grid
    and learned at 20 and 60 m."""
    from ..models.domain import _stats

    rng = np.random.default_rng(0)
    values = np.stack([rng.choice(bands[b][0].ravel(), n) for b in names]).astype(np.float64)
    res = sorted({abs(bands[b][1].a) for b in names})
    return {"source": f"every band of the training scene ({n} pixels each)", "domain": "raster",
            "modality": None, "units": "DN", "bands": list(names), "clip": None, **_stats(values),
            "spacing": {"units": "m", "native": [res[0], res[0]], "lr": [res[1], res[-1]]}}
