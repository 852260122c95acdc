"""Which class implements each signal type: a plain dict from the YAML key to the class.

The keys are the fields of `policies.schema.Signals`. Learned (embedding) signals are added here
as they are implemented; `SignalEngine` refuses a policy that declares a type missing from it.
"""

from __future__ import annotations

from sigroute.signals.base import Signal
from sigroute.signals.heuristics import (
    Authz,
    ContextLength,
    Conversation,
    Header,
    Keyword,
    Language,
    Metadata,
    Modality,
)

from sigroute.signals.followup import Dissatisfied, Reask
from sigroute.signals.guard import Guard
from sigroute.signals.learned import Complexity, Domain, Embedding, FactCheck, Jailbreak
from sigroute.signals.pii import Pii

SIGNAL_TYPES: dict[str, type[Signal]] = {
    "keyword": Keyword,
    "context_length": ContextLength,
    "language": Language,
    "authz": Authz,
    "modality": Modality,
    "conversation": Conversation,
    "header": Header,
    "metadata": Metadata,
    "embedding": Embedding,
    "domain": Domain,
    "complexity": Complexity,
    "jailbreak": Jailbreak,
    "fact_check": FactCheck,
    "pii": Pii,
    "reask": Reask,
    "dissatisfied": Dissatisfied,
    "guard": Guard,
}
