"""GDAL's messages while an input raster is read: collected, judged, and kept off stderr.

GDAL reports through rasterio's logger, JP2OpenJPEG's worker threads print straight to stderr,
and libgeotiff prints GeoJP2 key errors to the stderr file descriptor with no hook: a corrupt
file would otherwise leave stray lines and tracebacks around our one-line error, or open
"successfully" without its georeferencing. Hand-written because no library offers this.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading

import rasterio

from ..errors import one_line


def reason(err: Exception) -> str:
    """GDAL's own message: rasterio's read errors only say 'See previous exception for details'."""
    while err.__cause__ is not None and "previous exception" in str(err):
        err = err.__cause__
    return one_line(err) or type(err).__name__


# GDAL warnings on opening that mean the file is cut short or its georeferencing was dropped:
# reading on would silently write an output without CRS or metadata
FATAL_WARNINGS = re.compile(r'IO error during reading|tags apparently corrupt|"Geo\w+"; tag ignored')


class _GdalMessages(logging.Handler):
    """Collects the warnings GDAL reports (through rasterio's logger) while a file is read."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def reading():
    """Around GDAL reads of an input: its messages reach rasterio's logger (collected here)
    instead of GDAL's default handler, which prints them on stderr. Decoding runs in this thread
    (JP2OpenJPEG decodes in worker threads by default, whose errors always go to stderr; one
    thread measured as fast on window reads), and rasterio's failure to decode a non-UTF-8 GDAL
    message (corrupt metadata) is not printed as 'Exception ignored' noise."""
    messages = _GdalMessages()
    logger = logging.getLogger("rasterio")
    logger.addHandler(messages)
    main = threading.current_thread() is threading.main_thread()
    hook, excepthook = sys.unraisablehook, sys.excepthook

    def quiet(unraisable):
        ours = isinstance(unraisable.exc_value, UnicodeDecodeError) and str(unraisable.object).startswith("rasterio.")
        if not ours:
            hook(unraisable)

    def quiet_print(kind, value, tb):  # Cython prints the same error through sys.excepthook first
        if not issubclass(kind, UnicodeDecodeError):
            excepthook(kind, value, tb)

    if main:
        sys.unraisablehook, sys.excepthook = quiet, quiet_print
    try:
        with rasterio.Env(GDAL_NUM_THREADS="1"):
            yield messages
    finally:
        if main:
            sys.unraisablehook, sys.excepthook = hook, excepthook
        logger.removeHandler(messages)


_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


@contextlib.contextmanager
def libgeotiff_messages(path: str):
    """While GDAL opens a JP2, what libgeotiff prints about its GeoJP2 box ('Error: Key ...',
    'Warning: Key ...' straight to the stderr file descriptor, no hook in GDAL 3.10) is
    captured and yielded as lines; anything else written meanwhile goes back to stderr."""
    lines: list[str] = []
    try:
        with open(path, "rb") as f:
            is_jp2 = f.read(len(_JP2_SIGNATURE)) == _JP2_SIGNATURE
    except OSError:
        is_jp2 = False
    if not is_jp2 or threading.current_thread() is not threading.main_thread():
        yield lines
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                capture.seek(0)
                other = []
                for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                    (lines if line.startswith(("Error: ", "Warning: ")) else other).append(line)
                if other:
                    os.write(2, "".join(other).encode())
    finally:
        os.close(saved)
