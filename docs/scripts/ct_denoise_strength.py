"""Figure for the denoising strength: ct-denoise at strength 0, 0.5 and 1 on a real head CT slice.

    python docs/scripts/ct_denoise_strength.py [OUT_PNG]     # default docs/images/ct_denoise_strength.png

The slice is pydicom's J2K_pixelrep_mismatch.dcm (an axial head CT, 512 x 512, −2000 HU padding
outside the field of view), cropped to the posterior fossa and temporal lobes and shown in the
brain window (C40/W80). Each panel says how much of the input's fine-scale variation (the
standard deviation of image − Gaussian(σ = 1.5 px) over brain pixels, 0..80 HU) it keeps.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from scipy import ndimage  # noqa: E402

import hires_domain as hd  # noqa: E402
from hires_domain import geometry  # noqa: E402
from hires_domain.intensity import CT_WINDOWS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CROP = (slice(180, 440), slice(130, 430))  # rows, columns of the 512 x 512 slice (with a margin)
SHOW = (slice(20, 240), slice(20, 280))  # inside the crop: what the panels show
STRENGTHS = (0.0, 0.5, 1.0)


def fine_scale(a: np.ndarray, mask: np.ndarray) -> float:
    return float(np.std((a - ndimage.gaussian_filter(a, 1.5))[mask]))


def main(out: Path = ROOT / "docs" / "images" / "ct_denoise_strength.png") -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = hd.read(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    (ys, xs) = CROP
    crop = image.with_data(image.array()[:, :, ys, xs].copy())
    crop.affine = geometry.cropped_affine(image.affine, (0, ys.start, xs.start))
    results = {s: hd.enhance(crop, "ct-denoise", strength=s, device="cpu").array()[0, 0] for s in STRENGTHS}
    c, w = CT_WINDOWS["brain"]
    source = results[0.0][SHOW]
    brain = (source > 0) & (source < 80)
    brain = ndimage.binary_erosion(brain, iterations=3)
    base = fine_scale(source, brain)

    fig, axes = plt.subplots(1, len(STRENGTHS), figsize=(4.2 * len(STRENGTHS), 4.0), dpi=110)
    for ax, s in zip(axes, STRENGTHS):
        a = results[s][SHOW]
        ax.imshow(a, cmap="gray", vmin=c - w / 2, vmax=c + w / 2, interpolation="nearest")
        kept = fine_scale(a, brain) / base
        what = "input (strength 0)" if s == 0 else f"ct-denoise, strength {s:g}"
        ax.set_title(f"{what}\nfine-scale variation kept: {kept:.0%}", fontsize=10)
        ax.set_axis_off()
    fig.suptitle("Head CT (pydicom J2K_pixelrep_mismatch.dcm), brain window C40/W80", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print("wrote", out)


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:]))
