"""Build the bundled NIfTI sample: a crop of TotalSegmentator's 1 mm CT head atlas.

Source: the `totalsegmentator` wheel, totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz
(Apache-2.0). Usage: python datasets/samples/make_ct_nifti.py [ATLAS] [OUT]
The crop keeps the header (int16, qform/sform codes) and the exact affine (nibabel slicer).
"""

import sys
from pathlib import Path

import nibabel as nib

ATLAS = "/tmp/dl/ts/totalsegmentator/resources/ct_brain_atlas_1mm.nii.gz"
OUT = Path(__file__).resolve().parents[2] / "hires_domain" / "samples" / "ct_head.nii.gz"


def main(atlas: str = ATLAS, out: Path = OUT) -> None:
    img = nib.load(atlas)
    cx, cy, cz = (n // 2 for n in img.shape)
    crop = img.slicer[cx - 64:cx + 64, cy - 64:cy + 64, cz - 8:cz + 24]
    nib.save(crop, str(out))
    print(f"wrote {out}: {crop.shape}, codes q={int(crop.header['qform_code'])} s={int(crop.header['sform_code'])}")


if __name__ == "__main__":
    main(*sys.argv[1:])
