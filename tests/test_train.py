"""Training: a tiny config on a tiny real dataset (the bundled Sentinel-2 crop, prepared with
`hires prepare`) trains in seconds and beats its own start; resume; bad configs; no pickle."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hires_domain.errors import HiresError
from hires_domain.train import load_config, parse_config, train
from support import S2_RECIPE, fails, hires

ROOT = Path(__file__).resolve().parents[1]

RECIPE = S2_RECIPE


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    (d / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    from hires_domain.data.prepare import prepare  # what `hires prepare` runs

    prepare(d / "r.yaml", d / "s2")
    return d / "s2"


def config(dataset, out, **train):
    base = yaml.safe_load((ROOT / "configs" / "tiny-test.yaml").read_text())
    base["dataset"], base["output"] = str(dataset), str(out)
    base["train"].update(train)
    return base


def write(tmp_path, cfg, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_tiny_config_trains_and_beats_its_initial_loss(dataset, tmp_path, capsys):
    path = write(tmp_path, config(dataset, tmp_path / "run"))
    code, _, err = hires(capsys, "train", path, "--quiet", "--device", "cpu", "--export", "tiny",
                         "--export-dir", tmp_path / "export")
    assert code == 0, err
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["finished"] and s["steps"] == 110
    assert s["probe_l1_final"] < 0.99 * s["probe_l1_initial"]  # measurably better than the start
    assert s["val"]["val_psnr"] > s["val_base"]["val_psnr"] + 0.05  # and than bicubic on held-out data
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,phase,loss,l1") and any(",gan," in r for r in rows)
    meta = json.loads((tmp_path / "export" / "tiny.json").read_text())
    assert meta["scale"] == 4 and meta["bands"] == RECIPE["bands"] and meta["normalisation"]["kind"] == "reflectance"
    assert meta["domain"] == "raster" and meta["halo"] >= 2 and meta["training"]["steps"] == 110


def test_perceptual_term_is_used_when_vgg_weights_are_offline_and_skipped_with_a_message_otherwise(
        dataset, tmp_path, monkeypatch, capsys):
    from test_models import vgg19_file

    base = config(dataset, tmp_path / "with", pretrain_steps=6, gan_steps=0, log_every=2, val_every=100)
    base["losses"]["perceptual"] = 0.05
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setenv("HIRES_WEIGHTS_DIR", str(tmp_path / "none"))
    (tmp_path / "none").mkdir()
    train(parse_config(base), device="cpu", say=print)
    assert "perceptual loss disabled" in capsys.readouterr().out
    rows = (tmp_path / "with" / "log.csv").read_text().splitlines()
    assert all(r.split(",")[6] == "" for r in rows[1:])  # no perceptual column values
    (tmp_path / "vgg").mkdir()
    vgg19_file(tmp_path / "vgg")
    monkeypatch.setenv("HIRES_WEIGHTS_DIR", str(tmp_path / "vgg"))
    base["output"] = str(tmp_path / "on")
    train(parse_config(base), device="cpu")
    rows = (tmp_path / "on" / "log.csv").read_text().splitlines()
    values = [float(r.split(",")[6]) for r in rows[1:] if r.split(",")[1] == "pretrain"]
    assert values and all(v > 0 for v in values)


def test_checkpoints_contain_no_pickle(dataset, tmp_path):
    cfg = parse_config(config(dataset, tmp_path / "run", pretrain_steps=4, gan_steps=2, checkpoint_every=3))
    train(cfg, device="cpu")
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert files and {p.suffix for p in files} <= {".safetensors", ".json", ".csv", ".txt"}
    for p in files:
        assert not p.read_bytes()[:2].startswith(b"\x80")  # pickle protocol header
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000006"
    assert {p.name for p in ckpt.iterdir()} == {"generator.safetensors", "ema.safetensors", "discriminator.safetensors",
                                               "optim_g.safetensors", "optim_d.safetensors", "rng.safetensors",
                                               "state.json"}


def test_resume_equals_uninterrupted_run(dataset, tmp_path):
    """A deterministic CPU run stopped at step 5 and resumed ends with the very same weights
    (generator, EMA, discriminator) and step count as one that never stopped."""
    kw = dict(pretrain_steps=6, gan_steps=4, checkpoint_every=5, val_every=100)
    full = parse_config(config(dataset, tmp_path / "full", **kw))
    train(full, device="cpu")
    part = parse_config(config(dataset, tmp_path / "part", **kw))
    s1 = train(part, device="cpu", stop_at=5)
    assert s1["steps"] == 5 and not s1["finished"] and "final" not in s1
    s2 = train(part, device="cpu", resume=tmp_path / "part")
    assert s2["steps"] == 10 and s2["finished"] and s2["resumed_from"].endswith("step_0000005")
    a, b = tmp_path / "full" / "checkpoints" / "step_0000010", tmp_path / "part" / "checkpoints" / "step_0000010"
    for f in ("generator", "ema", "discriminator", "optim_g"):
        ta, tb = load_file(str(a / f"{f}.safetensors")), load_file(str(b / f"{f}.safetensors"))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (f, k)
    steps = [r.split(",")[0] for r in (tmp_path / "part" / "log.csv").read_text().splitlines()[1:]]
    assert steps == [r.split(",")[0] for r in (tmp_path / "full" / "log.csv").read_text().splitlines()[1:]]


def test_init_starts_from_exported_weights_and_refuses_others(dataset, tmp_path):
    """``init``: a warm start from an exported model's weights (a new run: step 0, new optimiser)."""
    train(parse_config(config(dataset, tmp_path / "a", pretrain_steps=3, gan_steps=0)), device="cpu",
          export="first", export_dir=tmp_path / "export")
    weights = load_file(str(tmp_path / "export" / "first.safetensors"))
    warm = parse_config({**config(dataset, tmp_path / "b", pretrain_steps=1, gan_steps=0, lr_g=1e-12),
                         "init": str(tmp_path / "export" / "first.safetensors")})
    s = train(warm, device="cpu", export="second", export_dir=tmp_path / "export")
    assert s["steps"] == 1
    again = load_file(str(tmp_path / "export" / "second.safetensors"))
    for k in weights:  # a learning rate of 1e-12 leaves the starting weights as they were
        torch.testing.assert_close(again[k], weights[k], rtol=0, atol=1e-6)
    other = {**config(dataset, tmp_path / "c", pretrain_steps=1, gan_steps=0),
             "init": str(tmp_path / "export" / "first.safetensors")}
    other["generator"]["nf"] = 12
    with pytest.raises(HiresError, match="does not fit"):
        train(parse_config(other), device="cpu")
    with pytest.raises(HiresError, match="not found"):
        train(parse_config({**other, "init": str(tmp_path / "none.safetensors")}), device="cpu")


def test_resume_refuses_a_different_architecture(dataset, tmp_path):
    train(parse_config(config(dataset, tmp_path / "a", pretrain_steps=2, gan_steps=0)), device="cpu")
    other = config(dataset, tmp_path / "b", pretrain_steps=4, gan_steps=0)
    other["generator"]["nf"] = 12
    with pytest.raises(HiresError, match="differs"):
        train(parse_config(other), device="cpu", resume=tmp_path / "a")


@pytest.mark.parametrize("change,field", [
    (lambda c: c.update(colour=1), "colour"),
    (lambda c: c["train"].update(batch_size="many"), "train.batch_size"),
    (lambda c: c["train"].update(bogus=1), "train.bogus"),
    (lambda c: c["generator"].update(arch="unet"), "generator.arch"),
    (lambda c: c.pop("dataset"), "dataset"),
    (lambda c: c.update(dataset="/nonexistent/ds"), "dataset"),
    (lambda c: c["train"].update(patch_size=34), "train.patch_size"),
    (lambda c: (c.pop("discriminator"), c["train"].update(gan_steps=5)), "<root>"),
])
def test_bad_config_one_line_error_naming_the_field(dataset, tmp_path, capsys, change, field):
    cfg = config(dataset, tmp_path / "run")
    change(cfg)
    path = write(tmp_path, cfg)
    line = fails(capsys, "train", path, "--quiet", match=f"field '{field}'")
    assert line.startswith(f"error: config {path}:")
    assert not (tmp_path / "run").exists()


def test_scale_not_supported_by_the_architecture(dataset, tmp_path):
    import shutil

    ds = tmp_path / "x3"
    shutil.copytree(dataset, ds)
    m = json.loads((ds / "manifest.json").read_text())
    m["scale"] = 3
    (ds / "manifest.json").write_text(json.dumps(m))
    path = write(tmp_path, config(ds, tmp_path / "run"))
    with pytest.raises(HiresError, match="field 'generator.arch': dataset scale x3 not supported"):
        load_config(path)


@pytest.mark.parametrize("name", ["tiny-test", "s2-sr-x4", "s2-sr-x4-gpu", "ct-sr-x2", "ct-sr-x2-gpu",
                                  "ct-denoise", "ct-denoise-gpu", "ct-denoise-prior", "ct-denoise-binned",
                                  "s2-cube-x4"])
def test_shipped_configs_are_valid(name):
    data = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    cfg = parse_config(data, name)
    assert cfg.total_steps > 0


LOW_DOSE_RECIPE = {"name": "ld", "domain": "low-dose-ct",
                   "sources": [{"path": "DICOM/bad_sequence.dcm"},
                               {"package": "pydicom", "file": "CT_small.dcm", "split": "val"}],
                   "degradation": {"photons": [5e3, 2e4], "per_slice": 2, "n_angles": [180], "filter": ["ramp"],
                                   "val_protocols": [{"name": "a", "photons": 1e4, "n_angles": 180}]}}


def test_blind_denoiser_trains_in_bf16_with_the_soft_tissue_loss(tmp_path, capsys):
    from hires_domain.data.prepare import prepare

    recipe = json.loads(json.dumps(LOW_DOSE_RECIPE).replace("DICOM", str(Path(__file__).parent / "data" / "dicom")))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    prepare(tmp_path / "r.yaml", tmp_path / "ld")
    cfg = {"name": "t", "dataset": str(tmp_path / "ld"), "output": str(tmp_path / "run"),
           "generator": {"arch": "dilated", "size": "tiny"}, "losses": {"l1": 1.0, "window_l1": 1.0},
           "train": {"batch_size": 4, "patch_size": 64, "pretrain_steps": 150, "lr_g": 0.003, "precision": "bf16",
                     "schedule": "constant", "ema_decay": 0.9, "log_every": 10, "val_every": 40,
                     "checkpoint_every": 40},
           "validation": {"max_items": 1, "max_side": 128}}
    code, _, err = hires(capsys, "train", write(tmp_path, cfg), "--quiet", "--device", "cpu", "--export", "ld",
                         "--export-dir", tmp_path / "export")
    assert code == 0, err
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["probe_l1_final"] < 0.9 * s["probe_l1_initial"]
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    col = rows[0].split(",").index("window_l1")
    assert rows[-1].split(",")[col] != ""  # the soft-tissue term is logged
    meta = json.loads((tmp_path / "export" / "ld.json").read_text())
    assert meta["generator"]["arch"] == "dilated" and meta["phase"] == 2 and meta["halo"] % 2 == 0


def test_window_loss_needs_a_ct_dataset(dataset, tmp_path):
    cfg = config(dataset, tmp_path / "run")
    cfg["losses"]["window_l1"] = 1.0
    with pytest.raises(HiresError, match="window_l1 needs a CT"):
        train(parse_config(cfg, base=tmp_path), device="cpu")
