"""TLS contexts for DICOM over TLS (pynetdicom's ``ssl_context`` / ``tls_args``)."""

from __future__ import annotations

import ssl

from ..errors import HiresError, one_line
from .rules import TLSFiles


def server_context(t: TLSFiles) -> ssl.SSLContext:
    """The node's side: its certificate; with a CA, callers must present a certificate it signed."""
    if t.cert is None:
        raise HiresError("TLS needs the node's certificate and key (--tls-cert, --tls-key)")
    ctx = _context(ssl.Purpose.CLIENT_AUTH, t)
    ctx.verify_mode = ssl.CERT_REQUIRED if t.ca else ssl.CERT_NONE
    return ctx


def client_context(t: TLSFiles) -> ssl.SSLContext:
    """Calling a destination: its certificate checked against the CA (the system's without one);
    this side's certificate, when given, for destinations that ask for one."""
    return _context(ssl.Purpose.SERVER_AUTH, t)


def _context(purpose: ssl.Purpose, t: TLSFiles) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(purpose, cafile=t.ca)
        if t.cert is not None:
            ctx.load_cert_chain(t.cert, t.key)
    except (OSError, ssl.SSLError) as exc:
        raise HiresError(f"cannot load TLS files (cert {t.cert}, key {t.key}, ca {t.ca}): {one_line(exc)}") from None
    return ctx
