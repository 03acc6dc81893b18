"""Run checkpoints shared by every trainer (SRGAN, latent diffusion, band sharpening): tensors in
safetensors files (never pickle), optimiser state flattened into tensors plus JSON, directories
written under a temporary name and renamed, the newest few kept, ``latest.txt`` naming the last."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..errors import HiresError

KEEP_CHECKPOINTS = 3


def save_tensors(tensors: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def flatten_optim(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(tensors, json) from an optimiser state dict; tensors keyed ``state.<param>.<key>``."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optim(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in tensors.items():
        _, pid, k = key.split(".", 2)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def open_checkpoint(output_dir: Path, step: int) -> tuple[Path, Path]:
    """(final, temporary) directories for the checkpoint of ``step``; write into the temporary one,
    then ``commit_checkpoint``."""
    root = Path(output_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final, tmp = root / name, root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return final, tmp


def commit_checkpoint(final: Path, tmp: Path, state: dict) -> Path:
    """Write ``state.json``, rename the checkpoint into place, point latest.txt at it, keep the newest few."""
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    root = final.parent
    (root / "latest.txt").write_text(final.name + "\n")
    for p in sorted(p for p in root.glob("step_*") if p.is_dir())[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def find_checkpoint(directory) -> tuple[Path, dict]:
    """A run directory, its checkpoints/ or one checkpoint → (checkpoint directory, its state)."""
    d = Path(directory)
    if (d / "checkpoints" / "latest.txt").is_file():
        d = d / "checkpoints"
    if (d / "latest.txt").is_file():
        d = d / (d / "latest.txt").read_text().strip()
    if not (d / "state.json").is_file():
        raise HiresError(f"--resume {directory}: no checkpoint there (state.json missing)")
    return d, json.loads((d / "state.json").read_text())
