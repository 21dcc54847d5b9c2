"""Writing the subset of TOML that variant.toml and the training runs' config.toml use
(the standard library reads TOML but does not write it)."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping


def to_toml(data: Mapping[str, Any]) -> str:
    """Top-level keys, then one level of [tables]. None values are left out (TOML has no null)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items()
             if value is not None and not isinstance(value, Mapping)]
    for key, table in data.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{key}]"]
            for sub, value in table.items():
                if isinstance(value, Mapping):
                    raise TypeError(f"nested table {key}.{sub} is not supported")
                if value is not None:
                    lines.append(f"{sub} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        # A JSON string (ASCII, \uXXXX escapes) is a valid TOML basic string.
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")
