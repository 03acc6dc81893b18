"""hires-domain for QGIS: Processing algorithms running the `hires` command line in a subprocess."""


def classFactory(iface):  # noqa: N802 - QGIS's entry point
    from .plugin import HiresPlugin

    return HiresPlugin(iface)
