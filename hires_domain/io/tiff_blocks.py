"""Move a tiled GeoTIFF's compressed blocks into another tiled GeoTIFF, without decoding them.

One raster split into row bands (``cluster/bands.py``) is written by the workers as parts with
the final file's layout (block size, compression, predictor, data type, interleave, mask), so
each part's compressed tiles *are* the final file's tiles of its rows. GDAL (and rasterio) only
write tiles by compressing pixels, and decoding and recompressing every part costs the client
more CPU than the workers' own writing; so the final file is created by GDAL with no tiles
(``SPARSE_OK``), and here each part's tile bytes are appended to it and the final file's
``TileOffsets``/``TileByteCounts`` entries pointed at them. tifffile finds those arrays.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tifffile

from ..errors import HiresError

_LAYOUT = ("compression", "predictor", "planarconfig", "tilewidth", "tilelength", "imagewidth", "dtype",
           "samplesperpixel", "subfiletype")
_INT = {3: "u2", 4: "u4", 16: "u8"}  # TIFF SHORT, LONG, LONG8


def _tiles_across(page) -> int:
    return -(-page.imagewidth // page.tilewidth)


def _check(final, part, row0: int) -> None:
    if len(part.pages) != len(final.pages):
        raise HiresError(f"part {part.filehandle.path}: {len(part.pages)} images, the output has {len(final.pages)}")
    for fp, pp in zip(final.pages, part.pages):
        if not (fp.is_tiled and pp.is_tiled):
            raise HiresError("block copy needs tiled GeoTIFFs")
        different = [k for k in _LAYOUT if getattr(fp, k) != getattr(pp, k)]
        if fp.planarconfig != 1:
            different.append("planarconfig (band-interleaved)")
        if different:
            raise HiresError(f"part {part.filehandle.path} does not share the output's layout: {', '.join(different)}")
        if row0 % fp.tilelength or row0 + pp.imagelength > fp.imagelength:
            raise HiresError(f"part rows {row0}-{row0 + pp.imagelength} are not whole output block rows")


def _entries(f, tag, byteorder: str) -> tuple[np.ndarray, np.dtype]:
    dtype = np.dtype(byteorder + _INT[tag.dtype])
    f.seek(tag.valueoffset)
    return np.frombuffer(f.read(tag.count * dtype.itemsize), dtype).astype(np.int64), dtype


def adopt_part(final_path, part_path, row0: int, claim: Callable[[int], None]) -> None:
    """Append the compressed tiles of ``part_path`` (output rows ``row0…``, block-aligned) to the
    GeoTIFF ``final_path`` (closed by GDAL, created without those tiles) and point its tile tables
    at them, for every image of the file (the raster and its internal mask). ``claim(rows)`` is
    called with the part's row count once its layout is checked, before anything is written (it
    may refuse by raising). Raises ``HiresError`` when the part's layout differs or an offset does
    not fit the TIFF flavour."""
    with tifffile.TiffFile(final_path) as final, tifffile.TiffFile(part_path) as part, \
            open(final_path, "r+b") as out:
        _check(final, part, row0)
        claim(part.pages[0].imagelength)
        fh = part.filehandle
        for fpage, page in zip(final.pages, part.pages):
            tags = fpage.tags["TileOffsets"], fpage.tags["TileByteCounts"]
            (offsets, odt), (counts, cdt) = (_entries(out, t, final.byteorder) for t in tags)
            first = row0 // fpage.tilelength * _tiles_across(fpage)
            out.seek(0, 2)
            for j, (src, n) in enumerate(zip(page.dataoffsets, page.databytecounts)):
                offsets[first + j], counts[first + j] = (out.tell() if n else 0), n
                if n:
                    fh.seek(src)
                    out.write(fh.read(n))
            for values, dtype, tag in ((offsets, odt, tags[0]), (counts, cdt, tags[1])):
                if values.max(initial=0) > np.iinfo(dtype).max:
                    raise HiresError(f"{final_path}: block offsets beyond the TIFF's {8 * dtype.itemsize}-bit limit")
                out.seek(tag.valueoffset)
                out.write(values.astype(dtype).tobytes())
