"""What every section of the policy schema shares.

`Strict`, the base of every policy object (unknown keys are errors, loaded objects are
immutable); the name patterns of the language (`Name` for the names a policy gives its models,
signals, decisions and entrypoints; environment-variable names); `Duration`, a number of seconds
also written as "30s", "5m", "1h", "7d"; and `NamedOptions`, the `name` or `{name: {options}}`
choice from a registry of option models that algorithms and plugins are written as.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SerializeAsAny, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"  # an environment variable's name


class Strict(BaseModel):
    """Base for every policy object: unknown keys are errors and loaded objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------------------------
# durations


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number (seconds) or a string such as "90s", "5m", "1h", "7d", "250ms"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as '30s', '5m', '1h', '7d'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"'{value}' is not a duration; write seconds (3600) or '30s', '5m', '1h', '7d'")
    if not seconds > 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


# --------------------------------------------------------------------------------------------
# named options: `name` or `{name: {options}}` over a registry of option models


def _inlined_schema(model: type[Strict]) -> dict[str, Any]:
    """The model's JSON Schema with its nested definitions inlined (no $defs of its own)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline({**defs[ref.split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


def _named_options(value: Any, registry: dict[str, type[Strict]], *, shape: str, unknown) -> tuple[str, Strict]:
    """(name, validated options) from YAML written as `name` or `{name: {options}}`."""
    if isinstance(value, str):
        name, raw = value, {}
    elif isinstance(value, dict) and len(value) == 1:
        name, raw = next(iter(value.items()))
        raw = {} if raw is None else raw
    else:
        raise ValueError(shape)
    if name not in registry:
        raise ValueError(unknown(name))
    return name, registry[name].model_validate(raw)


def _named_options_schema(registry: dict[str, type[Strict]], handler) -> dict[str, Any]:
    """JSON Schema for `name` or `{name: {options}}` over a registry of option models."""
    variants: list[dict[str, Any]] = [{"type": "string", "enum": sorted(registry)}]
    for name, options in sorted(registry.items()):
        variants.append({
            "type": "object",
            "properties": {name: {**_inlined_schema(options), "title": name}},
            "required": [name],
            "additionalProperties": False,
        })
    return {"anyOf": variants}


class NamedOptions(Strict):
    """One entry of `registry` and its options; written in YAML as `name` or `{name: {options}}`
    (a bare name when the options all have defaults).

    A subclass names its `registry`, the sentence for a value of the wrong `shape`, and the
    `unknown` sentence for a name the registry lacks (`{name}` and `{known}`, the registry's
    names sorted, are filled in)."""

    registry: ClassVar[dict[str, type[Strict]]]
    shape: ClassVar[str]
    unknown: ClassVar[str]

    name: str
    options: SerializeAsAny[Strict]  # dump the concrete options model's fields, not those of Strict (none)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        return _named_options_schema(cls.registry, handler)

    @model_validator(mode="wrap")
    @classmethod
    def _from_yaml(cls, value: Any, handler):
        if isinstance(value, cls):
            return value
        name, options = _named_options(
            value, cls.registry, shape=cls.shape,
            unknown=lambda n: cls.unknown.format(name=n, known=", ".join(sorted(cls.registry))))
        return cls.model_construct(name=name, options=options)
