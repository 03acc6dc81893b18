"""`hires dicom-node` against a real PACS (Orthanc) with dcmtk's storescu/echoscu as the scanner,
plus its rules, TLS and corrupt-instance handling in-process."""

from __future__ import annotations

import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_node_support import (Node, Orthanc, echo, free_port, require, require_pynetdicom, require_tools, store,
                                wait_for)
from support import SAMPLES, fails, hires

SERIES = SAMPLES / "ct_head_series"
CT_FILES = sorted(SERIES.glob("*.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
# what the test data names its patients: must never reach the node's log
IDENTIFIERS = ("Anonymous^Atlas", "HIRES-SAMPLE", "CompressedSamples^MR1", "4MR1")
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the node's pixels are compared with a one-thread run here


@pytest.fixture(autouse=True)
def _needs():
    require_pynetdicom()


def corrupt_copy(src: Path, dst: Path) -> Path:
    """A CT instance of the same series whose pixel data is cut to half its length."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(dst)
    return dst


def pixels(directory: Path) -> np.ndarray:
    from hires_domain.io.dicom import read_dicom

    return read_dicom(directory).data


def test_node_enhances_a_scanner_series_into_orthanc(tmp_path, one_torch_thread, capsys):
    require_tools()
    node = Node(tmp_path, "--model", "ct-denoise", "--send-to", "PLACEHOLDER", "--series-timeout", "1",
                "--allow-aet", "CT1,PACS", env=ONE_THREAD)
    pacs = Orthanc(tmp_path, node.port)
    node.args[node.args.index("PLACEHOLDER")] = f"PACS@127.0.0.1:{pacs.port}"
    pacs.start()
    node.start()
    try:
        # C-ECHO; an unknown calling AE is refused at association
        assert echo(node.port, "CT1") == 0 and echo(node.port, "PACS") == 0
        assert echo(node.port, "EVIL") != 0
        assert store(node.port, "EVIL", CT_FILES[0]).returncode != 0
        # the scanner: a 12-slice CT series with a corrupt instance in the middle, then an MR slice
        bad = corrupt_copy(CT_FILES[5], tmp_path / "corrupt.dcm")
        scan = store(node.port, "CT1", *CT_FILES[:6], bad, *CT_FILES[6:])
        said = scan.stdout + scan.stderr
        assert said.count("Received Store Response (Success)") == 12, said
        assert said.count("Received Store Response (Error: CannotUnderstand)") == 1, said
        assert store(node.port, "CT1", MR).returncode == 0

        source = pydicom.dcmread(CT_FILES[0], stop_before_pixels=True)
        sent = wait_for(lambda: node.one("sent"), "the CT series to be sent")
        failed = wait_for(lambda: node.one("failed"), "the MR series to fail")
        assert (sent["uid"], sent["instances"], sent["modality"]) == (source.SeriesInstanceUID, 12, "CT")
        assert (failed["modality"], failed["instances"]) == ("MR", 1)
        assert "modality MR, trained on CT" in failed["reason"], failed["reason"]
        mr_uid = str(pydicom.dcmread(MR, stop_before_pixels=True).SeriesInstanceUID)
        assert failed["uid"] == mr_uid and (node.data_dir / "incoming" / mr_uid).is_dir()  # stored
        assert not (node.data_dir / "derived" / mr_uid).exists()  # not enhanced

        # in Orthanc: the derived series only, in the source's study, pixels equal to `hires enhance`
        (derived,) = pacs.series()
        assert derived["uid"] == sent["derived_uid"] != source.SeriesInstanceUID
        assert derived["study_uid"] == source.StudyInstanceUID and len(derived["instances"]) == 12
        got = pacs.download(derived["instances"], tmp_path / "from-pacs")
    finally:
        node.kill(signal.SIGTERM)
        pacs.stop()
    first = pydicom.dcmread(next(got.iterdir()))
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    refs = {r.ReferencedSOPInstanceUID for f in got.iterdir() for r in pydicom.dcmread(f).SourceImageSequence}
    assert refs == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in CT_FILES}
    code, _, err = hires(capsys, "enhance", SERIES, tmp_path / "reference", "--model", "ct-denoise", "-q")
    assert code == 0, err
    np.testing.assert_array_equal(pixels(got), pixels(tmp_path / "reference"))

    # status: one line per series with the reason; the log names no patient
    code, out, _ = hires(capsys, "dicom-node", "status", "--data-dir", node.data_dir)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "0 received, 0 queued, 0 enhancing, 0 sending, 1 sent, 1 failed"
    assert any(ln.startswith(f"{sent['uid']} CT 12 instances sent") for ln in lines[1:])
    assert any("MR 1 instances failed: input unlike what model 'ct-denoise'" in ln for ln in lines[1:])
    log = node.logs()
    assert "refused instance" in log and "rejected" in log and sent["uid"] in log
    for identifier in IDENTIFIERS:
        assert identifier not in log


def test_destination_down_kill_and_restart_sends_once(tmp_path):
    """Orthanc down while the series arrives; the node SIGKILLed mid-series and again before sending;
    after restarts and Orthanc's return the derived series arrives, once."""
    require_tools()
    node = Node(tmp_path, "--model", "ct-denoise", "--send-to", "PLACEHOLDER", "--series-timeout", "2",
                "--retry-initial", "0.5", "--retry-max", "1", env=ONE_THREAD)
    pacs = Orthanc(tmp_path, node.port)
    node.args[node.args.index("PLACEHOLDER")] = f"PACS@127.0.0.1:{pacs.port}"
    node.start()
    try:
        assert store(node.port, "CT1", *CT_FILES[:6]).returncode == 0
        node.kill()  # mid-series: before the series timeout
        node.start()
        assert store(node.port, "CT1", *CT_FILES[6:]).returncode == 0
        wait_for(lambda: attempts(node) >= 2, "failed sends to the stopped PACS")
        node.kill()  # before anything was sent
        waiting = node.one("sending")
        assert waiting["instances"] == 12 and "cannot be reached" in waiting["reason"]
        node.start()
        wait_for(lambda: attempts(node) > waiting["attempts"], "a retry by the restarted node")
        pacs.start()  # the destination comes back: the running node's next retry delivers
        sent = wait_for(lambda: node.one("sent"), "the series to be sent", timeout=30)
        assert sent["instances"] == 12
        (derived,) = pacs.series()
        assert derived["uid"] == sent["derived_uid"] and len(derived["instances"]) == 12
    finally:
        node.kill()
        pacs.stop()
    assert "not sent (attempt 1)" in node.logs()


def attempts(node: Node) -> int:
    return (node.one("sending") or {}).get("attempts", 0)


def tls_files(tmp: Path) -> tuple[Path, Path]:
    require(shutil.which("openssl") is not None, "openssl")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_tls_store_and_corrupt_instance_refused_in_process(tmp_path):
    """The SCP over TLS, sent to with the node's own C-STORE SCU: stored; a corrupt instance in the
    same association gets 0xC210 and the association goes on; without TLS no association."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from hires_domain.dicom_node.config import NodeConfig
    from hires_domain.dicom_node.queue import Queue
    from hires_domain.dicom_node.rules import Destination, TLSFiles
    from hires_domain.dicom_node.scp import Receiver, start_server
    from hires_domain.dicom_node.send import SendError, send_files

    cert, key = tls_files(tmp_path)
    cfg = NodeConfig(port=free_port(), data_dir=tmp_path / "node", tls=TLSFiles(cert, key))
    queue = Queue(cfg.data_dir)
    server = start_server(cfg, Receiver(queue, cfg.data_dir))
    try:
        dest = Destination("node", "HIRES", "localhost", cfg.port, TLSFiles(ca=cert))
        assert send_files(CT_FILES[:3], dest) == 3
        bad = corrupt_copy(CT_FILES[3], tmp_path / "corrupt.dcm")
        with pytest.raises(SendError, match="refused corrupt.dcm with status 0xC210"):
            send_files([bad], dest)
        ae = AE()
        ae.add_requested_context(Verification)
        plain = ae.associate("127.0.0.1", cfg.port, ae_title="HIRES")
        assert not plain.is_established
    finally:
        server.shutdown()
    (s,) = queue.select()
    assert s["instances"] == 3 and s["status"] == "received"
    assert sorted(p.name for p in (cfg.data_dir / "incoming" / s["uid"]).iterdir()) == sorted(
        f"{pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID}.dcm" for f in CT_FILES[:3])


def test_rules_file_matches_and_bad_input_is_one_line(tmp_path, capsys):
    from hires_domain.dicom_node.config import node_config
    from hires_domain.dicom_node.rules import match

    rules = tmp_path / "node.yaml"
    rules.write_text(textwrap.dedent("""
        node: {aet: NODE, series_timeout: 3, allow_aet: [CT1, PACS], retry: {initial: 2, max: 60}}
        destinations:
          pacs: {aet: PACS, host: 10.0.0.5, port: 104}
        rules:
          - match: {modality: CT, series_description: "*low dose*", calling_aet: CT1}
            model: ct-denoise
            options: {strength: 0.7}
            send_to: pacs
          - match: {modality: [CT]}
            model: ct-sr-x2
            send_to: pacs
        """))
    cfg = node_config(rules, port=4242, series_timeout=None)
    assert (cfg.aet, cfg.port, cfg.series_timeout, cfg.allow_aet) == ("NODE", 4242, 3, ("CT1", "PACS"))
    assert (cfg.retry.delay(1), cfg.retry.delay(3), cfg.retry.delay(9)) == (2, 8, 60)
    low = match(cfg.rules, "CT", "Chest LOW DOSE 1mm", "CT1")
    assert (low.settings.model, low.settings.strength, low.settings.strict) == ("ct-denoise", 0.7, True)
    assert match(cfg.rules, "CT", "Chest LOW DOSE 1mm", "CT2").settings.model == "ct-sr-x2"
    assert match(cfg.rules, "MR", "T1", "CT1") is None
    assert str(low.destination) == "PACS@10.0.0.5:104"

    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("destinations: {p: {aet: P, host: h, port: 1}}\nrules: [{model: ct-denoise, send_to: q}]",
         "send_to 'q' is not in destinations"),
        ("destinations: {p: {aet: P, host: h, port: 1}}\nrules: [{model: nope, send_to: p}]", "nope"),
        ("destinations: {p: {aet: P, host: h, port: 1}}\nrules: [{model: ct-denoise, send_to: p, options: {x: 1}}]",
         "unknown option 'x'"),
        ("destinations: {p: {aet: P, host: h, port: 0}}\nrules: [{model: ct-denoise, send_to: p}]", "port"),
    ]:
        bad.write_text(text)
        fails(capsys, "dicom-node", "--config", bad, match=message)
    fails(capsys, "dicom-node", "--model", "ct-denoise", "--send-to", "PACS-10.0.0.5", match="AET@host:port")
    fails(capsys, "dicom-node", "--model", "ct-denoise", match="--model and --send-to go together")
    fails(capsys, "dicom-node", "--model", "ct-denoise", "--send-to", "P@h:104", "--allow-aet", "A\\B",
          match="not an AE title")
    fails(capsys, "dicom-node", "status", "--data-dir", tmp_path / "none", match="no DICOM node data")


def test_queue_reopens_on_late_instances_and_purges_finished_series(tmp_path):
    import time

    from hires_domain.dicom_node.config import NodeConfig
    from hires_domain.dicom_node.queue import Queue
    from hires_domain.dicom_node.worker import Worker

    queue = Queue(tmp_path)
    args = ("1.2.3", "1.2", "CT1", "CT", "head")
    assert queue.add_instance("1.2.3.1", *args) and queue.add_instance("1.2.3.2", *args)
    assert queue.move("1.2.3", "received", "sending", derived_uid="9.9", attempts=3)
    assert not queue.move("1.2.3", "received", "queued")  # compare-and-set: it left 'received'
    assert queue.move("1.2.3", "sending", "sent")
    assert not queue.add_instance("1.2.3.2", *args)  # sent again: nothing reopens
    assert queue.get("1.2.3")["status"] == "sent"
    assert queue.add_instance("1.2.3.3", *args)  # a late new instance: the series runs again
    s = queue.select()[0]
    assert (s["status"], s["instances"], s["attempts"], s["derived_uid"]) == ("received", 3, 0, None)

    worker = Worker(NodeConfig(data_dir=tmp_path), queue)
    for top in ("incoming", "derived"):
        (tmp_path / top / "1.2.3").mkdir(parents=True, exist_ok=True)
    queue.move("1.2.3", "received", "failed", reason="why")
    worker._purge(time.time() - 60)  # finished less than a minute ago: kept
    assert (tmp_path / "incoming" / "1.2.3").is_dir()
    worker._purge(time.time() + 1)
    assert not (tmp_path / "incoming" / "1.2.3").exists() and not (tmp_path / "derived" / "1.2.3").exists()
    assert queue.get("1.2.3")["purged"] == 1 and queue.counts()["failed"] == 1
