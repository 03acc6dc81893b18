"""hires-domain: domain-correct super-resolution for medical volumes and satellite rasters."""

__version__ = "0.1.0"
