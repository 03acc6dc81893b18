"""Routing rules: which series a rule takes (Modality, SeriesDescription, calling AE), the
pipeline settings it enhances them with and the destination the derived series goes to."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import HiresError, one_line

_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # 16 printable characters, no backslash


def check_aet(aet: str, what: str) -> str:
    """An AE title as DICOM allows it (1-16 printable characters, not only spaces), stripped."""
    if not _AET.match(aet or "") or not aet.strip():
        raise HiresError(f"{what} '{aet}' is not an AE title (1-16 printable characters, no backslash)")
    return aet.strip()


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: this side's certificate and key, and the CA that signs the peers' certificates."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP the derived series are sent to."""

    name: str
    aet: str
    host: str
    port: int
    tls: TLSFiles | None = None

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AET@host:port`` (as --send-to takes it) → Destination named AET."""
    m = re.fullmatch(r"([^@]+)@(.+):(\d{1,5})", text.strip())
    if not m or not 0 < int(m[3]) < 65536:
        raise HiresError(f"--send-to '{text}': expected AET@host:port, e.g. PACS@10.0.0.5:104")
    aet = check_aet(m[1], "--send-to AE title")
    return Destination(aet, aet, m[2].strip("[]"), int(m[3]))


@dataclass(frozen=True)
class Rule:
    """Match patterns (None: any; globs for the description, case-insensitive) → settings, destination."""

    name: str
    settings: object  # pipeline.Settings
    destination: Destination
    modality: tuple[str, ...] | None = None
    series_description: str | None = None
    calling_aet: tuple[str, ...] | None = None

    def matches(self, modality: str, description: str, calling_aet: str) -> bool:
        return ((self.modality is None or modality.upper() in self.modality)
                and (self.series_description is None
                     or fnmatch.fnmatchcase(description.lower(), self.series_description.lower()))
                and (self.calling_aet is None or calling_aet in self.calling_aet))

    def describe(self) -> str:
        return f"{self.name}: {self.settings.model} -> {self.destination.name}"


def settings_for(model: str, options: dict, where: str):
    """pipeline.Settings for a rule: ``options`` are Settings fields (strength, scale, tile, ...);
    ``strict`` defaults to True, so a series unlike the model's training data fails, with the reason.
    The node's device is set when a series runs."""
    from ..pipeline import Settings

    allowed = {f.name for f in dataclasses.fields(Settings)} - {"model", "device"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise HiresError(f"{where}: unknown option '{unknown[0]}' (options: {', '.join(sorted(allowed))})")
    try:
        return Settings(model, **{"strict": True, **options})
    except HiresError as exc:
        raise HiresError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise HiresError(f"{where}: {one_line(exc)}") from None


def match(rules: list[Rule], modality: str, description: str, calling_aet: str) -> Rule | None:
    """The first rule that takes a series, or None."""
    return next((r for r in rules if r.matches(modality, description, calling_aet)), None)
