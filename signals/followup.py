"""What a follow-up turn says about the answer before it: a re-ask, a dissatisfaction cue, or moving on.

A conversation's new user turn follows an assistant answer, which followed the user's previous
turn. Three things can be read from the new turn:

    reask         the user asks the same thing again: the new turn is semantically close to the
                  previous user turn (cosine of the shared sentence embedding >= a threshold), or,
                  without an encoder, the same text once case, punctuation and spacing are ignored
    dissatisfied  the user says the answer was bad: a cue such as "that's wrong", "try again",
                  "das ist falsch", "ce n'est pas ça", "no es correcto" (phrases below, in English,
                  German, French, Spanish, Italian, Portuguese and Dutch)
    moved_on      neither: probably, not certainly, the answer served its purpose

`follow_up(ctx)` finds the three texts in a request (None when the request is not a follow-up:
its last message is not a user turn right after an assistant answer). `classify` decides the
event; a cue wins over a re-ask (it is the surer evidence). Both the `reask` and `dissatisfied`
signals (rules may escalate such turns) and the gateway's implicit feedback
(`gateway.implicit`) read these functions, so they always agree.

The cues are exemplar phrases written for this module, matched on word boundaries in the
case-folded, accent-folded turn; `tests/data/dissatisfaction_cues.jsonl` is a small labelled set
(cues, and near-misses such as "what's wrong with my code?") that `tests/test_implicit_feedback.py`
measures precision and recall on. The re-ask threshold (`DEFAULT_REASK_THRESHOLD`) was chosen with
`python -m benchmarks.reask` (see README, "Implicit feedback").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable

from sigroute.signals.base import Signal, SignalResult

__all__ = ["Reask", "Dissatisfied", "FollowUp", "follow_up", "normalized", "dissatisfaction_cue", "classify", "CUES",
           "DEFAULT_REASK_THRESHOLD"]

# Chosen with benchmarks/reask.py. On 2,000 labelled question pairs whose non-duplicates are hard
# negatives (same topic): at 0.85 precision 0.72, recall 0.63; at 0.80 0.66 / 0.76; at 0.92 0.81 / 0.34
# (F1 only grows towards 0.70: 0.58 / 0.94). On 40 conversation follow-ups written for this project
# (tests/data/reask_followups.jsonl): at 0.85 precision 1.0, recall 0.85; at 0.80 1.0 / 0.95. 0.85
# leans to precision (a false re-ask credits a good answer as bad). See README "Implicit feedback".
DEFAULT_REASK_THRESHOLD = 0.85

# Dissatisfaction cues, by language (ISO 639-1). Written case- and accent-free: the turn is folded
# the same way before matching. Each phrase matches on word boundaries anywhere in the turn.
CUES: dict[str, tuple[str, ...]] = {
    "en": ("that's wrong", "thats wrong", "that is wrong", "this is wrong", "that's incorrect", "that is incorrect",
           "this is incorrect", "that's not right", "that is not right", "thats not right", "not correct",
           "that's not it", "that is not it", "not what i asked", "not what i meant", "not what i wanted",
           "try again", "wrong answer", "you're wrong", "you are wrong", "that's not true", "that is not true",
           "doesn't work", "does not work", "didn't work", "did not work", "makes no sense", "doesn't make sense",
           "does not make sense", "useless answer", "not helpful", "unhelpful", "you misunderstood",
           "that's false", "that is false", "incorrect answer", "still wrong", "nope"),
    "de": ("das ist falsch", "das stimmt nicht", "stimmt nicht", "falsche antwort", "nochmal versuchen",
           "versuch es nochmal", "versuche es noch einmal", "noch einmal versuchen", "das ist nicht richtig",
           "nicht richtig", "das war nicht gemeint", "nicht das was ich", "nicht was ich", "das hilft nicht",
           "funktioniert nicht", "ergibt keinen sinn", "macht keinen sinn", "du liegst falsch", "sie liegen falsch",
           "immer noch falsch", "leider falsch"),
    "fr": ("c'est faux", "c est faux", "ce n'est pas ca", "ce n'est pas correct", "ce n'est pas juste",
           "pas correct", "mauvaise reponse", "reessaie", "reessayez", "essaie encore", "essayez encore",
           "ce n'est pas ce que", "ca ne marche pas", "ca ne fonctionne pas", "ne fonctionne pas", "tu te trompes",
           "vous vous trompez", "ca n'a pas de sens", "toujours faux", "inexact"),
    "es": ("eso esta mal", "esta mal", "es incorrecto", "eso es incorrecto", "no es correcto", "no es cierto",
           "respuesta incorrecta", "intentalo de nuevo", "intenta de nuevo", "vuelve a intentarlo",
           "prueba otra vez", "no es eso", "no es lo que", "no funciona", "te equivocas", "se equivoca",
           "no tiene sentido", "sigue mal", "sigue siendo incorrecto"),
    "it": ("e sbagliato", "sbagliato", "non e corretto", "risposta sbagliata", "riprova", "non funziona",
           "non e quello che", "ti sbagli", "non ha senso"),
    "pt": ("esta errado", "isso esta errado", "nao esta correto", "resposta errada", "tente novamente",
           "tenta de novo", "nao funciona", "nao e isso", "voce esta errado", "nao faz sentido"),
    "nl": ("dat is fout", "dat klopt niet", "klopt niet", "verkeerd antwoord", "probeer het opnieuw",
           "probeer opnieuw", "werkt niet", "niet wat ik", "slaat nergens op"),
}


def _fold(text: str) -> str:
    """Case-folded, accents removed, curly apostrophes straightened, spaces collapsed."""
    text = unicodedata.normalize("NFKD", text.replace("\u2019", "'").replace("\u2018", "'"))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(text.casefold().split())


def _pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    alternatives = sorted({re.escape(_fold(p)) for p in phrases}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)")


_CUE_PATTERNS = {language: _pattern(phrases) for language, phrases in CUES.items()}
CUE_SCAN_CHARS = 2000   # a cue is said early: only the start of a long turn is read


def dissatisfaction_cue(text: str, extra: re.Pattern[str] | None = None) -> tuple[str, str] | None:
    """(language, the cue as found) for the first dissatisfaction cue in `text`, else None.
    `extra` is a policy's own cue pattern (language "policy")."""
    folded = _fold(text[:CUE_SCAN_CHARS])
    if not folded:
        return None
    if extra is not None:
        found = extra.search(folded)
        if found:
            return "policy", found.group(0)
    for language, pattern in _CUE_PATTERNS.items():
        found = pattern.search(folded)
        if found:
            return language, found.group(0)
    return None


def cue_pattern(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """A pattern for a policy's extra cue phrases (None for none)."""
    phrases = [p for p in phrases if _fold(p)]
    return _pattern(phrases) if phrases else None


_PUNCTUATION = re.compile(r"[^\w\s]")


def normalized(text: str) -> str:
    """Text for comparing two turns without an encoder: folded, punctuation dropped."""
    return " ".join(_PUNCTUATION.sub(" ", _fold(text)).split())


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A user turn right after an assistant answer, with the user turn that answer answered."""

    answer: str           # the assistant's answer the new turn follows
    turn: str             # the new (last) user turn
    previous: str | None  # the user turn before the answer (None when the conversation has none)


def follow_up(ctx) -> FollowUp | None:
    """The follow-up in a request (a `signals.context.RequestContext`), or None when its last
    message is not a user turn that directly follows an assistant answer with text."""
    messages = ctx.messages
    if len(messages) < 2 or messages[-1].role != "user" or messages[-2].role != "assistant":
        return None
    answer, turn = messages[-2].text, messages[-1].text
    if not answer.strip() or not turn.strip():
        return None
    previous = next((m.text for m in reversed(messages[:-2]) if m.role == "user"), None)
    return FollowUp(answer=answer, turn=turn, previous=previous)


def classify(follow: FollowUp, similarity: float | None, threshold: float,
             extra_cues: re.Pattern[str] | None = None) -> tuple[str, dict]:
    """The event ("dissatisfied", "reask" or "moved_on") and why. `similarity` is the cosine of the
    new and the previous user turn's embeddings; None without an encoder (then a re-ask is the same
    normalized text)."""
    cue = dissatisfaction_cue(follow.turn, extra_cues)
    if cue is not None:
        return "dissatisfied", {"language": cue[0], "cue": cue[1]}
    if follow.previous is not None:
        if similarity is None:
            if normalized(follow.turn) and normalized(follow.turn) == normalized(follow.previous):
                return "reask", {"by": "text"}
        elif similarity >= threshold:
            return "reask", {"by": "embedding", "similarity": round(float(similarity), 4)}
    details: dict = {}
    if similarity is not None:
        details["similarity"] = round(float(similarity), 4)
    return "moved_on", details


# --------------------------------------------------------------------------------------------
# the signals rules read


class Reask(Signal):
    """`reask`: the last user turn asks the previous one again, right after an assistant answer.

    value is {"similarity"} (cosine of the two turns); confidence is the similarity when matched.
    Needs the encoder (a declared `reask` signal loads it).
    """

    type = "reask"
    needs_embedding = True

    def embedding_texts(self, ctx) -> tuple[str, ...]:
        follow = follow_up(ctx)
        if follow is None or follow.previous is None:
            return ()
        return (follow.turn, follow.previous)

    def evaluate(self, ctx) -> SignalResult:
        follow = follow_up(ctx)
        if follow is None or follow.previous is None:
            return SignalResult(False, 0.0, {"reason": "not a follow-up turn"})
        similarity = float(ctx.vector(follow.turn) @ ctx.vector(follow.previous))
        matched = similarity >= self.config.threshold
        return SignalResult(matched, max(0.0, min(1.0, similarity)), {"similarity": round(similarity, 4)})


class Dissatisfied(Signal):
    """`dissatisfied`: the last user turn, right after an assistant answer, says that answer was
    wrong ("that's wrong", "try again", "das ist falsch", …). value is {"language", "cue"}."""

    type = "dissatisfied"

    def __init__(self, name: str, config):
        super().__init__(name, config)
        self._extra = cue_pattern(config.extra_cues)

    def evaluate(self, ctx) -> SignalResult:
        follow = follow_up(ctx)
        if follow is None:
            return SignalResult(False, 0.0, {"reason": "not a follow-up turn"})
        cue = dissatisfaction_cue(follow.turn, self._extra)
        if cue is None:
            return SignalResult(False, 0.0, None)
        return SignalResult(True, 1.0, {"language": cue[0], "cue": cue[1]})
