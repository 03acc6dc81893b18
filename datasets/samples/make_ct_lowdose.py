"""Build the bundled low-dose CT sample: a real scanner slice at a simulated low dose, as NIfTI.

Source: pydicom-data's `693_UNCI.dcm` (a real 512² CT slice; reserved for validation, never
trained on). Its HU inside the field of view go through the recipe's physics (datasets/ct-denoise.yaml:
parallel-beam projection, Poisson counts at PHOTONS per detector bin, electronic noise, FBP with
FILTER); outside the field of view the scanner's own noisy padding (around −3000 HU) is kept, as a
slice converted from DICOM to NIfTI has it. Writes the low-dose slice and its noise-free
reconstruction (the truth), int16 HU, with the slice's patient geometry (LPS → RAS).

    python datasets/samples/make_ct_lowdose.py [OUT_DIR]
"""

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

from hires_domain.data import degradations as deg
from hires_domain.data.recipes import PACKAGES

OUT = Path(__file__).resolve().parents[2] / "hires_domain" / "samples"
PHOTONS, N_ANGLES, FILTER, ELECTRONIC, SEED = 2.0e4, 720, "shepp-logan", 1.0, 0


def ras_affine(ds) -> np.ndarray:
    """NIfTI voxel (column, row, slice) → RAS mm, from the DICOM geometry."""
    iop = np.asarray(ds.ImageOrientationPatient, float)
    row_dir, col_dir = iop[:3], iop[3:]
    dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = row_dir * dc, col_dir * dr
    lps[:3, 2] = np.cross(row_dir, col_dir) * float(getattr(ds, "SliceThickness", 1.0) or 1.0)
    lps[:3, 3] = np.asarray(ds.ImagePositionPatient, float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def main(out_dir: Path = OUT) -> None:
    import importlib

    module, folder, _ = PACKAGES["pydicom-data"]
    src = Path(importlib.import_module(module).__file__).parent / folder / "693_UNCI.dcm"
    ds = pydicom.dcmread(src)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    padding = hu < -1024
    body = np.where(padding, -1000.0, hu)  # air outside the field of view for the simulation
    pixel = float(np.mean([float(v) for v in ds.PixelSpacing]))
    sino = deg.ct_sinogram(body, pixel, N_ANGLES)
    truth = deg.ct_reconstruct(sino, pixel, body.shape[0], FILTER)
    low = deg.ct_reconstruct(deg.ct_counts(sino, PHOTONS, np.random.default_rng(SEED), ELECTRONIC),
                             pixel, body.shape[0], FILTER)
    affine = ras_affine(ds)
    out_dir = Path(out_dir)
    for name, arr in (("ct_lowdose.nii.gz", low), ("ct_lowdose_truth.nii.gz", truth)):
        arr = np.where(padding, hu, np.clip(np.rint(arr), -1024, 3071)).astype(np.int16)
        img = nib.Nifti1Image(arr.T[:, :, None], affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header["descrip"] = (f"693_UNCI at {PHOTONS:g} photons, {N_ANGLES} views, {FILTER}"
                                 if "truth" not in name else "693_UNCI noise-free reconstruction")
        nib.save(img, str(out_dir / name))
        print(f"wrote {out_dir / name}: {arr.shape}, padding {padding.mean():.0%}")


if __name__ == "__main__":
    main(*sys.argv[1:])
