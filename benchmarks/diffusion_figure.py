"""The picture in docs/diffusion.md: input, SRGAN, one diffusion sample, the mean of N samples,
the uncertainty (per-pixel std over the samples) and the reference, on a held-out item.

    python benchmarks/diffusion_figure.py DATASET_DIR --model s2-ldm-x4 --item 40 --out docs/images/diffusion_s2.png

The LR input is the held-out HR area-averaged by the scale (as benchmarks/heldout_models.py does).
Rasters are shown in true colour (B04, B03, B02) with one 2-98 % stretch taken from the
reference; CT in the soft-tissue window. The uncertainty panel is scaled to its own 99th percentile.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import hires_domain as hd  # noqa: E402
from hires_domain.intensity import ct_window  # noqa: E402
from hires_domain.metrics import block_mean  # noqa: E402
from hires_domain.models import get_model  # noqa: E402

from heldout_models import as_image, items  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--item", type=int, default=0, help="index among the val items")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--crop", type=int, default=0, help="HR pixels of a centre crop to show (0: all)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    manifest = json.loads((args.dataset / "manifest.json").read_text())
    scale, raster = manifest["scale"], manifest["domain"] == "satellite"
    rec, z = list(items(args.dataset, "val"))[args.item]
    lr = as_image(block_mean(np.nan_to_num(z["hr"]), (scale, scale)), manifest, coarser=scale)
    first = get_model(args.model).diffusion["first_stage"].get("from", "bicubic")
    panels = {"input (area x%d, nearest)" % scale: np.repeat(np.repeat(np.asarray(lr.data), scale, -1), scale, -2),
              f"{first}": hd.enhance(lr, model=first, device="cpu").data}
    mean, std = hd.enhance(lr, model=args.model, device="cpu", samples=args.samples, uncertainty=True)
    panels[f"{args.model}: one sample"] = hd.enhance(lr, model=args.model, device="cpu", samples=1).data
    panels[f"mean of {args.samples}"] = mean.data
    panels[f"uncertainty (std of {args.samples})"] = std.data
    panels["reference (held out)"] = z["hr"]
    panels = {k: np.asarray(v, np.float64).reshape(z["hr"].shape) for k, v in panels.items()}
    if args.crop:
        h, w = z["hr"].shape[-2:]
        y, x = (h - args.crop) // 2, (w - args.crop) // 2
        panels = {k: v[..., y:y + args.crop, x:x + args.crop] for k, v in panels.items()}
    ref = panels["reference (held out)"]
    if raster:
        rgb = [manifest["bands"].index(b) for b in ("B04", "B03", "B02")]
        lo, hi = np.percentile(ref[rgb], [2, 98], axis=(1, 2))

        def show(a):
            return np.clip((a[rgb] - lo[:, None, None]) / (hi - lo)[:, None, None], 0, 1).transpose(1, 2, 0)
    else:
        def show(a):
            return ct_window(a[0])
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for ax, (name, a) in zip(axes, panels.items()):
        if name.startswith("uncertainty"):
            u = a.mean(0)
            ax.imshow(u, cmap="magma", vmin=0, vmax=np.percentile(u, 99) or 1)
        else:
            ax.imshow(show(a), cmap=None if raster else "gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{args.model} on held-out item {rec['id']}", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
