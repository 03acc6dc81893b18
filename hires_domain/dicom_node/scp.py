"""Receiving: C-ECHO and C-STORE SCP. An instance is checked (header, UIDs, pixel data), written
under ``incoming/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (temporary name, fsync, rename, fsync
of the directory) and queued before the reply says success; a corrupt one is refused with
0xC210 "cannot understand" and the association goes on. Logs name UIDs and AE titles only."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import uuid
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from ..errors import one_line
from ..io.dicom import convert_header
from .config import NodeConfig
from .queue import Queue
from .tls import server_context

log = logging.getLogger("hires_domain.dicom_node")

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC210
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PARTIAL = ".partial"  # incoming/.partial: instances being written


class Refused(Exception):
    """An instance the node cannot understand; the message names no attribute values."""


def inspect(path: Path) -> dict:
    """The UIDs, Modality and SeriesDescription of a received file after checking that every
    header element converts and the pixel data decodes; Refused otherwise."""
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on corrupt bytes
        raise Refused(f"not a readable DICOM dataset ({type(exc).__name__})") from None
    try:
        convert_header(ds)
    except Exception as exc:  # noqa: BLE001 - the library's message may quote a value: type only
        raise Refused(f"corrupt header ({type(exc).__name__})") from None
    found = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword) or "").strip()
        if len(value) > 64 or not _UID.match(value):
            raise Refused(f"{keyword} missing or not a UID")
        found[keyword] = value
    if "PixelData" in ds:
        try:
            ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - decoders raise many types
            raise Refused(f"pixel data cannot be decoded ({one_line(exc)[:120]})") from None
    return {**found, "Modality": str(ds.get("Modality", "")), "SeriesDescription": str(ds.get("SeriesDescription", ""))}


def transfer_syntaxes() -> list[str]:
    """Every transfer syntax pynetdicom knows whose pixel data pydicom can decode here."""
    def decodable(uid: str) -> bool:
        try:
            return not UID(uid).is_compressed or get_decoder(uid).is_available
        except (NotImplementedError, ValueError):
            return False
    return [ts for ts in ALL_TRANSFER_SYNTAXES if decodable(ts)]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Receiver:
    """The C-STORE handler."""

    def __init__(self, queue: Queue, data_dir: Path):
        self.queue = queue
        self.incoming = Path(data_dir) / "incoming"
        self.partial = self.incoming / _PARTIAL
        self.partial.mkdir(parents=True, exist_ok=True)
        for stale in self.partial.iterdir():  # a stopped node's unfinished writes, never acknowledged
            stale.unlink()

    def on_store(self, event) -> Dataset:
        calling = event.assoc.requestor.ae_title
        sop = str(event.request.AffectedSOPInstanceUID)
        tmp = self.partial / f"{uuid.uuid4().hex}.dcm"
        try:
            with open(tmp, "wb") as f:
                f.write(event.encoded_dataset(include_meta=True))
                f.flush()
                os.fsync(f.fileno())
            try:
                info = inspect(tmp)
            except Refused as exc:
                log.warning("refused instance %s from %s: %s", sop, calling, exc)
                return _status(CANNOT_UNDERSTAND, str(exc))
            self._keep(tmp, info, calling)
        except (OSError, sqlite3.Error) as exc:  # a full disk, a locked queue: the sender retries later
            log.error("cannot store instance %s from %s: %s", sop, calling,
                      getattr(exc, "strerror", None) or f"{type(exc).__name__}: {one_line(exc)}")
            return _status(OUT_OF_RESOURCES, "cannot store the instance now")
        finally:
            tmp.unlink(missing_ok=True)
        log.debug("stored instance %s of series %s from %s", info["SOPInstanceUID"], info["SeriesInstanceUID"], calling)
        return _status(SUCCESS)

    def _keep(self, tmp: Path, info: dict, calling: str) -> None:
        """Queue the instance, then rename it into its series directory and make that durable. (A
        node stopped in between has replied nothing: the sender sends the instance again.)"""
        self.queue.add_instance(info["SOPInstanceUID"], info["SeriesInstanceUID"], info["StudyInstanceUID"],
                                calling, info["Modality"], info["SeriesDescription"])
        series_dir = self.incoming / info["SeriesInstanceUID"]
        if not series_dir.is_dir():
            series_dir.mkdir(exist_ok=True)
            _fsync_dir(self.incoming)
        os.replace(tmp, series_dir / f"{info['SOPInstanceUID']}.dcm")
        _fsync_dir(series_dir)


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def start_server(cfg: NodeConfig, receiver: Receiver):
    """Listen on ``cfg.bind:cfg.port`` in background threads; returns the server (``shutdown()``)."""
    ae = AE(ae_title=cfg.aet)
    syntaxes = transfer_syntaxes()
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes)
    ae.add_supported_context(Verification)
    if cfg.allow_aet:
        ae.require_calling_aet = list(cfg.allow_aet)

    def who(event) -> str:
        r = event.assoc.requestor
        return f"{r.ae_title} ({r.address})"

    handlers = [
        (evt.EVT_C_STORE, receiver.on_store),
        (evt.EVT_ACCEPTED, lambda e: log.info("association from %s accepted", who(e))),
        (evt.EVT_REJECTED, lambda e: log.warning("association from %s rejected (calling AE title not allowed "
                                                 "or nothing it proposed is supported)", who(e))),
    ]
    return ae.start_server((cfg.bind, cfg.port), block=False, evt_handlers=handlers,
                           ssl_context=server_context(cfg.tls) if cfg.tls else None)
