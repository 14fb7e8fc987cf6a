"""Text into typed run settings: `key=value` overrides, YAML values, and the error that names the field.

`RunConfig` (`peftlab.config`) validates a run; this module reads what people type. A YAML 1.1 value
such as '1e-3' or 'yes' arrives as a string and is coerced to the field's annotated type where the
meaning is unambiguous (`coerce`); an override list ['r=8', 'target_modules=[q_proj, v_proj]'] becomes
typed values by YAML's rules (`parse_overrides`); `key_lines` finds the line of each key in a YAML file,
so that an error can point at it. It imports nothing of the course's, so every layer may use it.
"""

from __future__ import annotations

import math
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A run configuration that cannot work; the message names the field and the fix.

    `field` is the RunConfig field at fault (None for errors about a whole file),
    so a YAML loader can add the line it was written on.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# YAML 1.1 spellings of booleans, so a value that arrives as a string still means what it says.
_TRUE = ("true", "yes", "on", "y", "1")
_FALSE = ("false", "no", "off", "n", "0")


def type_name(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a mapping"}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args:  # Optional[X]
        return f"{names[args[0]]} or null"
    return names.get(hint, str(hint))


def coerce(value: Any, hint: Any) -> Any:
    """`value` as the annotated type `hint`, where the meaning is unambiguous; TypeError otherwise.

    '1e-3' is a float (YAML 1.1 reads it as a string), 8.0 is the integer 8, 'yes'
    is True; 'abc' is no number and 2.5 is no integer.
    """
    args = typing.get_args(hint)
    if args:  # X | None
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise TypeError
    if isinstance(value, bool) or value is None:  # True is an int to Python, not to a reader
        raise TypeError
    if hint is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)  # exact, however many digits
        number = float(value.strip()) if isinstance(value, str) else value
        if isinstance(number, (int, float)) and math.isfinite(number) and float(number).is_integer():
            return int(number)
        raise TypeError
    if hint is float:
        number = float(value.strip()) if isinstance(value, str) else value
        if isinstance(number, (int, float)) and math.isfinite(number):
            return float(number)
        raise TypeError
    if hint is str:
        if isinstance(value, (int, float)):  # e.g. output_dir=2024
            return str(value)
        if isinstance(value, str):
            return value
        raise TypeError
    if hint is dict:
        if isinstance(value, dict):
            return value
        raise TypeError
    raise TypeError


def key_lines(text: str) -> dict[str, int]:
    """{top-level key: 1-based line} of a YAML mapping, so errors can point at the line."""
    node = yaml.compose(text)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def raw_overrides(items: list[str]) -> dict[str, str]:
    return {key.strip(): raw for key, _, raw in (item.partition("=") for item in items)}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ['r=8', 'target_modules=[q_proj, v_proj]'] into typed values (YAML rules)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: write it as key=value, e.g. r=8.")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out
