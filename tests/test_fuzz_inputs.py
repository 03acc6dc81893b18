"""Corrupt inputs: truncations and byte flips of small real files of every input format.

Each case runs `hires enhance IN OUT --model bicubic --scale 2` and `hires info IN` in-process
and accepts exactly two outcomes: success with a complete output, or one `error: ` line on
stderr (fd-level: nothing printed by C libraries either) naming the file, exit 2, nothing at the
output path and no temporary beside it. Never a traceback, an internal error or a hang.

Seeds are built once from the bundled real samples: a 48x48 crop of the Sentinel-2 GeoTIFF (and
a COG and a JPEG 2000 of it), a 32x32x4 crop of the CT NIfTI (.nii and .nii.gz), one real CT
slice uncompressed and re-encoded as JPEG 2000 and RLE, and a real JPEG Lossless CT slice from
pydicom-data. Cases are seeded: a failure names its case id, reproducible with `mutate()`.
"""

import random
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from support import DATA, SAMPLES, hires

pytestmark = [pytest.mark.timeout(30),  # a hang fails the case instead of stalling the suite
              pytest.mark.filterwarnings("ignore::UserWarning")]  # pydicom/rasterio on corrupt headers

N_TRUNC, N_HEAD, N_PIX = 16, 10, 8
KINDS = [("trunc", i) for i in range(N_TRUNC)] + [("head", i) for i in range(N_HEAD)] + \
        [("pix", i) for i in range(N_PIX)]
SEEDS = {  # name -> (file name, output name)
    "geotiff": ("crop.tif", "out.tif"),
    "cog": ("crop_cog.tif", "out.tif"),
    "jp2": ("crop.jp2", "out.tif"),
    "nifti": ("ct.nii", "out.nii.gz"),
    "nifti_gz": ("ct.nii.gz", "out.nii.gz"),
    "dicom": ("ct.dcm", "out"),
    "dicom_j2k": ("ct_j2k.dcm", "out"),
    "dicom_rle": ("ct_rle.dcm", "out"),
    "dicom_jpeg_real": ("bad_sequence.dcm", "out"),  # real JPEG Lossless slice, 512x512
}


def _build_seeds(d: Path) -> dict[str, Path | str]:
    """Seed files from the real samples; a str value is the reason that seed is unavailable."""
    import nibabel as nib
    import pydicom
    import rasterio
    import rasterio.shutil
    from pydicom.uid import JPEG2000Lossless, RLELossless
    from rasterio.windows import Window

    seeds: dict[str, Path | str] = {}
    with rasterio.open(SAMPLES / "s2_crop.tif") as src:
        window = Window(100, 100, 48, 48)
        profile = {**src.profile, "width": 48, "height": 48, "transform": src.window_transform(window),
                   "tiled": False, "compress": "deflate"}
        for key in ("blockxsize", "blockysize"):
            profile.pop(key, None)
        with rasterio.open(d / "crop.tif", "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.descriptions = src.descriptions
    seeds["geotiff"] = d / "crop.tif"
    rasterio.shutil.copy(d / "crop.tif", d / "crop_cog.tif", driver="COG", COMPRESS="DEFLATE")
    seeds["cog"] = d / "crop_cog.tif"
    with rasterio.Env() as env:
        has_jp2 = "JP2OpenJPEG" in env.drivers()
    if has_jp2:
        rasterio.shutil.copy(d / "crop.tif", d / "crop.jp2", driver="JP2OpenJPEG", REVERSIBLE="YES", QUALITY=100,
                             BLOCKXSIZE=32, BLOCKYSIZE=32, RESOLUTIONS=2)
        seeds["jp2"] = d / "crop.jp2"
    else:
        seeds["jp2"] = "GDAL has no JP2OpenJPEG driver in this rasterio build"

    ct = nib.load(SAMPLES / "ct_head.nii.gz").slicer[20:52, 20:52, 10:14]
    ct = nib.Nifti1Image(np.asanyarray(ct.dataobj), ct.affine, ct.header)
    for key, name in (("nifti", "ct.nii"), ("nifti_gz", "ct.nii.gz")):
        nib.save(ct, d / name)
        seeds[key] = d / name

    shutil.copy(SAMPLES / "ct_head_series" / "CT00001.dcm", d / "ct.dcm")
    seeds["dicom"] = d / "ct.dcm"
    for key, name, syntax, source in (("dicom_j2k", "ct_j2k.dcm", JPEG2000Lossless, "CT00002.dcm"),
                                      ("dicom_rle", "ct_rle.dcm", RLELossless, "CT00003.dcm")):
        ds = pydicom.dcmread(SAMPLES / "ct_head_series" / source)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.compress(syntax)
        except (RuntimeError, NotImplementedError) as exc:
            seeds[key] = f"pydicom cannot encode {syntax.name}: {exc}"
            continue
        ds.save_as(d / name)
        seeds[key] = d / name
    shutil.copy(DATA / "dicom" / "bad_sequence.dcm", d / "bad_sequence.dcm")
    seeds["dicom_jpeg_real"] = d / "bad_sequence.dcm"
    return seeds


@pytest.fixture(scope="session")
def seeds(tmp_path_factory):
    return _build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


def _header_end(path: Path, data: bytes) -> int:
    """Where the pixel data starts: byte flips before it hit the header, after it the pixels."""
    name = path.name
    if name.endswith(".dcm"):
        i = data.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data
        return i if i > 0 else len(data) // 2
    if name.endswith(".nii"):
        return int(struct.unpack("<f", data[108:112])[0])  # vox_offset
    if name.endswith(".jp2"):
        i = data.find(b"jp2c")  # the codestream box
        return i + 4 if i > 0 else len(data) // 2
    if name.endswith(".tif"):
        import rasterio

        with rasterio.open(path) as ds:
            return int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    return len(data) // 8  # .nii.gz: the compressed header is at the start of the stream


def mutate(path: Path, kind: str, index: int) -> bytes:
    """Case ``index`` of ``kind`` for a seed file: 'trunc' cuts it (0 bytes, around the header's
    end, then evenly), 'head'/'pix' XOR 1-8 random bytes before/after the pixel data start."""
    data = path.read_bytes()
    n, head = len(data), _header_end(path, data)
    if kind == "trunc":
        lengths = [0, 1, 8, 64, 132, head - 1, head, head + 1] + [n * (2 * i + 1) // 16 for i in range(7)] + [n - 1]
        return data[:max(0, min(lengths[index], n - 1))]
    rng = random.Random(f"{path.name}:{kind}:{index}")
    lo, hi = (0, head) if kind == "head" else (head, n)
    buf = bytearray(data)
    for _ in range(rng.choice((1, 2, 4, 8))):
        buf[rng.randrange(lo, hi)] ^= rng.randrange(1, 256)
    return bytes(buf)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _check_failure(code: int, err: str, bad: Path):
    lines = _lines(err)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line:\n{err}"
    assert bad.name in lines[0], f"the error does not name the file: {lines[0]}"


def _check_success_output(bad: Path, out: Path):
    """The output reads back whole, every pixel, on the input's grid refined x2 in-plane."""
    from hires_domain import io

    src, res = io.read(bad), io.read(out)
    try:
        assert res.channels == src.channels
        assert res.spatial_shape[:-2] == src.spatial_shape[:-2]
        assert res.spatial_shape[-2:] == tuple(2 * s for s in src.spatial_shape[-2:])
        if isinstance(res.data, np.ndarray):
            assert res.data.size
        else:  # a lazy raster: read all of it
            data, _ = res.data.read(tuple(slice(0, s) for s in res.spatial_shape))
            assert data.shape == res.shape
    finally:
        for image in (src, res):
            if hasattr(image.data, "close"):
                image.data.close()


@pytest.mark.parametrize("kind,index", KINDS, ids=[f"{k}{i:02d}" for k, i in KINDS])
@pytest.mark.parametrize("seed", list(SEEDS))
def test_corrupt_input(seed, kind, index, seeds, tmp_path, capfd):
    src = seeds[seed]
    if isinstance(src, str):
        pytest.skip(src)
    name, out_name = SEEDS[seed]
    bad = tmp_path / name
    bad.write_bytes(mutate(src, kind, index))
    out = tmp_path / out_name

    code, _, err = hires(capfd, "enhance", bad, out, "--model", "bicubic", "--scale", "2", "-q")
    assert "Traceback" not in err and "internal error" not in err, err
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != name)
    if code == 0:
        assert not any(line.startswith("error: ") for line in _lines(err)), err
        assert left == [out_name], f"left beside the output: {left}"
        _check_success_output(bad, out)
    else:
        _check_failure(code, err, bad)
        assert left == [], f"left behind after a failure: {left}"

    code, _, err = hires(capfd, "info", bad)
    assert "Traceback" not in err and "internal error" not in err, err
    if code != 0:
        _check_failure(code, err, bad)


def test_mutations_are_seeded_and_hit_both_regions(seeds):
    """The cases are reproducible, and flips land where their kind says."""
    src = seeds["dicom"]
    data = src.read_bytes()
    head = _header_end(src, data)
    assert 0 < head < len(data) - 128 * 128
    assert mutate(src, "head", 3) == mutate(src, "head", 3)
    for kind, inside in (("head", lambda i: i < head), ("pix", lambda i: i >= head)):
        flipped = np.flatnonzero(np.frombuffer(mutate(src, kind, 0), np.uint8) != np.frombuffer(data, np.uint8))
        assert flipped.size and all(inside(i) for i in flipped)
    assert [len(mutate(src, "trunc", i)) for i in (0, 5, 6)] == [0, head - 1, head]


# --- inconsistent headers: one field at a time, each a real failure mode seen while fuzzing -----

def _dicom_edit(seed: Path, edit) -> bytes:
    import io as _io

    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.datadict import tag_for_keyword

    ds = pydicom.dcmread(seed)

    def raw(keyword, vr, value: bytes):  # a value pydicom would refuse to set: stored as read
        tag = tag_for_keyword(keyword)
        value += b" " * (len(value) % 2)
        ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edit(ds, raw)
        buf = _io.BytesIO()
        ds.save_as(buf)
    return buf.getvalue()


DICOM_EDITS = {  # name -> (edit, expected error fragment or None for success)
    "rows_too_big": (lambda ds, raw: setattr(ds, "Rows", 4096), "pixel data"),
    "columns_zero": (lambda ds, raw: setattr(ds, "Columns", 0), "Columns 0"),
    "frames_on_single_frame": (lambda ds, raw: setattr(ds, "NumberOfFrames", 3), "pixel data"),
    "bits_allocated_12": (lambda ds, raw: setattr(ds, "BitsAllocated", 12), "pixel data"),
    "colour": (lambda ds, raw: setattr(ds, "SamplesPerPixel", 3), "colour"),
    "orientation_degenerate": (lambda ds, raw: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 1, 0, 0]),
                               "degenerate ImageOrientationPatient"),
    "orientation_nan": (lambda ds, raw: raw("ImageOrientationPatient", "DS", b"nan\\0\\0\\0\\1\\0"),
                        "ImageOrientationPatient"),
    "spacing_text": (lambda ds, raw: raw("PixelSpacing", "DS", b"abc\\1"), "PixelSpacing"),
    "spacing_zero": (lambda ds, raw: setattr(ds, "PixelSpacing", [0, 0]), "PixelSpacing"),
    "spacing_one_value": (lambda ds, raw: setattr(ds, "PixelSpacing", [1]), "PixelSpacing"),
    "slope_text": (lambda ds, raw: raw("RescaleSlope", "DS", b"x"), "RescaleSlope"),
    "no_instance_uid": (lambda ds, raw: delattr(ds, "SOPInstanceUID"), "SOPInstanceUID"),
    "unknown_vr": (lambda ds, raw: raw("SliceThickness", "QQ", b"1"), "corrupt DICOM header"),
    "series_number_text": (lambda ds, raw: raw("SeriesNumber", "IS", b"2x"), None),  # harmless: written anew
}
# the file meta's transfer syntax swapped for another of the same length (RLE Lossless <-> Explicit VR
# Little Endian): the pixel data no longer matches what the header says it is
SYNTAX_SWAP = (b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.5\x00")


def _nifti_edit(seed: Path, edits) -> bytes:
    buf = bytearray(seed.read_bytes())
    for offset, fmt, values in edits:
        buf[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    return bytes(buf)


NIFTI_EDITS = {  # name -> ((offset in the NIfTI-1 header, struct format, values), ...), expected error fragment
    "dims_huge": (((40, "<4h", (3, 30000, 30000, 30000)),), "header"),
    "dim_negative": (((40, "<4h", (3, -5, 32, 4)),), "dimensions"),
    "dim_zero": (((40, "<4h", (3, 0, 32, 4)),), "dimensions"),
    "seven_dims": (((40, "<8h", (7, 32, 32, 4, 1, 1, 1, 2)),), "dimensions"),
    "datatype_unknown": (((70, "<h", (1234,)),), "data code 1234"),
    "datatype_bool": (((70, "<h", (1,)),), "data code 1"),
    "datatype_rgb_too_short": (((70, "<h", (128,)),), "bytes"),
    "sform_nan": (((254, "<h", (1,)), (280, "<4f", (float("nan"), 0, 0, 0))), "voxel-to-world"),
    "sform_zero": (((254, "<h", (1,)), (280, "<12f", (0.0,) * 12)), "voxel-to-world"),
    "vox_offset_negative": (((108, "<f", (-1000.0,)),), "vox offset"),
    "vox_offset_past_end": (((108, "<f", (1e12,)),), "bytes"),
}


@pytest.mark.parametrize("edit", [*DICOM_EDITS, "transfer_syntax_swapped"])
@pytest.mark.parametrize("seed", ["dicom", "dicom_rle"])
def test_inconsistent_dicom_header(seed, edit, seeds, tmp_path, capfd):
    src = seeds[seed]
    if isinstance(src, str):
        pytest.skip(src)
    bad = tmp_path / "edited.dcm"
    if edit == "transfer_syntax_swapped":
        data = src.read_bytes()
        old, new = SYNTAX_SWAP if SYNTAX_SWAP[0] in data else SYNTAX_SWAP[::-1]
        assert data.count(old) == 1
        bad.write_bytes(data.replace(old, new))
        expected = ""  # undecodable either way: refused, naming the file
    else:
        change, expected = DICOM_EDITS[edit]
        bad.write_bytes(_dicom_edit(src, change))
    _check_one(bad, tmp_path / "out", expected, capfd)


@pytest.mark.parametrize("edit", list(NIFTI_EDITS))
@pytest.mark.parametrize("gz", [False, True], ids=["nii", "nii.gz"])
def test_inconsistent_nifti_header(gz, edit, seeds, tmp_path, capfd):
    import gzip

    edits, expected = NIFTI_EDITS[edit]
    data = _nifti_edit(seeds["nifti"], edits)
    bad = tmp_path / ("edited.nii.gz" if gz else "edited.nii")
    bad.write_bytes(gzip.compress(data) if gz else data)
    _check_one(bad, tmp_path / "out.nii.gz", expected, capfd)


def _check_one(bad: Path, out: Path, expected: str | None, capfd):
    """``expected`` None: success with a complete output; else one error line containing it."""
    for args in (("enhance", bad, out, "--model", "bicubic", "--scale", "2", "-q"), ("info", bad)):
        code, _, err = hires(capfd, *args)
        assert "Traceback" not in err and "internal error" not in err, err
        if expected is None:
            assert code == 0, err
        else:
            _check_failure(code, err, bad)
            assert expected.lower() in err.lower(), err
    if expected is None:
        _check_success_output(bad, out)
    else:
        assert sorted(p.name for p in bad.parent.iterdir()) == [bad.name]
