"""napari's "Send to PACS" command: the selected DICOM layer arrives at a C-STORE SCP (the node's
own receiver, in-process) as a derived series of the same study."""

from __future__ import annotations

import pydicom
import pytest

from dicom_node_support import free_port, require_pynetdicom
from hires_domain.errors import HiresError
from hires_napari import pacs


def test_send_selected_layer_to_pacs(viewer, ct_series_dir, tmp_path, monkeypatch, qtbot):
    require_pynetdicom()
    from hires_domain.dicom_node.config import NodeConfig
    from hires_domain.dicom_node.queue import Queue
    from hires_domain.dicom_node.scp import Receiver, start_server

    cfg = NodeConfig(aet="PACS", port=free_port(), data_dir=tmp_path / "pacs")
    config = tmp_path / "pacs.yaml"
    config.write_text(f"aet: VIEWER\ndestination: {{aet: PACS, host: 127.0.0.1, port: {cfg.port}}}\n")
    monkeypatch.setenv("HIRES_PACS_CONFIG", str(config))
    (layer,) = viewer.open(str(ct_series_dir), plugin="hires-domain")
    queue = Queue(cfg.data_dir)
    server = start_server(cfg, Receiver(queue, cfg.data_dir))
    try:
        viewer.layers.selection = {layer}
        worker = pacs.send_to_pacs(viewer)
        with qtbot.waitSignal(worker.finished, timeout=60_000):
            pass
    finally:
        server.shutdown()
    (s,) = queue.select()
    source = pydicom.dcmread(next(ct_series_dir.glob("*.dcm")), stop_before_pixels=True)
    assert s["instances"] == 12 and s["calling_aet"] == "VIEWER"
    assert s["uid"] != source.SeriesInstanceUID and s["study_uid"] == source.StudyInstanceUID
    first = pydicom.dcmread(next((cfg.data_dir / "incoming" / s["uid"]).glob("*.dcm")))
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]

    viewer.layers.selection = set()
    with pytest.raises(HiresError, match="select one image layer opened from DICOM"):
        pacs.selected_dicom(viewer)
