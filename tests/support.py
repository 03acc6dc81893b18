"""Plain helpers shared by test modules (imported as ``support``; conftest files hold fixtures)."""

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from hires_domain import cli

SAMPLES = Path(str(resources.files("hires_domain") / "samples"))
DATA = Path(__file__).parent / "data"

# a small `hires prepare` recipe on the bundled Sentinel-2 crop (x4, S2-like MTF and noise)
S2_RECIPE = {
    "name": "t-s2", "domain": "satellite", "sources": [{"path": str(SAMPLES / "s2_crop.tif")}],
    "bands": ["B02", "B03", "B04", "B08"],
    "degradation": {"scale": 4, "mtf_nyquist": 0.3, "noise": {"sigma_add": 2.0, "sigma_signal": 0.3},
                    "quantise": "uint16"},
    "patches": {"size": 64, "stride": 32},
    "split": {"holdout": {"rows": [0.5, 1.0], "cols": [0.0, 0.5]}},
}


def dciodvfy_errors(path: Path) -> list[str]:
    """'Error' lines of dicom3tools' validator; skips when it is missing (fails in CI instead)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("HIRES_REQUIRE_DCIODVFY"):
            pytest.fail("dciodvfy (Debian dicom3tools) is required but not installed")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def hires(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["hires", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    o, r = capsys.readouterr()
    return e.value.code, o, r


def fails(capsys, *args, match=""):
    code, _, errtext = hires(capsys, *args)
    lines = [ln for ln in errtext.splitlines() if ln.strip()]
    assert code != 0, errtext
    assert len(lines) == 1 and lines[0].startswith("error: "), errtext
    assert "Traceback" not in errtext
    assert match.lower() in lines[0].lower(), lines[0]
    return lines[0]


def make_ldm(directory: Path, name: str = "t-ldm", bands: int = 4, scale: int = 4, domain: str = "raster",
             channels=(16, 32), seed: int = 0, **defaults) -> Path:
    """A small latent-diffusion model with random weights (bicubic first stage, pixel-unshuffle
    latent) in the shipped format, registered under ``name``; returns its JSON path. Random
    weights are enough to test the sampler, the tiling and the I/O; training is tested apart."""
    import json

    import torch
    from safetensors.torch import save_file

    from hires_domain.intensity import Normaliser
    from hires_domain.models.ldm import diffusion_json
    from hires_domain.models.ldm_nets import Denoiser
    from hires_domain.models.neural import register_dir

    torch.manual_seed(seed)
    lc = bands * scale * scale
    net = Denoiser(lc, bands + lc, tuple(channels))
    norm = (Normaliser("hu", bands=["HU"]) if domain == "medical"
            else Normaliser("reflectance", [1e-4] * bands, [0.0] * bands, bands=[f"B{i + 1}" for i in range(bands)]))
    d = {"steps": 4, "sampler": "dpm++", "tile": 64, "overlap": 16, "halo": 16, "level": 0.0,
         "consistency": "enforce" if domain == "medical" else "off", **defaults}
    diffusion = {"codec": {"kind": "pixel-unshuffle", "bands": bands, "scale": scale}, "denoiser": net.hparams(),
                 "first_stage": {"kind": "bicubic"},
                 "scheduler": {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                               "prediction_type": "v_prediction"},
                 "latent_scale": 0.01 if domain == "raster" else 0.02, "max_level": 0.01, "defaults": d}
    meta = diffusion_json(name, norm, domain, norm.bands, scale, diffusion, d["halo"] + d["overlap"])
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({f"denoiser.{k}": v.contiguous() for k, v in net.state_dict().items()},
              str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps(meta))
    register_dir(directory)
    return directory / f"{name}.json"
