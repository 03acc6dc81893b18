"""The ``input_domain`` block of a shipped model, from the dataset it was trained on.

    hires prepare datasets/s2-sr-x4.yaml data/s2-sr-x4
    python datasets/input_domain.py data/s2-sr-x4 [--model s2-sr-x4] [--write]

Prints the statistics of the LR inputs of the dataset's train split (what the model saw: per-band
p1/p50/p99, min/max in DN or HU, LR and native pixel spacing, modality, bands), computed by
``hires_domain.models.domain.from_dataset``, the same function ``hires train --export`` uses.
``--write`` stores it as the ``input_domain`` key of ``hires_domain/weights/<model>.json``
(no other key is touched). Deterministic: the same dataset gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hires_domain.models.domain import from_dataset

WEIGHTS = Path(__file__).resolve().parents[1] / "hires_domain" / "weights"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset", type=Path, help="a prepared dataset directory (hires prepare)")
    ap.add_argument("--model", help="model name (default: the dataset's name)")
    ap.add_argument("--write", action="store_true", help="store it in hires_domain/weights/<model>.json")
    args = ap.parse_args(argv)
    manifest = json.loads((args.dataset / "manifest.json").read_text())
    block = from_dataset(args.dataset, manifest)
    print(json.dumps(block, indent=1))
    if args.write:
        path = WEIGHTS / f"{args.model or manifest['name']}.json"
        meta = json.loads(path.read_text())
        trained_on = meta.get("training", {}).get("dataset_name")
        if trained_on != manifest["name"]:
            raise SystemExit(f"{path.name} was trained on dataset '{trained_on}', not '{manifest['name']}'")
        meta["input_domain"] = block
        path.write_text(json.dumps(meta, indent=1))
        print(f"wrote input_domain into {path}")
    return block


if __name__ == "__main__":
    main()
