"""NIfTI has no modality: CT is recognised by its values (intensity.ct_evidence), on real data.

Real CT slices (pydicom's CT_small.dcm: a chest crop with lung, no air; J2K_pixelrep_mismatch.dcm:
a head with −2000 padding) and real MR (pydicom's MR_small.dcm, MR-SIEMENS-DICOM-WithOverlays.dcm,
nibabel's anatomical.nii) written to or read as NIfTI; the bundled ct_head.nii.gz (an atlas
clipped to 0..229 HU: soft tissue, no air) counts by the soft-tissue rule.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel
import numpy as np
import pytest
from pydicom.data import get_testdata_file

import hires_domain as hd
from hires_domain.intensity import CT_WINDOWS, ct_evidence, window_label
from support import SAMPLES


def as_nifti(name: str, tmp_path: Path) -> Path:
    """A real DICOM slice written as NIfTI by hires_domain.write (the modality is lost)."""
    src = get_testdata_file(name)
    if src is None:
        pytest.skip(f"{name} not installed (pydicom-data)")
    out = tmp_path / f"{Path(name).stem}.nii.gz"
    with warnings.catch_warnings():  # pydicom's notes on the test files' odd UIDs
        warnings.simplefilter("ignore")
        hd.write(hd.read(src), out)
    return out


@pytest.mark.parametrize("name,words", [("CT_small.dcm", "21% of voxels in air or lung"),
                                        ("J2K_pixelrep_mismatch.dcm", "one padding value below -1024 HU")])
def test_ct_nifti_is_read_as_hu(tmp_path, name, words):
    image = hd.read(as_nifti(name, tmp_path))
    assert image.units == "HU" and words in image.meta["ct_evidence"]
    assert image.meta["ct_evidence"].startswith("CT-like intensities: ")


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"])
def test_mr_nifti_is_not_ct(tmp_path, name):
    image = hd.read(as_nifti(name, tmp_path))
    assert image.units == "" and image.meta["ct_evidence"] is None and image.nodata is None


def test_nibabel_mr_volume_is_not_ct():
    anatomical = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"
    if not anatomical.exists():
        pytest.skip("nibabel test data not installed")
    assert hd.read(anatomical).units == ""


def test_bundled_atlas_counts_by_the_soft_tissue_rule():
    image = hd.read(SAMPLES / "ct_head.nii.gz")
    assert image.units == "HU" and image.nodata is None  # no padding in it
    assert "soft tissue (-100..100 HU)" in image.meta["ct_evidence"]


def test_rules_on_synthetic_edges():
    rng = np.random.default_rng(0)
    brain = rng.normal(35, 25, (1, 4, 32, 32)).round().astype(np.float32)
    assert "soft tissue" in ct_evidence(brain)
    assert ct_evidence(brain + 0.5) is None  # not integer: the no-air rule needs integer HU
    assert ct_evidence(brain * 10 + 300) is None  # MR-like arbitrary units
    labels = rng.integers(0, 40, (1, 4, 32, 32)).astype(np.float32)  # a label map: few values
    assert ct_evidence(labels) is None
    air = brain.copy()
    air[..., :4] = -1000
    assert "air or lung" in ct_evidence(air + 0.25)  # float CT with air: fine
    below = air.copy()
    below[0, 0, 0, :10] = np.arange(-2000, -1990)  # below -1024 and no single fill: not CT
    assert ct_evidence(below) is None
    metal = air.copy()
    metal[0, :, :8, :8] = 8000  # 6 % far above 3071 HU
    assert ct_evidence(metal) is None
    assert ct_evidence(np.full((1, 1, 4, 4), np.nan, np.float32)) is None


def test_full_range_window_label():
    assert window_label("hu") == "full HU range" and "hu" in CT_WINDOWS  # the CLI name stays
    assert window_label("soft-tissue") == "soft-tissue"
