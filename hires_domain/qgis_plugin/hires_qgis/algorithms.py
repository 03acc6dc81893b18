"""The Processing algorithms: each builds a `hires` command line and runs it (runner.run)."""

import json
import os
import re
from pathlib import Path

from qgis.core import (QgsContrastEnhancement, QgsMultiBandColorRenderer, QgsProcessingAlgorithm,
                       QgsProcessingException, QgsProcessingLayerPostProcessorInterface, QgsProcessingOutputNumber,
                       QgsProcessingParameterBoolean, QgsProcessingParameterDefinition, QgsProcessingParameterEnum,
                       QgsProcessingParameterFile, QgsProcessingParameterFileDestination,
                       QgsProcessingParameterNumber, QgsProcessingParameterRasterDestination,
                       QgsProcessingParameterRasterLayer, QgsProcessingParameterString, QgsRasterLayer,
                       QgsRasterMinMaxOrigin)
from qgis.PyQt import sip

from . import runner

PRODUCT_FAMILIES = ("sharpen", "cascade")  # models reading a Sentinel-2 product's bands at several resolutions
PRECISIONS = ["auto", "fp32", "bf16", "fp16"]
STRETCH = (0.02, 0.98)  # the product's true-colour stretch: 2-98 % of each band


def style_true_colour(layer: QgsRasterLayer) -> None:
    """Red, green, blue from the band names (B04, B03, B02 for Sentinel-2; else the first three),
    each stretched between its 2 and 98 % cumulative counts; layers of fewer bands keep QGIS's style."""
    provider = layer.dataProvider()
    names = [re.sub(r"^Band \d+:?\s*", "", provider.generateBandName(b)) for b in range(1, layer.bandCount() + 1)]
    picks = runner.true_colour(names)
    if picks is None:
        return
    renderer = QgsMultiBandColorRenderer(provider, *(p + 1 for p in picks))
    origin = renderer.minMaxOrigin()
    origin.setLimits(QgsRasterMinMaxOrigin.CumulativeCut)
    origin.setCumulativeCutLower(STRETCH[0])
    origin.setCumulativeCutUpper(STRETCH[1])
    renderer.setMinMaxOrigin(origin)
    layer.setRenderer(renderer)
    layer.setContrastEnhancement(QgsContrastEnhancement.StretchToMinimumMaximum, QgsRasterMinMaxOrigin.CumulativeCut)
    layer.triggerRepaint()


class TrueColour(QgsProcessingLayerPostProcessorInterface):
    """Styles an output when QGIS loads it."""

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS's name
        if isinstance(layer, QgsRasterLayer):
            style_true_colour(layer)


_STYLERS = []  # QGIS deletes a post-processor after use but does not own it: Python keeps it alive until then


def true_colour_styler() -> TrueColour:
    _STYLERS[:] = [s for s in _STYLERS if not sip.isdeleted(s)]
    _STYLERS.append(TrueColour())
    return _STYLERS[-1]


def _advanced(parameter):
    parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
    return parameter


def _given(parameters, name) -> bool:
    return parameters.get(name) not in (None, "")


class HiresAlgorithm(QgsProcessingAlgorithm):
    """What the algorithms share: the config, names and help, running hires, raster paths, the enhance options."""

    NAME = DISPLAY = HELP = ""
    PRODUCT = None  # which models MODEL lists: those reading a Sentinel-2 product (True) or a raster file (False)

    def __init__(self, config: dict):
        super().__init__()
        self.config = config

    def createInstance(self):  # noqa: N802 - QGIS's names from here on
        return type(self)(self.config)

    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802
        return self.DISPLAY

    def shortHelpString(self):  # noqa: N802
        rows = {m["name"]: m.get("summary", "") for m in self.config.get("models", [])}
        models = "".join(f"<li><b>{n}</b>: {rows[n]}</li>" for n in self.models())
        return self.HELP + (f"<ul>{models}</ul>" if models else "")

    def models(self) -> list:
        if self.PRODUCT is None:
            return []
        return [m["name"] for m in self.config.get("models", [])
                if "raster" in m.get("domains", ()) and (m.get("family") in PRODUCT_FAMILIES) == self.PRODUCT]

    def raster_path(self, parameters, name, context) -> str:
        """A raster file's path; a file QGIS cannot open goes to hires, which says what is wrong with it."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            value = parameters.get(name)
            if isinstance(value, str) and os.path.exists(value):
                return value
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        path = layer.source().split("|")[0]
        if layer.providerType() != "gdal" or not os.path.exists(path):
            raise QgsProcessingException(f"{name}: hires reads raster files (GeoTIFF, JP2), not this "
                                         f"{layer.providerType()} layer; export it to GeoTIFF first")
        return path

    def run_hires(self, args, feedback, outputs=()) -> None:
        """hires with progress into ``feedback`` and its messages in the log; a failure is its one line."""
        try:
            runner.run(args, self.config, outputs, progress=feedback.setProgress, canceled=feedback.isCanceled,
                       log=feedback.pushConsoleInfo)
        except runner.Failed as exc:
            raise QgsProcessingException(str(exc)) from None

    def int_options(self, parameters, context, *names) -> list:
        """``--name value`` for each integer parameter given."""
        return [a for n in names if _given(parameters, n)
                for a in (f"--{n.lower()}", self.parameterAsInt(parameters, n, context))]

    def add_model_parameter(self, default: str):
        models = self.models()
        default = default if default in models else next(iter(models), None)
        self.addParameter(QgsProcessingParameterEnum("MODEL", "Model", models, False, default, False, True))

    def add_enhance_parameters(self):
        """Precision, tiling (advanced), COG and OUTPUT, shared by the enhancing algorithms."""
        self.addParameter(_advanced(QgsProcessingParameterEnum(
            "PRECISION", "Precision (auto: bf16/fp16 where the device is fast at it and the model was checked)",
            PRECISIONS, False, "auto", False, True)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            "TILE", "Tile size in input pixels (unset: the largest in the memory budget)",
            QgsProcessingParameterNumber.Integer, None, True, 1)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            "OVERLAP", "Blending overlap between tiles, input pixels (unset: 0 where tiles are exact)",
            QgsProcessingParameterNumber.Integer, None, True, 0)))
        self.addParameter(QgsProcessingParameterBoolean("COG", "Write a Cloud Optimized GeoTIFF", False))
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Enhanced raster"))

    def enhance(self, src, model, extra, parameters, context, feedback, uncertainty="") -> dict:
        """``hires enhance SRC OUTPUT --model MODEL *extra`` with the shared options; outputs styled on loading."""
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        outputs = {"OUTPUT": out, "UNCERTAINTY": uncertainty} if uncertainty else {"OUTPUT": out}
        args = ["enhance", src, out, "--model", model, "--overwrite", "--quiet", "--progress", "jsonl",
                "--precision", self.parameterAsEnumString(parameters, "PRECISION", context), *extra]
        args += self.int_options(parameters, context, "TILE", "OVERLAP")
        if self.parameterAsBoolean(parameters, "COG", context):
            args.append("--cog")
        if uncertainty:
            args += ["--uncertainty", uncertainty]
        self.run_hires(args, feedback, outputs.values())
        for path in outputs.values():
            if context.willLoadLayerOnCompletion(path):
                context.layerToLoadOnCompletionDetails(path).setPostProcessor(true_colour_styler())
        return outputs


class EnhanceAlgorithm(HiresAlgorithm):
    NAME, DISPLAY, PRODUCT = "enhance", "Enhance raster (super-resolution)", False
    HELP = ("Super-resolves a raster file (GeoTIFF, JP2) with a hires-domain model, keeping its CRS, "
            "transform, nodata and band descriptions; scenes larger than memory stream tile by tile. "
            "The output is written under a temporary name and renamed when complete: a failed or "
            "canceled run leaves nothing. Scale 0 is the model's own (2 for the interpolation "
            "baselines). Diffusion models (s2-ldm-x4) take Samples, Steps, Seed and Strength and can "
            "write the per-pixel standard deviation over the samples (Uncertainty).")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.add_model_parameter("bicubic")
        self.addParameter(QgsProcessingParameterNumber(
            "SCALE", "Scale factor (0: the model's own)", QgsProcessingParameterNumber.Integer, 0, False, 0, 8))
        for name, label in (("SAMPLES", "Diffusion: samples drawn, the output is their mean"),
                            ("STEPS", "Diffusion: sampler steps"), ("SEED", "Diffusion: noise seed")):
            self.addParameter(_advanced(QgsProcessingParameterNumber(
                name, label, QgsProcessingParameterNumber.Integer, None, True, 0 if name == "SEED" else 1)))
        self.addParameter(_advanced(QgsProcessingParameterNumber(
            "STRENGTH", "Strength: how far the result may move from the deterministic answer (0-1)",
            QgsProcessingParameterNumber.Double, None, True, 0.0, 1.0)))
        self.add_enhance_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination(
            "UNCERTAINTY", "Diffusion: uncertainty (per-pixel standard deviation)", None, True, False))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        src = self.raster_path(parameters, "INPUT", context)
        extra = []
        if self.parameterAsInt(parameters, "SCALE", context) > 0:
            extra += ["--scale", self.parameterAsInt(parameters, "SCALE", context)]
        extra += self.int_options(parameters, context, "SAMPLES", "STEPS", "SEED")
        if _given(parameters, "STRENGTH"):
            extra += ["--strength", self.parameterAsDouble(parameters, "STRENGTH", context)]
        uncertainty = self.parameterAsOutputLayer(parameters, "UNCERTAINTY", context) \
            if _given(parameters, "UNCERTAINTY") else ""
        return self.enhance(src, self.parameterAsEnumString(parameters, "MODEL", context), extra,
                            parameters, context, feedback, uncertainty)


class SharpenS2Algorithm(HiresAlgorithm):
    NAME, DISPLAY, PRODUCT = "sharpen_s2", "Sharpen Sentinel-2 product (all bands at 10 m)", True
    HELP = ("Reads a Sentinel-2 product (a .zip, a .SAFE directory, or a directory of band files: "
            "choose the .zip, the MTD_MSIL*.xml inside the .SAFE, or any band file of the directory) "
            "and writes its bands on the 10 m grid (s2-sharpen) or at 2.5 m (s2-sharpen+x4) as one "
            "GeoTIFF, in Sentinel-2 order (B01, B02, ... B12; B10 left out unless listed in Bands).")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            "INPUT", "Sentinel-2 product (.zip, MTD_MSIL*.xml of a .SAFE, or a band file)",
            QgsProcessingParameterFile.File, "", None, False,
            "Sentinel-2 products (*.zip *.ZIP *.xml *.jp2 *.tif);;All files (*)"))
        self.add_model_parameter("s2-sharpen")
        self.addParameter(QgsProcessingParameterString(
            "BANDS", "Bands to read, in this order, e.g. B02,B03,B04,B08 (empty: all but B10)", None, False, True))
        self.add_enhance_parameters()

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        path = Path(self.parameterAsFile(parameters, "INPUT", context))
        product = path if path.is_dir() or path.suffix.lower() == ".zip" else path.parent
        bands = self.parameterAsString(parameters, "BANDS", context).replace(" ", "")
        return self.enhance(str(product), self.parameterAsEnumString(parameters, "MODEL", context),
                            ["--bands", bands] if bands else [], parameters, context, feedback)


class EvaluateAlgorithm(HiresAlgorithm):
    NAME, DISPLAY = "evaluate", "Evaluate against a reference (PSNR, SSIM, report)"
    HELP = ("Compares a prediction (e.g. an enhanced raster) with a reference raster on the same grid: "
            "PSNR, SSIM, MS-SSIM, spectral angle and more (hires evaluate), written as a self-contained "
            "HTML report and a JSON file with every number and its settings. With the low-resolution "
            "input, also the consistency of the prediction with it and the bicubic baseline.")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("PREDICTION", "Prediction"))
        self.addParameter(QgsProcessingParameterRasterLayer("REFERENCE", "Reference"))
        self.addParameter(QgsProcessingParameterRasterLayer("LR", "Low-resolution input (optional)", None, True))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Report", "HTML files (*.html)"))
        self.addParameter(QgsProcessingParameterFileDestination("METRICS", "Metrics", "JSON files (*.json)"))
        self.addOutput(QgsProcessingOutputNumber("PSNR", "PSNR (dB)"))
        self.addOutput(QgsProcessingOutputNumber("SSIM", "SSIM"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        report = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        metrics = self.parameterAsFileOutput(parameters, "METRICS", context)
        args = ["evaluate", self.raster_path(parameters, "PREDICTION", context),
                self.raster_path(parameters, "REFERENCE", context), "--report", report, "--json", metrics,
                "--overwrite"]
        if _given(parameters, "LR"):
            args += ["--lr", self.raster_path(parameters, "LR", context)]
        self.run_hires(args, feedback, [report, metrics])
        feedback.setProgress(100)
        values = json.loads(Path(metrics).read_text()).get("metrics", {})
        return {"OUTPUT": report, "METRICS": metrics,
                **{k.upper(): values.get(k, {}).get("value") for k in ("psnr", "ssim")}}
