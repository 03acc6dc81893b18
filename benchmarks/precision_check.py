"""Reduced-precision check of a shipped model: held-out PSNR at bf16 (or fp16) against fp32.

    python benchmarks/precision_check.py DATASET_DIR --model NAME [--precision bf16] [--write]

Every val item of DATASET_DIR (``hires prepare`` output; held out by the recipe's split rule)
is enhanced from its stored LR (the recipe's degradation) at fp32 and at the reduced precision,
each scored against the HR with ``hires_domain.metrics`` (PSNR, SSIM). ``--write`` records the
result as ``"precision": {PREC: {...}}`` in the model's JSON: ``--precision auto`` then uses the
reduced precision on fast hardware only when ``delta_db`` (reduced − fp32 PSNR) ≥ −0.1 dB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np
from heldout_models import as_image, items

import hires_domain as hd
from hires_domain.metrics import evaluate_pair
from hires_domain.models import get_model


def check(dataset: Path, model: str, precision: str) -> dict:
    manifest = json.loads((dataset / "manifest.json").read_text())
    scale = manifest["scale"]
    psnr: dict = {"fp32": [], precision: []}
    ssim: dict = {"fp32": [], precision: []}
    max_diff, n = 0.0, 0
    for _, z in items(dataset, "val"):
        hr = as_image(z["hr"], manifest, z["valid"])
        lr = as_image(z["lr"], manifest, coarser=scale)
        preds = {p: hd.enhance(lr, model=model, scale=scale, device="cpu", precision=p) for p in psnr}
        for p, pred in preds.items():
            m = evaluate_pair(pred, hr, lr if scale > 1 else None)["metrics"]
            psnr[p].append(m["psnr"]["value"])
            ssim[p].append(m["ssim"]["value"])
        max_diff = max(max_diff, float(np.nanmax(np.abs(preds[precision].data - preds["fp32"].data))))
        n += 1
    mean = {p: float(np.mean(v)) for p, v in psnr.items()}
    return {"psnr_fp32": round(mean["fp32"], 4), "psnr": round(mean[precision], 4),
            "delta_db": round(mean[precision] - mean["fp32"], 4),
            "ssim_fp32": round(float(np.mean(ssim["fp32"])), 5), "ssim": round(float(np.mean(ssim[precision])), 5),
            "max_abs_diff": round(max_diff, 3), "units": "HU" if manifest["domain"] != "satellite" else "DN",
            "items": n, "data": f"val split of dataset {manifest['name']} (held out)",
            "machine": f"{platform.machine()} CPU", "date": datetime.date.today().isoformat()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp16"))
    ap.add_argument("--write", action="store_true", help="record the check in the model's JSON")
    args = ap.parse_args()
    result = check(args.dataset, args.model, args.precision)
    print(json.dumps({args.precision: result}, indent=1))
    if args.write:
        path = get_model(args.model).path
        meta = json.loads(path.read_text())
        meta.setdefault("precision", {})[args.precision] = result
        path.write_text(json.dumps(meta, indent=1))
        print(f"recorded in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
