"""Sending: C-STORE SCU of DICOM files to a destination, in one association. Used by the node
for derived series and by napari's "Send to PACS"."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pydicom
from pynetdicom import AE

from ..errors import HiresError
from ..image import Image
from .rules import Destination
from .tls import client_context

CONNECT_TIMEOUT, TIMEOUT = 10.0, 60.0  # seconds: to connect; for the association and each C-STORE
_OK = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and the warnings (coercion, elements discarded)


class SendError(HiresError):
    """The destination could not be reached or refused an instance (one line, no patient data)."""


def send_files(paths: list[Path], destination: Destination, calling_aet: str = "HIRES") -> int:
    """C-STORE every file to ``destination``; returns how many were stored, SendError otherwise."""
    if not paths:
        raise HiresError("no files to send")
    contexts = set()
    for p in paths:
        meta = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    ae = AE(ae_title=calling_aet)
    ae.connection_timeout = CONNECT_TIMEOUT
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, syntax)
    tls = (client_context(destination.tls), destination.host) if destination.tls else None
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.aet, tls_args=tls)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "cannot be reached (no association)"
        raise SendError(f"{destination} {why}")
    try:
        for p in paths:
            status = assoc.send_c_store(p)
            code = status.get("Status") if status else None
            if code is None:
                raise SendError(f"{destination}: connection lost or no reply while storing {p.name}")
            if code not in _OK:
                comment = f" ({status.ErrorComment})" if status.get("ErrorComment") else ""
                raise SendError(f"{destination} refused {p.name} with status 0x{code:04X}{comment}")
    finally:
        if assoc.is_established:
            assoc.release()
    return len(paths)


def send_image(image: Image, description: str, config: Path | None = None) -> str:
    """Write a DICOM-sourced ``image`` (a result in napari) as a derived series and C-STORE it to
    the destination of the PACS config (``config.pacs_config``); returns a one-line summary."""
    from ..io.dicom import write_dicom_series
    from .config import pacs_config

    aet, destination = pacs_config(config)
    with tempfile.TemporaryDirectory(prefix="hires-send-") as tmp:
        n = send_files(write_dicom_series(image, Path(tmp), description), destination, aet)
    return f"sent {n} instances to {destination}"
