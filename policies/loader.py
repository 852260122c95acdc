"""Loading policy files: YAML text -> a validated, immutable `Policy`.

Every problem found is reported with the file, the 1-based line and column, and the key path of
the offending key (e.g. ``decisions[2].rules``), in a sentence that says what is wrong and how to
fix it::

    from sigroute.policies.loader import load_policy, PolicyError

    try:
        policy = load_policy("policy.yaml")
    except PolicyError as exc:
        print(exc)            # one problem per line: FILE:LINE: path: message
        exc.problems          # [Problem(file, line, column, path, message), ...]

How it works: the YAML is composed into a node tree (``yaml.compose`` with the safe loader, refusing
nesting deeper than 100 levels) and
turned into plain Python data by hand, recording the position of every mapping key and sequence
item under its key path, and rejecting duplicate keys (which PyYAML would silently collapse).
The data is validated by the pydantic schema (`policies.schema`); each pydantic error's location
is mapped back onto the data (union branches that do not apply are dropped, algorithm option
names are put back in) and to the line of the longest key path that was recorded.

`policy_warnings` lists things that are legal but probably not meant (an API key variable that is
not set, a decision that can never win, a signal nobody reads).
"""

from __future__ import annotations

import difflib
import os
import re
import types
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from sigroute.policies.schema import (
    ALGORITHM_OPTIONS,
    ENV_NAME_PATTERN,
    LEAF_PATTERN,
    NAME_PATTERN,
    Algorithm,
    Policy,
    PolicyReferenceError,
    Signals,
)

__all__ = [
    "DEFAULT_POLICY",
    "PolicyError",
    "Problem",
    "format_path",
    "load_default_policy",
    "load_policy",
    "load_policy_text",
    "parse_yaml",
    "policy_warnings",
    "validate_policy_data",
]

KeyPath = tuple[Any, ...]
Positions = dict[KeyPath, tuple[int, int]]

#: The embedded default policy, as a resource of the `policies` package.
DEFAULT_POLICY = "examples/default.yaml"

# Bounds on what a policy file may cost to read, so that a hostile or broken file is refused
# quickly with a PolicyError instead of exhausting time, memory or the stack:
_MAX_NODES = 200_000  # values after alias expansion: guards against alias bombs ("billion laughs")
_MAX_DEPTH = 100      # nesting of mappings and lists (the YAML composer and our builder recurse)
_MERGE_TAG = "tag:yaml.org,2002:merge"


# --------------------------------------------------------------------------------------------
# problems


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy file. `line` and `column` are 1-based (None if unknown)."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __post_init__(self) -> None:
        # messages quote the file's values: keep them printable (no lone surrogates, which cannot
        # be encoded, and no control characters, which a terminal would act on)
        object.__setattr__(self, "message", _printable(self.message))
        object.__setattr__(self, "path", _printable(self.path))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


_UNPRINTABLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def _printable(text: str) -> str:
    """`text` with control characters and lone surrogates written as escapes (newlines kept)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)


class PolicyError(ValueError):
    """A policy file that cannot be loaded; `problems` lists everything found, in file order."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


_BARE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def format_path(path: KeyPath) -> str:
    """('decisions', 2, 'rules') -> 'decisions[2].rules'; keys with dots or spaces are quoted."""
    out = ""
    for element in path:
        if isinstance(element, int) and not isinstance(element, bool):
            out += f"[{element}]"
        elif isinstance(element, str) and _BARE_KEY.match(element):
            out += f".{element}" if out else element
        else:
            out += f'["{element}"]'
    return out


# --------------------------------------------------------------------------------------------
# YAML with positions


class _Builder:
    """Turns a composed YAML node tree into plain data, recording where every key and item is."""

    def __init__(self, source: str):
        self.source = source
        self.positions: Positions = {}
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()
        self.nodes = 0
        self.stack: set[int] = set()

    @staticmethod
    def _mark(node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def _problem(self, node: yaml.Node, path: KeyPath, message: str) -> None:
        line, column = self._mark(node)
        self.problems.append(Problem(self.source, line, column, format_path(path), message))

    def build(self, node: yaml.Node, path: KeyPath = ()) -> Any:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise PolicyError([Problem(self.source, *self._mark(node), format_path(path),
                                       f"the document expands to more than {_MAX_NODES} values "
                                       "(aliases nested too deeply?)")])
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self.stack:
            self._problem(node, path, "an alias refers to a value that contains it; recursive structures are not allowed")
            return None
        self.stack.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                items = []
                for i, child in enumerate(node.value):
                    self.positions[path + (i,)] = self._mark(child)
                    items.append(self.build(child, path + (i,)))
                return items
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
        finally:
            self.stack.discard(id(node))
        raise AssertionError(f"unexpected YAML node {node!r}")  # pragma: no cover

    def _scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        """The value of a scalar; a problem (and None) for one YAML resolves to a type but Python
        cannot build: an integer of more than 4300 digits, a date such as 2024-02-30."""
        try:
            return self.constructor.construct_object(node, deep=True)
        except (ValueError, OverflowError) as exc:
            shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
            self._problem(node, path, f"cannot read the value '{shown}' ({exc}); quote it to make it text")
            return None

    def _key(self, node: yaml.Node, path: KeyPath) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self._problem(node, path, "a key must be a plain value (text or a number), not a list or a mapping")
            return None
        return self._scalar(node, path)

    def _pairs(self, node: yaml.MappingNode, path: KeyPath) -> list[tuple[Any, yaml.Node, yaml.Node]]:
        """(key, key node, value node) for a mapping, with `<<` merge keys expanded."""
        explicit: list[tuple[Any, yaml.Node, yaml.Node]] = []
        merged: list[tuple[Any, yaml.Node, yaml.Node]] = []
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        self._problem(key_node, path, "'<<' merges mappings only; give it an alias of a mapping")
                        continue
                    if id(source) in self.stack:
                        self._problem(key_node, path, "'<<' merges a mapping that contains this one")
                        continue
                    self.stack.add(id(source))
                    try:
                        merged.extend(self._pairs(source, path))
                    finally:
                        self.stack.discard(id(source))
                continue
            key = self._key(key_node, path)
            try:
                hash(key)
            except TypeError:  # pragma: no cover - scalars are hashable
                key = str(key)
            line = key_node.start_mark.line + 1
            if key in first_line:
                self._problem(
                    key_node, path + (key,),
                    f"duplicate key '{key}' (lines {first_line[key]} and {line}); YAML would silently keep only "
                    "the last one, so remove or merge one of them",
                )
                continue
            first_line[key] = line
            explicit.append((key, key_node, value_node))
        out = list(explicit)
        for key, key_node, value_node in merged:  # explicit keys win; earlier merge sources win
            if key not in first_line:
                first_line[key] = key_node.start_mark.line + 1
                out.append((key, key_node, value_node))
        return out

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key, key_node, value_node in self._pairs(node, path):
            self.positions[path + (key,)] = self._mark(key_node)
            out[key] = self.build(value_node, path + (key,))
        return out


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing documents nested deeper than `_MAX_DEPTH` (PyYAML's composer
    recurses once per level and would end in a RecursionError)."""

    depth = 0

    def fetch_flow_collection_start(self, TokenClass: type) -> None:
        # the scanner's cost grows with the square of the flow depth ('[[[[…'): stop it early too
        if self.flow_level >= _MAX_DEPTH:
            raise yaml.scanner.ScannerError(
                None, None, f"the document nests mappings and lists more than {_MAX_DEPTH} levels deep",
                self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > _MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"the document nests mappings and lists more than {_MAX_DEPTH} levels deep",
                    self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _yaml_problem(exc: yaml.YAMLError, source: str, text: str) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):   # a character YAML does not allow: say on which line
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        code = ord(exc.character) if isinstance(exc.character, str) else exc.character
        return Problem(source, line, column, "", f"YAML error: character U+{code:04X} is not allowed in YAML "
                                                 f"({exc.reason}); remove it or write it as an escape in a quoted string")
    if not isinstance(exc, yaml.MarkedYAMLError):
        return Problem(source, None, None, "", f"YAML error: {exc}")
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark else None
    column = mark.column + 1 if mark else None
    problem = (exc.problem or exc.context or "invalid YAML").strip()
    context = (exc.context or "").strip() if exc.problem else ""
    if context and problem.startswith("but "):  # "expected a single document ..., but found another document"
        message = f"YAML syntax error: {context}, {problem}"
    else:
        message = f"YAML syntax error: {problem}"
        if context and exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line:
            message += f" ({context} at line {exc.context_mark.line + 1})"
    if "'\\t'" in problem:
        message += "; indent with spaces, YAML does not allow tabs"
    elif "mapping values are not allowed" in problem:
        message += "; a value containing ': ' must be quoted, or the indentation is off"
    elif "could not find expected ':'" in problem or "expected <block end>" in problem:
        message += "; check the indentation and that every key is followed by ':'"
    elif "expected a single document" in message:
        message += "; a policy file holds one document (remove the extra '---')"
    elif "could not determine a constructor" in problem:
        message += "; custom YAML tags are not supported"
    return Problem(source, line, column, "", message)


def parse_yaml(text: str, source: str = "<string>") -> tuple[Any, Positions]:
    """Parse YAML into plain data plus {key path: (line, column)} for every key and list item.

    Raises PolicyError for syntax errors, duplicate keys and recursive aliases. Returns
    (None, {}) for an empty document.
    """
    try:
        root = yaml.compose(text, Loader=_BoundedLoader)
        if root is None:
            return None, {}
        builder = _Builder(source)
        builder.positions[()] = builder._mark(root)
        data = builder.build(root)
    except yaml.YAMLError as exc:
        raise PolicyError([_yaml_problem(exc, source, text)]) from None
    if builder.problems:
        raise PolicyError(sorted(builder.problems, key=lambda p: (p.line or 0, p.column or 0)))
    return data, builder.positions


# --------------------------------------------------------------------------------------------
# loading


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Load and validate a policy file; raises PolicyError naming file, line and key path."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError([Problem(source, None, None, "", f"the file is not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise PolicyError([Problem(source, None, None, "", f"cannot read the policy file: {exc.strerror or exc}")]) from None
    return load_policy_text(text, source)


def load_policy_text(text: str, source: str = "<string>") -> Policy:
    """Validate policy YAML given as text; `source` names it in error messages."""
    data, positions = parse_yaml(text, source)
    if data is None:
        raise PolicyError([Problem(source, 1, 1, "",
                                   "the policy is empty; it needs at least 'models' and 'decisions' "
                                   "(see policies/examples/default.yaml)")])
    if not isinstance(data, dict):
        line, column = positions.get((), (None, None))
        raise PolicyError([Problem(source, line, column, "",
                                   f"the top level must be a mapping with keys such as 'models' and 'decisions', "
                                   f"got {_describe(data)}")])
    return validate_policy_data(data, positions, source)


def load_default_policy() -> Policy:
    """The embedded default policy (`policies/examples/default.yaml`), which routes to the simulated upstream."""
    resource = resources.files("sigroute.policies").joinpath(DEFAULT_POLICY)
    return load_policy_text(resource.read_text(encoding="utf-8"), str(resource))


def validate_policy_data(data: Any, positions: Positions | None = None, source: str = "<data>") -> Policy:
    """Validate already-parsed data; `positions` (from parse_yaml) lets problems carry line numbers."""
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(_problems(exc, data, positions or {}, source)) from None
    except Exception as exc:  # noqa: BLE001 - a validator's own bug: still a PolicyError, never a traceback
        # (without a line: tests/test_policy_loader_properties.py flags any problem reported this way)
        raise PolicyError([Problem(source, None, None, "", f"the policy could not be checked ({type(exc).__name__}: "
                                   f"{exc}); this is a bug in sigroute's policy validation, please report it")]) from exc


# --------------------------------------------------------------------------------------------
# from pydantic errors to problems

_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()


def _strip(tp: Any) -> Any:
    """Annotated[X, ...] -> X; Optional[X] -> X."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _field(model: type[BaseModel], key: Any):
    for name, info in model.model_fields.items():
        if key == (info.alias or name) or key == name:
            return info
    return None


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _tag(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp)


def _branch_matches(raw: Any, branch: Any) -> bool:
    """Whether the YAML value has the shape of this union branch (so its errors are relevant)."""
    branch = _strip(branch)
    if _is_model(branch):
        if not isinstance(raw, dict):
            return False
        keys = set(raw)
        required = {info.alias or name for name, info in branch.model_fields.items() if info.is_required()}
        return required <= keys and (not keys or bool(keys & set(_keys_of(branch))))
    if branch is bool:
        return isinstance(raw, bool)
    if branch in (int, float):
        return isinstance(raw, (int, float)) and not isinstance(raw, bool)
    if isinstance(branch, type) and branch in (str, list, dict, tuple):
        expected = (list, tuple) if branch in (list, tuple) else branch
        return isinstance(raw, expected)
    return True


def _child(raw: Any, key: Any) -> Any:
    if isinstance(raw, dict):
        return raw.get(key, _MISSING)
    if isinstance(raw, list) and isinstance(key, int) and -len(raw) <= key < len(raw):
        return raw[key]
    return _MISSING


@dataclass
class _Where:
    """Where a pydantic error location lands in the YAML data."""

    path: KeyPath
    parent: Any = None  # schema type holding the last path element
    tp: Any = None  # schema type at path
    raw: Any = _MISSING  # YAML value at path
    key_error: bool = False  # the error is about a mapping key itself ('[key]')
    unions: list[KeyPath] = field(default_factory=list)  # union points passed on the way
    irrelevant: bool = False  # error of a union branch the value does not have the shape of


def _resolve(loc: Iterable[Any], data: Any) -> _Where:
    tp: Any = Policy
    raw = data
    path: list[Any] = []
    where = _Where(())
    for element in loc:
        tp = _strip(tp)
        if tp is Algorithm:  # YAML writes {name: {options}}; pydantic's loc skips the name
            name = raw if isinstance(raw, str) else (next(iter(raw)) if isinstance(raw, dict) and len(raw) == 1 else None)
            options = ALGORITHM_OPTIONS.get(name) if isinstance(name, str) else None
            if isinstance(raw, dict) and options is not None:
                path.append(name)
                raw = raw[name] if raw[name] is not None else {}
            tp = options
        if element == "[key]":
            where.key_error = True
            continue
        if _is_union(tp):
            branches = {_tag(b): b for b in get_args(tp) if b is not type(None)}
            if isinstance(element, str) and element in branches and not (isinstance(raw, dict) and element in raw):
                where.unions.append(tuple(path))
                if not _branch_matches(raw, branches[element]):
                    where.irrelevant = True
                tp = branches[element]
                continue
            tp = next((b for b in branches.values() if _is_model(_strip(b)) and _field(_strip(b), element)), None)
            tp = _strip(tp)
        where.parent = tp
        origin = get_origin(tp)
        if _is_model(tp):
            info = _field(tp, element)
            tp = info.annotation if info is not None else None
        elif origin is dict:
            tp = get_args(tp)[1]
        elif origin in (tuple, list):
            tp = get_args(tp)[0]
        else:
            tp = None
        path.append(element)
        raw = _child(raw, element)
    where.path = tuple(path)
    where.tp = _strip(tp)
    where.raw = raw
    return where


def _describe(value: Any) -> str:
    if value is _MISSING or value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return f"'{text}'"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _closest(word: Any, candidates: Iterable[Any]) -> str | None:
    names = [str(c) for c in candidates]
    match = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    if not match:  # case-only typos
        match = [n for n in names if n.lower() == str(word).lower()][:1]
    return match[0] if match else None


def _suggest(word: Any, candidates: Iterable[Any]) -> str:
    match = _closest(word, candidates)
    return f"; did you mean '{match}'?" if match else ""


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_BOOL_HINT = " (YAML reads yes/no/on/off/true/false as true or false; put the value in quotes)"


def _type_message(kind: str, err: dict[str, Any], where: _Where) -> str:
    value = err.get("input", where.raw)
    message = f"expected {kind}, got {_describe(value)}"
    if isinstance(value, bool) and kind == "text":
        message += _BOOL_HINT
    elif value is None:
        message += "; give it a value or remove the key"
    return message


def _pattern_message(value: Any, pattern: str, is_key: bool) -> str:
    if pattern == NAME_PATTERN:
        what = "name" if is_key else "value"
        return (f"'{value}' is not a valid {what}: start with a letter or digit and use only letters, digits, "
                "'_', '.' and '-'")
    if pattern == ENV_NAME_PATTERN:
        return f"'{value}' is not an environment variable name (letters, digits and '_', not starting with a digit)"
    if pattern == r"^[0-9a-f]{64}$":
        return (f"expected the key's SHA-256 as 64 lowercase hex digits, got {_describe(value)} "
                "(compute it with: printf %s 'THE-KEY' | sha256sum)")
    return f"{_describe(value)} does not match the pattern {pattern}"


def _message(err: dict[str, Any], where: _Where) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    last = where.path[-1] if where.path else None

    if kind == "extra_forbidden":
        parent = _strip(where.parent)
        allowed = _keys_of(parent) if _is_model(parent) else []
        if parent is Signals:
            return (f"unknown signal type '{last}'{_suggest(last, allowed)} "
                    f"(signal types: {', '.join(allowed)})")
        if _is_model(parent) and not allowed:
            algorithm = next((n for n, m in ALGORITHM_OPTIONS.items() if m is parent), None)
            owner = f"algorithm '{algorithm}'" if algorithm else "this section"
            return f"unknown key '{last}': {owner} takes no options"
        hint = _suggest(last, allowed)
        if not hint and allowed:
            hint = f"; allowed keys here: {', '.join(allowed)}"
        return f"unknown key '{last}'{hint}"
    if kind == "missing":
        parent = _strip(where.parent)
        info = _field(parent, last) if _is_model(parent) else None
        described = f" ({info.description})" if info is not None and info.description else ""
        return f"missing required key '{last}'{described}"
    if kind in ("value_error", "assertion_error"):
        error = ctx.get("error")
        message = str(error) if error is not None else re.sub(r"^(Value|Assertion) error, ", "", err["msg"])
        unknown = re.match(r"unknown algorithm '(.*?)';", message)
        if unknown:
            match = _closest(unknown.group(1), ALGORITHM_OPTIONS)
            if match:
                message = message.replace(unknown.group(0), f"{unknown.group(0)[:-1]} (did you mean '{match}'?);", 1)
        if message.startswith("give exactly one of") and isinstance(where.raw, dict):
            options = re.findall(r"'?\b([a-z_0-9]+)\b'?", message.split(" of ", 1)[1])
            given = [k for k in options if k in where.raw and where.raw[k] is not None]
            if not given:
                message += " (none is given)"
            elif len(given) > 1:
                message += f" (found {' and '.join(given)})"
        return message
    if kind in ("int_parsing", "int_type", "int_from_float"):
        message = _type_message("a whole number", err, where)
        if last == "priority":
            message += "; priorities are numbers and the larger one wins, e.g. priority: 100"
        return message
    if kind in ("float_parsing", "float_type"):
        return _type_message("a number", err, where)
    if kind in ("bool_parsing", "bool_type"):
        return _type_message("true or false", err, where)
    if kind == "string_type":
        if where.key_error:
            return f"names must be text, got {_describe(value)}; put the name in quotes"
        return _type_message("text", err, where)
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return _type_message("a mapping (key: value entries)", err, where)
    if kind in ("tuple_type", "list_type", "set_type"):
        message = _type_message("a list", err, where)
        if isinstance(value, str):
            message += f"; write [{value}] or one '- {value}' line per item"
        return message
    if kind == "literal_error":
        options = [a for a in get_args(where.tp)] if get_origin(where.tp) is Literal else []
        expected = ctx.get("expected") or ", ".join(map(repr, options))
        return f"expected {expected}, got {_describe(value)}{_suggest(value, options) if isinstance(value, str) else ''}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = next(iter(ctx.values()), None)
        got = f", got {_number(value)}" if isinstance(value, (int, float)) else f", got {_describe(value)}"
        if kind == "greater_than_equal":
            return ("must not be negative" if bound == 0 else f"must be at least {_number(bound)}") + got
        if kind == "greater_than":
            return ("must be positive (greater than 0)" if bound == 0 else f"must be greater than {_number(bound)}") + got
        if kind == "less_than_equal":
            return f"must be at most {_number(bound)}" + got
        return f"must be less than {_number(bound)}" + got
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        unit = "entry" if isinstance(value, dict) else "item"
        return f"needs at least {n} {unit}{'s' if n != 1 else ''}, got {len(value) if hasattr(value, '__len__') else 0}"
    if kind == "too_long":
        return f"allows at most {ctx.get('max_length')} items, got {ctx.get('actual_length')}"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must be at least {n} characters long"
    if kind == "string_too_long":
        what = "name" if where.key_error else "value"
        return f"this {what} is longer than {ctx.get('max_length')} characters"
    if kind == "string_pattern_mismatch":
        return _pattern_message(value, ctx.get("pattern", ""), where.key_error)
    if kind == "enum":
        return f"expected {ctx.get('expected')}, got {_describe(value)}"
    return f"{err['msg']} (got {_describe(value)})"


def _leaf_paths(raw: Any, path: KeyPath) -> list[tuple[KeyPath, str]]:
    """Every string leaf of a raw rule tree with its key path, in order."""
    if isinstance(raw, str):
        return [(path, raw)]
    out: list[tuple[KeyPath, str]] = []
    if isinstance(raw, dict):
        for key, value in raw.items():
            out.extend(_leaf_paths(value, path + (key,)))
    elif isinstance(raw, list):
        for i, value in enumerate(raw):
            out.extend(_leaf_paths(value, path + (i,)))
    return out


def _bad_rule_node(raw: Any, path: KeyPath) -> KeyPath | None:
    """The first node that the schema's rule-syntax check rejects (mirrors Decision._leaf_syntax)."""
    if isinstance(raw, str):
        return None if LEAF_PATTERN.match(raw) else path
    if isinstance(raw, dict):
        if len(raw) != 1 or next(iter(raw)) not in ("all", "any", "not"):
            return path
        (op, child), = raw.items()
        if op == "not":
            return _bad_rule_node(child, path + (op,))
        if not isinstance(child, list):
            return path + (op,)
        for i, c in enumerate(child):
            bad = _bad_rule_node(c, path + (op, i))
            if bad is not None:
                return bad
        return None
    return path


def _declared_signals(data: Any) -> list[str]:
    signals = data.get("signals") if isinstance(data, dict) else None
    if not isinstance(signals, dict):
        return []
    return [f"{kind}:{name}" for kind, named in signals.items() if isinstance(named, dict) for name in named]


def _decision_names(data: Any) -> list[str]:
    decisions = data.get("decisions") if isinstance(data, dict) else None
    if not isinstance(decisions, list):
        return []
    return [d["name"] for d in decisions if isinstance(d, dict) and isinstance(d.get("name"), str)]


def _refine_reference(loc: KeyPath, message: str, data: Any, positions: Positions,
                      seen: dict[tuple[KeyPath, str], int]) -> tuple[KeyPath, str]:
    """Point a cross-reference error at the exact value and add a did-you-mean."""
    if loc and loc[-1] == "rules":
        raw = _resolve(loc, data).raw
        leaves = _leaf_paths(raw, loc)
        quoted = [(p, leaf) for p, leaf in leaves if f"'{leaf}'" in message]
        if not quoted:
            quoted = [(p, leaf) for p, leaf in leaves if f"'{leaf.split(':', 1)[0]}'" in message]
        if quoted:
            n = seen.get((loc, message), 0)
            seen[(loc, message)] = n + 1
            loc = quoted[min(n, len(quoted) - 1)][0]
    m = re.match(r"signal '([a-z_]+:[^']*)' is not defined", message)
    if m:
        message += _suggest(m.group(1), _declared_signals(data))
    m = re.match(r"unknown signal type '([^']*)'", message)
    if m:
        message += _suggest(m.group(1), Signals.model_fields)
    m = re.match(r"model '([^']*)' is not defined", message)
    if m:
        models = data.get("models") if isinstance(data, dict) else None
        message += _suggest(m.group(1), models if isinstance(models, dict) else ())
    m = re.match(r"decision '([^']*)' is not defined", message)
    if m:
        message += _suggest(m.group(1), _decision_names(data))
    m = re.match(r"decision '([^']*)' is defined twice", message)
    if m and isinstance(data.get("decisions"), list):
        first = next((i for i, d in enumerate(data["decisions"]) if isinstance(d, dict) and d.get("name") == m.group(1)),
                     None)
        if first is not None and ("decisions", first, "name") in positions:
            message += f" (first at line {positions[('decisions', first, 'name')][0]})"
        message += "; decision names must be unique"
    m = re.match(r"weight given for '([^']*)'", message)
    if m:
        loc = loc + ("weights", m.group(1))
        message += "; list the model under this decision's 'models' or remove its weight"
    if message.startswith("entrypoint '") and "same name as a model" in message:
        message += "; rename one of them, since a request's model name must say which it means"
    return loc, message


def _position(path: KeyPath, positions: Positions) -> tuple[int | None, int | None]:
    for n in range(len(path), -1, -1):
        if path[:n] in positions:
            return positions[path[:n]]
    return None, None


def _problems(exc: ValidationError, data: Any, positions: Positions, source: str) -> list[Problem]:
    found: list[tuple[_Where, str]] = []
    dropped_unions: set[KeyPath] = set()
    seen_refs: dict[tuple[KeyPath, str], int] = {}
    for err in exc.errors(include_url=False):
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, PolicyReferenceError):
            base = _resolve(err["loc"], data).path
            for path, message in error.errors:
                loc, message = _refine_reference(base + tuple(path), message, data, positions, seen_refs)
                where = _resolve(loc, data)
                if where.raw is _MISSING:  # e.g. the 'rules' that a second default decision lacks
                    while where.path and where.path not in positions:
                        where.path = where.path[:-1]
                found.append((where, message))
            continue
        where = _resolve(err["loc"], data)
        if where.irrelevant:
            dropped_unions.update(where.unions)
            continue
        value = err.get("input")
        if (err["type"] == "too_short" and isinstance(value, (list, tuple, dict))
                and len(value) >= (err.get("ctx") or {}).get("min_length", 1)):
            continue  # pydantic also reports "0 items after validation" when an item failed
        message = _message(err, where)
        if err["type"] == "value_error" and where.path and where.path[-1] == "rules":
            bad = _bad_rule_node(where.raw, where.path)
            if bad is not None:
                where.path = bad
        elif err["type"] == "value_error" and message.startswith(("invalid regular expression",
                                                                   "unsupported regular expression")):
            hit = next((p for p, s in _leaf_paths(where.raw, where.path) if repr(s) in message), None)
            if hit is not None:
                where.path = hit
        if err["type"] == "missing" and where.path:
            where.path = where.path[:-1]  # the key does not exist: point at its parent
        found.append((where, message))
    for union_path in sorted(dropped_unions, key=len):
        if not any(w.path[: len(union_path)] == union_path for w, _ in found):
            found.append((_Where(union_path), "does not have any of the allowed forms"))

    problems: list[Problem] = []
    keys: set[tuple[str, str]] = set()
    for where, message in found:
        path = format_path(where.path)
        if (path, message) in keys:
            continue
        keys.add((path, message))
        line, column = _position(where.path, positions)
        problems.append(Problem(source, line, column, path, message))
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return problems


# --------------------------------------------------------------------------------------------
# warnings


def policy_warnings(policy: Policy, environ: Mapping[str, str] | None = None) -> list[str]:
    """Legal but suspicious things about a loaded policy, as sentences (empty if none)."""
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    needing: dict[str, list[str]] = {}
    for name, spec in policy.models.items():
        if spec.api_key_env and not environ.get(spec.api_key_env):
            needing.setdefault(spec.api_key_env, []).append(name)
    for variable, names in needing.items():
        which = f"model '{names[0]}'" if len(names) == 1 else "models " + ", ".join(f"'{n}'" for n in names)
        warnings.append(f"environment variable {variable} is not set, so calls to {which} will have no API key")
    if policy.auth is not None:
        for i, key in enumerate(policy.auth.keys):
            if key.key_env and not environ.get(key.key_env):
                warnings.append(f"auth.keys[{i}] (tenant '{key.tenant}'): environment variable {key.key_env} "
                                "is not set, so that key cannot be used")

    def entrypoints_reaching(decision_name: str) -> list[str]:
        return [e for e, entry in policy.entrypoints.items()
                if entry.decisions is None or decision_name in entry.decisions]

    order = {d.name: i for i, d in enumerate(policy.decisions)}
    for later in policy.decisions:
        if later.rules is None:
            continue
        for earlier in policy.decisions:
            if earlier is later or earlier.rules != later.rules:
                continue
            if (earlier.priority, -order[earlier.name]) <= (later.priority, -order[later.name]):
                continue
            if all(e in entrypoints_reaching(earlier.name) for e in entrypoints_reaching(later.name)):
                warnings.append(f"decision '{later.name}' can never win: '{earlier.name}' has identical rules "
                                "and wins ties (higher priority or earlier in the file)")
                break
    for decision in policy.decisions:
        if not entrypoints_reaching(decision.name):
            warnings.append(f"decision '{decision.name}' is not listed by any entrypoint, so no request reaches it")
    default = next((d.name for d in policy.decisions if d.is_default), None)
    for name, entry in policy.entrypoints.items():
        if entry.decisions is not None and default not in entry.decisions:
            warnings.append(f"entrypoint '{name}' does not include the default decision '{default}', so a request "
                            "that matches none of its decisions has no route")
    used = policy.used_signals()
    for key in policy.signals.declared():
        if key not in used:
            warnings.append(f"signal '{key}' is declared but no decision's rules use it; it is never computed")
    if policy.server.log_prompts:
        warnings.append("server.log_prompts is true: prompts and answers will be written to the logs")
    return warnings
