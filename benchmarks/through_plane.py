"""Through-plane SR benchmark: thin-slice volumes made thick, brought back along z.

    python benchmarks/through_plane.py [--mr PATH] [--k 4] [--train-seconds S] [--timing]

(the numbers in docs/through-plane.md: ``--mr <the template below> --timing``)

Each thin volume (1 mm slices) is made thick by averaging K slices (``thick_slices``, box
profile: K mm slices at K mm spacing, on the grid whose ×K refinement is the thin grid), then
refined ×K along z by nearest, linear, cubic and ``self-sr`` (trained on the thick volume
alone, the default budget unless ``--train-seconds``). Scores against the thin truth from
``hires_domain.metrics`` with the truth's value range: PSNR over the volume and SSIM over the
coronal planes (where through-plane blur and staircases show), on the slices between the first
and last thick-slice centres (outside them every method extrapolates; at even K no thin slice
is contained exactly in the thick volume). Time and peak resident memory above the start of
each call (psutil, sampled every 10 ms). Coronal and sagittal pictures go to docs/images/.

Volumes:
- ``ct_head.nii.gz`` (bundled): the TotalSegmentator CT head atlas crop, 1 mm isotropic.
- the MNI152 2009a T1 template (1 mm; from the ``nilearn`` wheel:
  ``pip download nilearn --no-deps`` and unzip
  ``nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``), axial slices
  ``--mr-slices`` of it.
``--timing`` also times ``hires enhance --model self-sr --z-scale 4`` with default settings on a
512 x 512 x 40 volume (MR axial slices resampled in-plane to 512 x 512).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from hires_domain import geometry, io, pipeline
from hires_domain.data.degradations import thick_slices
from hires_domain.image import Image
from hires_domain.metrics import psnr, ssim

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
MNI = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
METHODS = (("nearest", "nearest"), ("linear", "linear"), ("cubic", "bicubic"), ("self-sr", "self-sr"))


class PeakRSS:
    """Peak resident memory above the level at entry, sampled in a thread."""

    def __enter__(self):
        self.proc, self.start, self.peak, self.stop = psutil.Process(), 0, 0, threading.Event()
        self.start = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.mib = (self.peak - self.start) / 2**20


def make_thick(thin: Image, k: int) -> Image:
    vol = thin.array()[0]
    thick = thick_slices(vol, k).astype(np.float32)
    return dataclasses.replace(thin, data=thick[None], nodata=None,
                               affine=geometry.upscaled_affine(thin.affine, (1 / k, 1, 1)))


def scores(pred: np.ndarray, truth: np.ndarray, k: int) -> dict:
    inner = slice(k // 2, truth.shape[0] - k // 2)  # between the first and last thick-slice centres
    p, t = pred[inner], truth[inner]
    rng = float(truth.max() - truth.min())
    coronal = lambda a: a.transpose(1, 0, 2)[None]  # noqa: E731  (planes at fixed y: (z, x))
    return {"psnr": round(float(psnr(p[None], t[None], rng).value), 3),
            "ssim_coronal": round(float(ssim(coronal(p), coronal(t), rng).value), 4)}


def run_volume(name: str, thin: Image, k: int, seconds: float | None) -> tuple[dict, dict]:
    truth = thin.array()[0]
    thick = make_thick(thin, k)
    n = truth.shape[0] // k * k
    truth = truth[:n]
    rows, outputs = {}, {}
    for label, model in METHODS:
        extra = {"train_seconds": seconds} if model == "self-sr" and seconds else {}
        start = time.perf_counter()
        with PeakRSS() as mem:
            out = pipeline.enhance(thick, model, z_scale=k, **extra)
        took = time.perf_counter() - start
        assert np.allclose(out.affine, geometry.cropped_affine(thin.affine, (0, 0, 0)), atol=1e-6)
        outputs[label] = out.array()[0]
        rows[label] = {**scores(outputs[label], truth, k), "seconds": round(took, 1), "peak_mib": round(mem.mib)}
        print(name, label, rows[label], flush=True)
    outputs["truth"], outputs["thick"] = truth, np.repeat(thick.array()[0], k, axis=0)
    return rows, outputs


def pictures(name: str, outputs: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ("truth", "thick", "cubic", "self-sr")
    written = []
    vol = outputs["truth"]
    window = np.percentile(vol, [1, 99.5])
    for view, take in (("coronal", lambda a: a[:, a.shape[1] // 2, :]), ("sagittal", lambda a: a[:, :, a.shape[2] // 2])):
        h, w = take(vol).shape
        fig, axes = plt.subplots(2, 2, figsize=(10, 10 * h / w + 0.8))
        for ax, key in zip(axes.ravel(), panels):
            ax.imshow(take(outputs[key])[::-1], cmap="gray", vmin=window[0], vmax=window[1],
                      interpolation="nearest", aspect="equal")
            ax.set_title(key if key != "thick" else "thick (shown at thin spacing)")
            ax.axis("off")
        fig.tight_layout()
        path = IMAGES / f"through_plane_{name}_{view}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path.relative_to(ROOT)))
    return written


def timing(mr: Image, tmp: Path) -> dict:
    """Default ``hires enhance --model self-sr --z-scale 4`` on a 512 x 512 x 40 volume."""
    import torch.nn.functional as F
    import torch
    import nibabel as nib

    vol = mr.array()[0]
    mid = vol.shape[0] // 2
    slab = torch.from_numpy(np.ascontiguousarray(vol[mid - 20:mid + 20]))[:, None]
    big = F.interpolate(slab, size=(512, 512), mode="bicubic", align_corners=False)[:, 0].numpy()
    affine = mr.affine.copy()
    affine[:3, 0] *= 4  # 4 mm slices
    src, dst = tmp / "t512.nii.gz", tmp / "t512_thin.nii.gz"
    nib.save(nib.Nifti1Image(big.T.astype(np.float32), geometry.nifti_from_affine(affine)), src)
    start = time.perf_counter()
    with PeakRSS() as mem:
        summary = pipeline.enhance_file(src, dst, pipeline.Settings("self-sr", z_scale=4), overwrite=True)
    return {"shape": list(big.shape), "seconds": round(time.perf_counter() - start, 1),
            "peak_mib": round(mem.mib), "notes": summary.notes}


def mni_template() -> Path | None:
    """The MNI152 2009a T1 template shipped in the nilearn wheel, when nilearn is installed."""
    try:
        from importlib import resources

        path = Path(str(resources.files("nilearn") / "datasets" / "data" / MNI))
    except ImportError:
        return None
    return path if path.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mr", type=Path, default=None, help="the MNI152 T1 template [default: nilearn's, if installed]")
    ap.add_argument("--mr-slices", default="60:124", help="axial slice range of the MR template (start:stop)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--train-seconds", type=float, default=None)
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "through_plane.json")
    args = ap.parse_args()
    import torch

    result = {"k": args.k, "profile": "box", "threads": torch.get_num_threads(),
              "machine": "2-core AMD EPYC (AVX-512), shared with other jobs during the run", "volumes": {}}
    ct = io.read(ROOT / "hires_domain" / "samples" / "ct_head.nii.gz")
    vols = {"ct_head": ct}
    if args.mr is None:
        args.mr = mni_template()
    if args.mr is not None and args.mr.is_file():
        mr = io.read(args.mr)
        a, b = (int(v) for v in args.mr_slices.split(":"))
        vols["mni152_t1"] = dataclasses.replace(mr, data=mr.array()[:, a:b].copy(),
                                                affine=geometry.cropped_affine(mr.affine, (a, 0, 0)))
    else:
        print(f"MR template not found ({args.mr}; see --mr): skipped")
    for name, thin in vols.items():
        rows, outputs = run_volume(name, thin, args.k, args.train_seconds)
        gain = rows["self-sr"]["psnr"] - rows["cubic"]["psnr"]
        result["volumes"][name] = {"shape": list(thin.spatial_shape), "spacing_mm": thin.spacing.round(3).tolist(),
                                   "methods": rows, "self_sr_minus_cubic_db": round(gain, 2),
                                   "pictures": pictures(name, outputs)}
    if args.timing and "mni152_t1" in vols:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            full = io.read(args.mr)
            result["timing_512x512x40"] = timing(full, Path(tmp))
            print(result["timing_512x512x40"], flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
