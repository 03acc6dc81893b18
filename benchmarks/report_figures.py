"""Regenerate the report figures quoted in docs/metrics.md from the bundled real samples.

Builds LR inputs by area (block-mean) downsampling of the Sentinel-2 crop (x4) and of the CT
NIfTI crop (x2 in-plane), runs `hires benchmark` with the baselines (and `--is`, the Inception
Score, when its offline Inception weights are found: `hires weights`), and screenshots the HTML
report with headless Chromium when it is installed (Debian package `chromium`).

    python benchmarks/report_figures.py [OUT_DIR]      # default docs/images
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "hires_domain" / "samples"


def s2_lr(dst: Path) -> None:
    with rasterio.open(SAMPLES / "s2_crop.tif") as src:
        profile, data, desc, scales = src.profile, src.read().astype(float), src.descriptions, src.scales
    c, h, w = data.shape
    lr = np.rint(data.reshape(c, h // 4, 4, w // 4, 4).mean(axis=(2, 4))).astype("uint16")
    profile.update(width=w // 4, height=h // 4, transform=profile["transform"] @ rasterio.Affine.scale(4))
    with rasterio.open(dst, "w", **profile) as out:
        out.write(lr)
        out.descriptions, out.scales = desc, scales


def ct_lr(dst: Path) -> None:
    img = nib.load(SAMPLES / "ct_head.nii.gz")
    d = img.get_fdata()
    i, j, k = d.shape
    lr = d.reshape(i // 2, 2, j // 2, 2, k).mean(axis=(1, 3))
    aff = img.affine @ np.diag([2, 2, 1, 1.0])
    aff[:3, 3] = img.affine[:3, 3] + img.affine[:3, :2] @ [0.5, 0.5]
    nib.save(nib.Nifti1Image(lr.astype(np.float32), aff), str(dst))


def hires(*args) -> None:
    subprocess.run([sys.executable, "-m", "hires_domain", *map(str, args)], check=True)


def screenshot(html: Path, png: Path) -> None:
    exe = shutil.which("chromium")
    if not exe:
        print("chromium not installed: skipping the screenshot of", html)
        return
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--window-size=1300,2300", f"--screenshot={png}",
                        html.as_uri()], check=True, capture_output=True)


def is_option() -> list[str]:
    """``--is`` when IS can run; `hires benchmark --is` refuses without its weights."""
    from hires_domain.metrics.weights import metric_status

    status = metric_status("is")
    if not status["available"]:
        print(f"{status['reason']}: the reports go without IS")
    return ["--is"] if status["available"] else []


def main(out: Path = ROOT / "docs" / "images") -> None:
    out.mkdir(parents=True, exist_ok=True)
    with_is = is_option()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        s2_lr(tmp / "s2_lr.tif")
        ct_lr(tmp / "ct_lr.nii.gz")
        for name, lr, hr, extra in [("s2", tmp / "s2_lr.tif", SAMPLES / "s2_crop.tif", []),
                                    ("ct", tmp / "ct_lr.nii.gz", SAMPLES / "ct_head.nii.gz", ["--window", "brain"])]:
            manifest = tmp / f"{name}.json"
            manifest.write_text(json.dumps({"items": [{"id": f"{name} sample", "lr": str(lr), "hr": str(hr)}]}))
            hires("benchmark", manifest, "--models", "nearest,bicubic,lanczos", "--tile", "32", "--overlap", "8",
                  "--device", "cpu", *extra, *with_is, "--json", out / f"benchmark_{name}.json",
                  "--report", tmp / f"{name}.html", "--figures", tmp / f"{name}_figs", "--overwrite")
            shutil.copy(tmp / f"{name}_figs" / "figure_00.png", out / f"benchmark_{name}_crops.png")
            screenshot(tmp / f"{name}.html", out / f"benchmark_{name}_report.png")


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:]))
