"""The QGIS plugin object and the Processing provider `hires`."""

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProcessingProvider

from . import runner
from .algorithms import EnhanceAlgorithm, EvaluateAlgorithm, SharpenS2Algorithm


class HiresProvider(QgsProcessingProvider):
    def id(self):
        return "hires"

    def name(self):
        return "hires-domain"

    def longName(self):
        return "hires-domain super-resolution (runs the hires command line)"

    def defaultRasterFileExtension(self):
        return "tif"

    def supportedOutputRasterLayerExtensions(self):
        return ["tif", "tiff"]

    def loadAlgorithms(self):
        try:
            config = runner.load_config()
        except runner.Failed as exc:
            QgsMessageLog.logMessage(str(exc), "hires-domain", Qgis.Critical)
            return
        for algorithm in (EnhanceAlgorithm, SharpenS2Algorithm, EvaluateAlgorithm):
            self.addAlgorithm(algorithm(config))


class HiresPlugin:
    def __init__(self, iface):
        self.provider = None

    def initProcessing(self):  # noqa: N802 - QGIS's names
        if self.provider is not None:  # initGui after initProcessing
            return
        self.provider = HiresProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()

    def unload(self):
        QgsApplication.processingRegistry().removeProvider(self.provider)
        self.provider = None
