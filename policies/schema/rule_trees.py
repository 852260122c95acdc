"""The shape of a decision's `rules:`: a Boolean tree of all/any/not over `type:name` signal
references.

This module owns the tree's grammar (its models, the syntax of a leaf, the check that gives a
readable error before pydantic tries the union's branches) and `rule_leaves`. Evaluating a tree
against a request's signal results is the rule engine's job, in `policies/rules.py`.
"""

from __future__ import annotations

import re
from typing import Any, Union

from pydantic import Field

from sigroute.policies.schema.base import Strict

LEAF_PATTERN = re.compile(r"^([a-z_]+):([A-Za-z0-9][A-Za-z0-9_.\-]*)$")


class AllRule(Strict):
    all: tuple["RuleExpr", ...] = Field(..., min_length=1)


class AnyRule(Strict):
    any: tuple["RuleExpr", ...] = Field(..., min_length=1)


class NotRule(Strict):
    not_: "RuleExpr" = Field(..., alias="not")


def _check_leaf(value: str) -> str:
    if not LEAF_PATTERN.match(value):
        raise ValueError(f"'{value}' is not a signal reference; write it as 'type:name', e.g. 'keyword:urgent'")
    return value


RuleExpr = Union[str, AllRule, AnyRule, NotRule]
AllRule.model_rebuild()
AnyRule.model_rebuild()
NotRule.model_rebuild()


def check_rule_syntax(node: Any) -> None:
    """Raise ValueError, saying what is wrong, if the YAML data `node` is not a rule tree."""
    if isinstance(node, str):
        _check_leaf(node)
    elif isinstance(node, dict):
        if len(node) != 1 or next(iter(node)) not in ("all", "any", "not"):
            keys = ", ".join(map(str, node)) or "nothing"
            raise ValueError(
                f"a rule node is 'type:name' or one of {{all: [...]}}, {{any: [...]}}, {{not: ...}}; got keys: {keys}"
            )
        (op, child), = node.items()
        if op == "not":
            check_rule_syntax(child)
        elif isinstance(child, list):
            for c in child:
                check_rule_syntax(c)
        else:
            raise ValueError(f"'{op}' takes a list of rules")
    else:
        raise ValueError(f"a rule is 'type:name' or a mapping with all/any/not, not {type(node).__name__}")


def rule_leaves(expr: RuleExpr) -> list[str]:
    """Every 'type:name' reference in a rule tree, in order."""
    if isinstance(expr, str):
        return [expr]
    if isinstance(expr, AllRule):
        return [leaf for child in expr.all for leaf in rule_leaves(child)]
    if isinstance(expr, AnyRule):
        return [leaf for child in expr.any for leaf in rule_leaves(child)]
    return rule_leaves(expr.not_)
