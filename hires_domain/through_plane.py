"""Through-plane refinement (``--z-scale K``): K output slices per input slice of a volume.

The new grid follows ``geometry.upscaled_affine`` with factors (K, 1, 1): spacing old/K, first
centre moved by (1/K − 1)/2 old steps along the slice axis, so new slice i' samples old index
(i' + 0.5)/K − 0.5 and the footprint is kept. The slice axis is refined by

- ``nearest``, ``linear`` or ``cubic`` interpolation along z (torch's kernels; cubic is the Keys
  a = −0.75 kernel of the ``bicubic`` baseline, edge slices replicated), or
- ``self-sr`` (``models/self_sr.py``): a network trained on the input's own in-plane slices.

``z_method`` maps ``--model`` to one of them: ``nearest``, ``linear`` and ``self-sr`` are their
own method; every other model (``bicubic``, ``lanczos``, trained in-plane models) uses cubic.
Volumes whose slice step is not along the slice normal (gantry tilt) are refused; DICOM series
with uneven slice spacing are already refused by the reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import geometry
from .errors import HiresError
from .image import Image
from .intensity import HU_PADDING_BELOW

Progress = Callable[[int, int], None]
MAX_Z_SCALE = 16
MAX_TILT_DEGREES = 0.5
PROFILES = ("box", "gaussian")
_OWN = {"nearest": "nearest", "linear": "linear", "self-sr": "self-sr"}
ROWS_PER_CALL = 32


def z_method(model: str) -> str:
    """How ``model`` refines the slice axis: nearest, linear, cubic or self-sr."""
    return _OWN.get(model, "cubic")


def check_z_scale(k) -> int:
    """``k`` as an int in 1..MAX_Z_SCALE, else a one-line HiresError."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_Z_SCALE:
        raise HiresError(f"--z-scale must be an integer from 1 to {MAX_Z_SCALE}, got {k!r}")
    return int(k)


def check_volume(image: Image, k: int) -> None:
    """Refuse what cannot be refined along z: rasters, 2-D images, single slices, gantry tilt."""
    if k == 1:
        return
    if image.kind == "raster":
        raise HiresError("--z-scale applies to medical volumes (DICOM/NIfTI), not rasters")
    shape = image.spatial_shape
    if len(shape) != 3:
        raise HiresError(f"--z-scale {k} needs a 3-D volume; the image is {len(shape)}-D")
    if shape[0] < 2:
        raise HiresError(f"--z-scale {k} needs at least 2 slices; the volume has 1")
    tilt = tilt_degrees(image.affine)
    if tilt > MAX_TILT_DEGREES:
        raise HiresError(f"slices are stacked {tilt:.1f} degrees off their normal (gantry tilt): --z-scale "
                         "needs an orthogonal stack; resample the volume first")


def check_self_sr_options(profile: str | None, thickness, seconds) -> None:
    """One-line refusals of a bad --slice-profile, --thickness or --train-seconds."""
    if profile is not None and profile not in PROFILES:
        raise HiresError(f"--slice-profile must be one of {', '.join(PROFILES)}, got '{profile}'")
    for name, value in (("--thickness", thickness), ("--train-seconds", seconds)):
        if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise HiresError(f"{name} must be a positive number, got {value!r}")


def tilt_degrees(affine: np.ndarray) -> float:
    """Angle between the slice step (the z column) and the normal of the slice plane."""
    d = geometry.directions(affine)
    normal = np.cross(d[:, 1], d[:, 2])
    cos = abs(float(d[:, 0] @ normal)) / max(float(np.linalg.norm(normal)), 1e-12)
    return float(np.degrees(np.arccos(min(cos, 1.0))))


def slice_profile(image: Image, k: int, profile: str | None = None,
                  thickness: float | None = None) -> tuple[str, float, float]:
    """(profile, width in output slices, thickness in mm) of the acquired slices.

    Thickness: ``thickness`` if given, else DICOM SliceThickness, else the slice spacing.
    Profile: ``profile`` if given, else a box (the reconstruction integrates the slab evenly).
    """
    profile = profile or "box"
    step = float(geometry.spacing(image.affine)[0])
    if thickness is None:
        headers = image.meta.get("headers") or [None]
        header_value = headers[0].get("SliceThickness") if headers[0] is not None else None
        thickness = float(header_value) if header_value else step
    return profile, thickness / (step / k), thickness


def interpolate(data: np.ndarray, k: int, method: str) -> np.ndarray:
    """(C, Z, Y, X) → (C, Z·K, Y, X) by interpolation along Z at positions (i' + 0.5)/K − 0.5."""
    if method == "nearest":
        return np.repeat(np.asarray(data, dtype=np.float32), k, axis=1)
    mode = {"linear": "bilinear", "cubic": "bicubic"}[method]
    c, z, h, w = data.shape
    out = np.empty((c, z * k, h, w), dtype=np.float32)
    for y in range(0, h, ROWS_PER_CALL):  # rows are independent: bounded temporaries
        rows = torch.from_numpy(np.ascontiguousarray(data[:, :, y:y + ROWS_PER_CALL], dtype=np.float32))
        planes = rows.permute(2, 0, 1, 3)  # (rows, C, Z, X): interpolate along Z only
        up = F.interpolate(planes, scale_factor=(k, 1), mode=mode, align_corners=False)
        out[:, :, y:y + ROWS_PER_CALL] = up.permute(1, 2, 0, 3).numpy()
    return out


def refine(image: Image, run, progress: Progress | None = None, cache_dir: Path | None = None,
           notes: list | None = None) -> Image:
    """``image`` with its slice axis refined ×``run.settings.z_scale`` by ``z_method`` of its
    model; ``run`` is a ``pipeline.Run`` (its device and precision are self-sr's). self-sr
    reports (step, total) over training then inference and, with ``cache_dir``, reuses or stores
    its weights there. ``notes`` gets one line on what ran."""
    s = run.settings
    k = s.z_scale
    check_volume(image, k)
    method = z_method(s.model)
    data = image.array()
    mask = _nodata_mask(data, image.nodata)
    if mask is not None:  # padding is never fed as values: air-like fill, written back as nodata
        data = np.where(mask, np.float32(HU_PADDING_BELOW if image.units == "HU" else 0.0), data)
    if method == "self-sr":
        out = np.stack([_self_sr(image, data[c], run, progress, cache_dir, notes) for c in range(image.channels)])
    else:
        out = interpolate(data, k, method)
        if progress is not None:
            progress(1, 1)
    if image.units == "HU":
        np.maximum(out, HU_PADDING_BELOW, out=out)
    if mask is not None:
        out[np.repeat(mask, k, axis=1)] = image.nodata
    return image.with_data(out, factors=(k, 1, 1))


def _nodata_mask(data: np.ndarray, nodata) -> np.ndarray | None:
    mask = np.isnan(data) if nodata is None or np.isnan(nodata) else data == np.float32(nodata)
    return mask if mask.any() else None


def _self_sr(image: Image, volume: np.ndarray, run, progress, cache_dir, notes) -> np.ndarray:
    from .models import self_sr

    s, device, precision = run.settings, run.device, run.precision  # bf16 where fast
    k = s.z_scale
    profile, width, thickness = slice_profile(image, k, s.slice_profile, s.thickness)
    seconds = self_sr.DEFAULT_TRAIN_SECONDS if s.train_seconds is None else float(s.train_seconds)
    key = self_sr.cache_key(volume, image.affine, k=k, profile=profile, width=round(width, 6), seconds=seconds,
                            precision=precision)
    path = None if cache_dir is None else self_sr.cache_path(cache_dir, key)
    cached = self_sr.load(path, key) if path is not None else None
    planes = volume.shape[1] + volume.shape[2]
    if cached is not None:
        net, meta = cached
        steps, total = int(meta["steps"]), planes
        line = f"self-sr: reused {path.name} ({steps} training steps)"
    else:
        total = self_sr.MAX_STEPS + planes

        def train_progress(step, _):
            if progress is not None:
                progress(step, total)

        try:
            net, steps, took = self_sr.train(volume, k, profile, width, seconds, train_progress, total, device,
                                               precision)
        except ValueError as exc:
            raise HiresError(str(exc)) from None
        total = steps + planes  # a time-bounded run ends early: inference counts on from there
        line = (f"self-sr: trained {steps} steps in {took:.0f} s ({profile} profile, {thickness:g} mm "
                f"= {width:.2f} output slices)")
        if path is not None:
            self_sr.save(net, path, key, steps, took)
            line += f"; weights kept in {path}"
    if notes is not None:
        notes.append(line)
    done = total - planes
    return self_sr.apply(net, volume, progress, done, total, device, precision)
