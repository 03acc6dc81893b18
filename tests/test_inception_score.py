"""Inception Score: the formula against closed forms and a direct numpy computation, its wiring
with a stand-in classifier (same RGB conversion and patches as FID), the offline-weights refusal
and `hires evaluate --is`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import hires_domain
from hires_domain.evaluation import _mean
from hires_domain.metrics import perceptual as P
from hires_domain.metrics import weights as W
from support import fails, hires

INCEPTION = "weights-inception-2015-12-05-6726825d.pth"
SAMPLES = Path(hires_domain.__file__).parent / "samples"
S2 = dict(kind="raster", bands=[2, 1, 0], data_range=(0, 10000))


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """Empty --weights-dir and hub cache, $HIRES_WEIGHTS_DIR unset, downloads fail the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(W.ENV_VAR, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    (tmp_path / "w").mkdir()
    return tmp_path / "w"


class LevelClassifier(torch.nn.Module):
    """Stand-in network: uint8 (N, 3, H, W) -> (N, 1008) logits, confidently the class of the
    image's mean grey level (one class per 1/1007 of the range). Records what it was fed."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1] == 3
        self.seen.append(x)
        level = x.double().mean(dim=(1, 2, 3)) / 255 * 1007
        return -50.0 * (level[:, None] - torch.arange(1008, dtype=torch.float64)) ** 2


def numpy_is(logits, splits):
    """The original formula, written out: softmax, then per split exp(mean_x sum_y p log(p / p_y))."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    n, scores = len(p), []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), axis=1))))
    return np.mean(scores), np.std(scores)


# the formula


@pytest.mark.parametrize("logits", [np.zeros((20, 1008)), np.tile(np.linspace(-5, 5, 1000), (20, 1))])
def test_same_distribution_for_every_image_scores_one(logits):
    """Uniform p(y|x), or any one distribution shared by all images: KL to the marginal is 0."""
    mean, std = P.inception_score(logits, splits=4)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [1, 7, 50])
def test_n_images_each_confidently_a_distinct_class_score_n(n):
    mean, std = P.inception_score(60.0 * np.eye(n, 1008), splits=1)
    assert mean == pytest.approx(n, rel=1e-6) and std == 0.0
    if n == 50:  # 5 splits of 10 distinct classes each
        assert P.inception_score(60.0 * np.eye(n, 1008), splits=5)[0] == pytest.approx(10, rel=1e-6)


@pytest.mark.parametrize("n, classes, splits", [(50, 1008, 10), (53, 1000, 5), (9, 1008, 1)])
def test_matches_a_direct_numpy_computation_on_random_logits(n, classes, splits):
    logits = np.random.default_rng(n).normal(0, 3, (n, classes))
    mean, std = P.inception_score(logits, splits)
    ref_mean, ref_std = numpy_is(logits, splits)
    assert mean == pytest.approx(ref_mean, rel=1e-10) and std == pytest.approx(ref_std, rel=1e-8, abs=1e-12)
    assert 1.0 < mean < n / splits + 1  # a sanity range, not the check
    # the order of the images within a split does not matter, across splits it does (no shuffling)
    perm = np.concatenate([np.random.default_rng(0).permutation(np.arange(i * n // splits, (i + 1) * n // splits))
                           for i in range(splits)])
    assert P.inception_score(logits[perm], splits)[0] == pytest.approx(mean, rel=1e-10)


def test_extreme_logits_stay_finite_and_bad_splits_refused():
    mean, _ = P.inception_score(np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]]), splits=1)
    assert mean == pytest.approx(2.0)
    with pytest.raises(hires_domain.HiresError, match="splits"):
        P.inception_score(np.zeros((3, 10)), splits=4)


# wiring with a stand-in network


def test_is_metric_on_ct_slices_uses_the_fid_rgb_conversion():
    ct = hires_domain.read(SAMPLES / "ct_head.nii.gz").array()  # (1, 32, 128, 128)
    net = LevelClassifier()
    entry = P.is_metric([ct], {"window": "brain"}, classifier=net, ref_list=[ct])["is"]
    x = torch.cat(net.seen)
    assert len(x) == 2 * 32 and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert torch.equal(x[:32], P.to_uint8(P.prepare_rgb(ct, "medical", window="brain")))
    assert entry["status"] == "ok" and entry["set"] == "32 slices from one volume" and entry["splits"] == 10
    assert entry["value"] == entry["ref_value"] and entry["value"] > 1 and entry["std"] >= 0
    assert entry["better"] == "closer to ref_value" and "weakly meaningful for CT and satellite" in entry["note"]


def test_is_metric_of_distinct_and_of_equal_images():
    levels = [np.full((1, 64, 64), v, np.float32) for v in (0.0, 0.25, 0.5, 0.75)]
    entry = P.is_metric(levels, {"data_range": (0, 1)}, classifier=LevelClassifier())["is"]
    assert entry["splits"] == 2 and entry["value"] == pytest.approx(2.0) and entry["std"] == pytest.approx(0)
    assert entry["better"] == "higher" and "ref_value" not in entry and entry["set"] == "4 images from 4 images"
    same = P.is_metric(levels[:1] * 4, {"data_range": (0, 1)}, classifier=LevelClassifier())["is"]
    assert same["value"] == pytest.approx(1.0)


def test_is_classifier_is_the_fid_network_times_its_final_weights_without_bias(no_weights, monkeypatch):
    (no_weights / INCEPTION).write_bytes(b"fake")
    monkeypatch.setattr(W, "_package_problem", lambda name: None)
    torch.manual_seed(0)
    fc = torch.nn.Linear(9, 1008)
    built = []

    class FakeFID:
        def __init__(self, **kwargs):
            built.append(kwargs["feature_extractor_weights_path"])
            self.inception = lambda x: x.double().mean(dim=(2, 3)).repeat(1, 3).float()
            self.inception.fc = fc

    import torchmetrics.image.fid

    monkeypatch.setattr(torchmetrics.image.fid, "FrechetInceptionDistance", FakeFID)
    monkeypatch.setattr(P, "_FID_EXTRACTORS", {})
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    logits = P.is_classifier(no_weights)(x)
    expected = P.fid_extractor(no_weights)(x) @ fc.weight.T
    assert logits.shape == (2, 1008) and torch.allclose(logits, expected)
    assert not torch.allclose(logits, fc(P.fid_extractor(no_weights)(x)))  # the bias is left out
    assert built == [str(no_weights / INCEPTION)]  # one network for FID and IS


# without weights


def test_is_metric_without_weights_is_unavailable_not_raised(no_weights):
    s2 = hires_domain.read(SAMPLES / "s2_crop.tif").array()
    entry = P.is_metric([s2], {**S2, "patch": 64}, weights_dir=no_weights)["is"]
    assert entry["status"] == "unavailable" and entry["value"] is None and entry["missing"] == [INCEPTION]
    assert entry["reason"].startswith("IS (") and "unavailable: " in entry["reason"]
    assert INCEPTION in entry["reason"] and "--weights-dir" in entry["reason"] and "\n" not in entry["reason"]
    assert entry["set"] == "16 patches of 64x64 from one image"


def test_evaluate_is_without_weights_refuses_in_one_line(capsys, no_weights, tmp_path):
    hr = SAMPLES / "s2_crop.tif"
    line = fails(capsys, "evaluate", hr, hr, "--is", "--weights-dir", no_weights, "--json", tmp_path / "m.json",
                 match="IS (Inception-v3 class logits, the FID network) unavailable: ")
    assert INCEPTION in line and str(no_weights) in line
    assert not (tmp_path / "m.json").exists()  # refused before any work
    fails(capsys, "benchmark", tmp_path / "none.json", "--is", "--weights-dir", no_weights, match="IS (")


# `hires evaluate --is` with the stand-in


def test_evaluate_is_json_and_report_with_a_stand_in(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(P, "is_classifier", lambda weights_dir=None: LevelClassifier())
    hr = SAMPLES / "s2_crop.tif"
    code, out, err = hires(capsys, "evaluate", hr, hr, "--is", "--json", tmp_path / "m.json",
                           "--report", tmp_path / "r.html")
    assert code == 0, err
    e = json.loads((tmp_path / "m.json").read_text())["metrics"]["is"]
    assert {"value", "std", "splits", "ref_value", "set", "bands", "note", "better"} <= set(e)
    assert e["status"] == "ok" and e["value"] == e["ref_value"] and e["splits"] == 8
    assert e["set"] == "16 patches of 64x64 from one image" and e["bands"] == "bands 2,1,0 as RGB (0-based)"
    assert "fid" in json.loads((tmp_path / "m.json").read_text())["metrics"]  # beside FID
    page = (tmp_path / "r.html").read_text()
    assert "IS (Inception Score)" in page and "weakly meaningful for CT and satellite" in page
    assert "\nis " in out or "│ is " in out  # the printed table has the row


def test_evaluate_is_over_directories_is_one_set_score(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(P, "is_classifier", lambda weights_dir=None: LevelClassifier())
    for d in ("pred", "ref"):
        (tmp_path / d).mkdir()
        for name in ("a.tif", "b.tif"):
            (tmp_path / d / name).write_bytes((SAMPLES / "s2_crop.tif").read_bytes())
    code, _, err = hires(capsys, "evaluate", tmp_path / "pred", tmp_path / "ref", "--is", "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert code == 0, err
    assert m["metrics"]["is"]["set"] == "2 images from 2 images" and m["metrics"]["is"]["splits"] == 1
    assert m["metrics"]["is"]["value"] == pytest.approx(1.0)  # the same image twice: one class distribution
    assert all("is" not in item["metrics"] for item in m["items"])  # a set metric, not per item


def test_evaluate_without_is_has_no_is_entry(capsys, tmp_path):
    hr = SAMPLES / "s2_crop.tif"
    assert hires(capsys, "evaluate", hr, hr, "--json", tmp_path / "m.json")[0] == 0
    assert "is" not in json.loads((tmp_path / "m.json").read_text())["metrics"]


def test_mean_over_items_averages_the_reference_value_and_drops_the_split_std():
    items = [{"metrics": {"is": {"value": v, "ref_value": r, "std": 0.1, "better": "closer to ref_value"}}}
             for v, r in ((2.0, 3.0), (4.0, 5.0))]
    assert _mean(items)["is"] == {"ref_value": 4.0, "better": "closer to ref_value", "value": 3.0, "n": 2}
