"""Training of the latent-diffusion family on a tiny real dataset (the bundled Sentinel-2 crop,
prepared with `hires prepare`): configs/tiny-ldm-test.yaml trains and beats its start and
exports a diffusion model that runs; the vae stage trains an autoencoder that an ldm stage then
builds on; resume equals an uninterrupted run; bad configs are one line naming the field; and
nothing is pickled."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from hires_domain import cli, io
from hires_domain.models.ldm import DiffusionModel, Sampling
from hires_domain.models.neural import load_model
from support import S2_RECIPE, SAMPLES, fails, hires

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / "configs" / "tiny-ldm-test.yaml").read_text())
SAFE_SUFFIXES = {".safetensors", ".json", ".csv", ".txt"}
VAE_CODEC = {"kind": "autoencoder-kl", "latent_channels": 4, "channels": [8, 8, 8]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the networks are tiny, and on a loaded machine two OpenMP threads wait
    on each other far longer than they compute."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    (d / "r.yaml").write_text(yaml.safe_dump(S2_RECIPE))
    from hires_domain.data.prepare import prepare  # what `hires prepare` runs

    prepare(d / "r.yaml", d / "s2")
    return d / "s2"


def config(dataset, out, calibrate: bool = False, **sections) -> dict:
    """tiny-ldm-test.yaml on ``dataset``; ``sections`` update its sections (a dict) or replace
    top-level values. Without ``calibrate`` the export skips the temperature calibration."""
    cfg = copy.deepcopy(TINY)
    cfg["dataset"], cfg["output"] = str(dataset), str(out)
    if not calibrate:
        cfg.setdefault("sampling", {})["temperature"] = 1.0
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write(directory: Path, cfg: dict, name: str = "c.yaml") -> Path:
    p = Path(directory) / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def train_cli(capsys, path, *args):
    code, out, err = hires(capsys, "train", path, "--quiet", "--device", "cpu", *args)
    assert code == 0, err
    return out, err


def lr_crop() -> torch.Tensor:
    """A real 24x24 LR crop (DN) of the bundled S2 sample."""
    return torch.from_numpy(io.read(SAMPLES / "s2_crop.tif").array()[:, 40:64, 60:84].copy())[None]


def no_pickle(run: Path) -> None:
    files = [p for p in run.rglob("*") if p.is_file()]
    assert files and {p.suffix for p in files} <= SAFE_SUFFIXES, sorted({p.suffix for p in files})
    for p in files:
        assert not p.read_bytes()[:1] == b"\x80", p  # pickle protocol header


@pytest.fixture(scope="module")
def ldm_run(dataset, tmp_path_factory):
    """configs/tiny-ldm-test.yaml as shipped (temperature calibrated at export), via the CLI."""
    d = tmp_path_factory.mktemp("ldm")
    path = write(d, config(dataset, d / "run", calibrate=True))
    argv = sys.argv
    sys.argv = ["hires", "train", str(path), "--quiet", "--device", "cpu", "--export", "tiny-ldm",
                "--export-dir", str(d / "export")]
    try:  # `hires train` in-process (support.hires needs the function-scoped capsys)
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = argv
    assert e.value.code == 0
    return d


def test_tiny_ldm_config_trains_beats_its_start_and_exports_a_model_that_runs(ldm_run):
    run = ldm_run / "run"
    s = json.loads((run / "summary.json").read_text())
    assert s["stage"] == "ldm" and s["finished"] and s["steps"] == TINY["train"]["steps"]
    assert s["probe_loss_final"] < s["probe_loss_initial"]
    assert np.isfinite(s["val"]["val_psnr"]) and np.isfinite(s["val_base"]["val_psnr"])
    rows = (run / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,phase,loss")
    assert len(rows) - 1 >= TINY["train"]["steps"] // TINY["train"]["log_every"]
    assert all(r.split(",")[1] == "ldm" for r in rows[1:])
    assert {int(r.split(",")[0]) for r in rows[1:]} >= {TINY["train"]["steps"]}

    js = ldm_run / "export" / "tiny-ldm.json"
    meta = json.loads(js.read_text())
    assert meta["family"] == "diffusion" and meta["scale"] == 4 and meta["bands"] == S2_RECIPE["bands"]
    assert meta["domain"] == "raster" and meta["diffusion"]["codec"]["kind"] == "pixel-unshuffle"
    d = meta["diffusion"]["defaults"]
    want = TINY["sampling"]
    assert (d["steps"], d["tile"], d["overlap"], d["halo"]) == (want["steps"], want["tile"], want["overlap"],
                                                               want["halo"])
    assert meta["halo"] >= d["halo"] and meta["diffusion"]["latent_scale"] > 0
    if "temperature" in s:  # calibrated at export: the chosen value is the model's default
        assert d["temperature"] == s["temperature"]["chosen"]
    assert json.loads((run / "final" / "tiny-ldm.json").read_text()) == meta  # final/ as exported

    model = load_model(js)
    assert isinstance(model, DiffusionModel) and model.info.family == "diffusion"
    x = lr_crop()
    y = model.predict(x, 4)
    assert y.shape == (1, 4, 96, 96) and torch.isfinite(y).all()
    # physical units in and out: close to the input's brightness, not to network units
    assert abs(float(y.mean()) / float(x.mean()) - 1) < 0.2


def test_ldm_run_writes_no_pickle(ldm_run):
    no_pickle(ldm_run / "run")
    no_pickle(ldm_run / "export")
    ckpts = sorted(p for p in (ldm_run / "run" / "checkpoints").iterdir() if p.is_dir())
    assert ckpts and {p.name for p in ckpts[-1].iterdir()} == {
        "net.safetensors", "ema.safetensors", "optim.safetensors", "rng.safetensors", "state.json"}


@pytest.fixture(scope="module")
def vae_run(dataset, tmp_path_factory):
    """The tiny config as a vae stage (an 8-8-8 AutoencoderKL, 30 steps), via the CLI."""
    d = tmp_path_factory.mktemp("vae")
    cfg = config(dataset, d / "vae", name="tiny-vae", stage="vae", codec=VAE_CODEC,
                 train={"steps": 30, "val_every": 30, "checkpoint_every": 30})
    argv = sys.argv
    sys.argv = ["hires", "train", str(write(d, cfg, "vae.yaml")), "--quiet", "--device", "cpu"]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = argv
    assert e.value.code == 0
    return d


def test_vae_stage_trains_and_exports_a_codec(vae_run):
    s = json.loads((vae_run / "vae" / "summary.json").read_text())
    assert s["stage"] == "vae" and s["finished"] and s["steps"] == 30
    assert s["probe_loss_final"] < 0.9 * s["probe_loss_initial"]  # reconstruction L1 falls
    codec_js = Path(s["final"])
    meta = json.loads(codec_js.read_text())
    assert meta["format"] == "hires-codec" and meta["codec"]["kind"] == "autoencoder-kl"
    assert meta["codec"]["latent_channels"] == 4 and meta["codec"]["channels"] == [8, 8, 8]
    assert meta["codec"]["scale"] == 4 and meta["codec"]["bands"] == 4
    assert meta["normalisation"]["kind"] == "reflectance"
    assert codec_js.with_suffix(".safetensors").is_file()
    no_pickle(vae_run / "vae")


@pytest.mark.xfail(strict=True, reason="the tiny 8-8-8 codec still collapses to the training mean in 30-80 steps; "
                                       "the CPU-size codec (32-64-64, input standardised per band) reads its input "
                                       "(docs/diffusion.md)")
def test_vae_codec_reads_its_input(vae_run):
    """Each real crop comes back nearer itself than the other crop's reconstruction does (before
    the codec standardised its input per band, the per-pixel normalisation learned to ignore the
    input: reconstructions of unlike crops differed by ~1e-6 while the crops differed by ~0.09)."""
    from hires_domain.train.ldm_loop import load_codec

    codec = load_codec(json.loads((vae_run / "vae" / "summary.json").read_text())["final"])
    full = io.read(SAMPLES / "s2_crop.tif").array() * 1e-4  # the dataset's reflectance units
    a, b = (torch.from_numpy(full[None, :, y:y + 32, 32:64].copy()) for y in (32, 160))
    with torch.no_grad():
        ra, rb = codec.decode(codec.encode(a)), codec.decode(codec.encode(b))
    assert (ra - a).abs().mean() < 0.5 * (rb - a).abs().mean()
    assert (rb - b).abs().mean() < 0.5 * (ra - b).abs().mean()


def test_ldm_stage_on_the_vae_codec(dataset, vae_run, tmp_path, capsys):
    codec_js = Path(json.loads((vae_run / "vae" / "summary.json").read_text())["final"])
    ldm = config(dataset, tmp_path / "ldm", name="tiny-ldm-kl",
                 codec={"kind": "autoencoder-kl", "weights": str(codec_js)},
                 train={"steps": 6, "val_every": 6, "checkpoint_every": 6})
    train_cli(capsys, write(tmp_path, ldm, "ldm.yaml"), "--export", "tiny-ldm-kl", "--export-dir",
              tmp_path / "export")
    s = json.loads((tmp_path / "ldm" / "summary.json").read_text())
    assert s["finished"] and s["probe_loss_final"] < s["probe_loss_initial"]
    js = tmp_path / "export" / "tiny-ldm-kl.json"
    meta = json.loads(js.read_text())
    assert meta["family"] == "diffusion" and meta["diffusion"]["codec"]["kind"] == "autoencoder-kl"
    with safe_open(str(js.with_suffix(".safetensors")), "pt") as f:
        keys = list(f.keys())
    codec_keys = [k for k in keys if k.startswith("codec.")]
    assert codec_keys and any(k.startswith("denoiser.") for k in keys)
    # the embedded codec is the vae stage's, unchanged by the ldm stage
    trained = load_file(str(codec_js.with_suffix(".safetensors")))
    embedded = load_file(str(js.with_suffix(".safetensors")))
    assert {k[len("codec."):] for k in codec_keys} == set(trained)
    for k, v in trained.items():
        assert torch.equal(embedded[f"codec.{k}"], v), k
    model = load_model(js)
    y = model.with_sampling(Sampling(steps=2)).predict(lr_crop(), 4)
    assert y.shape == (1, 4, 96, 96) and torch.isfinite(y).all()
    no_pickle(tmp_path / "ldm")
    no_pickle(tmp_path / "export")


def test_resume_equals_uninterrupted_run(dataset, tmp_path, capsys):
    """`--max-steps 4` then `--resume` ends with the same weights, optimiser state, probe loss,
    log steps and exported model as one run of 8 steps."""
    kw = dict(train={"steps": 8, "checkpoint_every": 4, "val_every": 100, "log_every": 2})
    full, part = config(dataset, tmp_path / "full", **kw), config(dataset, tmp_path / "part", **kw)
    train_cli(capsys, write(tmp_path, full, "full.yaml"))
    part_yaml = write(tmp_path, part, "part.yaml")
    train_cli(capsys, part_yaml, "--max-steps", "4")
    s1 = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert s1["steps"] == 4 and not s1["finished"] and "final" not in s1
    assert not (tmp_path / "part" / "final").exists()
    train_cli(capsys, part_yaml, "--resume", tmp_path / "part")
    s2 = json.loads((tmp_path / "part" / "summary.json").read_text())
    sf = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert s2["steps"] == 8 and s2["finished"] and s2["resumed_from"].endswith("step_0000004")
    assert s2["probe_loss_final"] == sf["probe_loss_final"]
    a, b = tmp_path / "full" / "checkpoints" / "step_0000008", tmp_path / "part" / "checkpoints" / "step_0000008"
    for name in ("net", "ema", "optim", "rng"):
        ta, tb = load_file(str(a / f"{name}.safetensors")), load_file(str(b / f"{name}.safetensors"))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (name, k)
    fa = load_file(str(tmp_path / "full" / "final" / "tiny-ldm-test.safetensors"))
    fb = load_file(str(tmp_path / "part" / "final" / "tiny-ldm-test.safetensors"))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    steps = lambda run: [r.split(",")[0] for r in (run / "log.csv").read_text().splitlines()[1:]]  # noqa: E731
    assert steps(tmp_path / "part") == steps(tmp_path / "full") == ["2", "4", "6", "8"]


def test_resume_refuses_another_stage(dataset, tmp_path, capsys):
    train_cli(capsys, write(tmp_path, config(dataset, tmp_path / "a", train={"steps": 2})))
    vae = config(dataset, tmp_path / "b", stage="vae", codec=VAE_CODEC, train={"steps": 2})
    line = fails(capsys, "train", write(tmp_path, vae, "vae.yaml"), "--quiet", "--device", "cpu",
                 "--resume", tmp_path / "a", match="stage")
    assert "'ldm' checkpoint" in line


@pytest.mark.parametrize("change,field", [
    (lambda c: c.update(stage="vae"), "codec"),  # the vae stage trains an autoencoder-kl only
    (lambda c: c.update(codec={"kind": "autoencoder-kl"}), "codec"),  # ldm on autoencoder-kl: weights?
    (lambda c: c["train"].update(patch_size=36), "train.patch_size"),  # not 4 x 2 (scale x levels)
    (lambda c: c["train"].update(patch_size=20), "train.patch_size"),  # 5 LR pixels: odd for 2 levels
    (lambda c: c.update(stage="gan"), "stage"),
    (lambda c: c["sampling"].update(sampler="foo"), "sampling.sampler"),
    (lambda c: c["sampling"].update(bogus=1), "sampling.bogus"),
    (lambda c: c["codec"].update(kind="jpeg"), "codec.kind"),
    (lambda c: c.update(first_stage={"kind": "generator"}), "first_stage"),
    (lambda c: c.update(dataset="/nonexistent/ds"), "dataset"),
])
def test_bad_config_one_line_error_naming_the_field(dataset, tmp_path, capsys, change, field):
    cfg = config(dataset, tmp_path / "run")
    change(cfg)
    path = write(tmp_path, cfg)
    line = fails(capsys, "train", path, "--quiet", "--device", "cpu", match=f"field '{field}'")
    assert line.startswith(f"error: config {path}:")
    assert not (tmp_path / "run").exists()


def test_bad_config_messages_say_what_to_do(dataset, tmp_path, capsys):
    cfg = config(dataset, tmp_path / "run", stage="vae")
    line = fails(capsys, "train", write(tmp_path, cfg), "--quiet", match="autoencoder-kl")
    assert "vae" in line
    cfg = config(dataset, tmp_path / "run", codec={"kind": "autoencoder-kl"})
    assert "weights" in fails(capsys, "train", write(tmp_path, cfg), "--quiet", match="field 'codec'")
    cfg = config(dataset, tmp_path / "run", codec={"kind": "autoencoder-kl", "weights": str(tmp_path / "no.json")})
    fails(capsys, "train", write(tmp_path, cfg), "--quiet", "--device", "cpu", match="no.json")
    assert not (tmp_path / "run" / "final").exists()
