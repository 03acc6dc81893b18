"""PyQGIS checks of the hires_qgis plugin, run by the system Python (/usr/bin/python3) from
tests/test_qgis.py: ``pyqgis_checks.py PLUGINS_DIR SPEC.json`` prints one JSON object of findings.

SPEC names the inputs and outputs (see test_qgis.py); every run goes through ``processing``."""

import json
import sys
import time
from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingFeedback, QgsProject


class Recorder(QgsProcessingFeedback):
    """Records progress values (and when each came); cancels after the first one when asked."""

    def __init__(self, cancel_after_first=False):
        super().__init__()
        self.values, self.cancel_after_first, self.canceled_at = [], cancel_after_first, None
        self.progressChanged.connect(self.record)

    def record(self, value):
        self.values.append(value)
        if self.cancel_after_first and self.canceled_at is None:
            self.canceled_at = time.monotonic()
            self.cancel()


def run(algorithm, params, feedback=None, load=False):
    """{"ok", "error", "seconds", "progress", "results", "canceled_after"} of one processing run."""
    import processing

    feedback = feedback or Recorder()
    start, error, results = time.monotonic(), None, {}
    try:  # a copy: processing replaces the outputs' paths by definitions
        results = (processing.runAndLoadResults if load else processing.run)(algorithm, dict(params),
                                                                              feedback=feedback)
    except QgsProcessingException as exc:
        error = str(exc)
    end = time.monotonic()
    return {"ok": error is None, "error": error, "seconds": end - start, "progress": feedback.values,
            "results": {k: v if isinstance(v, (int, float)) else str(v) for k, v in results.items()},
            "canceled_after": None if feedback.canceled_at is None else end - feedback.canceled_at}


def style_of(path):
    """The loaded layer of file ``path``: renderer type, RGB bands and their contrast stretch."""
    layer = next((lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.source() == path), None)
    if layer is None:
        return {"renderer": None, "loaded": [lyr.source() for lyr in QgsProject.instance().mapLayers().values()]}
    r = layer.renderer()
    out = {"renderer": r.type(), "layer_bands": layer.bandCount()}
    if r.type() == "multibandcolor":
        enhancements = (r.redContrastEnhancement(), r.greenContrastEnhancement(), r.blueContrastEnhancement())
        origin = r.minMaxOrigin()
        out.update(bands=[r.redBand(), r.greenBand(), r.blueBand()],
                   limits=[[e.minimumValue(), e.maximumValue()] for e in enhancements],
                   cut=[origin.cumulativeCutLower(), origin.cumulativeCutUpper()])
    return out


def main(plugins_dir, spec):
    sys.path[:0] = [plugins_dir, "/usr/share/qgis/python/plugins"]
    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    import hires_qgis

    plugin = hires_qgis.classFactory(None)
    plugin.initProcessing()
    found = {}
    found["progress"] = run("hires:enhance", spec["progress"], load=True)
    found["style"] = style_of(spec["progress"]["OUTPUT"])
    found["cancel"] = run("hires:enhance", spec["cancel"], Recorder(cancel_after_first=True))
    found["corrupt"] = run("hires:enhance", spec["corrupt"])
    found["evaluate"] = run("hires:evaluate", spec["evaluate"])
    found["sharpen"] = run("hires:sharpen_s2", spec["sharpen"], load=True)
    found["sharpen_style"] = style_of(spec["sharpen"]["OUTPUT"])

    # the recorded hires executable gone (its environment deleted): the provider reloaded
    config_path = Path(plugins_dir) / "hires_qgis" / "hires.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "hires": spec["missing_hires"]}))
    plugin.unload()
    plugin.initProcessing()
    found["missing"] = run("hires:enhance", spec["missing"])
    print(json.dumps(found))
    app.exitQgis()


if __name__ == "__main__":
    main(sys.argv[1], json.loads(Path(sys.argv[2]).read_text()))
