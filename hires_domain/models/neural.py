"""Trained networks as registry models: ``<name>.safetensors`` (weights) + ``<name>.json``.

The JSON holds everything needed to rebuild and run the network without the training code:

```
{"format": "hires-model", "format_version": 1, "name", "summary", "family": "srgan",
 "domain": "medical" | "raster", "scale", "bands": [...], "generator": {arch, in_ch, out_ch,
 scale, nf, nb[, gc]}, "normalisation": Normaliser.to_dict(), "halo", "card", "training": {...},
 "input_domain": {...}, "self_ensemble": 8}
```

``self_ensemble`` (optional, 1 or 8): 8 averages the network over the eight rotations and flips
of each input (geometric self-ensemble, as EDSR+; 8× the compute).
``input_domain`` (optional) describes the training inputs; ``models/domain.py`` checks inputs
against it before a run.

Weights are read with ``safetensors.torch.load_file`` only (never pickle). At import every
``hires_domain/weights/*.json`` is registered (plus ``*.json`` in the directories listed in
``$HIRES_MODELS_DIR``, ``os.pathsep``-separated), so ``hires models`` lists them and ``hires
enhance --model NAME`` runs them through the tiler. ``predict`` takes and returns physical units
(HU or DN): it normalises, runs the generator and de-normalises.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import HiresError
from ..intensity import Normaliser
from ..precision import autocast
from . import Model, ModelInfo, register
from .generators import build_generator

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
ENV_VAR = "HIRES_MODELS_DIR"
FORMAT = "hires-model"


def model_json(name: str, generator, normaliser: Normaliser, domain: str, bands, summary: str = "",
               card: str = "", training: dict | None = None, input_domain: dict | None = None,
               self_ensemble: int = 1) -> dict:
    hp = generator.hparams()
    meta = {"format": FORMAT, "format_version": 1, "name": name,
            "summary": summary or f"{hp['arch']} x{hp['scale']} ({domain}, {len(bands)} band(s))",
            "family": "srgan", "domain": domain, "scale": hp["scale"], "bands": list(bands),
            "generator": hp, "normalisation": normaliser.to_dict(), "halo": generator.receptive_radius(),
            "phase": getattr(generator, "phase", 1), "card": card, "training": training or {}}
    if input_domain is not None:
        meta["input_domain"] = input_domain
    if self_ensemble != 1:
        meta["self_ensemble"] = int(self_ensemble)
    return meta


def save_model(directory, name: str, generator, normaliser: Normaliser, domain: str, bands,
               summary: str = "", card: str = "", training: dict | None = None,
               input_domain: dict | None = None, self_ensemble: int = 1) -> tuple[Path, Path]:
    """Write ``<dir>/<name>.safetensors`` and ``<dir>/<name>.json`` (weights as float32, CPU);
    ``input_domain``: the training inputs' statistics (``models.domain.from_dataset``);
    ``self_ensemble``: 1, or 8 to run the model averaged over rotations and flips."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = model_json(name, generator, normaliser, domain, bands, summary, card, training, input_domain,
                      self_ensemble)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in generator.state_dict().items()}
    st, js = d / f"{name}.safetensors", d / f"{name}.json"
    save_file(state, str(st), metadata={"format": FORMAT, "name": name})
    js.write_text(json.dumps(meta, indent=1))
    return st, js


def read_model_json(path: Path) -> dict:
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise HiresError(f"model file {path}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise HiresError(f"model file {path}: not a {FORMAT} JSON")
    return meta


class NeuralModel(Model):
    """A generator + normaliser loaded from ``<name>.json`` / ``<name>.safetensors``; it runs in
    channels_last layout (1.3–1.7× faster convolutions on CPU) under ``self.precision``'s autocast."""

    reduced_precision = True
    crops_halo = True  # predict(margins=...): generators skip the halo's output (generators._Residual)

    def __init__(self, json_path, meta: dict | None = None):
        self.path = Path(json_path)
        self.meta = meta or read_model_json(self.path)
        m = self.meta
        self.info = ModelInfo(m["name"], m.get("summary", ""), m.get("family", "srgan"), (m["domain"],),
                              (int(m["scale"]),), len(m["bands"]), int(m["halo"]), int(m.get("phase", 1)), m.get("card", ""))
        self.normaliser = Normaliser.from_dict(m["normalisation"])
        self.input_domain = m.get("input_domain")
        self.precision_checks = m.get("precision")
        self.self_ensemble = int(m.get("self_ensemble", 1))
        if self.self_ensemble not in (1, 8):
            raise HiresError(f"model file {self.path}: self_ensemble must be 1 or 8, got {self.self_ensemble}")
        self._net = None

    def activation_bytes(self) -> float:
        """Per input pixel: about three live feature maps of ``nf`` channels on the input and the
        output grid (measured: 6.5 KB fp32, 3.7 KB bf16 for nf 32 at x4)."""
        g, k = self.meta["generator"], max(self.info.scales)
        per_value = 4.0 if self.precision == "fp32" else 2.3
        return 3 * per_value * g.get("nf", 64) * (1 + k * k)

    @property
    def net(self) -> torch.nn.Module:
        if self._net is None:
            from safetensors.torch import load_file

            st = self.path.with_suffix(".safetensors")
            if not st.is_file():
                raise HiresError(f"model '{self.info.name}': weights file {st} missing")
            g = dict(self.meta["generator"])
            net = build_generator(g.pop("arch"), g.pop("in_ch"), g.pop("out_ch"), g.pop("scale"), **g)
            try:
                net.load_state_dict(load_file(str(st)))
            except RuntimeError as exc:
                raise HiresError(f"model '{self.info.name}': weights do not match its JSON "
                                 f"({str(exc).splitlines()[0]})") from None
            self._net = net.eval().to(memory_format=torch.channels_last)
        return self._net

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, scale: int, margins: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """``margins``: halo pixels per side (top, bottom, left, right) whose output the caller
        discards; the generator may leave it uncomputed (``generators._Residual.forward``)."""
        if scale != self.info.scales[0]:
            raise HiresError(f"model '{self.info.name}' cannot do x{scale}; it supports x{self.info.scales[0]}")
        net = self.net
        p = next(net.parameters())
        if p.device != x.device:
            net.to(x.device)
        z = self.normaliser.forward(x.to(torch.float32))
        with autocast(self.precision, x.device):
            if self.self_ensemble == 8:
                y = _dihedral_mean(net, z, self.info.phase)
            else:
                y = net(z.contiguous(memory_format=torch.channels_last), margins)
        return self.normaliser.inverse(y.float()).to(x.dtype)


def _dihedral_mean(net, x: torch.Tensor, phase: int) -> torch.Tensor:
    """``net`` averaged over the 8 rotations/flips of ``x`` (geometric self-ensemble; all the
    halo's output is computed). For ``phase`` 2 networks the input is first padded to even sizes
    (one replicated far row/column), so every flipped copy keeps a phase that depends only on the
    pixel's position in the image: tiles whose windows start on even pixels still give exactly
    the whole image's result."""
    h, w = x.shape[-2:]
    if phase > 1:
        x = torch.nn.functional.pad(x, (0, (-w) % phase, 0, (-h) % phase), mode="replicate")
    total = None
    for k in range(4):
        for flip in (False, True):
            v = torch.rot90(x, k, (-2, -1))
            v = v.flip(-1) if flip else v
            y = net(v.contiguous(memory_format=torch.channels_last)).float()
            y = torch.rot90(y.flip(-1) if flip else y, -k, (-2, -1))
            total = y if total is None else total.add_(y)
    s = total.shape[-1] // x.shape[-1]
    return total[..., :h * s, :w * s] / 8


def _model_class(meta: dict) -> type:
    if meta.get("family") == "diffusion":
        from .ldm import DiffusionModel

        return DiffusionModel
    if meta.get("family") == "sharpen":
        from .sharpen import SharpenModel

        return SharpenModel
    if meta.get("family") == "cascade":
        from .cascade import CascadeModel

        return CascadeModel
    return NeuralModel


def load_model(json_path) -> Model:
    """A trained model (SRGAN generator, guided sharpening, latent diffusion or a cascade of
    registered models) from its JSON."""
    meta = read_model_json(json_path)
    return _model_class(meta)(json_path, meta)


def model_dirs() -> list[Path]:
    dirs = [WEIGHTS_DIR]
    dirs += [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    return dirs


def register_dir(directory) -> list[str]:
    """Register every model JSON in ``directory``; returns the names."""
    names = []
    for js in sorted(Path(directory).glob("*.json")):
        try:
            meta = read_model_json(js)
        except HiresError:
            continue
        register(meta["name"], lambda js=js, meta=meta: _model_class(meta)(js, meta))
        names.append(meta["name"])
    return names


for _d in model_dirs():
    if _d.is_dir():
        register_dir(_d)
