"""Sentinel-2 products for tests: SAFE trees (L1C, L2A) and zips built in tmp_path from the real
13-band crop in hires_domain/samples/s2_product/ (or another band directory), with minimal ESA metadata."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from hires_domain.io.s2_product import S2_ORDER
from support import SAMPLES

CROP = SAMPLES / "s2_product"
NATIVE = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
          "B8A": 20, "B09": 60, "B10": 60, "B11": 20, "B12": 20}
TILE, STAMP = "T18SUJ", "20230101T153611"

L1C_MTD = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-1C_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_URI>{name}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-1C</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI1C</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <Product_Organisation>
        <Granule_List>
          <Granule granuleIdentifier="S2B_OPER_MSI_L1C_TL_2BPS_{stamp}_N{n}" imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <QUANTIFICATION_VALUE unit="none">{q}</QUANTIFICATION_VALUE>
{offsets}
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-1C_User_Product>
"""

L2A_MTD = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_URI>{name}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <Product_Organisation>
        <Granule_List>
          <Granule granuleIdentifier="S2A_OPER_MSI_L2A_TL_2APS_{stamp}_N{n}" imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <QUANTIFICATION_VALUES_LIST>
        <BOA_QUANTIFICATION_VALUE unit="none">{q}</BOA_QUANTIFICATION_VALUE>
        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>
        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>
      </QUANTIFICATION_VALUES_LIST>
{offsets}
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-2A_User_Product>
"""


def _offsets(tag: str, value: float | None) -> str:
    if value is None:
        return ""
    lst = "BOA_ADD_OFFSET_VALUES_LIST" if tag == "BOA_ADD_OFFSET" else "Radiometric_Offset_List"
    rows = "\n".join(f'        <{tag} band_id="{i}">{value:g}</{tag}>' for i in range(13))
    return f"      <{lst}>\n{rows}\n      </{lst}>"


def _image_files(files: list[str]) -> str:
    return "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in files)


def make_l1c(root: Path, baseline: str = "02.06", offset: float | None = None, q: int = 10000,
             source: Path = CROP) -> Path:
    n = baseline.replace(".", "")
    name = f"S2B_MSIL1C_{STAMP}_N{n}_R068_{TILE}_{STAMP}.SAFE"
    granule = root / name / "GRANULE" / f"L1C_{TILE}_A030201_{STAMP}"
    img, qi = granule / "IMG_DATA", granule / "QI_DATA"
    img.mkdir(parents=True)
    qi.mkdir()
    files = []
    for b in S2_ORDER:
        shutil.copy(source / f"s2_{b}.jp2", img / f"{TILE}_{STAMP}_{b}.jp2")
        shutil.copy(source / f"s2_{b}.jp2", qi / f"MSK_DETFOO_{b}.jp2")  # masks are named after bands too
        files.append(f"GRANULE/{granule.name}/IMG_DATA/{TILE}_{STAMP}_{b}")
    shutil.copy(source / "s2_B02.jp2", img / f"{TILE}_{STAMP}_TCI.jp2")
    xml = L1C_MTD.format(name=name, baseline=baseline, stamp=STAMP, n=n, q=q,
                         offsets=_offsets("RADIO_ADD_OFFSET", offset), files=_image_files(files))
    (root / name / "MTD_MSIL1C.xml").write_text(xml, encoding="utf-8")
    return root / name


def make_l2a(root: Path, baseline: str = "05.09", offset: float | None = -1000, q: int = 10000,
             source: Path = CROP) -> Path:
    """L2A layout: R10m/R20m/R60m, bands at several resolutions (stand-in pixels for the resampled
    copies, e.g. B02_20m is the B05 crop), plus TCI/AOT/WVP/SCL; no B10."""
    n = baseline.replace(".", "")
    name = f"S2A_MSIL2A_{STAMP}_N{n}_R068_{TILE}_{STAMP}.SAFE"
    granule = root / name / "GRANULE" / f"L2A_{TILE}_A039361_{STAMP}"
    stand_in = {10: "B02", 20: "B05", 60: "B01"}
    layout = {10: ["B02", "B03", "B04", "B08", "TCI", "AOT", "WVP"],
              20: ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12", "TCI", "AOT", "WVP", "SCL"],
              60: ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12", "TCI", "AOT", "WVP",
                   "SCL"]}
    files = []
    for res, names in layout.items():
        d = granule / "IMG_DATA" / f"R{res}m"
        d.mkdir(parents=True)
        for b in names:
            src = b if NATIVE.get(b) == res else stand_in[res]
            shutil.copy(source / f"s2_{src}.jp2", d / f"{TILE}_{STAMP}_{b}_{res}m.jp2")
            files.append(f"GRANULE/{granule.name}/IMG_DATA/R{res}m/{TILE}_{STAMP}_{b}_{res}m")
    (granule / "QI_DATA").mkdir()
    shutil.copy(source / "s2_B05.jp2", granule / "QI_DATA" / "MSK_CLDPRB_20m.jp2")
    xml = L2A_MTD.format(name=name, baseline=baseline, stamp=STAMP, n=n, q=q,
                         offsets=_offsets("BOA_ADD_OFFSET", offset), files=_image_files(files))
    (root / name / "MTD_MSIL2A.xml").write_text(xml, encoding="utf-8")
    return root / name


def zip_safe(safe: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(safe.rglob("*")):
            z.write(f, f.relative_to(safe.parent).as_posix() + ("/" if f.is_dir() else ""))
    return out


def band_dir(tmp_path: Path, bands=S2_ORDER, name: str = "bands") -> Path:
    d = tmp_path / name
    d.mkdir()
    for b in bands:
        shutil.copy(CROP / f"s2_{b}.jp2", d / f"s2_{b}.jp2")
    return d


def write_tif(path: Path, size: int = 8, res: float = 10.0, crs: str = "EPSG:32618",
              origin=(439570.0, 4165840.0), data=None) -> Path:
    data = np.full((size, size), 1000, np.uint16) if data is None else data
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=crs, transform=from_origin(*origin, res, res)) as dst:
        dst.write(data, 1)
    return path


