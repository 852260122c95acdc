"""The signal contract: a named, typed test of a request that returns a `SignalResult`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from sigroute.signals.context import RequestContext


@dataclass(frozen=True, slots=True)
class SignalResult:
    matched: bool
    confidence: float  # in [0, 1]; for an unmatched result, how close it came (0 when not meaningful)
    value: Any = None  # what was found: matched terms, token count, language, …

    def as_dict(self) -> dict[str, Any]:
        return {"matched": self.matched, "confidence": round(float(self.confidence), 4), "value": self.value}


class Signal(ABC):
    """One rule under `signals.<type>.<name>` in the policy.

    Subclasses set `type` (the YAML key) and `needs_embedding`; `evaluate` is synchronous and
    cheap. A signal that needs the embedding finds it already computed on the context (the engine
    awaits it once, before evaluating), so nothing here blocks the event loop for long.
    """

    type: ClassVar[str]
    needs_embedding: ClassVar[bool] = False
    is_async: ClassVar[bool] = False  # evaluated by awaiting `evaluate_async` (it calls a model)

    def __init__(self, name: str, config: Any):
        self.name = name
        self.config = config

    @classmethod
    def build(cls, name: str, config: Any, resources: Any) -> "Signal":
        """Construct the signal for a policy. Learned signals override this to take what they
        need from `resources` (a `signals.learned.SignalResources`: encoder, heads, domains)."""
        return cls(name, config)

    def embedding_texts(self, ctx: RequestContext) -> tuple[str, ...]:
        """Texts whose embeddings `evaluate` reads (only asked when `needs_embedding`)."""
        return (ctx.embedding_text,)

    def token_texts(self, ctx: RequestContext) -> tuple[str, ...]:
        """Texts whose word-piece states `evaluate` reads (`ctx.token_states`; the PII tagger)."""
        return ()

    @property
    def key(self) -> str:
        return f"{self.type}:{self.name}"

    @abstractmethod
    def evaluate(self, ctx: RequestContext) -> SignalResult:
        """Test the request. Never mutates `ctx`."""

    async def evaluate_async(self, ctx: RequestContext, trace: Any = None) -> SignalResult:
        """An `is_async` signal's test (the engine runs it concurrently with the others); `trace`:
        the request's trace (opaque here), for the model calls it makes."""
        return self.evaluate(ctx)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key}>"
