"""Seam, constant-image, nodata and plan properties of the streaming tiler on real CT data."""

import numpy as np
import pytest
import torch

from hires_domain import tiling
from hires_domain.models import get_model


def run(array, model, scale, tile, overlap, nodata=None, batch=3):
    m = get_model(model)
    sink = tiling.ArraySink((array.shape[0], *(n * scale for n in array.shape[1:])))
    spec = tiling.TileSpec((tile, tile), (overlap, overlap), (m.info.halo,) * 2, (scale, scale))
    list(tiling.iter_tiled(tiling.ArraySource(array, nodata), sink, lambda x: m.predict(x, scale), spec, batch))
    return sink


@pytest.fixture
def ct_slice(ct_volume):
    return ct_volume.data[:, 16, 5:106, 3:120].copy()  # odd-sized real slice (1, 101, 117)


@pytest.mark.parametrize("model", ["bicubic", "lanczos", "nearest"])
@pytest.mark.parametrize("tile,overlap", [(32, 8), (24, 4), (17, 5), (64, 0), (500, 16)])
def test_tiled_equals_whole(ct_slice, model, tile, overlap):
    whole = get_model(model).predict(torch.from_numpy(ct_slice)[None], 4)[0].numpy()
    out = run(ct_slice, model, 4, tile, overlap).array
    scale = np.abs(whole).max()
    assert np.abs(out - whole).max() <= 2e-6 * scale


def test_seam_breaks_without_halo(ct_slice):
    """The halo matters: the same tiling without it differs from the whole image."""
    m = get_model("bicubic")
    a = ct_slice[:, :96, :96].copy()  # 3 x 3 tiles that abut exactly
    whole = m.predict(torch.from_numpy(a)[None], 2)[0].numpy()
    sink = tiling.ArraySink((1, 192, 192))
    spec = tiling.TileSpec((32, 32), (0, 0), (0, 0), (2, 2))
    list(tiling.iter_tiled(tiling.ArraySource(a), sink, lambda x: m.predict(x, 2), spec))
    assert np.abs(sink.array - whole).max() > 1.0


@pytest.mark.parametrize("model", ["bicubic", "lanczos"])
def test_constant_stays_constant(model):
    out = run(np.full((2, 70, 45), 1234.5, np.float32), model, 3, 16, 4).array
    np.testing.assert_allclose(out, 1234.5, rtol=1e-6)


def test_nodata_not_smeared(ct_slice):
    a = ct_slice.copy()
    a[:, 40:60, 30:80] = -9999.0
    a[:, 0:5, :] = np.nan
    sink = run(a, "bicubic", 2, 32, 8, nodata=-9999.0)
    valid_in = np.isfinite(a[0]) & (a[0] != -9999.0)
    expected = valid_in.repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(sink.valid, expected)
    good = sink.array[0][sink.valid]
    lo, hi = ct_slice[0].min(), ct_slice[0].max()
    span = hi - lo
    assert good.min() > lo - 0.2 * span and good.max() < hi + 0.2 * span  # no -9999/NaN leaked
    assert np.isnan(sink.array[0][~sink.valid]).all()


def test_volume_slice_wise_plan():
    plan = tiling.TilePlan((5, 100, 90), tiling.TileSpec((1, 32, 32), (0, 8, 8), (0, 2, 2), (1, 2, 2)))
    assert plan.out_shape == (5, 200, 180)
    assert plan.coverage.max() == 4 and plan.coverage.min() == 1
    assert len(plan.tiles()) == 5 * 4 * 4


@pytest.mark.parametrize("n,t,o,a", [(100, 32, 8, 1), (33, 32, 8, 1), (32, 32, 8, 1), (10, 10, 3, 1),
                                     (1000, 256, 32, 64), (4096, 256, 32, 64), (2048, 256, 32, 128),
                                     (300, 40, 30, 64)])
def test_axis_starts_cover_with_uniform_overlap(n, t, o, a):
    s = tiling.axis_starts(n, t, o, a)
    assert s[0] == 0 and s[-1] + t >= n and s[-1] < n
    if len(s) > 1:
        assert s[-2] + t < n  # no tile is redundant
    steps = {b - c for b, c in zip(s[1:], s)}
    assert len(steps) <= 1 and all(0 < st <= t - o for st in steps)  # same overlap everywhere, >= o
    if (t - o) >= a:
        assert all(st % a == 0 for st in steps)


def test_aligned_plan_puts_cells_on_the_block_grid():
    plan = tiling.TilePlan((1000, 700), tiling.TileSpec((256, 256), (32, 32), (2, 2), (4, 4), align=(64, 64)))
    for a in plan.axes:
        inner = a.breaks[a.breaks < a.n * a.scale]
        assert all(b % 256 == 0 for b in inner)


def test_ramp_weights_are_complementary():
    w = tiling.ramp_weights(64, 16, 16)
    np.testing.assert_allclose(w[-16:] + w[:16], 1.0)
    assert (w > 0).all() and w[16:48].min() == 1.0


def test_finished_regions_written_as_soon_as_complete(ct_slice):
    """Streaming: after the first tile row the overlap band is still pending; everything above it
    goes to the (write-behind) sink as soon as it is finished, so once the second row is done
    (more cells than the writer's queue holds) it is written; nothing stays pending at the end."""
    m = get_model("bicubic")
    sink = tiling.ArraySink((1, 202, 234))
    spec = tiling.TileSpec((16, 16), (4, 4), (2, 2), (2, 2))
    plan = tiling.TilePlan(ct_slice.shape[1:], spec)
    n_cols = len(plan.axes[1].starts)
    next_row = plan.axes[0].starts[1] * 2
    gen = tiling.iter_tiled(tiling.ArraySource(ct_slice), sink, lambda x: m.predict(x, 2), spec, batch_size=1)
    for done, total in gen:
        if done == n_cols:
            assert not sink.valid[next_row:].any()
        if done == 2 * n_cols:
            assert sink.valid[:next_row].all()
    assert done == total == len(plan.tiles()) and sink.valid.all()


def test_device_errors():
    from hires_domain.errors import HiresError

    with pytest.raises(HiresError, match="unknown device"):
        tiling.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(HiresError, match="no CUDA"):
            tiling.resolve_device("cuda")
    assert tiling.resolve_device("cpu").type == "cpu"
