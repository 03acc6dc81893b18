"""Numeric precision of a run: fp32, or bf16/fp16 autocast where the hardware does it fast and
the model's reduced-precision output was checked against fp32 on held-out data.

A check is recorded in the model JSON by ``benchmarks/precision_check.py``::

    "precision": {"bf16": {"psnr_fp32": 39.70, "psnr": 39.69, "delta_db": -0.01, "max_abs_diff": 20.0, ...}}

``auto`` picks the first of the device's fast reduced precisions (CUDA: bf16 where supported,
then fp16; CPU: bf16 with AVX-512 BF16 or AMX) whose check lost at most ``MAX_LOSS_DB``; otherwise
fp32. An explicit choice is honoured for networks that can take it; other models (interpolation
baselines, diffusion for now) run fp32 and refuse an explicit bf16/fp16.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path

import torch

from .errors import HiresError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MAX_LOSS_DB = 0.1


def check_precision(name) -> str:
    """A valid precision name (one-line HiresError otherwise)."""
    if name not in PRECISIONS:
        raise HiresError(f"unknown precision '{name}': use {', '.join(PRECISIONS)}")
    return name


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: bf16 convolutions run natively (elsewhere they are emulated, slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_precisions(device: torch.device) -> list[str]:
    """Reduced precisions this device runs faster than fp32, best first."""
    if device.type == "cuda":
        return (["bf16"] if torch.cuda.is_bf16_supported() else []) + ["fp16"]
    if device.type == "cpu" and cpu_has_fast_bf16():
        return ["bf16"]
    return []


def checked(meta_precision: dict | None) -> set[str]:
    """Reduced precisions whose recorded held-out check lost at most ``MAX_LOSS_DB``."""
    return {p for p, c in (meta_precision or {}).items()
            if isinstance(c, dict) and c.get("delta_db") is not None and c["delta_db"] >= -MAX_LOSS_DB}


def resolve_precision(requested: str, model, device: torch.device) -> str:
    """The precision a run of ``model`` on ``device`` uses for ``requested`` (see module doc)."""
    check_precision(requested)
    if not model.reduced_precision:
        if requested in ("auto", "fp32"):
            return "fp32"
        raise HiresError(f"model '{model.info.name}' runs in fp32 only ({model.info.family}); "
                         f"--precision {requested} does not apply")
    if requested != "auto":
        return requested
    ok = checked(model.precision_checks)
    return next((p for p in fast_precisions(device) if p in ok), "fp32")


def autocast(precision: str, device: torch.device):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])
