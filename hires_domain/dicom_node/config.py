"""The node's configuration: a YAML rules file (``--config``) and/or command-line flags, checked
once at start-up into a NodeConfig (one-line errors)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import HiresError
from ..settings_files import read_mapping, validation_error
from .rules import Destination, Rule, TLSFiles, check_aet, parse_destination, settings_for

DAY = 86400.0
PACS_CONFIG = "HIRES_PACS_CONFIG"  # environment variable: the "Send to PACS" config file


@dataclass(frozen=True)
class Retry:
    """Back-off for an unreachable destination: ``initial`` seconds, doubling up to ``max``;
    a series still unsent ``give_up_after`` seconds after its first failure is failed (0: never)."""

    initial: float = 5.0
    max: float = 300.0
    give_up_after: float = DAY

    def delay(self, attempts: int) -> float:
        return min(self.max, self.initial * 2 ** max(attempts - 1, 0))


@dataclass(frozen=True)
class NodeConfig:
    aet: str = "HIRES"
    port: int = 11112
    bind: str = "127.0.0.1"
    data_dir: Path = Path("hires-node-data")
    series_timeout: float = 10.0
    allow_aet: tuple[str, ...] | None = None  # None: any calling AE title
    tls: TLSFiles | None = None
    retry: Retry = Retry()
    keep_days: float = 7.0  # files of finished series are removed after this long (0: kept)
    device: str = "auto"
    rules: list[Rule] = field(default_factory=list)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _TLS(_Strict):
    cert: Optional[Path] = None
    key: Optional[Path] = None
    ca: Optional[Path] = None


class _Retry(_Strict):
    initial: float = Field(5.0, gt=0)
    max: float = Field(300.0, gt=0)
    give_up_after: float = Field(DAY, ge=0)


class _Node(_Strict):
    aet: str = "HIRES"
    port: int = Field(11112, ge=1, le=65535)
    bind: str = "127.0.0.1"
    data_dir: Path = Path("hires-node-data")
    series_timeout: float = Field(10.0, gt=0)
    allow_aet: Optional[list[str]] = None
    tls: Optional[_TLS] = None
    retry: _Retry = _Retry()
    keep_days: float = Field(7.0, ge=0)
    device: str = "auto"


class _Destination(_Strict):
    aet: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: Optional[_TLS] = None


class _Match(_Strict):
    modality: Optional[Union[str, list[str]]] = None
    series_description: Optional[str] = None
    calling_aet: Optional[Union[str, list[str]]] = None


class _Rule(_Strict):
    match: _Match = _Match()
    model: str
    options: dict = {}
    send_to: str


class _Pacs(_Strict):
    aet: str = "HIRES"
    destination: _Destination


class _File(_Strict):
    node: _Node = _Node()
    destinations: dict[str, _Destination]
    rules: list[_Rule] = Field(min_length=1)


def _read(schema: type[_Strict], path: Path, where: str):
    try:
        return schema.model_validate(read_mapping(path, where))
    except ValidationError as exc:
        raise validation_error(where, exc) from None


def _tls(t: _TLS | None, where: str) -> TLSFiles | None:
    if t is None:
        return None
    for name in ("cert", "key", "ca"):
        path = getattr(t, name)
        if path is not None and not path.is_file():
            raise HiresError(f"{where}.{name}: {path} is not a file")
    if (t.cert is None) != (t.key is None):
        raise HiresError(f"{where}: give both cert and key (or neither)")
    return TLSFiles(t.cert, t.key, t.ca)


def _destination(name: str, d: _Destination, where: str) -> Destination:
    return Destination(name, check_aet(d.aet, f"{where}.aet"), d.host, d.port, _tls(d.tls, f"{where}.tls"))


def _names(value) -> tuple[str, ...] | None:
    return None if value is None else tuple([value] if isinstance(value, str) else value)


def load_config(path: Path) -> NodeConfig:
    """A rules file (see docs/dicom-node.md) as a NodeConfig."""
    where = f"node config {path}"
    f = _read(_File, path, where)
    n = f.node
    destinations = {name: _destination(name, d, f"destinations.{name}") for name, d in f.destinations.items()}
    rules = []
    for i, r in enumerate(f.rules):
        where_rule = f"{where}: rules[{i}]"
        if r.send_to not in destinations:
            raise HiresError(f"{where_rule}: send_to '{r.send_to}' is not in destinations "
                             f"({', '.join(destinations) or 'none'})")
        m = r.match
        rules.append(Rule(f"rule {i + 1}", settings_for(r.model, r.options, where_rule),
                          destinations[r.send_to], _names(m.modality) and tuple(x.upper() for x in _names(m.modality)),
                          m.series_description, _names(m.calling_aet)))
    if n.retry.max < n.retry.initial:
        raise HiresError(f"{where}: node.retry.max must be at least node.retry.initial")
    return NodeConfig(check_aet(n.aet, "node.aet"), n.port, n.bind, n.data_dir, n.series_timeout,
                      _names(n.allow_aet) and tuple(check_aet(a, "node.allow_aet") for a in n.allow_aet),
                      _tls(n.tls, "node.tls"), Retry(n.retry.initial, n.retry.max, n.retry.give_up_after),
                      n.keep_days, n.device, rules)


def node_config(config: Path | None = None, model: str | None = None, send_to: str | None = None,
                strength: float | None = None, tls: tuple[Path | None, Path | None, Path | None] = (None,) * 3,
                **flags) -> NodeConfig:
    """The configuration from ``config`` (if any) with the command-line ``flags`` that were given
    (not None) on top; ``model`` + ``send_to`` add a rule that takes every series (after the file's)."""
    base = load_config(config) if config is not None else NodeConfig()
    given = {k: v for k, v in flags.items() if v is not None}
    if "aet" in given:
        given["aet"] = check_aet(given["aet"], "--aet")
    if "allow_aet" in given:
        given["allow_aet"] = tuple(check_aet(a.strip(), "--allow-aet") for a in given["allow_aet"].split(","))
    for name in ("series_timeout", "keep_days"):
        if name in given and (given[name] < 0 or (name == "series_timeout" and given[name] == 0)):
            raise HiresError(f"--{name.replace('_', '-')} must be positive, got {given[name]:g}")
    if "port" in given and not 0 < given["port"] < 65536:
        raise HiresError(f"--port must be 1-65535, got {given['port']}")
    retry = {k: given.pop(f"retry_{k}") for k in ("initial", "max") if f"retry_{k}" in given}
    if "give_up_after" in given:
        retry["give_up_after"] = given.pop("give_up_after")
    if retry:
        merged = replace(base.retry, **retry)
        if merged.initial <= 0 or merged.max < merged.initial or merged.give_up_after < 0:
            raise HiresError("retry: need 0 < --retry-initial <= --retry-max and --give-up-after >= 0")
        given["retry"] = merged
    if any(tls):
        given["tls"] = _tls(_TLS(cert=tls[0], key=tls[1], ca=tls[2]), "--tls")
    cfg = replace(base, **given)
    if (model is None) != (send_to is None):
        raise HiresError("--model and --send-to go together (or put rules in --config)")
    if model is not None:
        options = {} if strength is None else {"strength": strength}
        rule = Rule(f"rule {len(cfg.rules) + 1}", settings_for(model, options, "--model"),
                    parse_destination(send_to))
        cfg = replace(cfg, rules=[*cfg.rules, rule])
    elif strength is not None:
        raise HiresError("--strength goes with --model")
    if not cfg.rules:
        raise HiresError("no rules: give --model and --send-to, or --config with rules")
    return cfg


def pacs_config(path: Path | None = None) -> tuple[str, Destination]:
    """(calling AE title, destination) for "Send to PACS": ``path``, else $HIRES_PACS_CONFIG, else
    ~/.config/hires-domain/pacs.yaml, holding ``aet`` and ``destination: {aet, host, port, tls}``."""
    path = Path(path or os.environ.get(PACS_CONFIG) or Path.home() / ".config" / "hires-domain" / "pacs.yaml")
    if not path.is_file():
        raise HiresError(f"no PACS configured: write {path} or set {PACS_CONFIG} (see docs/dicom-node.md)")
    where = f"PACS config {path}"
    p = _read(_Pacs, path, where)
    return check_aet(p.aet, f"{where}: aet"), _destination("destination", p.destination, f"{where}: destination")
