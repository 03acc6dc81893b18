"""YAML settings files (dataset recipes, training configs): reading and one-line validation errors."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from .errors import HiresError


def read_mapping(path: Path, where: str) -> dict:
    """The top-level mapping of a YAML file; ``where`` (e.g. "recipe PATH") starts every error."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise HiresError(f"{where}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise HiresError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict):
        raise HiresError(f"{where}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    return raw


def field_error(where: str, field: str, msg: str) -> HiresError:
    return HiresError(" ".join(f"{where}: field '{field}': {msg}".split()))


def _union_member(part: str) -> bool:
    """Location parts pydantic adds for union members and validators (``float``,
    ``list[literal['a','b']]``, ``function-after[...]``): not field names."""
    return part in ("float", "int", "str", "bool") or bool(re.fullmatch(r"[a-z-]+\[.*\]", part))


def validation_error(where: str, exc: ValidationError, skip=(), root: str = "<root>") -> HiresError:
    """The first pydantic error as ``where: field 'a.b[0]': message`` (plus how many more).

    ``skip``: location parts that are not fields (discriminator tags of a union).
    """
    err = exc.errors()[0]
    parts = [f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]
             if p not in skip and not _union_member(str(p))]
    field = ".".join(parts).replace(".[", "[") or root
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "required field is missing"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] != "value_error" and not isinstance(err["input"], (dict, list)):
            msg += f" (got {err['input']!r})"
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return field_error(where, field, msg + more)
