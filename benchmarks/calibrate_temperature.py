"""Calibrate a diffusion model's noise temperature on its dataset's TRAIN split (what ``hires
train`` does at export when ``sampling.temperature`` is not set), and optionally store it.

    python benchmarks/calibrate_temperature.py DATASET_DIR --model NAME [--items 16] [--write]

For each temperature in 0.1..1 (hires_domain.train.ldm_loop.TEMPERATURES) one sample per training item (centre crops of 128 HR pixels);
the value whose geometric-mean single-sample high-frequency energy ratio (hires_domain.metrics)
is closest to 1 is chosen. ``--write`` puts it into the model JSON's ``diffusion.defaults``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hires_domain.models import get_model
from hires_domain.train.dataset import centre_crop, load_split
from hires_domain.train.ldm_loop import calibrate_temperature


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--grid", type=float, nargs="+", help="temperatures to try [default: TEMPERATURES]")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    manifest = json.loads((args.dataset / "manifest.json").read_text())
    items = load_split(args.dataset, manifest, "train")
    scale = int(manifest["scale"])
    probe = [centre_crop(s, scale, args.side) for s in items[::max(1, len(items) // args.items)][:args.items]]
    model = get_model(args.model)
    best, table = calibrate_temperature(model, probe, *([args.grid] if args.grid else []))
    for t, r in table.items():
        print(f"temperature {t:.2f}: single-sample HF energy ratio {r:.3f}{'  <- chosen' if t == best else ''}")
    if args.write:
        meta = json.loads(model.path.read_text())
        meta["diffusion"]["defaults"]["temperature"] = best
        meta.setdefault("training", {})["temperature"] = {"chosen": best, "hf_energy_ratio_on_train_items": table,
                                                          "items": len(probe), "side": args.side}
        model.path.write_text(json.dumps(meta, indent=1))
        print(f"wrote temperature {best} into {model.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
