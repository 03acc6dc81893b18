"""Command "Send to PACS": the selected DICOM layer (an enhanced result, or any layer opened from
a DICOM series) as a derived series, C-STORE'd in a background thread to the destination of the
PACS config (``hires_domain.dicom_node.send.send_image``; config: docs/dicom-node.md)."""

from __future__ import annotations

from hires_domain.errors import HiresError, one_line

from . import layers, writers


def selected_dicom(viewer):
    """(layer, Image, description) of the one selected image layer with a DICOM source."""
    chosen = [ly for ly in viewer.layers.selection if layers.META in ly.metadata]
    if len(chosen) != 1 or getattr(chosen[0].metadata[layers.META], "kind", None) != "dicom":
        raise HiresError("select one image layer opened from DICOM (or enhanced from one) to send to the PACS")
    layer = chosen[0]
    return layer, layers.to_image(layer.data, layer.metadata), writers.describe(layer.metadata)


def send_to_pacs(viewer: "napari.viewer.Viewer"):  # noqa: F821 (resolved by napari)
    """Send the selected layer; the outcome as a notification. Returns the worker (None when
    nothing suitable is selected)."""
    from napari.qt.threading import create_worker
    from napari.utils.notifications import show_error, show_info

    try:
        from hires_domain.dicom_node.send import send_image
    except ImportError:
        show_error("Send to PACS needs pynetdicom: pip install 'hires-domain[dicom-node]'")
        return None
    try:
        layer, image, description = selected_dicom(viewer)
    except HiresError as exc:
        show_error(str(exc))
        return None
    worker = create_worker(send_image, image, description)
    worker.returned.connect(lambda summary: show_info(f"{layer.name}: {summary}"))
    worker.errored.connect(lambda exc: show_error(f"{layer.name}: not sent: {one_line(exc)}"))
    worker.start()
    return worker
