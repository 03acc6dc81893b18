"""HiresInferer: our tiler as a MONAI Inferer, against MONAI's sliding_window_inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

monai = pytest.importorskip("monai")
from monai.data import MetaTensor  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402

import hires_domain as hd  # noqa: E402
from hires_domain.models import get_model  # noqa: E402
from hires_domain.monai_inferer import HiresInferer  # noqa: E402
from support import SAMPLES  # noqa: E402


@pytest.fixture(scope="module")
def s2():
    """A 64 x 80 crop of the bundled Sentinel-2 scene (DN) and the s2-sr-x4 predictor."""
    x = hd.read(SAMPLES / "s2_crop.tif").array()[:, 40:104, 30:110].astype(np.float32)
    model = get_model("s2-sr-x4")
    return torch.from_numpy(x)[None], (lambda t: model.predict(t, 4)), model.info.halo


def test_equals_whole_image_where_monai_has_seams(s2):
    x, predict, halo = s2
    with torch.inference_mode():
        whole = predict(x)
        ours = HiresInferer(tile=32, overlap=0, halo=halo, scale=4)(x, predict)
        theirs = sliding_window_inference(x, (32, 32), 1, predict, overlap=0.125, mode="gaussian")
    assert ours.shape == theirs.shape == whole.shape == (1, 4, 256, 320)
    ours_err = (ours - whole).abs().max().item()
    theirs_err = (theirs - whole).abs().max().item()
    assert ours_err < 0.5  # DN: float reassociation only (the halo covers the receptive field)
    assert theirs_err > 20 * max(ours_err, 0.05)  # MONAI's windows lack context: seams


def test_blending_overlap_and_batches_stay_exact(s2):
    x, predict, halo = s2
    with torch.inference_mode():
        whole = predict(x)
        y = HiresInferer(tile=(32, 48), overlap=(8, 12), halo=halo, scale=4, batch_size=3)(x, predict)
    assert (y - whole).abs().max().item() < 0.5


def test_metatensor_affine_refined_and_meta_kept():
    x = MetaTensor(torch.rand(2, 1, 20, 30), affine=torch.tensor([[10.0, 0, 0, 500.0], [0, -10.0, 0, 900.0],
                                                                   [0, 0, 1, 0], [0, 0, 0, 1]]),
                   meta={"filename_or_obj": "scene.tif"})
    up = lambda t: torch.nn.functional.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    y = HiresInferer(tile=16, halo=0, scale=2)(x, up)
    assert isinstance(y, MetaTensor) and y.shape == (2, 1, 40, 60)
    torch.testing.assert_close(y.as_tensor(), up(x.as_tensor()))
    a = y.affine.numpy()
    np.testing.assert_allclose(a[:2, :2], [[5.0, 0], [0, -5.0]])
    np.testing.assert_allclose(a[:2, 3], [500 - 2.5, 900 + 2.5])  # first centre moved by (1/k - 1)/2 pixels
    assert a[2, 2] == 1 and y.meta["filename_or_obj"] == "scene.tif"
