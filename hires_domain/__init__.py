"""hires-domain: domain-correct super-resolution for medical volumes and satellite rasters.

Python API: ``read`` any supported input into an ``Image``, ``enhance`` it in memory,
``write`` it safely, or ``enhance_file`` to stream file to file.
"""

__version__ = "0.1.0"

from .errors import HiresError  # noqa: E402
from .image import Image  # noqa: E402
from .io import read, write  # noqa: E402
from .pipeline import Settings, enhance, enhance_file  # noqa: E402

__all__ = ["HiresError", "Image", "Settings", "enhance", "enhance_file", "read", "write", "__version__"]
