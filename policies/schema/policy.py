"""The root of a policy file, `Policy`: its sections, the checks that span them, and
`json_schema()`, the JSON Schema that `sigroute schema` exports.

Cross-references (a decision naming an undefined signal or model, an entrypoint naming an
undefined decision) are checked in `Policy._check_references`, which reports the key path of
the offending value so that the loader can point at its line.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from sigroute.policies.schema.base import Name, Strict
from sigroute.policies.schema.decisions import Decision
from sigroute.policies.schema.feedback import Feedback
from sigroute.policies.schema.models import ModelSpec
from sigroute.policies.schema.rule_trees import rule_leaves
from sigroute.policies.schema.server import Auth, Entrypoint, Routing, Server, Upstream
from sigroute.policies.schema.signals import BUILTIN_DOMAINS, DomainSpec, EncoderSpec, Signals


class Policy(Strict):
    version: Literal[1] = 1
    models: dict[Name, ModelSpec] = Field(..., min_length=1)
    signals: Signals = Signals()
    domains: dict[Annotated[str, Field(min_length=1, max_length=64)], DomainSpec] = Field(
        default_factory=dict, description="extra domains for `domain` signals, each from exemplars")
    encoder: EncoderSpec = EncoderSpec()
    decisions: tuple[Decision, ...] = Field(..., min_length=1)
    entrypoints: dict[Name, Entrypoint] = Field(default_factory=lambda: {"auto": Entrypoint()})
    routing: Routing = Routing()
    auth: Auth | None = None
    server: Server = Server()
    upstream: Upstream = Upstream()
    feedback: Feedback = Feedback()

    @model_validator(mode="after")
    def _check_references(self) -> "Policy":
        errors: list[tuple[tuple[Any, ...], str]] = []
        declared = self.signals.declared()
        seen: dict[str, int] = {}
        defaults = []

        def check_domain(path: tuple[Any, ...], category: str) -> None:
            if category not in BUILTIN_DOMAINS and category not in self.domains:
                known = ", ".join(list(BUILTIN_DOMAINS) + list(self.domains))
                errors.append((path, f"domain '{category}' is neither built in nor declared under 'domains' (known: {known})"))

        for i, decision in enumerate(self.decisions):
            if decision.name in seen:
                errors.append(((  "decisions", i, "name"), f"decision '{decision.name}' is defined twice"))
            seen[decision.name] = i
            if decision.is_default:
                defaults.append(i)
            for j, model in enumerate(decision.models):
                if model not in self.models:
                    errors.append(
                        (("decisions", i, "models", j),
                         f"model '{model}' is not defined under 'models' (defined: {', '.join(self.models)})")
                    )
            if len(set(decision.models)) != len(decision.models):
                errors.append((("decisions", i, "models"), "a model is listed twice"))
            if decision.rules is not None:
                for leaf in rule_leaves(decision.rules):
                    if leaf not in declared:
                        kind = leaf.split(":", 1)[0]
                        if kind not in Signals.model_fields:
                            hint = f"unknown signal type '{kind}' (known: {', '.join(Signals.model_fields)})"
                        else:
                            names = ", ".join(getattr(self.signals, kind)) or "none"
                            hint = f"signal '{leaf}' is not defined under 'signals.{kind}' (defined: {names})"
                        errors.append((("decisions", i, "rules"), hint))
            if decision.algorithm.name == "weighted":
                for model in decision.algorithm.options.weights:
                    if model not in decision.models:
                        errors.append(
                            (("decisions", i, "algorithm"),
                             f"weight given for '{model}', which is not among this decision's models")
                        )
            jailbreak = decision.plugin("jailbreak")
            if jailbreak is not None and jailbreak.reroute_to is not None:
                target = jailbreak.reroute_to
                if target == decision.name:
                    errors.append((("decisions", i, "plugins"), "jailbreak reroute_to names this decision itself"))
                elif target not in {d.name for d in self.decisions}:
                    errors.append((("decisions", i, "plugins"),
                                   f"jailbreak reroute_to: decision '{target}' is not defined"))
            if decision.cache is not None:
                for category in decision.cache.categories:
                    check_domain(("decisions", i, "cache", "categories", category), category)
        for name, config in self.signals.domain.items():
            for k, category in enumerate(config.categories):
                check_domain(("signals", "domain", name, "categories", k), category)
        for name, config in self.signals.guard.items():
            if config.model not in self.models:
                errors.append((("signals", "guard", name, "model"),
                               f"guard model '{config.model}' is not defined under 'models' "
                               f"(defined: {', '.join(self.models)})"))
        for name in self.domains:
            if name in BUILTIN_DOMAINS:
                errors.append((("domains", name), f"'{name}' is a built-in domain; choose another name"))
        if not defaults:
            errors.append((("decisions",), "no default decision: add one without 'rules' (it answers when nothing else matches)"))
        elif len(defaults) > 1:
            names = ", ".join(self.decisions[i].name for i in defaults)
            errors.append((("decisions", defaults[1], "rules"), f"only one decision may omit 'rules' (the default); found: {names}"))
        if self.auth is not None and self.server.open_without_auth:
            errors.append((("server", "open_without_auth"),
                           "applies only to a gateway without an `auth` section; with API keys, give the roles "
                           "in auth.admin_roles / auth.explain_roles instead"))
        for name, entry in self.entrypoints.items():
            if name in self.models:
                errors.append((("entrypoints", name), f"entrypoint '{name}' has the same name as a model"))
            for k, dname in enumerate(entry.decisions or ()):
                if dname not in seen:
                    errors.append((("entrypoints", name, "decisions", k), f"decision '{dname}' is not defined"))
        judge = self.feedback.judge
        if judge is not None and judge.model not in self.models:
            errors.append((("feedback", "judge", "model"),
                           f"judge model '{judge.model}' is not defined under 'models' (defined: {', '.join(self.models)})"))
        if errors:
            raise PolicyReferenceError(errors)
        return self

    # convenience -------------------------------------------------------------------------
    def decision(self, name: str) -> Decision:
        for d in self.decisions:
            if d.name == name:
                return d
        raise KeyError(name)

    @property
    def default_decision(self) -> Decision:
        return next(d for d in self.decisions if d.is_default)

    def used_signals(self) -> set[str]:
        """The 'type:name' references that some decision's rules read."""
        used: set[str] = set()
        for d in self.decisions:
            if d.rules is not None:
                used.update(rule_leaves(d.rules))
        return used


class PolicyReferenceError(ValueError):
    """Cross-reference errors, each with the key path it belongs to."""

    def __init__(self, errors: list[tuple[tuple[Any, ...], str]]):
        self.errors = errors
        super().__init__("; ".join(msg for _, msg in errors))


def json_schema() -> dict[str, Any]:
    """JSON Schema of the policy file."""
    schema = Policy.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sigroute policy"
    return schema
