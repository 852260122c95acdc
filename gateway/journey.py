"""What the gateway knows about one request as it moves through the pipeline's steps.

`Journey` is the one object every step reads and fills in (see `gateway.pipeline`), so no step
needs a long argument list and nothing about a request lives anywhere else. `Route` is the part the
routing steps produce: the decision, its confidence, the signals it was decided on, and (after
selection) the candidates and the choice.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from sigroute.gateway.tracing import NO_TRACE
from sigroute.plugins.base import PluginState

if TYPE_CHECKING:
    from sigroute.bandits.base import Choice
    from sigroute.cache.service import CachePlan
    from sigroute.gateway.auth import Principal
    from sigroute.gateway.surface import AnswerEncoder
    from sigroute.cache.semantic import FlightLease
    from sigroute.gateway.ratelimit import TokenEstimate
    from sigroute.gateway.upstream import CallResult
    from sigroute.policies.rules import Outcome
    from sigroute.policies.schema import Decision, RateLimit
    from sigroute.signals.context import RequestContext

DIRECT = "direct"  # decision name reported when a caller names a concrete model


@dataclass(slots=True)
class Route:
    """Where a request goes, before any upstream call."""

    entrypoint: str | None
    decision: "Decision | None"  # None: a direct model call
    decision_name: str
    confidence: float
    outcome: "Outcome | None"
    signals: dict[str, Any]
    candidates: list[str] = field(default_factory=list)
    choice: "Choice | None" = None   # set by selection (step 7); preset for a direct model call
    request_id: str = ""

    @property
    def entrypoint_label(self) -> str:
        return self.entrypoint or DIRECT


@dataclass(slots=True)
class Journey:
    """One request, from its bytes to its answer."""

    headers: Mapping[str, str]                 # the request's headers
    started: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=lambda: "req_" + uuid.uuid4().hex)
    api: str = "chat.completions"              # the surface it came in by (`gateway.surface`)
    principal: "Principal | None" = None       # 1 auth
    rate_limit: "RateLimit | None" = None      # 1 the caller's limits
    token_estimate: "TokenEstimate | None" = None   # 2 tokens reserved under a token limit (None: none)
    ctx: "RequestContext | None" = None        # 2 context (replaced by plugins that change the request)
    route: Route | None = None                 # 3 + 4 signals and decision, 7 selection
    plugins: PluginState = field(default_factory=PluginState)   # 5 + 9: what the plugins did
    plan: "CachePlan | None" = None            # 6 how this request uses the cache (None: it does not)
    flight: "FlightLease | None" = None        # 6 leading identical requests (they wait for our answer)
    result: "CallResult | None" = None         # 8 the upstream call
    usage: Any = None                          # 9 the model answer's `usage`, when it had one
    streamed_text: list[str] | None = None     # 9 a stream's text, kept only to count its tokens without usage
    response_headers: dict[str, str] = field(default_factory=dict)
    encoder: "AnswerEncoder | None" = None     # 2 the answer in the surface's wire format
    feedback_pending: bool = False             # 11 a pending record waits for feedback (gateway.implicit)
    counted: bool = False                      # its outcome is in the metrics (and the dashboard)
    trace: Any = NO_TRACE                      # its spans (`gateway.tracing`; NO_TRACE: not traced)

    @property
    def caching(self) -> bool:
        return self.plan is not None and self.plan.active

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started
