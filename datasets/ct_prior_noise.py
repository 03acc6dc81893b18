"""Add prior-noise items to a prepared low-dose CT dataset (stage 2 of ct-denoise).

    python datasets/ct_prior_noise.py data/ct-denoise data/ct-denoise-prior

A real slice already carries its scanner's noise, and the truth a user compares against (the
noise-free reconstruction of that slice) keeps it. A blind denoiser trained only on "simulated
noise on top of a slice" learns to remove any noise of that size, so on a mildly noisy scan whose
own texture looks like simulated noise it removes the scanner's texture too and scores below its
input (CT_small: 41.9 → 29.6 dB soft-tissue PSNR at 1e6 photons, stage 1). Here every training
item ``i`` gets a twin whose target **and** input carry the noise of another acquisition ``j`` of
the same slice (``lr_j − hr_j`` × U(0.2, 1.2)): that noise is part of the truth and must be kept.
Every fourth twin has no simulated noise at all (input = target): an image that is only
"scanner noise" must come back unchanged. Validation items are copied as they are. No Radon
transforms are needed: the noise fields are differences of stored reconstructions.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from hires_domain.data.prepare import Item, write_item

SEED = 0


def main(src: str, dst: str) -> None:
    src, dst = Path(src), Path(dst)
    manifest = json.loads((src / "manifest.json").read_text())
    rng = np.random.default_rng(SEED)
    by_slice: dict = {}
    for rec in manifest["items"]:
        (dst / rec["split"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rec["file"], dst / rec["file"])
        if rec["split"] == "train":
            key = (rec["source"], json.dumps(rec["location"]), rec["params"].get("binning", 1))
            by_slice.setdefault(key, []).append(rec)  # twins share the slice and its grid
    records = list(manifest["items"])
    for recs in by_slice.values():
        for k, rec in enumerate(recs):
            other = recs[(k + 1 + rng.integers(len(recs) - 1)) % len(recs)]
            with np.load(src / rec["file"]) as a, np.load(src / other["file"]) as b:
                prior = (b["lr"] - b["hr"]) * rng.uniform(0.2, 1.2)
                only = k % 4 == 0
                arrays = {"hr": (a["hr"] + prior).astype(np.float32),
                          "lr": ((a["hr"] if only else a["lr"]) + prior).astype(np.float32),
                          "valid": a["valid"], "lr_valid": a["lr_valid"]}
            item = Item(rec["id"] + ("-prior-only" if only else "-prior"), rec["source"], rec["input"],
                        rec["location"], "train", {**rec["params"], "prior_noise_from": other["id"], "prior_only": only})
            records.append({**rec, "id": item.id, "params": item.params, "file": write_item(dst, item, arrays)})
    manifest["items"] = records
    manifest["counts"] = {s: sum(r["split"] == s for r in records) for s in ("train", "val")}
    manifest["prior_noise"] = {"source": str(src), "seed": SEED, "scale": [0.2, 1.2], "prior_only_every": 4}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"wrote {dst}: {manifest['counts']}")


if __name__ == "__main__":
    main(*sys.argv[1:])
