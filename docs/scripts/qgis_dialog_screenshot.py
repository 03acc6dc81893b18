"""The QGIS algorithm dialog of `hires:enhance` for docs/qgis.md, from a real QGIS on a virtual screen.

    hires qgis install --profile-dir PROFILE
    xvfb-run -a /usr/bin/python3 docs/scripts/qgis_dialog_screenshot.py PROFILE [OUT.png]

Runs in the system Python (PyQGIS); PROFILE is the QGIS profile the plugin was installed into.
The dialog opens on the bundled Sentinel-2 crop with s2-sr-x4 chosen, as an analyst would fill it.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("QGIS_PREFIX_PATH", "/usr")
os.environ["GDAL_PAM_ENABLED"] = "NO"  # no .aux.xml beside the bundled sample


def main(profile: Path, out: Path) -> None:
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    app = QgsApplication([], True)
    app.initQgis()
    sys.path[:0] = [str(profile / "python" / "plugins"), str(Path(QgsApplication.pkgDataPath()) / "python" / "plugins")]
    from processing.core.Processing import Processing

    Processing.initialize()
    import hires_qgis
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    plugin = hires_qgis.classFactory(None)
    plugin.initProcessing()
    layer = QgsRasterLayer(str(ROOT / "hires_domain" / "samples" / "s2_crop.tif"), "s2_crop")
    QgsProject.instance().addMapLayer(layer)
    # processing.createAlgorithmDialog needs QGIS's main window (iface); this is its standalone part
    dialog = AlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById("hires:enhance"))
    dialog.setParameters({"INPUT": layer.id(), "MODEL": "s2-sr-x4"})
    dialog.resize(900, 640)
    dialog.show()
    for _ in range(20):
        app.processEvents()
    out.parent.mkdir(parents=True, exist_ok=True)
    dialog.grab().save(str(out))
    print(f"wrote {out}")
    dialog.deleteLater()
    plugin.unload()
    app.exitQgis()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else ROOT / "docs/images/qgis_enhance_dialog.png"))
