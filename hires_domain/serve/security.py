"""Tokens (stored hashed), size parsing and the limits a server enforces."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import HiresError

LOCAL_OWNER = "local"  # the owner of every task when the server runs without --tokens
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "t": 10**12, "tb": 10**12}


class TooLarge(Exception):
    """A request body, or an image fetched for one, above ``Limits.max_upload`` (413)."""


@dataclass(frozen=True)
class Limits:
    """What one request or one token may use."""

    max_upload: int  # bytes of one request body
    max_unzipped: int  # total uncompressed bytes of a DICOM zip
    max_zip_files: int = 10_000
    max_running: int = 2  # running tasks per token
    max_queued: int = 100  # queued + running tasks per token


def parse_size(text: str) -> int:
    """'2GiB', '500MB', '1048576' → bytes (one-line error otherwise)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m[2].lower() not in _UNITS:
        raise HiresError(f"cannot read size '{text}': use a number with B, KiB, MiB, GiB, KB, MB or GB")
    return int(float(m[1]) * _UNITS[m[2].lower()])


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_tokens(path: Path) -> dict[str, str]:
    """{sha256 of token: name} from a tokens file (lines ``name sha256``; '#' comments)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise HiresError(f"cannot read tokens file {path}: {exc.strerror or type(exc).__name__}") from None
    tokens = {}
    for n, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not _NAME.match(parts[0]) or not re.fullmatch(r"[0-9a-f]{64}", parts[1]):
            raise HiresError(f"tokens file {path} line {n}: expected 'NAME SHA256' (made by --add-token)")
        tokens[parts[1]] = parts[0]
    return tokens


def add_token(path: Path, name: str) -> str:
    """Append a new token for ``name`` to ``path`` (created 0600) and return it; only its hash is kept."""
    if not _NAME.match(name):
        raise HiresError(f"token name '{name}': use 1-64 letters, digits, '.', '_' or '-'")
    path = Path(path)
    if path.exists() and name in load_tokens(path).values():
        raise HiresError(f"tokens file {path} already has a token named '{name}'")
    token = secrets.token_urlsafe(32)
    try:
        path.touch(mode=0o600, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{name} {hash_token(token)}\n")
    except OSError as exc:
        raise HiresError(f"cannot write tokens file {path}: {exc.strerror or type(exc).__name__}") from None
    return token


def owner_of(authorization: str | None, tokens: dict[str, str] | None) -> str | None:
    """The token's name for an ``Authorization: Bearer ...`` header; LOCAL_OWNER without tokens;
    None for a missing or unknown token."""
    if tokens is None:
        return LOCAL_OWNER
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    digest = hash_token(token.strip())
    for known, name in tokens.items():
        if hmac.compare_digest(known, digest):
            return name
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def under_root(source: str, root: Path | None) -> Path:
    """``source`` (absolute, or relative to ``root``) resolved, refused unless inside ``root``
    (a directory also when a link in it leads outside)."""
    if root is None:
        raise HiresError("'source' paths are disabled on this server (start it with --allow-root DIR)")
    root = Path(root).resolve()
    try:
        os.fsencode(source)  # lone surrogates: not a file name
        if "\0" in source:
            raise ValueError
        path = (root / source).resolve()
        exists = path.exists()
    except (ValueError, OSError):  # ValueError: NUL or unencodable; OSError: a name too long
        raise HiresError(f"source {source[:100]!r} is not a usable path") from None
    if not path.is_relative_to(root):
        raise HiresError(f"source '{source}' is outside the allowed root")
    if not exists:
        raise HiresError(f"source '{source}' does not exist under the allowed root")
    if path.is_dir() and any(not p.resolve().is_relative_to(root) for p in path.rglob("*") if p.is_symlink()):
        raise HiresError(f"source '{source}' links to files outside the allowed root")
    return path
