"""One policy branch (`decisions:`): when its rules hold, which models it routes among, with
which algorithm, plugins and cache. The Boolean rule trees are `rule_trees.py`'s; which decision
wins for a request is decided by the rule engine, `policies/rules.py`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from sigroute.policies.schema.algorithms import Algorithm
from sigroute.policies.schema.base import Name, Strict
from sigroute.policies.schema.cache import CacheSpec
from sigroute.policies.schema.plugins import Plugin
from sigroute.policies.schema.rule_trees import RuleExpr, check_rule_syntax


class Decision(Strict):
    """One policy branch: when `rules` hold, route among `models` with `algorithm`."""

    name: Name
    description: str | None = None
    priority: int = 0
    rules: RuleExpr | None = Field(
        None, description="Boolean tree of all/any/not over 'type:name'; omit it for the default decision"
    )
    models: tuple[str, ...] = Field(..., min_length=1, description="candidate models, in fallback order")
    algorithm: Algorithm = Field(default_factory=lambda: Algorithm.model_validate("static"))
    plugins: tuple[Plugin, ...] = Field(
        default=(), description="per-decision plugins (see plugins/); they run in a fixed order, not file order")
    cache: CacheSpec | None = Field(None, description="cache this decision's answers (omit: no cache)")

    @field_validator("rules", mode="before")
    @classmethod
    def _leaf_syntax(cls, value: Any) -> Any:
        if value is not None:
            check_rule_syntax(value)
        return value

    @property
    def is_default(self) -> bool:
        return self.rules is None

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugin_list(cls, value: Any) -> Any:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise ValueError("plugins is a list of {plugin_name: {options}}")
        return value

    @field_validator("plugins")
    @classmethod
    def _each_once(cls, value: tuple) -> tuple:
        names = [p.name for p in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"plugin '{name}' is listed twice; merge its options")
        return value

    def plugin(self, name: str):
        """The options of this decision's plugin `name`, or None."""
        return next((p.options for p in self.plugins if p.name == name), None)
