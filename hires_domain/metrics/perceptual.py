"""Perceptual metrics: LPIPS per image pair, FID and the Inception Score (IS) over a set, on
windowed 3-channel images.

The networks expect RGB photographs, so every input first becomes 3-channel images in [-1, 1]
through an explicit intensity range (:func:`prepare_rgb`). Backbone weights are found offline
(``weights``); when they are missing the metric is reported ``unavailable`` with the reason and
the file to provide, never raised and never downloaded.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch
from scipy import linalg
from scipy.special import logsumexp

from ..errors import HiresError
from ..intensity import ct_window
from . import weights

_LPIPS_NETS: dict = {}
_FID_EXTRACTORS: dict = {}


def band_triplets(n_bands: int, bands=None) -> list[tuple[int, int, int]]:
    """The 0-based band triplets shown to the network: ``bands`` (3 indices, e.g. ``(2, 1, 0)``
    for red, green, blue of B02 B03 B04 B08), ``'all-triplets'``, or by default the single band
    repeated (1 band) or the bands as they are (3 bands)."""
    if bands == "all-triplets":
        if n_bands < 3:
            raise HiresError(f"'all-triplets' needs at least 3 bands, the image has {n_bands}")
        return list(combinations(range(n_bands), 3))
    if bands is None:
        if n_bands in (1, 3):
            return [(0, 0, 0) if n_bands == 1 else (0, 1, 2)]
        raise HiresError(f"the image has {n_bands} bands: name a triplet (e.g. bands 2,1,0) or 'all-triplets'")
    triplet = tuple(int(b) for b in bands)
    if len(triplet) != 3 or not all(0 <= b < n_bands for b in triplet):
        raise HiresError(f"bands must be 3 indices in 0..{n_bands - 1} (0-based), got {list(bands)}")
    return [triplet]


def describe_bands(n_bands: int, bands=None) -> str:
    """How the bands became RGB, for the result."""
    triplets = band_triplets(n_bands, bands)
    if n_bands == 1:
        return "1 band repeated to 3 channels"
    if bands == "all-triplets":
        return f"all {len(triplets)} triplets of {n_bands} bands, averaged"
    return "bands {} as RGB (0-based)".format(",".join(map(str, triplets[0])))


def prepare_rgb(arr, kind: str, window: str | None = None, bands=None, data_range=None) -> torch.Tensor:
    """``(C, *spatial)`` pixels -> ``(N, 3, H, W)`` float32 in [-1, 1].

    Intensities go to [0, 1] through the named CT ``window`` (medical only) or the explicit
    ``data_range`` ``(lo, hi)`` (e.g. ``(0, 10000)`` for S2 DN), clipped; never the image's own
    min/max. Bands become RGB as :func:`band_triplets` says; with several triplets the samples of
    each are concatenated. 3-D volumes ``(C, Z, Y, X)`` give one sample per z slice.
    """
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim not in (3, 4):
        raise HiresError(f"perceptual metrics need (C, H, W) or (C, Z, Y, X) pixels, got shape {arr.shape}")
    if window is not None:
        if kind == "raster":
            raise HiresError("CT windows apply to medical images; give a data range for rasters")
        unit = ct_window(arr, window)
    elif data_range is not None:
        lo, hi = (float(v) for v in data_range)
        if not hi > lo:
            raise HiresError(f"data range must have hi > lo, got {data_range}")
        unit = np.clip((arr - lo) / (hi - lo), 0.0, 1.0)
    else:
        raise HiresError("perceptual metrics need an explicit intensity range: a CT window or a data range")
    rgb = np.stack([unit[list(t)] for t in band_triplets(arr.shape[0], bands)])  # (T, 3, *spatial)
    if rgb.ndim == 5:  # (T, 3, Z, Y, X) -> (T*Z, 3, Y, X)
        rgb = rgb.transpose(0, 2, 1, 3, 4).reshape(-1, 3, *rgb.shape[-2:])
    return torch.from_numpy(np.ascontiguousarray(rgb * 2.0 - 1.0, dtype=np.float32))


def _prep_kwargs(settings: dict) -> dict:
    """:func:`prepare_rgb` arguments from settings; ``data_range`` as ``(lo, hi)`` or a dict with
    ``lo``/``hi`` (as ``metrics.evaluate`` records it)."""
    rng = settings.get("data_range")
    if isinstance(rng, dict):
        rng = (rng["lo"], rng["hi"])
    return dict(kind=settings.get("kind", ""), window=settings.get("window"), bands=settings.get("bands"),
                data_range=rng)


def lpips_net(backbone: str = "alex", weights_dir=None):
    """torchmetrics' LPIPS as ``(x, y) -> per-sample distances``; built only from weights found
    offline (:class:`HiresError` with the reason otherwise)."""
    status = weights.metric_status(f"lpips-{backbone}", weights_dir)
    if not status["available"]:
        raise HiresError(status["reason"])
    key = (backbone, tuple(status["files"].values()))
    if key not in _LPIPS_NETS:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        try:
            with weights.hub_dir_with(status["files"]):
                metric = LearnedPerceptualImagePatchSimilarity(net_type=backbone, reduction="none")
        except Exception as exc:
            raise HiresError(f"LPIPS ({backbone}) could not load {status['files']}: {exc}") from exc

        def net(x, y):
            metric.reset()
            metric.update(x, y)
            return metric.compute().reshape(-1)

        _LPIPS_NETS[key] = net
    return _LPIPS_NETS[key]


def lpips_distance(pred_rgb, ref_rgb, net=None, *, backbone: str = "alex", weights_dir=None, batch: int = 16) -> float:
    """Mean LPIPS over the samples of two ``(N, 3, H, W)`` tensors in [-1, 1].

    ``net`` is any ``(x, y) -> per-sample distances`` callable; by default :func:`lpips_net`.
    """
    if pred_rgb.shape != ref_rgb.shape:
        raise HiresError(f"LPIPS needs equal shapes, got {tuple(pred_rgb.shape)} and {tuple(ref_rgb.shape)}")
    net = lpips_net(backbone, weights_dir) if net is None else net
    with torch.no_grad():
        d = [net(pred_rgb[i:i + batch], ref_rgb[i:i + batch]).reshape(-1) for i in range(0, len(pred_rgb), batch)]
    return float(torch.cat(d).mean())


def perceptual_metrics(pred_arr, ref_arr, settings: dict, weights_dir=None, net=None, valid=None) -> dict:
    """``{"lpips": entry}`` for one prediction/reference pair ``(C, *spatial)``.

    ``settings``: ``kind`` (``'raster'`` or medical), ``window`` or ``data_range``, ``bands`` (see
    :func:`band_triplets`), ``lpips_backbone`` (``alex`` or ``vgg``).
    ``valid`` (spatial shape, True = valid): outside it the prediction takes the reference's values
    so masked pixels contribute no difference; slices with no valid pixel are dropped. Pixels near
    the mask edge still see the filled values through the network's receptive field.
    """
    backbone = settings.get("lpips_backbone", "alex")
    pred_arr, ref_arr = np.asarray(pred_arr, np.float32), np.asarray(ref_arr, np.float32)
    if valid is not None:
        pred_arr = np.where(valid, pred_arr, ref_arr)
    prep = _prep_kwargs(settings)
    pred, ref = prepare_rgb(pred_arr, **prep), prepare_rgb(ref_arr, **prep)
    if valid is not None:
        keep = np.asarray(valid).reshape(-1, *pred.shape[-2:]).any(axis=(1, 2))
        keep = torch.from_numpy(np.tile(keep, len(pred) // len(keep)))
        pred, ref = pred[keep], ref[keep]
    entry = {"better": "lower", "backbone": backbone, "bands": describe_bands(ref_arr.shape[0], prep["bands"]),
             "samples": len(ref)}
    if net is None:
        try:
            net = lpips_net(backbone, weights_dir)
        except HiresError as exc:
            missing = weights.metric_status(f"lpips-{backbone}", weights_dir)["missing_files"]
            return {"lpips": {**entry, "value": None, "status": "unavailable", "reason": str(exc), "missing": missing}}
    value = lpips_distance(pred, ref, net) if len(ref) else None
    return {"lpips": {**entry, "value": value, "status": "ok" if len(ref) else "no valid pixels"}}


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``.

    As in the reference implementation (pytorch-fid, TTUR): near-singular products get ``eps`` on
    the diagonals, and the numerically imaginary part of the square root is dropped. Written here
    because torchmetrics' version is private API.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise HiresError(f"Fréchet distance: imaginary component {np.abs(covmean.imag).max():g} in sqrtm")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def patches(rgb, size: int, stride: int | None = None) -> torch.Tensor:
    """Square ``size`` patches every ``stride`` (default ``size``) of ``(N, C, H, W)`` or
    ``(C, H, W)`` -> ``(M, C, size, size)``; a remainder at the right/bottom edge is left out."""
    rgb = torch.as_tensor(rgb)
    rgb = rgb[None] if rgb.ndim == 3 else rgb
    if min(rgb.shape[-2:]) < size:
        raise HiresError(f"patch size {size} exceeds the image ({rgb.shape[-2]}x{rgb.shape[-1]})")
    step = stride or size
    p = rgb.unfold(2, size, step).unfold(3, size, step)  # (N, C, nh, nw, size, size)
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, rgb.shape[1], size, size)


def to_uint8(rgb) -> torch.Tensor:
    """[-1, 1] -> uint8 [0, 255], rounded: what the Inception features of published FIDs were
    computed from (8-bit image files)."""
    return torch.round((torch.as_tensor(rgb).clamp(-1, 1) + 1) * 127.5).to(torch.uint8)


def fid_extractor(weights_dir=None, metric: str = "fid"):
    """torch-fidelity's FID Inception (via torchmetrics) as ``uint8 (N, 3, H, W) -> (N, 2048)``.

    It resizes to 299x299 itself with TensorFlow-1-compatible bilinear interpolation and no
    antialiasing (``antialias=False``; torchmetrics' default is True), as published FIDs did.
    ``metric`` (``'fid'`` or ``'is'``, same file) names the metric in the reason it is unavailable.
    """
    status = weights.metric_status(metric, weights_dir)
    if not status["available"]:
        raise HiresError(status["reason"])
    path = next(iter(status["files"].values()))
    if path not in _FID_EXTRACTORS:
        from torchmetrics.image.fid import FrechetInceptionDistance

        try:
            fid_module = FrechetInceptionDistance(feature=2048, antialias=False, feature_extractor_weights_path=path)
        except Exception as exc:
            raise HiresError(f"{status['name']} could not load {path}: {exc}") from exc
        _FID_EXTRACTORS[path] = fid_module.inception
    return _FID_EXTRACTORS[path]


def is_classifier(weights_dir=None):
    """The FID network (same file, same loaded module, same resize) as ``uint8 (N, 3, H, W) ->
    (N, 1008)`` class logits: its 2048 pool features times the final layer's weights, without the
    bias (torch-fidelity's ``logits_unbiased``, as the original Inception Score code computed them).
    """
    inception = fid_extractor(weights_dir, metric="is")
    return lambda x: inception(x) @ inception.fc.weight.T


def _features(images, extractor, batch: int) -> np.ndarray:
    """Features of a set: a list of ``(3, H, W)`` / ``(N, 3, H, W)`` tensors in [-1, 1]."""
    samples = [s for img in images for s in (img[None] if img.ndim == 3 else img)]
    feats = []
    with torch.no_grad():
        i = 0
        while i < len(samples):  # consecutive samples of one size go through together
            j = i + 1
            while j < len(samples) and j - i < batch and samples[j].shape == samples[i].shape:
                j += 1
            feats.append(extractor(to_uint8(torch.stack(samples[i:j]))).double().reshape(j - i, -1))
            i = j
    return torch.cat(feats).numpy()


def fid(pred_images, ref_images, extractor=None, *, weights_dir=None, batch: int = 32) -> float:
    """FID between two sets of RGB images in [-1, 1] (lists of ``(3, H, W)`` or ``(N, 3, H, W)``).

    ``extractor``: ``uint8 (N, 3, H, W) -> (N, D)`` features, resizing as it needs; by default
    :func:`fid_extractor`. Each set needs at least 2 samples.
    """
    extractor = fid_extractor(weights_dir) if extractor is None else extractor
    stats = []
    for images in (pred_images, ref_images):
        f = _features(images, extractor, batch)
        if len(f) < 2:
            raise HiresError(f"FID needs a set of at least 2 images, got {len(f)}")
        stats += [f.mean(axis=0), np.cov(f, rowvar=False)]
    return frechet_distance(*stats)


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """Inception Score of a set from its class logits ``(N, classes)``: per split,
    ``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the split's mean of ``p(y|x)``; returns the mean
    and the (population) std over ``splits`` contiguous splits, as the original code (Salimans et
    al. 2016). 1 when every image gets the same distribution; at most min(classes, split size).

    Written here, in float64 on the logits, rather than with torchmetrics' ``InceptionScore``: given
    a layer name, that one builds its network without a weights path (it would download), and it
    shuffles the samples with torch's global RNG before splitting, so the same images would score
    differently from run to run.
    """
    log_p = torch.as_tensor(logits, dtype=torch.float64)
    if log_p.ndim != 2 or not 1 <= splits <= len(log_p):
        raise HiresError(f"the Inception Score needs (N, classes) logits and 1 <= splits <= N, "
                         f"got shape {tuple(log_p.shape)} and {splits} splits")
    log_p, n = log_p.log_softmax(dim=1).numpy(), len(log_p)
    scores = []
    for part in (log_p[i * n // splits:(i + 1) * n // splits] for i in range(splits)):  # the original's splits
        log_py = logsumexp(part, axis=0) - np.log(len(part))  # log of the split's mean p(y|x), finite
        scores.append(np.exp((np.exp(part) * (part - log_py)).sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


FID_BACKBONE = "inception-v3 (torch-fidelity), 2048 features, bilinear resize to 299 without antialias"
IS_BACKBONE = "inception-v3 (torch-fidelity), 1008-class logits (no bias), bilinear resize to 299 without antialias"
IS_SPLITS = 10  # at most; a set of N samples gets min(10, N // 2) splits (stated in the result)
IS_NOTE = ("natural-image class-confidence score (ImageNet classes), weakly meaningful for CT and satellite "
           "images: compare with the reference's IS (ref_value), never across domains or with published values")


def _rgb_set(arrays, settings: dict) -> list:
    """The samples of a set as the network sees them: :func:`prepare_rgb` of each array, or its
    ``settings['patch']``-sized patches every ``settings['stride']``."""
    prep, size = _prep_kwargs(settings), settings.get("patch")
    rgb = [prepare_rgb(a, **prep) for a in arrays]
    return [patches(x, size, settings.get("stride")) for x in rgb] if size else rgb


def _set_entry(arrays, rgb: list, settings: dict) -> dict:
    """What a set metric was computed on: how many samples, of what, from what, which bands."""
    size = settings.get("patch")
    n, volumes = sum(len(x) for x in rgb), np.ndim(arrays[0]) == 4
    source = ("one " if len(arrays) == 1 else f"{len(arrays)} ") + ("volume" if volumes else "image")
    source += "" if len(arrays) == 1 else "s"
    what = f"patches of {size}x{size}" if size else ("slices" if volumes else "images")
    return {"set": f"{n} {what} from {source}",
            "bands": describe_bands(np.shape(arrays[0])[0], _prep_kwargs(settings)["bands"])}


def _network(metric: str, build, net, weights_dir, backbone: str) -> tuple:
    """``(net, backbone, unavailable entry or None)``: an injected ``net`` under its own name, or
    ``build(weights_dir)``; weights not found offline give the ``unavailable`` entry, never raise."""
    if net is not None:
        return net, getattr(net, "__name__", type(net).__name__), None
    try:
        return build(weights_dir), backbone, None
    except HiresError as exc:
        return None, backbone, {"value": None, "status": "unavailable", "reason": str(exc),
                                "missing": weights.metric_status(metric, weights_dir)["missing_files"]}


def fid_metric(pred_list, ref_list, settings: dict, weights_dir=None, extractor=None) -> dict:
    """``{"fid": entry}`` over a set: lists of ``(C, *spatial)`` arrays (images or volumes).

    ``settings`` as in :func:`perceptual_metrics`, plus ``patch`` (size) and ``stride`` to use
    patches of each image instead of whole images (the way to get a set from one large image).
    """
    extractor, backbone, unavailable = _network("fid", fid_extractor, extractor, weights_dir, FID_BACKBONE)
    pred, ref = _rgb_set(pred_list, settings), _rgb_set(ref_list, settings)
    entry = {"better": "lower", "backbone": backbone, **_set_entry(ref_list, ref, settings)}
    if unavailable:
        return {"fid": {**entry, **unavailable}}
    return {"fid": {**entry, "value": fid(pred, ref, extractor), "status": "ok"}}


def is_metric(pred_list, settings: dict, weights_dir=None, classifier=None, ref_list=None, batch: int = 32) -> dict:
    """``{"is": entry}``: the Inception Score of a set of outputs (lists of ``(C, *spatial)``
    arrays), made RGB and patched as for :func:`fid_metric` (same ``settings``).

    ``classifier``: ``uint8 (N, 3, H, W) -> (N, classes)`` logits; by default :func:`is_classifier`
    (the FID network). ``value`` and ``std`` are the mean and std over the splits; with
    ``ref_list``, ``ref_value`` is the references' IS, the one number it is meaningful to compare
    with (``better``: closer to it). Without weights: ``unavailable`` with the reason, never raised.
    """
    classifier, backbone, unavailable = _network("is", is_classifier, classifier, weights_dir, IS_BACKBONE)
    pred = _rgb_set(pred_list, settings)
    entry = {"better": "higher" if ref_list is None else "closer to ref_value", "backbone": backbone,
             **_set_entry(pred_list, pred, settings), "note": IS_NOTE}
    if unavailable:
        return {"is": {**entry, **unavailable}}

    def score(images) -> tuple[float, float, int]:
        logits = _features(images, classifier, batch)
        if len(logits) < 2:
            raise HiresError(f"the Inception Score needs a set of at least 2 images, got {len(logits)}")
        splits = min(IS_SPLITS, len(logits) // 2)
        return (*inception_score(logits, splits), splits)

    value, std, splits = score(pred)
    entry.update(value=value, std=std, splits=splits)
    if ref_list is not None:
        entry["ref_value"] = score(_rgb_set(ref_list, settings))[0]
    return {"is": {**entry, "status": "ok"}}
