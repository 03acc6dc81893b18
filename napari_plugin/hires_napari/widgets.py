"""The plugin's widgets: thin Qt over ``jobs`` (which holds every decision and is Qt-free).

- ``EnhanceWidget``: run a model on an image layer (or a region of it) in a napari generator
  worker; progress per tile, Cancel between tiles, stale results refused. Diffusion models:
  steps/seed/samples/sampler/uncertainty controls (enabled for them only), progress per
  denoising step over all tiles, Cancel within one step, the uncertainty map as its own layer.
- ``CompareWidget``: metrics table (computed in a worker thread), a difference layer, and a fade
  slider (swipe by opacity) plus a side-by-side toggle (napari's grid mode).
- ``WindowPresetsWidget``: CT window/level presets in one click.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
from napari.layers import Image as ImageLayer
from napari.layers import Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QHBoxLayout, QHeaderView,
                            QLabel, QLineEdit, QProgressBar, QPushButton, QSlider, QSpinBox, QTableWidget,
                            QTableWidgetItem, QVBoxLayout, QWidget)

from hires_domain.errors import HiresError
from hires_domain.intensity import CT_WINDOWS, window_label
from hires_domain.pipeline import Settings, domain_of

from . import jobs, readers

SAME_AS_INPUT = "(default)"


def _image_layers(viewer) -> list:
    return [ly for ly in viewer.layers if isinstance(ly, ImageLayer) and jobs.is_hires_layer(ly.metadata)]


def _find(viewer, name: str):
    for ly in viewer.layers:
        if ly.name == name:
            return ly
    return None


def _placement(layer) -> np.ndarray:
    """Everything that places a layer in the world (for the stale-result fingerprint)."""
    return np.concatenate([np.ravel(layer.scale), np.ravel(layer.translate), np.ravel(layer.rotate),
                           np.ravel(layer.shear), np.ravel(layer.affine.affine_matrix)])


def _camera(viewer):
    """The camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _grid(viewer):
    """Grid settings (``viewer.canvas.grid`` from napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _canvas_size(viewer) -> tuple[float, float]:
    """(height, width) of the canvas in screen pixels."""
    canvas = getattr(viewer, "canvas", None)
    return tuple(canvas.size) if canvas is not None else tuple(viewer._canvas_size)


def _fill(combo: QComboBox, names: list[str]) -> None:
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(names)
    if current in names:
        combo.setCurrentText(current)
    combo.blockSignals(False)
    if combo.currentText() != current:
        combo.currentTextChanged.emit(combo.currentText())


def _watch_layers(viewer, callback) -> None:
    """Call ``callback`` when layers are added, removed, moved or renamed."""
    def watch_name(layer):
        layer.events.name.connect(callback)

    def inserted(event):
        watch_name(event.value)
        callback()

    for layer in viewer.layers:
        watch_name(layer)
    viewer.layers.events.inserted.connect(inserted)
    viewer.layers.events.removed.connect(callback)
    viewer.layers.events.moved.connect(callback)


STRENGTH_TIPS = {  # how far the result may move from the deterministic answer (pipeline.check_strength)
    False: "how much of the model's change to keep: output = input + strength × (model − input); "
           "1 = the model's output, 0 = the input",
    True: "repaint strength: sampling starts from the first stage noised to step strength × T (fewer "
          "steps run); 0 = the first stage (deterministic), 1 = full sampling"}


class EnhanceWidget(QWidget):
    """Enhance an image layer (or the current view / a drawn rectangle of it) with a model."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.job: jobs.Job | None = None
        self._cancel = threading.Event()  # set by Cancel: a diffusion run stops within one step
        self._defaults_of = ""  # the diffusion model whose defaults the controls were last set to
        self._many_samples = False
        self.last_progress = (0, 0)
        self.last_outcome: str | None = None  # 'added' | 'stale' | 'error' | 'cancelled'

        self.layer_combo = QComboBox()
        self.model_combo = QComboBox()
        self.scale = QSpinBox(minimum=1, maximum=8, value=2)
        self.z_scale = QSpinBox(minimum=1, maximum=16, value=1)
        self.z_scale.setToolTip("output slices per input slice (through-plane): self-sr learns them from the "
                                "volume itself; other models interpolate along z (docs/through-plane.md)")
        self.z_scale_label = QLabel("z-scale")  # the row shows for 3-D medical inputs only
        self.tile = QSpinBox(minimum=8, maximum=8192, value=256, singleStep=16)
        self.overlap = QSpinBox(minimum=0, maximum=1024, value=32, singleStep=4)
        self.device_combo = QComboBox()
        self.device_combo.addItems(jobs.DEVICES)
        self.device_label = QLabel()
        self.precision = QComboBox()
        self.precision.addItems(jobs.PRECISIONS)
        self.precision.setToolTip("auto: bf16/fp16 where the device is fast at it and the model was checked "
                                  "against fp32 on held-out data, else fp32")
        # diffusion choices: bad values (0 steps or samples, a seed that is no integer) reach the
        # core's checks (ldm.Sampling) and come back as one-line errors, as other refusals do
        self.steps = QSpinBox(minimum=0, maximum=1000, value=20)
        self.steps.setToolTip("denoising steps per tile (set to the model's default when it is chosen)")
        self.seed = QLineEdit()
        self.seed.setPlaceholderText("0")
        self.seed.setToolTip("noise seed, an integer >= 0 (empty: 0); the same seed gives the same result")
        self.samples = QSpinBox(minimum=0, maximum=64, value=1)
        self.samples.setToolTip("samples per pixel; the result is their mean")
        self.sampler = QComboBox()
        self.sampler.addItems(jobs.SAMPLERS)
        self.uncertainty = QCheckBox("uncertainty map")
        self.uncertainty.setToolTip("add the per-pixel standard deviation over the samples as its own layer "
                                    "(needs samples > 1; on by default then)")
        self.strength = QDoubleSpinBox(minimum=0.0, maximum=1.0, value=1.0, singleStep=0.1, decimals=2)
        self.strength_label = QLabel("strength")  # the row shows for x1 (denoising) and diffusion models only
        self.diffusion_box = QWidget()
        self.diffusion_label = QLabel("diffusion")  # the row (label and box) shows for diffusion models only
        dl = QGridLayout(self.diffusion_box)
        dl.setContentsMargins(0, 0, 0, 0)
        for i, (label, w) in enumerate((("steps", self.steps), ("seed", self.seed), ("samples", self.samples),
                                        ("sampler", self.sampler))):
            dl.addWidget(QLabel(label), i // 2, 2 * (i % 2))
            dl.addWidget(w, i // 2, 2 * (i % 2) + 1)
        dl.addWidget(self.uncertainty, 2, 0, 1, 4)
        self.region_combo = QComboBox()
        self.region_combo.addItems(jobs.REGION_MODES)
        self.region_button = QPushButton("Draw region")
        self.region_button.setToolTip(f"add a Shapes layer '{jobs.REGION_LAYER}' to draw a rectangle in")
        self.composite_button = QPushButton("Add RGB composite of selected raster")
        self.composite_button.setToolTip("true colour (2-98 % stretch) from the selected band layers' own data "
                                         "(a result band set shows enhanced); replaces its earlier composite")
        self.run_button = QPushButton("Run")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.domain_note = QLabel("")  # input-domain warning of the last run (jobs.Job.note)
        self.domain_note.setWordWrap(True)
        self.domain_note.setStyleSheet("color: orange")
        self.domain_note.setVisible(False)

        form = QFormLayout(self)
        form.addRow("input", self.layer_combo)
        form.addRow("model", self.model_combo)
        form.addRow("scale", self.scale)
        form.addRow(self.z_scale_label, self.z_scale)
        form.addRow(self.strength_label, self.strength)
        form.addRow("tile", self.tile)
        form.addRow("overlap", self.overlap)
        form.addRow("device", self.device_combo)
        form.addRow("", self.device_label)
        form.addRow("precision", self.precision)
        form.addRow(self.diffusion_label, self.diffusion_box)
        region = QHBoxLayout()
        region.addWidget(self.region_combo)
        region.addWidget(self.region_button)
        form.addRow("region", region)
        form.addRow("raster", self.composite_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        form.addRow(buttons)
        form.addRow(self.progress)
        form.addRow(self.status)
        form.addRow(self.domain_note)

        self.layer_combo.currentTextChanged.connect(self._refresh_models)
        self.model_combo.currentTextChanged.connect(self._on_model)
        self.device_combo.currentTextChanged.connect(self._on_device)
        self.tile.valueChanged.connect(self._on_tile)
        self.samples.valueChanged.connect(self._on_samples)
        self.region_button.clicked.connect(self.add_region_layer)
        self.composite_button.clicked.connect(self.add_composite)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        _watch_layers(self.viewer, self._refresh_layers)
        self._refresh_layers()
        self._on_device(self.device_combo.currentText())
        self._on_tile(self.tile.value())

    # --- controls ----------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _band_sets(self) -> dict[str, list[str]]:
        entries = [(ly.name, ly.metadata) for ly in _image_layers(self.viewer)]
        return {**jobs.band_sets(entries), **self._products(entries)}

    def _products(self, entries=None) -> dict[str, list[str]]:
        """'<product> [whole product]' choices: Sentinel-2 products opened by the reader."""
        return jobs.product_sets(entries if entries is not None else
                                 [(ly.name, ly.metadata) for ly in _image_layers(self.viewer)])

    def _refresh_layers(self, *_):
        _fill(self.layer_combo, [ly.name for ly in _image_layers(self.viewer)] + list(self._band_sets()))
        self._refresh_models()

    def _inputs(self) -> list:
        """The chosen layer, or every band layer of the chosen 'all bands' set (in band order)."""
        choice = self.layer_combo.currentText()
        names = self._band_sets().get(choice, [choice])
        found = [_find(self.viewer, n) for n in names]
        if not names or any(ly is None for ly in found):
            raise HiresError("no input: open an image with the hires-domain reader first")
        return found

    def _refresh_models(self, *_):
        names = []
        try:
            inputs = self._inputs()
        except HiresError:
            inputs = []
        if inputs and self.layer_combo.currentText() in self._products():
            try:
                names = [m.name for m in jobs.models_for(jobs.product_image(inputs[0].metadata))]
            except HiresError:  # the product's files were moved or changed: run() says so
                names = []
        elif inputs and all(jobs.is_hires_layer(ly.metadata) for ly in inputs):
            stub = np.zeros((len(inputs),) + (1,) * inputs[0].ndim, np.float32)
            ref = jobs.layers.to_image(stub[0], inputs[0].metadata) if len(inputs) == 1 else \
                replace(inputs[0].metadata[jobs.layers.META], data=stub)
            names = [m.name for m in jobs.models_for(ref)]
        volume = len(inputs) == 1 and jobs.is_volume(inputs[0].metadata, np.shape(inputs[0].data))
        for w in (self.z_scale_label, self.z_scale):
            w.setVisible(volume)
        self.z_scale.setEnabled(volume)
        if not volume:  # self-sr refines the slice axis of a volume: nothing to offer elsewhere
            names = [n for n in names if jobs.model_family(n) != "self-supervised"]
        _fill(self.model_combo, names)
        self._on_model(self.model_combo.currentText())

    def _on_model(self, name: str):
        """The scale follows the model: a scale it cannot do becomes its own (s2-sr-x4 → 4). The
        diffusion row shows, enabled, for diffusion models only, starting from the model's own
        steps and sampler when it is chosen. The precision is a choice for networks that can run
        reduced precision only."""
        diffusion = jobs.model_family(name) == "diffusion"
        self.diffusion_label.setVisible(diffusion)
        self.diffusion_box.setVisible(diffusion)
        for w in (self.steps, self.seed, self.samples, self.sampler):
            w.setEnabled(diffusion)
        defaults = jobs.diffusion_defaults(name) if diffusion else None
        if defaults is not None and name != self._defaults_of:
            self.steps.setValue(defaults.steps)
            self.sampler.setCurrentText(defaults.sampler)
        self._defaults_of = name if diffusion else ""
        self._on_samples(self.samples.value())
        strength = jobs.takes_strength(name)
        self.strength_label.setVisible(strength)
        self.strength.setVisible(strength)
        self.strength.setToolTip(STRENGTH_TIPS[diffusion])
        reduced = jobs.takes_precision(name)
        self.precision.setEnabled(reduced)
        if not reduced:
            self.precision.setCurrentText("auto")  # fp32, the only precision of this model
        info = jobs.model_info(name)
        if info is not None and self.scale.value() not in info.scales:
            self.scale.setValue(info.default_scale)
        if name == "self-sr" and self.z_scale.value() == 1:  # self-sr refines the slice axis only
            self.z_scale.setValue(2)

    def _on_samples(self, samples: int):
        """The uncertainty map needs more than one sample: on by default from two samples, off and
        disabled for one (and for models that are not diffusion models)."""
        many = samples > 1
        if many != self._many_samples:
            self._many_samples = many
            self.uncertainty.setChecked(many)
        self.uncertainty.setEnabled(self.samples.isEnabled() and many)

    def _on_tile(self, tile: int):
        """Overlap stays below the tile: at most tile − 1; one that no longer fits becomes tile/8
        (the default 32 of 256)."""
        value = self.overlap.value()
        self.overlap.setMaximum(max(0, tile - 1))
        if value >= tile:
            self.overlap.setValue(tile // 8)

    def _on_device(self, name: str):
        self.device_label.setText(f"in use: {jobs.device_in_use(name)}")

    def settings(self) -> Settings:
        """The job's Settings; diffusion choices only for diffusion models (HiresError, one line,
        for bad values)."""
        name = self.model_combo.currentText()
        diffusion = {}
        if jobs.model_family(name) == "diffusion":
            diffusion = {"steps": self.steps.value(), "seed": jobs.parse_seed(self.seed.text()),
                         "samples": self.samples.value(), "sampler": self.sampler.currentText(),
                         "uncertainty": self.samples.value() > 1 and self.uncertainty.isChecked()}
        return Settings(model=name, scale=self.scale.value(), tile=self.tile.value(),
                        overlap=self.overlap.value(), batch_size=1, device=self.device_combo.currentText(),
                        precision=self.precision.currentText(),
                        strength=self.strength.value() if jobs.takes_strength(name) else 1.0,
                        z_scale=self.z_scale.value() if self.z_scale.isEnabled() else 1, **diffusion)

    def add_composite(self):
        """The true-colour composite of the selected raster's band layers (``readers.add_composite``)."""
        try:
            _, message = readers.add_composite(self.viewer)
        except HiresError as e:
            self.status.setText(f"no composite: {e}")
            show_error(str(e))
            return None
        self.status.setText(message)
        return message

    # --- regions -----------------------------------------------------------------------------

    def add_region_layer(self):
        """The Shapes layer whose last rectangle is the 'drawn rectangle' region."""
        shapes = _find(self.viewer, jobs.REGION_LAYER)
        if shapes is None:
            shapes = self.viewer.add_shapes(name=jobs.REGION_LAYER, ndim=max(2, self.viewer.dims.ndim),
                                            edge_color="yellow", face_color="transparent")
        shapes.mode = "add_rectangle"
        return shapes

    def region(self, layer) -> jobs.Region | None:
        mode = self.region_combo.currentText()
        shape = np.shape(layer.data)
        if mode == jobs.VIEW:
            d = self.viewer.dims
            cam = _camera(self.viewer)
            corners = jobs.view_corners(d.point, d.displayed, cam.center, _canvas_size(self.viewer), cam.zoom)
            return jobs.region_from_points([layer.world_to_data(c) for c in corners], shape)
        if mode == jobs.DRAWN:
            shapes = _find(self.viewer, jobs.REGION_LAYER)
            if not isinstance(shapes, Shapes) or len(shapes.data) == 0:
                raise HiresError(f"draw a rectangle in the '{jobs.REGION_LAYER}' layer first (Draw region)")
            world = [shapes.data_to_world(v) for v in np.asarray(shapes.data[-1])]
            return jobs.region_from_points([layer.world_to_data(w) for w in world], shape)
        return None

    # --- running -----------------------------------------------------------------------------

    def run(self):
        """Capture the input on this (main) thread and start the worker; errors as notifications."""
        if self.busy:
            return
        self._show_note(None)
        try:
            inputs = self._inputs()
            layer = inputs[0]
            if not self.model_combo.currentText():
                raise HiresError(f"no registered model fits '{self.layer_combo.currentText()}' at "
                                 f"x{self.scale.value()}")
            if self.layer_combo.currentText() in self._products():
                members = [(ly.data, ly.metadata, ly.unique_id, _placement(ly)) for ly in inputs]
                job = jobs.capture_product(members, self.settings(), self.region_combo.currentText())
            elif len(inputs) == 1:
                job = jobs.capture(layer.data, layer.metadata, layer.name, self.settings(), layer.unique_id,
                                   self.region(layer), _placement(layer))
            else:
                members = [(ly.data, ly.metadata, ly.unique_id, _placement(ly)) for ly in inputs]
                job = jobs.capture_bands(members, layer.metadata[jobs.layers.GROUP]["name"], self.settings(),
                                         self.region(layer))
        except HiresError as e:
            self.last_outcome = "error"
            self.status.setText(f"not run: {e}")  # never the previous run's "added …"
            show_error(str(e))
            return
        self.job = job
        self.last_progress = (0, 0)
        self.last_outcome = None
        self.progress.setRange(0, 0)
        self.status.setText(f"enhancing {job.name} with {job.settings.model} x{job.settings.scale}…")
        self._show_note(job.note)
        self._cancel = threading.Event()
        worker = create_worker(jobs.run, job, cancel=self._cancel, _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.aborted.connect(self._on_aborted)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        worker.start()

    def _show_note(self, note: str | None):
        """The input-domain warning stays shown under the status until the next run."""
        self.domain_note.setText(f"warning: {note}" if note else "")
        self.domain_note.setVisible(bool(note))

    def cancel(self):
        """Stop the worker between tiles (the generator is not resumed after the current one);
        a diffusion run stops within one denoising step (the job's cancel event)."""
        if self.worker is not None:
            self._cancel.set()
            self.worker.quit()
            self.cancel_button.setEnabled(False)
            self.status.setText("cancelling…")

    def _on_progress(self, value):
        done, total = value
        self.last_progress = (done, total)
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def _on_returned(self, outcome: jobs.Outcome):
        job = outcome.job
        if outcome.cancelled:
            self._on_aborted()
            return
        if outcome.error:
            self.last_outcome = "error"
            self.status.setText(outcome.error)
            show_error(outcome.error)
            return
        reason = None
        for fp in job.fingerprints:  # every band layer of a band-set job must be unchanged
            layer = next((ly for ly in self.viewer.layers if ly.unique_id == fp.layer_id), None)
            reason = jobs.stale_reason(job, None) if layer is None else \
                jobs.stale_reason(job, layer.unique_id, layer.data, _placement(layer), fp)
            if reason:
                break
        if reason:
            self.last_outcome = "stale"
            self.status.setText(reason)
            show_warning(reason)
            return
        single = not job.others  # a band set keeps each band's own contrast
        added = []
        for data, kwargs, _ in jobs.output_layers(job, outcome.image,
                                                  contrast_limits=layer.contrast_limits if single else None,
                                                  colormap=layer.colormap.name if single else None):
            for name in (kwargs["name"], jobs.uncertainty_name(kwargs["name"])):
                old = _find(self.viewer, name)
                if old is not None:  # a re-run replaces its previous result (and its uncertainty map)
                    self.viewer.layers.remove(old)
            added.append(self.viewer.add_image(data, **kwargs))
        if len(added) >= 3:  # a band set shows as its true-colour composite, bands hidden
            try:
                readers.add_composite(self.viewer, added)
                for band in added:
                    band.visible = False
            except HiresError:
                pass  # bands that make no composite stay as they are
        if outcome.uncertainty is not None:  # over the result, on its grid
            for data, kwargs, _ in jobs.uncertainty_layers(job, outcome.uncertainty, [ly.name for ly in added]):
                self.viewer.add_image(data, **kwargs)
        self.last_outcome = "added"
        extra = " and its uncertainty map" if outcome.uncertainty is not None else ""
        self.status.setText(f"added '{job.output_name}'{extra}")

    def _on_aborted(self):
        self.last_outcome = "cancelled"
        done, total = self.last_progress
        unit = self.job.unit if self.job is not None else "tiles"
        self.status.setText(f"cancelled after {done} of {total} {unit}")

    def _on_errored(self, exc):
        self.last_outcome = "error"
        self.status.setText(f"failed: {exc}")

    def _on_finished(self):
        if self.last_outcome is None and self._cancel.is_set():  # returned after Cancel: not emitted
            self._on_aborted()
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, max(1, self.last_progress[1]))
        self.progress.setValue(self.last_progress[0])

    def closeEvent(self, event):  # noqa: N802 (Qt)
        self.cancel()
        super().closeEvent(event)


class CompareWidget(QWidget):
    """A result against a reference (or its input): metrics table, difference layer, fade/grid."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.comparison: jobs.Comparison | None = None
        self.worker = None
        self.compute_thread = None  # the thread the last comparison was computed in (tests)
        self.result_combo = QComboBox()
        self.ref_combo = QComboBox()
        self.window_combo = QComboBox()
        self.window_combo.addItem(SAME_AS_INPUT, None)
        for name in CT_WINDOWS:  # shown as 'full HU range' for 'hu'; the item's data is the name
            self.window_combo.addItem(window_label(name), name)
        self.window_label = QLabel("window")
        self.bands_label = QLabel("")
        self.band_warning = QLabel("")  # different bands chosen (B02 result against B03 reference)
        self.band_warning.setWordWrap(True)
        self.band_warning.setStyleSheet("color: orange")
        self.band_warning.setVisible(False)
        self.compare_button = QPushButton("Compare")
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["metric", "value", "unit", "better"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.verticalHeader().setVisible(False)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.fade = QSlider(Qt.Horizontal)
        self.fade.setRange(0, 100)
        self.fade.setValue(100)
        self.fade.setToolTip("swipe by opacity between the reference (left) and the result (right)")
        self.side_by_side = QCheckBox("side by side (grid)")

        lay = QVBoxLayout(self)
        form = QFormLayout()
        form.addRow("result", self.result_combo)
        form.addRow("reference", self.ref_combo)
        form.addRow(self.window_label, self.window_combo)
        form.addRow("bands", self.bands_label)
        form.addRow(self.band_warning)
        lay.addLayout(form)
        lay.addWidget(self.compare_button)
        lay.addWidget(self.table)
        lay.addWidget(self.summary)
        fade = QHBoxLayout()
        fade.addWidget(QLabel("reference"))
        fade.addWidget(self.fade)
        fade.addWidget(QLabel("result"))
        lay.addLayout(fade)
        lay.addWidget(self.side_by_side)

        self.compare_button.clicked.connect(self.compare)
        self.ref_combo.currentTextChanged.connect(self._on_ref)
        self.result_combo.currentTextChanged.connect(self._on_ref)
        self.fade.valueChanged.connect(self._on_fade)
        self.side_by_side.toggled.connect(self._on_grid)
        _watch_layers(self.viewer, self._refresh_layers)
        self._refresh_layers()

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _band_sets(self) -> dict[str, list[str]]:
        return jobs.band_sets([(ly.name, ly.metadata) for ly in _image_layers(self.viewer)])

    def _refresh_layers(self, *_):
        names = [ly.name for ly in _image_layers(self.viewer)]
        sets = list(self._band_sets())  # '<raster> [all N bands]': every band at once (SAM, ERGAS)
        _fill(self.result_combo, list(reversed(names)) + sets)  # newest (top) first: usually the result
        _fill(self.ref_combo, names + sets)
        self._on_ref()

    def _layers_of(self, choice: str) -> list:
        """The chosen layer, or the band layers of an 'all bands' choice (empty when gone)."""
        found = [_find(self.viewer, n) for n in self._band_sets().get(choice, [choice])]
        return [] if any(ly is None for ly in found) else found

    def _band_names(self, choice: str) -> tuple[str, ...]:
        out = []
        for ly in self._layers_of(choice):
            img, band = ly.metadata[jobs.layers.META], ly.metadata.get("band")
            out += list(img.band_names if band is None else img.band_names[band:band + 1])
        return tuple(out)

    def _on_ref(self, *_):
        refs = self._layers_of(self.ref_combo.currentText())
        medical = bool(refs) and domain_of(refs[0].metadata[jobs.layers.META]) == "medical"
        self.window_label.setVisible(medical)
        self.window_combo.setVisible(medical)
        if refs:
            self.bands_label.setText(", ".join(self._band_names(self.ref_combo.currentText())) or "single channel")
        a, b = self._band_names(self.result_combo.currentText()), self._band_names(self.ref_combo.currentText())
        self._show_band_warning(a and b and a != b and
                                f"different bands: {', '.join(a)} (result) against {', '.join(b)} (reference)")

    def _show_band_warning(self, text) -> None:
        self.band_warning.setText(f"warning: {text}" if text else "")
        self.band_warning.setVisible(bool(text))

    def _image(self, choice: str):
        """A snapshot Image of a choice (a layer, or all band layers of a raster), main thread."""
        found = self._layers_of(choice)
        if not found:
            raise HiresError("choose a result and a reference layer")
        if len(found) > 1 or choice in self._band_sets():
            return jobs.band_set_image([(np.array(ly.data, dtype=np.float32), ly.metadata) for ly in found], choice)
        ly = found[0]
        return jobs.layer_image(np.array(ly.data, dtype=np.float32), ly.metadata, ly.name)

    def _pair(self):
        a, b = _find(self.viewer, self.result_combo.currentText()), _find(self.viewer, self.ref_combo.currentText())
        if a is None or b is None:
            raise HiresError("choose a result and a reference layer")
        if a is b:
            raise HiresError("the result and the reference are the same layer")
        return a, b

    def compare(self):
        """Snapshot both choices here (main thread), compute the metrics and the difference in a
        worker; when it finishes, fill the table and add (or replace) the layer ``<a> − <b>``."""
        if self.busy:
            return
        name_a, name_b = self.result_combo.currentText(), self.ref_combo.currentText()
        try:
            if name_a == name_b and name_a:
                raise HiresError("the result and the reference are the same layer")
            pred, ref = self._image(name_a), self._image(name_b)
            window = self.window_combo.currentData() if self.window_combo.isVisibleTo(self) else None
        except HiresError as e:
            show_error(str(e))
            return
        self.summary.setText(f"comparing {name_a} with {name_b}…")
        worker = create_worker(self._compute, pred, ref, name_a, name_b, window, _start_thread=False)
        worker.returned.connect(self._on_compared)
        worker.errored.connect(lambda exc: self.summary.setText(f"failed: {exc}"))
        worker.finished.connect(self._on_compare_finished)
        self.worker = worker
        self.compare_button.setEnabled(False)
        worker.start()

    def _compute(self, pred, ref, name_a, name_b, window):  # worker thread
        self.compute_thread = threading.current_thread()
        return jobs.run_compare(pred, ref, name_a, name_b, window)

    def _on_compared(self, outcome: jobs.CompareOutcome):
        if outcome.error:
            self.summary.setText(outcome.error)
            show_error(outcome.error)
            return
        comparison = outcome.comparison
        self.comparison = comparison
        self.table.setRowCount(len(comparison.rows))
        for i, row in enumerate(comparison.rows):
            for j, text in enumerate(row):
                self.table.setItem(i, j, QTableWidgetItem(str(text)))
        self.summary.setText(comparison.summary)
        self._show_band_warning(comparison.warning)
        if comparison.warning:
            show_warning(comparison.warning)
        data, kwargs, _ = outcome.difference
        old = _find(self.viewer, kwargs["name"])
        if old is not None:
            self.viewer.layers.remove(old)
        self.viewer.add_image(data, visible=False, **kwargs)

    def _on_compare_finished(self):
        self.worker = None
        self.compare_button.setEnabled(True)

    def _on_fade(self, value: int):
        """Opacity swipe: the upper of the two layers fades from reference (0) to result (100)."""
        try:
            a, b = self._pair()
        except HiresError:
            return
        layer_list = list(self.viewer.layers)
        ia, ib = layer_list.index(a), layer_list.index(b)
        if ia > ib:
            a.opacity, b.opacity = value / 100, 1.0
        else:
            b.opacity, a.opacity = 1 - value / 100, 1.0

    def _on_grid(self, on: bool):
        _grid(self.viewer).enabled = bool(on)


class WindowPresetsWidget(QWidget):
    """One button per CT window: sets the contrast limits of the selected image layers."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        lay = QHBoxLayout(self)
        self.buttons = {}
        for name in jobs.PRESETS:
            c, w = CT_WINDOWS[name]
            button = QPushButton(name)
            button.setToolTip(f"window centre {c:g} HU, width {w:g} HU")
            button.clicked.connect(lambda _=False, n=name: self.apply(n))
            lay.addWidget(button)
            self.buttons[name] = button

    def apply(self, name: str) -> list:
        targets = [ly for ly in self.viewer.layers.selection if isinstance(ly, ImageLayer) and not ly.rgb]
        if not targets:
            show_info("select an image layer to apply a CT window to")
            return []
        lo, hi = jobs.window_limits(name)
        for layer in targets:
            rlo, rhi = layer.contrast_limits_range
            if lo < rlo or hi > rhi:
                layer.contrast_limits_range = (min(lo, rlo), max(hi, rhi))
            layer.contrast_limits = (lo, hi)
        return targets
