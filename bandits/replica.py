"""How one replica shares additive sums through a state store, and restores them when the store
loses them (Redis restarted empty, flushed, evicted the key, or came back from an older snapshot).

Replicas merge by adding: each flushes what it learned (`flush`: the store adds it) and reads the
merged totals back (`load`). The store alone holds the merged totals, so when it loses them the
replicas hold the only copies — each a *view*, the totals as of its last load, plus its own flushes
since. A replica that simply reloaded would replace everything it knew with the store's near-empty
totals, so this module never lets a lost store be taken at its word.

Generations and versions
------------------------
Every stored key carries a marker (`bandits.store`): a random *generation* id, given when the key
is created, and a *version*, the number of changes made to that generation (every add is one). A
fresh Redis has no marker, and no restart can bring back a generation id it never saw, so:

* **Detecting a loss.** This replica remembers, per key, the generation it last saw and the highest
  version it saw or wrote. Its adds say so (``add(expect=(gen, version))``) and are refused, with
  nothing applied, when the key has another generation, is gone, or has a *lower* version (rolled
  back to an older snapshot); its loads compare the same way. Either is a detected loss.
* **What this replica knows.** Its view (the totals at version *b*, its *basis*) plus its own
  flushes made after that load. It also keeps its own recent flushes with the version each
  received (its *tail*, see below).

The rule
--------
On a detected loss of generation *g*, the replica calls ``recover`` (one atomic script on the key;
on a Redis Cluster every key is one slot, so nothing spans slots). Of everything below, one outcome:

* **reseeded** — nobody has restored *g* yet: the store adds this replica's view plus its later
  flushes (on top of anything written since the loss by replicas that never saw *g*; replacing the
  key when it was rolled back to an older version of *g*) and records ``g re-seeded by me at b``
  in the key's lineage. Exactly one replica re-seeds one loss, however many find it at once.
* **joined** — another replica re-seeded *g* from its view at basis *b′* (``recover`` answers
  "covered"): everything flushed to *g* up to version *b′* is in it. This replica adds its own
  flushes whose version is above *b′* (``add(join=(g, me))``, applied at most once per replica and
  loss) — nothing else, so nothing is counted twice: its older flushes, and everything other
  replicas flushed, are either in the re-seed or added by their own authors the same way.
* **already** — this replica re-seeded or joined *g* before (a retry after a timeout, say).
* **superseded** — an operator replaced or reset the key on purpose (`sigroute bandit import`,
  `reset`: the store leaves a marker saying so, kept 7 days when no arms are left): nothing is restored.
* **intact** — no loss after all; **empty** — this replica knew nothing to restore.

The outcomes are counted (`take_recoveries`, exported as `sigroute_bandit_store_recoveries_total`)
and every restore is logged as a warning.

Then the replica reloads the key and carries on in the new generation; deltas not yet flushed were
never in the store and are flushed as usual. With `discount_half_life_s`, every epoch is its own key
with its own generation and each is restored the same way (weights are part of the sums, so views
and flushes add exactly as they did before the loss).

The tail: own flushes are kept with their versions so a replica can add back the ones a re-seed
made from another replica's older view lacks. A flush is dropped from the tail only at a load that
found the store intact, once that load's version covers it and `TAIL_KEEP_S` seconds have passed
since it was made (other replicas reload the tenants they serve at every sync and the others every
`IDLE_RELOAD_S`, so their views include it by then), or when more than `TAIL_MAX` flushes are kept
(the oldest covered ones go first). While the store is unreachable nothing is dropped, however long
the outage. Memory: per key, one copy of the view plus the kept deltas (about `TAIL_KEEP_S` /
`sync_interval_s` of them for a busy tenant, none for an idle one).

Limits (what can still be lost)
-------------------------------
* Redis loses its data and every replica that knew a key restarts before the store is back: only
  Redis persistence (AOF) or a snapshot (`sigroute bandit export`) keeps that state.
* Flushes by a replica that is gone (crashed, scaled down, restarted: a new process is a new
  replica that knows nothing) and were made after the view the re-seed was built from (about one
  sync interval, or up to `IDLE_RELOAD_S` for a tenant the re-seeding replica does not serve):
  their author is not there to add them back.
* A re-seed made from a view older than this replica's tail reaches back (more than `TAIL_KEEP_S`
  or `TAIL_MAX` flushes): its older own flushes are not added back; logged and counted in `forgotten`.
* A rollback (Redis restarted from an older RDB/AOF file) is detected only by a replica that saw a
  higher version than the snapshot's, at its next exchange. Adds made to the rolled-back generation
  before that, by replicas that had seen no later version, are replaced by the re-seed; and if
  they were as many as the adds the rollback lost, the version has caught up and the rollback
  goes unnoticed (the loss is then not repaired).
* A reset or import of a key at the moment the store loses it, before every replica has seen it,
  may be undone by a replica that re-seeds from its view of the generation before.

Adds sent again: an add that fails may have been applied all the same (it timed out and Redis ran
it later, e.g. after a pause or a partition). The selector keeps its deltas and sends them again
with later ones; this replica remembers the failed add and sends it first under its own sequence
number (``add(op=(replica, seq))``), which the store applies at most once, then the rest as a new
add. (If Redis lost the key meanwhile and another replica's view, used to re-seed it, already held
that late add, it is counted twice.)

Calls to one `SharedSums` must not overlap (the selector's `sync` runs from one task at a time).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from sigroute.bandits.store import KeyState, Lineage

log = logging.getLogger("sigroute.bandits")

TAIL_KEEP_S = 60.0   # own flushes are kept this long (2 x IDLE_RELOAD_S: every other replica has reloaded since)
TAIL_MAX = 128       # and at most this many per key (the oldest ones the store has shown are dropped first)

__all__ = ["SharedSums", "StoreChanged", "TAIL_KEEP_S", "TAIL_MAX"]


class StoreChanged(RuntimeError):
    """The key changed generation again while this replica was restoring it; retry at the next sync."""


@dataclass
class _Flush:
    version: int                      # the version the add received
    at: float                         # time.monotonic() when it was made
    arms: dict[str, np.ndarray]


@dataclass
class _KeyRecord:
    """What this replica knows of one store key."""

    gen: str | None = None            # generation last seen (None: never seen one)
    version: int = 0                  # highest version of `gen` seen or written by this replica
    view: dict[str, np.ndarray] = field(default_factory=dict)  # totals at the last load ...
    basis: int = 0                    # ... which was at this version
    lineage: tuple[Lineage, ...] = ()
    operator_set: bool = False
    tail: list[_Flush] = field(default_factory=list)  # own flushes into `gen`, oldest first
    forgotten: int = 0                # highest version of an own flush dropped from the tail
    unsure: tuple[int, dict[str, np.ndarray]] | None = None  # an add that failed: maybe applied


def _add_into(total: dict[str, np.ndarray], arms: Mapping[str, np.ndarray]) -> None:
    for arm, vec in arms.items():
        total[arm] = total[arm] + vec if arm in total else np.array(vec, dtype=np.float64)


class SharedSums:
    """One replica's side of a state store: flushes and loads that notice, and repair, a store that
    lost what it held (see the module docstring for the rule)."""

    def __init__(self, replica: str | None = None):
        self.replica = replica or secrets.token_hex(6)
        self._keys: dict[str, _KeyRecord] = {}
        self.recoveries: Counter[str] = Counter()  # outcome -> count, drained by take_recoveries()
        self.forgotten = 0  # own flushes a re-seed lacked but this replica no longer kept
        self._seq = 0       # sequence number of the last add (increasing across keys: never reused)

    # the two operations -------------------------------------------------------------------------
    async def flush(self, store: Any, key: str, deltas: Mapping[str, np.ndarray]) -> None:
        """Add `deltas` to `key`, restoring the key first when the store lost it.

        An add that failed may have been applied all the same (it timed out, and Redis ran it
        later): the caller sends its deltas again with later ones, so the add is remembered and
        sent again first, under its own sequence number, which the store applies at most once;
        only the rest of `deltas` is then added as a new add."""
        rec = self._keys.setdefault(key, _KeyRecord())
        if rec.unsure is not None:
            seq, sent = rec.unsure
            await self._flush_once(store, key, rec, sent, seq)
            rec.unsure = None
            deltas = {arm: vec - sent[arm] if arm in sent else vec for arm, vec in deltas.items()}
            deltas = {arm: vec for arm, vec in deltas.items() if np.any(vec)}
            if not deltas:
                return
        self._seq += 1
        seq = self._seq
        try:
            await self._flush_once(store, key, rec, deltas, seq)
        except BaseException:
            rec.unsure = (seq, {arm: np.array(vec, dtype=np.float64) for arm, vec in deltas.items()})
            raise

    async def _flush_once(self, store: Any, key: str, rec: "_KeyRecord", deltas: Mapping[str, np.ndarray],
                          seq: int) -> None:
        result = await self._add(store, key, rec, deltas, (self.replica, seq))
        if not result.applied:
            await self._recover(store, key, rec)
            result = await self._add(store, key, rec, deltas, (self.replica, seq))
            if not result.applied:
                raise StoreChanged(f"state key {key!r} changed generation again while being restored; "
                                   "its deltas are kept for the next sync")
        if rec.gen != result.gen:  # first flush into a key this replica had not seen a marker of
            rec.gen, rec.version = result.gen, 0
        rec.version = max(rec.version, result.version)
        rec.tail.append(_Flush(result.version, time.monotonic(), {a: np.array(v) for a, v in deltas.items()}))

    async def load(self, store: Any, key: str) -> dict[str, np.ndarray]:
        """The merged totals of `key`, restoring the key first when the store lost it."""
        state: KeyState = await store.read(key)
        rec = self._keys.get(key)
        if rec is not None and rec.gen is not None and (state.gen != rec.gen or state.version < rec.version):
            state = await self._recover(store, key, rec)
        else:
            rec = rec if rec is not None else self._keys.setdefault(key, _KeyRecord())
            self._adopt(rec, state)
        return {arm: vec.copy() for arm, vec in state.arms.items()}

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop what is remembered of keys for which `keep(key)` is false (e.g. past epochs)."""
        for key in [k for k in self._keys if not keep(k)]:
            del self._keys[key]

    def take_recoveries(self) -> dict[str, int]:
        """Recovery outcomes since the last call (for metrics)."""
        out = dict(self.recoveries)
        self.recoveries.clear()
        return out

    # mechanics -------------------------------------------------------------------------------------
    @staticmethod
    async def _add(store: Any, key: str, rec: _KeyRecord, deltas: Mapping[str, np.ndarray], op: tuple[str, int]):
        if rec.gen is None:  # nothing seen yet, so nothing that could have been lost
            return await store.add(key, deltas, op=op)
        return await store.add(key, deltas, expect=(rec.gen, rec.version), op=op)

    def _adopt(self, rec: _KeyRecord, state: KeyState) -> None:
        """Take `state` (read with the key intact, or just restored) as this replica's view."""
        if state.gen != rec.gen:
            rec.gen, rec.version, rec.tail, rec.forgotten = state.gen, 0, [], 0
        rec.version = max(rec.version, state.version)
        rec.view = {arm: vec.copy() for arm, vec in state.arms.items()}
        rec.basis = state.version
        rec.lineage, rec.operator_set = state.lineage, state.operator_set
        old = time.monotonic() - TAIL_KEEP_S
        kept = [f for f in rec.tail if f.version > rec.basis or f.at > old]
        while len(kept) > TAIL_MAX and kept[0].version <= rec.basis:
            kept.pop(0)
        if len(kept) < len(rec.tail):
            still = {id(f) for f in kept}
            rec.forgotten = max([rec.forgotten] + [f.version for f in rec.tail if id(f) not in still])
        rec.tail = kept

    def _known(self, rec: _KeyRecord) -> dict[str, np.ndarray]:
        """The best total this replica knows for its generation: its view and its later flushes."""
        total = {arm: vec.copy() for arm, vec in rec.view.items()}
        for f in rec.tail:
            if f.version > rec.basis:
                _add_into(total, f.arms)
        return total

    async def _recover(self, store: Any, key: str, rec: _KeyRecord) -> KeyState:
        lost = rec.gen
        content = self._known(rec)
        if not content:
            outcome = "empty"  # nothing to restore (this replica knew an empty or deleted key)
        else:
            recovery = await store.recover(key, lost=lost, known_version=rec.version, basis=rec.basis,
                                           content=content, lineage=rec.lineage, operator_set=rec.operator_set,
                                           replica=self.replica)
            outcome = recovery.outcome
            if outcome == "covered":
                outcome = await self._join(store, key, rec, recovery.basis)
        self.recoveries[outcome] += 1
        if outcome in ("reseeded", "joined", "superseded"):
            log.warning("state key %s: the store no longer held generation %s as this replica saw it "
                        "(Redis restarted empty, flushed, rolled back or reset); outcome: %s", key, lost, outcome)
        state: KeyState = await store.read(key)
        rec.gen = None  # whatever is there now is the new starting point
        self._adopt(rec, state)
        return state

    async def _join(self, store: Any, key: str, rec: _KeyRecord, basis: int) -> str:
        """Another replica re-seeded from its view at `basis`: add this replica's later flushes."""
        if basis < rec.forgotten:
            self.forgotten += 1
            log.warning("state key %s: re-seeded from a view (version %d) older than this replica's kept flushes "
                        "(it dropped those up to version %d): its flushes in between are lost", key, basis,
                        rec.forgotten)
        own: dict[str, np.ndarray] = {}
        for f in rec.tail:
            if f.version > basis:
                _add_into(own, f.arms)
        if not own:
            return "joined"
        result = await store.add(key, own, join=(rec.gen, self.replica))
        return "joined" if result.applied else "already"
