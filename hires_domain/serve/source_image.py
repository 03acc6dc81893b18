"""The JSON ``source_image`` of a submission: the file as base64 (plain, or a ``data:...;base64,``
URL) or an http(s) URL that the server fetches, only from the hosts its operator listed with
``--allow-url-host`` (none by default: a server on a hospital network must not be a way to reach
other machines on it). Either way the bytes land in one file, which then takes the multipart
upload's path (``uploads.place_upload``: content sniffing, safe unzipping)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import HiresError
from .security import TooLarge
from .uploads import CHUNK

URL_TIMEOUT_S = 30.0  # connecting, each read, and the whole download
MAX_REDIRECTS = 5
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,30}):")  # base64 has no ':', so this is a URL
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_SPACE = {ord(c): None for c in " \t\r\n\f\v"}


def parse_hosts(values) -> frozenset[str]:
    """``--allow-url-host`` values (repeated, or comma lists) → host names, lower case; a URL, a
    port or anything else that is not a host name or an IP address is a one-line error."""
    hosts = set()
    for value in values or ():
        for host in str(value).split(","):
            host = host.strip().lower().rstrip(".")
            if not host:
                continue
            bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            try:
                hosts.add(str(ipaddress.ip_address(bare)))
                continue
            except ValueError:
                pass
            if not _HOST.match(host):
                raise HiresError(f"--allow-url-host '{host}': give a host name or an IP address "
                                 "(no scheme, port or path), e.g. --allow-url-host pacs.example.org")
            hosts.add(host)
    return frozenset(hosts)


def is_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


def decode(value: str) -> bytes:
    """The bytes of base64 text (standard or URL-safe alphabet, padding optional, line breaks
    ignored) or of a ``data:<type>;base64,<data>`` URL; a one-line error otherwise."""
    m = _SCHEME.match(value)
    if m and m[1].lower() == "data":
        head, comma, value = value.partition(",")
        if not comma or not head.lower().endswith(";base64"):
            raise HiresError("a data: URL in 'source_image' must be base64: 'data:<type>;base64,<data>'")
    elif m:
        raise HiresError(f"'source_image' URLs must be http or https, not {m[1][:20]}:; "
                         "or send the file itself as base64")
    text = value.translate(_SPACE)
    if not text:
        raise HiresError("'source_image' is empty")
    urlsafe = "-" in text or "_" in text
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if urlsafe else None, validate=True)
    except (binascii.Error, ValueError):  # ValueError: characters outside ASCII
        raise HiresError("'source_image' is not valid base64 (nor an http(s) URL)") from None


def _check_url(url: str, hosts: frozenset[str], redirected: bool) -> str:
    """The URL's host, if the URL is http(s) and its host is allowed; else a one-line error."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise HiresError("'source_image' is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise HiresError(f"'source_image' {'redirects to' if redirected else 'is'} a URL that is not http(s) "
                         "with a host")
    if not hosts:
        raise HiresError("'source_image' URLs are disabled on this server (its operator can allow hosts with "
                         "--allow-url-host HOST); send the file itself as base64 or as a multipart upload")
    if host not in hosts:
        what = "redirects to host" if redirected else "names host"
        raise HiresError(f"'source_image' URL {what} '{host[:100]}', which is not in this server's "
                         "--allow-url-host list: refused")
    return host


def fetch(url: str, dest: Path, hosts: frozenset[str], max_bytes: int, timeout: float = URL_TIMEOUT_S) -> int:
    """Download ``url`` to ``dest``, streamed, at most ``max_bytes`` (TooLarge above), within
    ``timeout`` seconds in all; a redirect is followed only to an allowed host. No proxy, .netrc
    or other settings of the environment are used. Returns the bytes written."""
    import httpx

    deadline = time.monotonic() + timeout
    redirected = False
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=timeout) as http:
        for _ in range(MAX_REDIRECTS + 1):
            host = _check_url(url, hosts, redirected)
            try:
                with http.stream("GET", url) as r:
                    if r.has_redirect_location:
                        url, redirected = str(r.url.join(r.headers["location"])), True
                        continue
                    if r.status_code != 200:
                        raise HiresError(f"'source_image' URL: {host} answered {r.status_code}")
                    declared = r.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise TooLarge(f"the image at the URL is {declared} bytes, above the limit of {max_bytes}")
                    return _save(r.iter_bytes(CHUNK), dest, max_bytes, deadline, host, timeout)
            except httpx.TimeoutException:
                raise HiresError(f"'source_image' URL: {host} did not answer within {timeout:g} s") from None
            except httpx.HTTPError as exc:
                raise HiresError(f"'source_image' URL: cannot fetch from {host} ({type(exc).__name__})") from None
    raise HiresError(f"'source_image' URL: more than {MAX_REDIRECTS} redirects")


def _save(chunks, dest: Path, max_bytes: int, deadline: float, host: str, timeout: float) -> int:
    written = 0
    with open(dest, "wb") as f:
        for chunk in chunks:
            written += len(chunk)
            if written > max_bytes:
                raise TooLarge(f"the image at the URL is larger than the limit of {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise HiresError(f"'source_image' URL: {host} took more than {timeout:g} s to send the image")
            f.write(chunk)
    return written


def write(value: str, dest: Path, hosts: frozenset[str], max_bytes: int) -> None:
    """``source_image`` (base64, a data: URL or an http(s) URL) → the file ``dest``."""
    if is_url(value):
        fetch(value, dest, hosts, max_bytes)
    else:
        dest.write_bytes(decode(value))
