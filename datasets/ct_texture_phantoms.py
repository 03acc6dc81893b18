"""Texture phantoms for the blind CT denoiser (stage 5 of ct-denoise).

    python datasets/ct_texture_phantoms.py data/ct-phantoms [--count 32] [--size 256] [--seed 0]
    python datasets/ct_texture_phantoms.py data/ct-phantoms-small --pixel-mm 0.25 0.6 --seed 1
    python datasets/ct_texture_phantoms.py data/ct-phantoms-smooth --style smooth --pixel-mm 0.5 1.2 --seed 2

Four real training slices teach four anatomies: the network learns their content as well as the
noise, and erases texture it has never seen (CT_small's muscle and trabecular bone). Each phantom
here is a body-sized slice in HU (an elliptic body with a fat rim, soft tissue, bone and air/lung
pockets) whose texture comes from real images of other kinds, so that the simulated scanner
(``hires prepare``) shows the network many more textures next to the same FBP noise. Small pixels
(``--pixel-mm 0.25 0.6``: a 6-15 cm object, as a wrist, a child or a small-FOV reconstruction) give
dense detail at little attenuation, hence little noise: detail the network must keep.
``--style smooth`` (stage 8) makes the other half of real anatomy: organs of nearly flat soft
tissue (a few HU of texture, shallow gradients, sharp borders between levels a few tens of HU
apart, small enhanced vessels), as brain, liver or kidney, where any mottle left is noise.
Texture sources:

- scikit-image's bundled images (camera, brick, grass, gravel, moon, coins, text, page,
  astronaut, coffee, chelsea, rocket, hubble_deep_field, retina, immunohistochemistry, cell:
  public domain / CC0 / CC-BY, see ``skimage/data/README.txt``);
- pydicom-data's real radiographs (RG1, RG3: trabecular bone), ultrasound (US1: speckle) and MR
  (MR2, emri_small) images, and pydicom's ``MR_small.dcm``.

The reserved CT slices (CT_small, 693_UNCI, eCT_Supplemental) are never used. One NIfTI file per
phantom (values in HU, its own pixel size in the header); same seed, same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

SKIMAGE = ["camera", "brick", "grass", "gravel", "moon", "coins", "text", "page", "astronaut", "coffee",
           "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry", "cell"]
DICOM = [("pydicom-data", "RG1_UNCI.dcm"), ("pydicom-data", "RG3_UNCI.dcm"), ("pydicom-data", "US1_UNCI.dcm"),
         ("pydicom-data", "MR2_UNCI.dcm"), ("pydicom-data", "emri_small.dcm"), ("pydicom", "MR_small.dcm")]


def textures() -> list[np.ndarray]:
    """Every texture source as a 2-D float image."""
    import pydicom
    import skimage.data
    from skimage.color import rgb2gray

    from hires_domain.data.recipes import package_root

    out = []
    for name in SKIMAGE:
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
        out.append(rgb2gray(img[..., :3]) if img.ndim == 3 else img)
    for package, name in DICOM:
        px = pydicom.dcmread(package_root(package) / name).pixel_array.astype(np.float64)
        px = px.reshape(-1, *px.shape[-2:])[0] if px.ndim > 2 and px.shape[-1] not in (3, 4) else px
        out.append(px.mean(axis=-1) if px.ndim == 3 else px)
    return out


def _field(rng: np.random.Generator, sources: list[np.ndarray], size: int) -> np.ndarray:
    """A random crop of a random texture, zoomed, turned and flipped to ``size``², scaled to 0..1."""
    src = sources[rng.integers(len(sources))]
    side = int(min(src.shape) * rng.uniform(0.4, 1.0))
    r0 = rng.integers(src.shape[0] - side + 1)
    c0 = rng.integers(src.shape[1] - side + 1)
    crop = ndimage.zoom(src[r0:r0 + side, c0:c0 + side], size / side, order=1)[:size, :size]
    crop = np.rot90(crop, rng.integers(4))
    crop = crop[:, ::-1] if rng.uniform() < 0.5 else crop
    lo, hi = np.percentile(crop, [1, 99])
    return np.clip((crop - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _blobs(rng: np.random.Generator, sources, size: int, fraction: float) -> np.ndarray:
    """A mask of about ``fraction`` of the slice: the top of a smoothed texture."""
    smooth = ndimage.gaussian_filter(_field(rng, sources, size), rng.uniform(2.0, 8.0))
    return smooth > np.quantile(smooth, 1.0 - fraction)


def _textured(rng: np.random.Generator, sources, size: int, level, amplitude) -> np.ndarray:
    """A tissue: a level in HU (uniform in ``level``) with a texture of ``amplitude`` HU across."""
    base, amp = rng.uniform(*level), rng.uniform(*amplitude)
    return base + amp * (_field(rng, sources, size) - 0.5)


def _organs(rng: np.random.Generator, sources, size: int) -> np.ndarray:
    """Smooth soft tissue: 3-8 organs at their own level (-20..80 HU) over a background organ,
    each with a shallow gradient and a few HU of texture, plus small enhanced vessels."""
    hu = np.full((size, size), rng.uniform(20, 60))
    for _ in range(rng.integers(3, 9)):
        organ = _blobs(rng, sources, size, rng.uniform(0.03, 0.3))
        hu = np.where(organ, rng.uniform(-20, 80), hu)
    hu += rng.uniform(0, 15) * (ndimage.gaussian_filter(_field(rng, sources, size), size / 16) - 0.5)
    hu += rng.uniform(0, 6) * (_field(rng, sources, size) - 0.5)
    vessels = _blobs(rng, sources, size, rng.uniform(0.0, 0.02))
    return np.where(vessels, rng.uniform(100, 300), hu)


def phantom(rng: np.random.Generator, sources, size: int, pixel_mm=(0.7, 1.4),
            style: str = "textured") -> tuple[np.ndarray, float]:
    """One slice in HU and its pixel size in mm (uniform in ``pixel_mm``); ``style`` "textured"
    (stages 5-6) or "smooth" (flat organs, stage 8)."""
    pixel = rng.uniform(*pixel_mm)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2.0
    a = rng.uniform(0.30, 0.47) * size
    b = a * rng.uniform(0.65, 1.0)
    t = rng.uniform(0, np.pi)
    u, v = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
    wobble = 1.0 + 0.04 * ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 8) * size / 8
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2) / wobble
    body = r < 1.0
    rim = body & (r > 1.0 - rng.uniform(3.0, 20.0) / pixel / a)
    if style == "smooth":
        hu = _organs(rng, sources, size)
        fat_texture = (1, 8)
    else:
        hu = _textured(rng, sources, size, (20, 70), (15, 120))
        hu += rng.uniform(0, 60) * (_field(rng, sources, size) - 0.5)  # a second, independent texture
        fat_texture = (5, 40)
    fat = rim | _blobs(rng, sources, size, rng.uniform(0.03, 0.25))
    hu = np.where(fat, _textured(rng, sources, size, (-120, -80), fat_texture), hu)
    bone = _blobs(rng, sources, size, rng.uniform(0.01, 0.08)) & (r < 0.9)
    hu = np.where(bone, _textured(rng, sources, size, (250, 1200), (100, 500)), hu)
    if rng.uniform() < 0.5:  # lung or bowel gas
        air = _blobs(rng, sources, size, rng.uniform(0.02, 0.2)) & (r < 0.85)
        hu = np.where(air, _textured(rng, sources, size, (-900, -700), (20, 150)), hu)
    hu = np.where(body, ndimage.gaussian_filter(hu, rng.uniform(0.3, 1.0)), -1000.0)
    return hu.astype(np.float32), float(pixel)


def main() -> None:
    import nibabel as nib

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--count", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pixel-mm", type=float, nargs=2, default=(0.7, 1.4), metavar=("LO", "HI"))
    ap.add_argument("--style", choices=("textured", "smooth"), default="textured")
    args = ap.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = textures()
    for k in range(args.count):
        hu, pixel = phantom(np.random.default_rng([args.seed, k]), sources, args.size, args.pixel_mm, args.style)
        img = nib.Nifti1Image(np.ascontiguousarray(hu.T[:, :, None]), np.diag([pixel, pixel, pixel, 1.0]))
        img.header.set_xyzt_units("mm")
        tmp = out / f".phantom-{k:03d}.nii.gz"
        nib.save(img, tmp)
        tmp.rename(out / f"phantom-{k:03d}.nii.gz")
    print(f"{args.count} phantoms in {out}")


if __name__ == "__main__":
    main()
