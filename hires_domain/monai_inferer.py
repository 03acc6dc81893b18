"""Our tiler inside MONAI pipelines: ``HiresInferer``, a ``monai.inferers.Inferer``.

MONAI's ``sliding_window_inference`` pads windows and blends them, but gives a network no
context beyond its window, so a convolutional network's tiles disagree at their borders
(seams; hundreds of DN on Sentinel-2 with ``s2-sr-x4``). ``HiresInferer`` runs any torch
predictor through ``tiling.iter_tiled``: each tile is read with ``halo`` pixels of real context,
cropped back and blended over ``overlap``, so a predictor whose receptive field fits in the
halo gives the whole-image result. It takes MONAI's ``(B, C, *spatial)`` tensors or
MetaTensors; the output of a MetaTensor keeps its metadata with the affine refined by the
scale (pixel centres, footprint kept: ``geometry.upscaled_affine``).

    from hires_domain.monai_inferer import HiresInferer
    inferer = HiresInferer(tile=256, halo=19, scale=(4, 4))
    y = inferer(x, network)          # like SlidingWindowInferer(...)(x, network)

Optional: needs ``pip install hires-domain[monai]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from . import geometry, tiling


def _per_axis(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    return tuple(int(v) for v in np.broadcast_to(np.asarray(value), (n,)))


class HiresInferer(Inferer):
    """Seam-free tiled inference of ``network`` (``(B, C, *tile)`` → ``(B, C_out, *tile·scale)``).

    ``tile``, ``overlap``, ``halo`` (input pixels) and ``scale`` are one int for every spatial
    axis or one per axis; ``batch_size`` tiles per network call; ``device`` where the network
    runs (default: the input's device). Inputs must be finite (NaN marks nodata in our
    pipeline: such pixels are filled from their nearest valid neighbour and come back NaN).
    """

    def __init__(self, tile: int | Sequence[int] = 256, overlap: int | Sequence[int] = 0,
                 halo: int | Sequence[int] = 16, scale: int | Sequence[int] = 1, batch_size: int = 1,
                 device: torch.device | str | None = None):
        super().__init__()
        self.tile, self.overlap, self.halo, self.scale = tile, overlap, halo, scale
        self.batch_size, self.device = batch_size, device

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        n = inputs.ndim - 2
        spec = tiling.TileSpec(_per_axis(self.tile, n), _per_axis(self.overlap, n), _per_axis(self.halo, n),
                               _per_axis(self.scale, n))
        device = torch.device(self.device) if self.device is not None else inputs.device

        def predict(x: torch.Tensor) -> torch.Tensor:
            return network(x, *args, **kwargs)

        outputs = []
        for item in torch.as_tensor(inputs).detach().cpu().float().numpy():
            shape = tuple(s * k for s, k in zip(item.shape[1:], spec.scale))
            channels = self._channels(predict, item, device)
            sink = tiling.ArraySink((channels, *shape))
            for _ in tiling.iter_tiled(tiling.ArraySource(item), sink, predict, spec, self.batch_size, device):
                pass
            outputs.append(torch.from_numpy(sink.array))
        out = torch.stack(outputs).to(inputs.device)
        if isinstance(inputs, MetaTensor):
            out = MetaTensor(out, affine=self._affine(inputs.affine, spec.scale), meta=inputs.meta)
            out.meta["spatial_shape"] = np.asarray(out.shape[2:])
        return out

    @staticmethod
    def _channels(predict, item: np.ndarray, device: torch.device) -> int:
        """Output channels of the network, from one call on a small corner of the input."""
        corner = torch.from_numpy(np.ascontiguousarray(item[(slice(None), *(slice(0, 8),) * (item.ndim - 1))]))
        with torch.inference_mode():
            return int(predict(corner[None].to(device)).shape[1])

    @staticmethod
    def _affine(affine: torch.Tensor, scale: tuple[int, ...]) -> torch.Tensor:
        a = np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=float)

        def one(m: np.ndarray) -> np.ndarray:  # a 2-D image's MONAI affine is 4 x 4: its third axis keeps 1
            return geometry.upscaled_affine(m, tuple(scale) + (1,) * (m.shape[1] - 1 - len(scale)))

        out = np.stack([one(m) for m in a]) if a.ndim == 3 else one(a)
        return torch.as_tensor(out, dtype=torch.as_tensor(affine).dtype)
