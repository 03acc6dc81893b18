"""`hires demo`: the main job on the bundled real samples, with a summary and previews."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from . import io
from .intensity import ct_window, stretch
from .pipeline import Settings, enhance_file
from .report import uncertainty_rgb

SAMPLES = resources.files("hires_domain") / "samples"

# (label, sample, output name, settings)
JOBS = [
    ("Low-dose CT slice (NIfTI: real 693_UNCI, simulated 2e4 photons) -> blind denoiser", "ct_lowdose.nii.gz",
     "ct_lowdose_denoised.nii.gz", Settings("ct-denoise", 1)),
    ("Low-dose CT slice, denoiser at strength 0.5", "ct_lowdose.nii.gz", "ct_lowdose_denoised_s05.nii.gz",
     Settings("ct-denoise", 1, strength=0.5)),
    ("CT series (DICOM) -> derived series", "ct_head_series", "ct_series_x2",
     Settings("bicubic", 2, 128, 16)),
    ("CT volume (NIfTI)", "ct_head.nii.gz", "ct_head_x2.nii.gz", Settings("bicubic", 2, 128, 16)),
    ("Sentinel-2 B02,B03,B04,B08 crop (GeoTIFF), shipped model", "s2_crop.tif", "s2_crop_x4.tif",
     Settings("s2-sr-x4", 4, 128, 16)),
    ("Sentinel-2 crop, bicubic baseline for comparison", "s2_crop.tif", "s2_crop_x4_bicubic.tif",
     Settings("bicubic", 4, 128, 16)),
    ("Sentinel-2 product (13 band files at 10/20/60 m) -> every band at 10 m, guided by the 10 m bands",
     "s2_product", "s2_product_10m.tif", Settings("s2-sharpen", 1)),
    ("Sentinel-2 crop, latent diffusion: mean of 3 samples + uncertainty", "s2_crop.tif", "s2_crop_x4_ldm.tif",
     Settings("s2-ldm-x4", 4, 256, 32, steps=10, samples=3, seed=0, uncertainty=True)),
]


def uncertainty_path(dst: Path) -> Path:
    return dst.with_name(dst.name.replace(".tif", "_uncertainty.tif"))


def preview(src: Path, dst: Path, png: Path, unc: Path | None = None) -> None:
    """Side-by-side PNG: input (pixel-replicated to the output grid) | output [| uncertainty,
    the band-mean std scaled to its 99th percentile in the magma colours]."""
    a, b = io.read(src), io.read(dst)

    def rgb(img):
        data = img.array()
        if img.kind == "raster":
            valid = np.all(data != img.nodata, axis=0) if img.nodata is not None else None
            return stretch(data[[2, 1, 0]], valid).transpose(1, 2, 0)
        mid = ct_window(data[0, data.shape[1] // 2], "brain")
        return np.repeat(mid[..., None], 3, axis=2)

    left, right = rgb(a), rgb(b)
    k = right.shape[0] // left.shape[0]
    left = left.repeat(k, axis=0).repeat(k, axis=1)
    panels = [left, np.ones((left.shape[0], 8, 3)), right]
    if unc is not None:
        panels += [np.ones((left.shape[0], 8, 3)), uncertainty_rgb(io.read(unc).array())]
    PILImage.fromarray((np.concatenate(panels, axis=1) * 255).astype(np.uint8)).save(png)


SHARPEN_SHOWN = ("B05", "B11", "B12")  # red edge and SWIR, natively 20 m


def sharpen_preview(src: Path, dst: Path, png: Path) -> None:
    """Rows B05 / B11 / B12: the band resampled onto the 10 m grid (cubic) | sharpened."""
    a, b = io.read(src), io.read(dst)
    cubic, sharp = a.array(), b.array()
    rows = []
    for name in SHARPEN_SHOWN:
        k = a.band_names.index(name)
        lo, hi = np.percentile(sharp[k], [1, 99])
        pair = [np.clip((x[k] - lo) / max(hi - lo, 1e-6), 0, 1) for x in (cubic, sharp)]
        rows.append(np.concatenate([pair[0], np.ones((pair[0].shape[0], 8)), pair[1]], axis=1))
        rows.append(np.ones((8, rows[-1].shape[1])))
    PILImage.fromarray((np.concatenate(rows[:-1], axis=0) * 255).astype(np.uint8)).save(png)


CT_TRUTH = "ct_lowdose_truth.nii.gz"  # the sample's noise-free reconstruction
CT_CROP = (slice(150, 350), slice(130, 330))  # brain and skull, 200 x 200 px


def ct_denoise_panel(out_dir: Path, denoised: list[Path]) -> tuple[Path, str]:
    """Soft-tissue-window crops input | results | truth side by side, and a table of soft-tissue
    PSNR/SSIM of each against the truth (``metrics.evaluate_pair``)."""
    from .metrics import evaluate_pair

    truth = io.read(Path(str(SAMPLES / CT_TRUTH)))
    images = [("low-dose input", io.read(Path(str(SAMPLES / "ct_lowdose.nii.gz"))))]
    images += [(p.name, io.read(p)) for p in denoised] + [("truth (noise-free reconstruction)", truth)]
    crops, lines = [], ["| image | soft-tissue PSNR dB | soft-tissue SSIM |", "|---|---|---|"]
    for label, img in images:
        hu = img.array()[0, 0]
        if img.nodata is not None:
            hu = np.where(hu == img.nodata, -1024.0, hu)
        crops += [ct_window(hu[CT_CROP], "soft-tissue"), np.ones((hu[CT_CROP].shape[0], 6))]
        if img is not truth:
            m = evaluate_pair(img, truth, window="soft-tissue")["metrics"]
            lines.append(f"| {label} | {m['psnr']['value']:.2f} | {m['ssim']['value']:.4f} |")
    png = out_dir / "ct_lowdose_preview.png"
    PILImage.fromarray((np.concatenate(crops[:-1], axis=1) * 255).astype(np.uint8)).save(png)
    return png, "\n".join(lines)


def run_demo(out_dir: Path, device: str = "auto", quiet: bool = False, console=None, runner=None) -> list[dict]:
    """Run every job, write outputs, previews and summary.{json,md} into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, sample, name, settings in JOBS:
        settings = dataclasses.replace(settings, device=device)
        src, dst = Path(str(SAMPLES / sample)), out_dir / name

        unc = uncertainty_path(dst) if settings.uncertainty else None

        def job(progress, src=src, dst=dst, settings=settings, unc=unc):
            return enhance_file(src, dst, settings, overwrite=True, progress=progress, uncertainty=unc)

        s = runner(job, quiet, label, "tiles" if settings.sampling is None else "steps") if runner else job(None)
        png = out_dir / (name.split(".")[0] + "_preview.png")
        if sample == "ct_lowdose.nii.gz":
            png = out_dir / "ct_lowdose_preview.png"
        elif settings.model == "s2-sharpen":
            sharpen_preview(src, dst, png)
        else:
            preview(src, dst, png, unc)
        rows.append({"job": label, "input": s.input, "output": s.output, "model": s.model, "scale": s.scale,
                     "in_shape": list(s.in_shape), "out_shape": list(s.out_shape),
                     "seconds": round(s.seconds, 2), "device": s.device, "preview": png.name,
                     "output_bytes": sum(f.stat().st_size for f in ([dst] if dst.is_file() else dst.iterdir())),
                     **({"uncertainty": unc.name} if unc else {})})
        if console and not quiet:
            console.print(f"{label}: {s.in_shape} -> {s.out_shape} in {s.seconds:.1f} s -> {dst}")
    (out_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    lines = ["| job | model | input shape | output shape | output MiB | seconds | device |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['job']} | {r['model']} x{r['scale']} | {r['in_shape']} | {r['out_shape']} | "
              f"{r['output_bytes'] / 2**20:.1f} | {r['seconds']} | {r['device']} |" for r in rows]
    denoised = [out_dir / name for _, sample, name, _ in JOBS if sample == "ct_lowdose.nii.gz"]
    _, ct_table = ct_denoise_panel(out_dir, denoised)
    lines += ["", "Low-dose CT against its noise-free reconstruction (ct_lowdose_preview.png: input | "
              "denoised | strength 0.5 | truth, soft-tissue window):", "", ct_table]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    if console and not quiet:
        console.print(f"summary: {out_dir / 'summary.md'}")
    return rows
