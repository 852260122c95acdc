"""Where learning state and pending feedback live: in memory (one process) or in Redis (shared).

Two small protocols, each with a memory and a Redis implementation that behave the same (the same
tests run against both, see tests/test_bandit_stores.py).

Bandit state (`StateStore`)
---------------------------
Selectors keep their learnable state as additive sufficient statistics: one flat float64 vector
of sums per arm (model), grouped under an opaque key chosen by the caller, for example
``"t=acme/d=hard-stem/s=3fa9c1d2"``. Replicas merge by *adding*: each process accumulates deltas,
periodically calls ``add(key, deltas)`` and reloads the merged totals with ``load(key)``.

Guarantees, for both implementations:

* ``add`` is atomic per call: every arm's delta of one call is applied together or not at all;
  concurrent adders (tasks, threads, processes, machines) never lose an update.
* An arm never seen before starts at zeros. A delta whose length differs from the stored vector
  raises `StateShapeError` and nothing of that call is applied.
* Vectors must be one-dimensional and finite (NaN/inf raise `ValueError` before anything is sent).
  Arm names are non-empty and do not start with a NUL character (reserved for the marker below).
* A key is listed (``keys``) and loaded while it has at least one arm: ``remove_arm`` of its last
  arm, ``replace`` with no arms, or ``delete`` leave only its marker, which expires after
  ``tombstone_ttl_s`` (7 days).

Generations: a store can lose what it held (Redis restarted without persistence, ``FLUSHALL``, an
evicted key, a failover to an empty replica, a restart from an older RDB/AOF file) and replicas
must then restore it rather than believe it (`bandits.replica` holds the rule). So every key
carries a *marker*: a random generation id given when the key is created, a version counting the
changes made to that generation, a lineage (earlier generations this one accounts for, at most
16) and an operator flag. ``read`` returns them with the arms (`KeyState`), and:

* ``add(..., expect=(gen, version))`` applies only if the key is still generation `gen` at a version
  no lower than `version`: a replica finds a loss by its add being refused (`AddResult`), nothing
  applied. Without `expect` an add always applies (a new key gets a fresh generation).
* ``recover(key, lost=g, known_version, basis, content, lineage, operator_set, replica)`` restores a
  lost generation in one atomic step: ``"intact"`` when `g` is there at `known_version` or later;
  ``"superseded"`` when an operator replaced or deleted it (or set the key since); ``"already"`` when
  this replica restored or joined it before; ``"covered"`` (with the basis) when another replica
  re-seeded it; otherwise ``"reseeded"``: `content` is added to the key (to what was written since
  the loss; instead of what is there when `g` itself was rolled back) and the lineage records ``g
  re-seeded by replica at basis``, inheriting `lineage` (the replica's view of it).
* ``add(..., join=(g, replica))`` applies only once per replica to a key that re-seeds `g` (and not
  for the replica that re-seeded it): how the others add their own flushes the re-seed lacked.
* ``replace`` (import) and ``delete`` (reset) give the key a new generation whose lineage says the
  old one was *set* on purpose, with the operator flag, so replicas accept them instead of
  restoring what they knew.

Redis layout (`RedisStateStore`): one hash per key, named ``<namespace><key>`` (default namespace
``"sigroute:bandit:"``), with one field per arm whose value is the arm's vector packed as
little-endian float64 (8 bytes a value; the length is the value's size / 8), and the marker in the
field ``"\\x00meta"`` (a NUL byte, then "meta") as JSON ``{"g": generation, "v": version, "l":
[{"g", "h": "reseed"|"set", "b": basis, "by": replica, "j": [joined replicas]}...], "o": 0|1}``.
One key per hash keeps every operation on a single Redis Cluster slot: the marker lives in the
hash it describes, so a node that loses the hash loses the marker with it. No hash tag is needed
(every script touches its one key), so on a cluster keys spread over the primaries by key.

* ``add`` is one Lua script per call. It checks the marker against `expect`/`join`, then every
  arm's stored length (writing nothing on a refusal or mismatch), then, for each arm, decodes the
  stored vector, adds the delta's non-zero entries (sent as packed uint32 indices and float64
  values, so sparse deltas are cheap on the wire), writes the vector back and bumps the version.
  Redis runs scripts atomically, so the multi-arm add is all-or-nothing and concurrent adders (any
  number of processes or machines) never lose an update, without locks. A hash written before
  markers existed is adopted by the first add (it gets a generation).
* ``recover``, ``replace``, ``remove_arm`` and ``delete`` (per key) are one Lua script each;
  ``read``/``load`` one ``HGETALL`` (one round trip, k small bulk strings for k arms, decoded with
  ``np.frombuffer``).
* ``keys``/``delete`` use ``SCAN`` (never ``KEYS``); ``keys`` skips hashes holding only a marker.

Precision: Lua numbers are IEEE doubles, so Redis sums are bit-for-bit what numpy computes for
``stored + delta`` in float64 (the memory store does exactly that): both implementations return
identical values. (``HINCRBYFLOAT`` was rejected: it keeps only 17 digits after the decimal point,
losing precision below 0.1, and one hash field per element makes ``load`` parse thousands of
replies and costs ~10x the memory.)

Cost, measured for 3 arms x 3,000 values on a busy 2-core machine: ``load`` about 0.5 ms; a dense
``add`` about 7 ms of Redis time, a sparse one touching one arm under 1 ms (each touched arm is
decoded and re-encoded whole, so flush accumulated deltas rather than every observation); 24 KB
of Redis memory per arm.

State that ends: every ``add``, ``recover`` and ``replace`` records when it wrote (``written_at``
in `KeyState`; the marker's ``"w"``, Redis server time in unix seconds) and, when the store has an
``idle_ttl_s``, restarts the key's idle TTL (a native ``PEXPIRE`` in the same script; the memory
store drops the key when it passes); reads never do, since replicas reload every tenant they know
periodically. Without ``idle_ttl_s`` keys persist (``PERSIST``). ``delete_idle(key, written_before)``
removes a key as ``delete`` does (leaving the operator marker, so replicas accept it) only if its
last write is older, checked and done in one script (``sigroute bandit gc``). ``server_time()`` is
the clock write times use; ``memory_usage(key)`` what Redis holds for a key (``MEMORY USAGE``).

Snapshots: `export_state` / `import_state` move state between stores (and to and from files) as
``{"format": "sigroute-bandit-state", "version": 1, "keys": {key: {arm: [floats...]}}}``.

Pending feedback (`PendingStore`)
---------------------------------
When the gateway answers a request routed by a learning decision it ``put``s a JSON-able record
(which must hold ``record["tenant"]``, a string) under the request id with a TTL. Feedback for that
id later ``claim``s it: ``"applied"`` the first time (the entry is marked with the feedback's
fingerprint and kept until its TTL ends), ``"duplicate"`` for the same fingerprint again,
``"conflict"`` for a different one, ``"unknown"`` for a missing, expired or other tenant's id (the
three are deliberately indistinguishable). Claims are atomic: of concurrent claims of one id,
exactly one is ``"applied"``. Records come back as fresh copies (they are stored as JSON in both
implementations). ``put`` of an existing id replaces it, fingerprint included.

Implicit feedback (a follow-up turn's verdict, `gateway.implicit`) ``claim_implicit``s a record with
the credit it applied (JSON) and its precedence rank (implicit 1, a judge's verdict 2): ``"applied"``
the first time, ``"replaced"`` when it outranks the credit recorded before (a judge's verdict after
an implicit one; the old credit comes back as ``record["implicit"]``), ``"duplicate"`` when a credit
of the same or a higher rank was already recorded, ``"explicit_first"`` when explicit feedback already claimed it (explicit wins:
nothing is applied), ``"unknown"`` as for ``claim``. A later explicit ``claim`` returns the record
with the implicit credit under ``record["implicit"]``, so the learner can replace it by the explicit
one (`bandits.feedback`: explicit wins over implicit).

Redis layout (`RedisPendingStore`): one hash per request id, ``<namespace><request_id>`` (default
namespace ``"sigroute:pending:"``), fields ``t`` (tenant), ``r`` (record JSON) and, once claimed,
``f`` (fingerprint), ``i`` (an implicit credit's JSON), ``p`` (its rank), with a native key TTL (``PEXPIRE``). ``put`` and ``claim`` are one Lua script each.

Redis down: a ``put`` that cannot reach Redis raises `StoreUnavailable` *and* keeps the record in
the process (at most ``max_unsent``, default 10,000, the oldest dropped first) with its deadline.
``flush_unsent()`` writes kept records with what is left of their TTL (the gateway calls it at every
learning sync) and a ``claim`` of a kept id writes it first, so feedback retried after Redis came
back finds its record. Records whose TTL ended first, or that did not fit, are given up and
reported once by ``take_lost()`` (``{"expired": n, "overflow": m}``) for the gateway to count.
Records stored in a Redis that then restarted empty are gone: their feedback gets ``"unknown"``.
A record kept in a process that exits before Redis returns is lost with it.

`MemoryPendingStore` keeps at most ``max_records`` records: expired records are purged lazily
(oldest-first on every ``put``, fully on ``count`` and whenever the store is full), and when it is
still full the oldest records (by ``put`` time) are dropped, so feedback for them becomes
``"unknown"``.

Opening a store from configuration: `open_state_store(url)` and `open_pending_store(url)` take
``None``/``"memory"`` for memory, ``redis://``, ``rediss://`` or ``unix://`` URLs for one Redis, or
``redis+cluster://host:port[,host:port…]`` for a Redis Cluster (`sigroute._redis` opens the client).
Redis connection failures, timeouts and a cluster slot without a reachable primary raise
`StoreUnavailable` naming the URL (never its password) and the cause. A command that fails with a
connection error is retried ``retries`` times (default 1, so a pooled connection gone stale after a
Redis restart heals by itself); a timeout is never retried, because a timed-out ``add`` may have run
and running it again would count it twice. A caller that gets `StoreUnavailable` from ``add`` should
keep its deltas and try again later, under the same ``op=(replica, seq)``: the key remembers the
last add of each of its 64 most recent replicas (in the marker, field ``"s"``) and does not apply
one it already holds.

A Redis that stops answering without closing its connections (hung, paused, or cut off by a
partition) costs every command its whole ``socket_timeout``. So after a timeout a store fails
fast: for ``hung_hold_s`` (default 1 s) its commands raise `StoreUnavailable` at once without
being sent, then one command at a time tries Redis again (the others still fail at once) until
one is answered. A refused connection (Redis stopped) fails fast by itself and does not trip this.
Redis clients belong to the event loop that first uses them: open stores inside the app's loop.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable
import numpy as np

from sigroute._redis import ACCEPTED_URLS, HungRedis, open_client, redacted_url, run_script_many, url_kind

__all__ = [
    "SNAPSHOT_FORMAT",
    "SNAPSHOT_VERSION",
    "MemoryPendingStore",
    "MemoryStateStore",
    "PendingStore",
    "RedisPendingStore",
    "RedisStateStore",
    "StateShapeError",
    "StateStore",
    "StoreUnavailable",
    "export_state",
    "import_state",
    "open_pending_store",
    "open_state_store",
]

SNAPSHOT_FORMAT = "sigroute-bandit-state"
SNAPSHOT_VERSION = 1

_ACCEPTED_URLS = ACCEPTED_URLS


class StateShapeError(ValueError):
    """An arm's stored vector has another length than the delta (or replacement) given for it."""


class StoreUnavailable(RuntimeError):
    """The store's backend (Redis) cannot be reached; the message names the URL and the cause."""


# --------------------------------------------------------------------------------------------
# Protocols


@dataclass(frozen=True)
class Lineage:
    """An earlier generation of a key that the current generation accounts for.

    ``how`` is ``"reseed"`` (the generation was lost and `by` re-seeded its view of it at version
    ``basis``; ``joined`` are the replicas that have since added their own flushes the re-seed
    lacked) or ``"set"`` (an operator replaced or reset it on purpose: what it held is meant to be
    gone)."""

    gen: str
    how: str
    basis: int = 0
    by: str = ""
    joined: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyState:
    """What `read` finds under a key: the arms' sums and the key's generation marker.

    ``gen`` is None when the key does not exist (never written, or lost with the store); a live key
    always has one. ``version`` counts the changes made to this generation (every ``add`` is one)."""

    arms: dict[str, np.ndarray]
    gen: str | None = None
    version: int = 0
    lineage: tuple[Lineage, ...] = ()
    operator_set: bool = False
    written_at: float | None = None   # unix seconds of the last add, re-seed or replace (None: not recorded)


@dataclass(frozen=True)
class AddResult:
    """Whether an ``add`` was applied, and the key's generation and version afterwards (when it was
    refused: as found)."""

    applied: bool
    gen: str | None
    version: int


@dataclass(frozen=True)
class Recovery:
    """The outcome of `StateStore.recover` (see the module docstring)."""

    outcome: str        # "intact" | "reseeded" | "covered" | "already" | "superseded"
    basis: int = 0      # "covered": the version of the lost generation the re-seed was made from


@runtime_checkable
class StateStore(Protocol):
    """Additive per-arm float64 sums under opaque string keys, each key with a generation marker.
    All methods are coroutines."""

    description: str

    async def add(self, key: str, deltas: Mapping[str, np.ndarray], *, expect: tuple[str, int] | None = None,
                  join: tuple[str, str] | None = None, op: tuple[str, int] | None = None) -> AddResult:
        """Atomically add each arm's delta to its stored sums (unseen arms start at zeros).

        ``expect=(gen, version)``: apply only if the key's generation is `gen` and its version is at
        least `version`. ``join=(lost_gen, replica)``: apply only if the key re-seeds `lost_gen` and
        `replica` has neither re-seeded nor joined it yet (then it is recorded as joined).
        ``op=(replica, seq)``: the add's identity, `seq` increasing per replica and key. An add whose
        seq is not above the last one the key's content holds from that replica is not applied
        again: the result says applied, with the version that add received (sending again an add
        that timed out, and that Redis may have run all the same, counts it once)."""

    async def load(self, key: str) -> dict[str, np.ndarray]:
        """Every arm's sums under `key` (fresh arrays), or {} when nothing is stored."""

    async def read(self, key: str) -> KeyState:
        """The arms' sums together with the key's generation, version and lineage (one atomic read)."""

    async def recover(self, key: str, *, lost: str, known_version: int, basis: int,
                      content: Mapping[str, np.ndarray], lineage: tuple[Lineage, ...] = (),
                      operator_set: bool = False, replica: str) -> Recovery:
        """Restore generation `lost` of `key`, which this replica saw up to `known_version`, from
        `content` (its view at version `basis` plus its own later flushes) unless it is intact,
        already restored or superseded. Atomic: of concurrent recoveries of one loss, one re-seeds."""

    async def replace(self, key: str, arms: Mapping[str, np.ndarray]) -> None:
        """Overwrite `key` entirely with `arms` (used by import), as a new generation marked as set
        on purpose; no arms removes the key (leaving that marker)."""

    async def remove_arm(self, key: str, arm: str) -> bool:
        """Forget one arm; False when it was not stored."""

    async def keys(self, prefix: str = "") -> list[str]:
        """Stored keys starting with `prefix`, sorted."""

    async def delete(self, prefix: str = "") -> int:
        """Remove every key starting with `prefix` ("" = all of this store), leaving markers that say
        so; returns how many keys had arms."""

    async def ping(self) -> None:
        """Raise `StoreUnavailable` when the backend cannot be reached."""

    async def aclose(self) -> None:
        """Release connections. The store must not be used afterwards."""


@runtime_checkable
class PendingStore(Protocol):
    """Records awaiting quality feedback, by request id, with a TTL. All methods are coroutines."""

    description: str

    async def put(self, request_id: str, record: dict, ttl_s: float) -> None:
        """Store `record` (JSON-able, with a string `record["tenant"]`) for `ttl_s` seconds."""

    async def claim(self, request_id: str, tenant: str, feedback_fingerprint: str) -> tuple[str, dict | None]:
        """("applied" | "duplicate" | "conflict", record) or ("unknown", None); atomic."""

    async def claim_implicit(self, request_id: str, tenant: str, credit: str, rank: int = 1) -> tuple[str, dict | None]:
        """Record a non-explicit credit (JSON) of precedence `rank` (implicit 1, judge 2): ("applied" |
        "replaced" | "duplicate" | "explicit_first", record) or ("unknown", None); atomic. A credit of a
        higher rank than the one recorded replaces it ("replaced": the old one is record["implicit"]);
        an equal or lower one is a "duplicate". An explicit `claim` afterwards sees the credit
        recorded as record["implicit"]."""

    async def count(self) -> int:
        """Live (unexpired) records."""

    async def flush_unsent(self) -> int:
        """Write records whose `put` failed while the backend was unreachable (see the module
        docstring); returns how many were written. Raises `StoreUnavailable` if it still is."""

    def take_lost(self) -> dict[str, int]:
        """Records given up since the last call, by reason ("expired", "overflow")."""

    async def aclose(self) -> None:
        """Release connections. The store must not be used afterwards."""


# --------------------------------------------------------------------------------------------
# Validation shared by both implementations


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"a state key must be a non-empty string, got {key!r}")


def _as_vector(key: str, arm: str, values: Any) -> np.ndarray:
    if not isinstance(arm, str) or not arm:
        raise ValueError(f"arm names must be non-empty strings, got {arm!r} under key {key!r}")
    if arm.startswith("\x00"):
        raise ValueError(f"arm names may not start with a NUL character (reserved), got {arm!r} under key {key!r}")
    try:
        vector = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"arm {arm!r} under key {key!r}: values must be numbers ({exc})") from None
    if vector.ndim != 1:
        raise ValueError(f"arm {arm!r} under key {key!r}: expected a flat vector, got shape {vector.shape}")
    if not np.isfinite(vector).all():
        raise ValueError(f"arm {arm!r} under key {key!r}: values must be finite (found NaN or infinity)")
    return vector


def _as_vectors(key: str, arms: Mapping[str, Any]) -> dict[str, np.ndarray]:
    _check_key(key)
    return {arm: _as_vector(key, arm, values) for arm, values in arms.items()}


def _shape_error(key: str, arm: str, stored: int, given: int) -> StateShapeError:
    return StateShapeError(
        f"arm {arm!r} under key {key!r} has {stored} stored values but the delta has {given}; "
        f"nothing was applied (the model's feature layout changed? remove the arm or the key first)")


_redacted = redacted_url


def _url_kind(url: str | None) -> str:
    kind = url_kind(url)
    return "redis" if kind == "cluster" else kind


# --------------------------------------------------------------------------------------------
# Generations: the marker every key carries (the same rules in Python for memory, in Lua for Redis)

META_FIELD = "\x00meta"          # the hash field holding a key's marker; arm names never start with NUL
MAX_LINEAGE = 16                 # earlier generations remembered per key (most recent kept)
TOMBSTONE_TTL_S = 7 * 24 * 3600.0  # how long a deleted key's marker stays to tell replicas it was meant


def new_generation() -> str:
    """A fresh generation id (random: two stores, or one store before and after a loss, never share one)."""
    return secrets.token_hex(8)


def _meta(gen: str, *, lineage: list[dict] | None = None, operator: bool = False) -> dict:
    return {"g": gen, "v": 0, "l": lineage or [], "o": 1 if operator else 0, "w": int(time.time())}


def _written_at(meta: dict | None) -> float | None:
    written = (meta or {}).get("w")
    return float(written) if isinstance(written, (int, float)) else None


def _parse_meta(raw: str | bytes | None) -> dict | None:
    if raw is None:
        return None
    meta = json.loads(raw)
    lineage = meta.get("l") or []  # Lua's cjson writes an empty list as {}
    meta["l"] = [dict(e, j=list(e.get("j") or [])) for e in (lineage if isinstance(lineage, list) else [])]
    return meta


def _lineage_out(meta: dict | None) -> tuple[Lineage, ...]:
    if meta is None:
        return ()
    return tuple(Lineage(gen=e["g"], how=e["h"], basis=int(e.get("b") or 0), by=e.get("by") or "",
                         joined=tuple(e.get("j") or ())) for e in meta["l"])


def _lineage_in(lineage: tuple[Lineage, ...] | list) -> list[dict]:
    return [{"g": e.gen, "h": e.how, "b": int(e.basis), "by": e.by, "j": list(e.joined)} for e in lineage]


def _find(lineage: list[dict], gen: str) -> dict | None:
    return next((e for e in lineage if e["g"] == gen), None)


MAX_OPS = 64   # replicas whose last add a key remembers (the most recent ones)


def _check_op(op: tuple[str, int] | None) -> None:
    if op is not None and (not isinstance(op[0], str) or not op[0] or isinstance(op[1], bool)
                           or not isinstance(op[1], int) or op[1] < 1):
        raise ValueError(f"op must be (replica, seq) with a non-empty replica id and seq >= 1, got {op!r}")


def _op_done(meta: dict | None, op: tuple[str, int] | None) -> int | None:
    """The version an add received if the key's content already holds it (else None)."""
    if op is None or meta is None:
        return None
    last = (meta.get("s") or {}).get(op[0])
    return int(last[1]) if last is not None and last[0] >= op[1] else None


def _record_op(meta: dict, op: tuple[str, int]) -> None:
    ops = meta.setdefault("s", {})
    ops[op[0]] = [op[1], meta["v"]]
    if len(ops) > MAX_OPS:
        del ops[min(ops, key=lambda by: ops[by][1])]


def _merge_lineage(*lists: list[dict]) -> list[dict]:
    """Entries of every list, one per generation (their joined replicas united), the last MAX_LINEAGE."""
    out: list[dict] = []
    index: dict[str, dict] = {}
    for entries in lists:
        for e in entries:
            seen = index.get(e["g"])
            if seen is None:
                seen = index[e["g"]] = {"g": e["g"], "h": e["h"], "b": e["b"], "by": e["by"], "j": []}
                out.append(seen)
            seen["j"].extend(r for r in e["j"] if r not in seen["j"])
    return out[-MAX_LINEAGE:]


def _refused(meta: dict | None, expect: tuple[str, int] | None, join: tuple[str, str] | None) -> bool:
    """Whether an add with `expect`/`join` must not be applied to a key marked `meta`."""
    if expect is not None:
        gen, version = expect
        return meta is None or meta["g"] != gen or meta["v"] < version
    if join is not None:
        lost, replica = join
        entry = _find(meta["l"], lost) if meta is not None else None
        return entry is None or entry["h"] != "reseed" or entry["by"] == replica or replica in entry["j"]
    return False


def _recovery_decision(meta: dict | None, lost: str, known_version: int, replica: str) -> Recovery | None:
    """The outcome of a recovery that must not re-seed, or None when this replica should re-seed."""
    if meta is not None and meta["g"] == lost:
        return Recovery("intact") if meta["v"] >= known_version else None  # lower: rolled back
    entry = _find(meta["l"], lost) if meta is not None else None
    if entry is not None:
        if entry["h"] != "reseed":
            return Recovery("superseded")
        if entry["by"] == replica or replica in entry["j"]:
            return Recovery("already")
        return Recovery("covered", basis=int(entry["b"]))
    if meta is not None and meta["o"]:
        return Recovery("superseded")  # an operator set this state after the loss: it wins
    return None


def _check_expect_join(expect: Any, join: Any) -> None:
    if expect is not None and join is not None:
        raise ValueError("add takes expect or join, not both")
    if expect is not None and not (isinstance(expect, tuple) and len(expect) == 2 and isinstance(expect[0], str)
                                   and isinstance(expect[1], int)):
        raise ValueError(f"expect must be (generation, version), got {expect!r}")
    if join is not None and not (isinstance(join, tuple) and len(join) == 2 and all(isinstance(p, str) and p
                                                                                   for p in join)):
        raise ValueError(f"join must be (lost generation, replica id), got {join!r}")


# --------------------------------------------------------------------------------------------
# Bandit state: memory


@dataclass
class _MemoryKey:
    arms: dict[str, np.ndarray]
    meta: dict
    expires: float | None = None  # deleted keys (markers only) expire


class MemoryStateStore:
    """In-process state. Safe for asyncio tasks and threads (a lock guards every operation)."""

    description = "memory"

    def __init__(self, *, tombstone_ttl_s: float = TOMBSTONE_TTL_S, idle_ttl_s: float | None = None) -> None:
        self._data: dict[str, _MemoryKey] = {}
        self._lock = threading.Lock()
        self.tombstone_ttl_s = tombstone_ttl_s
        self.idle_ttl_s = idle_ttl_s

    def _written(self, entry: _MemoryKey) -> None:
        """An add, re-seed or replace: the key's idle time starts again."""
        entry.meta["w"] = int(time.time())
        entry.expires = time.monotonic() + self.idle_ttl_s if self.idle_ttl_s else None

    def _get(self, key: str) -> _MemoryKey | None:
        entry = self._data.get(key)
        if entry is not None and entry.expires is not None and entry.expires <= time.monotonic():
            del self._data[key]
            return None
        return entry

    def _bury(self, key: str, entry: _MemoryKey) -> None:
        """No arms left: keep only the marker, for `tombstone_ttl_s`."""
        entry.arms = {}
        entry.expires = time.monotonic() + self.tombstone_ttl_s

    async def add(self, key: str, deltas: Mapping[str, np.ndarray], *, expect: tuple[str, int] | None = None,
                  join: tuple[str, str] | None = None, op: tuple[str, int] | None = None) -> AddResult:
        vectors = _as_vectors(key, deltas)
        _check_expect_join(expect, join)
        _check_op(op)
        with self._lock:
            entry = self._get(key)
            meta = entry.meta if entry is not None else None
            done = _op_done(meta, op)
            if done is not None:
                return AddResult(True, meta["g"], done)
            if not vectors or _refused(meta, expect, join):
                return AddResult(False, meta and meta["g"], meta["v"] if meta else 0)
            stored = entry.arms if entry is not None else {}
            for arm, delta in vectors.items():
                current = stored.get(arm)
                if current is not None and current.shape != delta.shape:
                    raise _shape_error(key, arm, current.size, delta.size)
            if entry is None:
                entry = self._data[key] = _MemoryKey({}, _meta(new_generation()))
            for arm, delta in vectors.items():
                if arm in entry.arms:
                    entry.arms[arm] = entry.arms[arm] + delta
                else:
                    entry.arms[arm] = delta.copy()
            entry.meta["v"] += 1
            self._written(entry)
            if join is not None:
                _find(entry.meta["l"], join[0])["j"].append(join[1])
            if op is not None:
                _record_op(entry.meta, op)
            return AddResult(True, entry.meta["g"], entry.meta["v"])

    async def load(self, key: str) -> dict[str, np.ndarray]:
        return (await self.read(key)).arms

    async def read(self, key: str) -> KeyState:
        _check_key(key)
        with self._lock:
            entry = self._get(key)
            if entry is None:
                return KeyState({})
            meta = entry.meta
            return KeyState({arm: vector.copy() for arm, vector in entry.arms.items()}, meta["g"], meta["v"],
                            _lineage_out(meta), bool(meta["o"]), _written_at(meta))

    async def recover(self, key: str, *, lost: str, known_version: int, basis: int,
                      content: Mapping[str, np.ndarray], lineage: tuple[Lineage, ...] = (),
                      operator_set: bool = False, replica: str) -> Recovery:
        vectors = _as_vectors(key, content)
        mine = _lineage_in(lineage)
        with self._lock:
            entry = self._get(key)
            decided = _recovery_decision(entry.meta if entry is not None else None, lost, known_version, replica)
            if decided is not None:
                return decided
            if entry is not None and entry.meta["g"] == lost:  # rolled back: the replica's view replaces it
                entry = None
            if entry is not None:  # a newer generation (fresh adds since the loss): add on top
                for arm, vector in vectors.items():
                    current = entry.arms.get(arm)
                    if current is not None and current.shape != vector.shape:
                        raise _shape_error(key, arm, current.size, vector.size)
                base = entry.meta["l"]
            else:
                entry = _MemoryKey({}, _meta(new_generation(), operator=operator_set))
                base = []
            for arm, vector in vectors.items():
                entry.arms[arm] = entry.arms[arm] + vector if arm in entry.arms else vector.copy()
            entry.meta["l"] = _merge_lineage(base, mine, [{"g": lost, "h": "reseed", "b": int(basis), "by": replica,
                                                           "j": []}])
            entry.meta["v"] += 1
            self._written(entry)
            self._data[key] = entry
            return Recovery("reseeded")

    async def replace(self, key: str, arms: Mapping[str, np.ndarray]) -> None:
        vectors = _as_vectors(key, arms)
        with self._lock:
            self._set(key, vectors)

    def _set(self, key: str, vectors: dict[str, np.ndarray]) -> None:
        old = self._get(key)
        lineage = [] if old is None else [{"g": old.meta["g"], "h": "set", "b": old.meta["v"], "by": "", "j": []}]
        entry = self._data[key] = _MemoryKey({arm: v.copy() for arm, v in vectors.items()},
                                             _meta(new_generation(), lineage=lineage, operator=True))
        if not vectors:
            self._bury(key, entry)
        else:
            self._written(entry)

    async def delete_idle(self, key: str, written_before: float) -> int:
        """Delete `key` (as `delete` does: a marker stays, so replicas do not restore it) only if its
        last write was before `written_before` (unix seconds); the arms it had (0: kept)."""
        _check_key(key)
        with self._lock:
            entry = self._get(key)
            written = _written_at(entry.meta) if entry is not None else None
            if entry is None or not entry.arms or written is None or written >= written_before:
                return 0
            had = len(entry.arms)
            self._set(key, {})
            return had

    async def server_time(self) -> float:
        return time.time()

    async def memory_usage(self, key: str) -> int | None:
        return None   # not measured in memory

    async def remove_arm(self, key: str, arm: str) -> bool:
        _check_key(key)
        with self._lock:
            entry = self._get(key)
            if entry is None or arm not in entry.arms:
                return False
            del entry.arms[arm]
            entry.meta["v"] += 1
            if not entry.arms:
                self._bury(key, entry)
            return True

    async def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in list(self._data) if k.startswith(prefix) and (e := self._get(k)) and e.arms)

    async def delete(self, prefix: str = "") -> int:
        with self._lock:
            doomed = [k for k in list(self._data) if k.startswith(prefix) and (e := self._get(k)) and e.arms]
            for k in doomed:
                self._set(k, {})
            return len(doomed)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return "MemoryStateStore()"


# --------------------------------------------------------------------------------------------
# Redis plumbing shared by both Redis stores


def _glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so `text` matches literally in SCAN MATCH."""
    for ch in "\\*?[]^":
        text = text.replace(ch, "\\" + ch)
    return text


class _RedisBase:
    """A redis.asyncio client whose connection failures surface as `StoreUnavailable`."""

    def __init__(self, url: str, namespace: str, *, socket_timeout: float, connect_timeout: float,
                 retries: int, decode_responses: bool, hung_hold_s: float = 1.0) -> None:
        if _url_kind(url) != "redis":
            raise ValueError(f"not a Redis URL: {_redacted(url)!r}; use {_ACCEPTED_URLS}")
        if not isinstance(namespace, str):
            raise ValueError(f"namespace must be a string, got {namespace!r}")
        self.namespace = namespace
        self.description = _redacted(url)
        self._hung = HungRedis(hung_hold_s)
        # Retry only connection errors (a stale pooled connection after a Redis restart, a cluster
        # node gone), never timeouts: a timed-out `add` may have run, and running it twice double-counts.
        self._redis = open_client(url, decode_responses=decode_responses, socket_timeout=socket_timeout,
                                  connect_timeout=connect_timeout, retries=retries, backoff_cap=0.5,
                                  backoff_base=0.05)

    def _guard(self, operation: str):
        return self._hung.guard(StoreUnavailable, f"Redis at {self.description} is unavailable ({operation})",
                                "check that redis-server is running there and that the URL is right")

    async def _scan(self, pattern: str) -> set[str]:
        found: set[str] = set()  # SCAN may return a key more than once
        async for name in self._redis.scan_iter(match=pattern, count=1000):
            found.add(name.decode() if isinstance(name, bytes) else name)
        return found

    async def ping(self) -> None:
        with self._guard("ping"):
            await self._redis.ping()

    async def aclose(self) -> None:
        close = getattr(self._redis, "aclose", None) or self._redis.close
        await close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r}, namespace={self.namespace!r})"


# --------------------------------------------------------------------------------------------
# Bandit state: Redis

# Shared by every state script. A key's marker is the JSON object {g, v, l, o} in the hash field
# "\0meta" (see the module docstring). Arms travel as ARGV[p] = n_arms, then per arm: name, length,
# the delta's non-zero indices (uint32 little-endian) and values (float64 little-endian).
# `check_arms` verifies every arm's stored length and writes nothing; `apply_arms` decodes each
# touched vector, adds in Lua numbers (IEEE doubles, exactly like numpy's float64 `+`) and writes it
# back. `struct` and `unpack` work in chunks because Lua's C stack holds at most a few thousand values.
_LUA_PRELUDE = r"""
if redis.replicate_commands then redis.replicate_commands() end
local META = '\0meta'
local CHUNK = 512
local MAX_LINEAGE = 16
local MAX_OPS = 64
local function decode(blob, fmt, size, n)
  local out = {}
  for start = 0, n - 1, CHUNK do
    local m = math.min(CHUNK, n - start)
    local part = {struct.unpack('<' .. string.rep(fmt, m), blob, size * start + 1)}
    for j = 1, m do out[start + j] = part[j] end
  end
  return out
end
local function encode(values, n)
  local parts = {}
  for start = 0, n - 1, CHUNK do
    local m = math.min(CHUNK, n - start)
    parts[#parts + 1] = struct.pack('<' .. string.rep('d', m), unpack(values, start + 1, start + m))
  end
  return table.concat(parts)
end
local function check_arms(key, p)
  for a = 0, tonumber(ARGV[p]) - 1 do
    local q = p + 1 + 4 * a
    local stored = redis.call('HGET', key, ARGV[q])
    if stored and #stored ~= 8 * tonumber(ARGV[q + 1]) then
      return {'shape', ARGV[q], tostring(#stored / 8)}
    end
  end
  return nil
end
local function apply_arms(key, p)
  for a = 0, tonumber(ARGV[p]) - 1 do
    local q = p + 1 + 4 * a
    local arm, n = ARGV[q], tonumber(ARGV[q + 1])
    local nnz = #ARGV[q + 2] / 4
    local stored = redis.call('HGET', key, arm)
    if nnz > 0 then
      local sums
      if stored then
        sums = decode(stored, 'd', 8, n)
      else
        sums = {}
        for i = 1, n do sums[i] = 0 end
      end
      local indices = decode(ARGV[q + 2], 'I4', 4, nnz)
      local deltas = decode(ARGV[q + 3], 'd', 8, nnz)
      for j = 1, nnz do
        local i = indices[j] + 1
        sums[i] = sums[i] + deltas[j]
      end
      redis.call('HSET', key, arm, encode(sums, n))
    elseif not stored then
      redis.call('HSET', key, arm, string.rep('\0', 8 * n))
    end
  end
end
local function get_meta(key)
  local raw = redis.call('HGET', key, META)
  if not raw then return nil end
  local meta = cjson.decode(raw)
  if type(meta.l) ~= 'table' then meta.l = {} end
  return meta
end
local function put_meta(key, meta)
  redis.call('HSET', key, META, cjson.encode(meta))
end
-- An add, re-seed or replace: record when (meta.w, Redis server time) and restart the key's idle
-- TTL (the last argument, in ms; 0: no TTL, the key persists).
local function written(key, meta)
  meta.w = tonumber(redis.call('TIME')[1])
  put_meta(key, meta)
  local idle = tonumber(ARGV[#ARGV])
  if idle and idle > 0 then redis.call('PEXPIRE', key, idle) else redis.call('PERSIST', key) end
end
local function new_meta(gen, operator, lineage)
  return {g = gen, v = 0, o = operator, l = lineage or {}}
end
local function has(list, x)
  for _, y in ipairs(list or {}) do if y == x then return true end end
  return false
end
local function find(lineage, gen)
  for _, e in ipairs(lineage or {}) do if e.g == gen then return e end end
  return nil
end
local function merge(...)
  local out, index = {}, {}
  for _, entries in ipairs({...}) do
    for _, e in ipairs(entries) do
      local seen = index[e.g]
      if not seen then
        seen = {g = e.g, h = e.h, b = e.b, by = e.by, j = {}}
        index[e.g] = seen
        out[#out + 1] = seen
      end
      for _, r in ipairs(e.j or {}) do
        if not has(seen.j, r) then seen.j[#seen.j + 1] = r end
      end
    end
  end
  while #out > MAX_LINEAGE do table.remove(out, 1) end
  return out
end
local function n_arms(key, meta)
  return redis.call('HLEN', key) - (meta and 1 or 0)
end
"""

# KEYS[1] = the key's hash. ARGV[1] = mode ('any' | 'expect' | 'join'), ARGV[2] = the generation
# to give a key that has none, ARGV[3], ARGV[4] = expected generation and version ('expect') or
# lost generation and replica id ('join'), ARGV[5...] = arms. Returns {'ok', gen, version},
# {'refused', gen, version} or {'shape', arm, stored_length}.
_ADD_LUA = _LUA_PRELUDE + r"""
local key, mode = KEYS[1], ARGV[1]
local meta = get_meta(key)
local op_by, op_seq = ARGV[5], tonumber(ARGV[6])
if op_by ~= '' and meta and meta.s and meta.s[op_by] and meta.s[op_by][1] >= op_seq then
  return {'ok', meta.g, meta.s[op_by][2]}  -- this add is in the content already (sent again after a timeout)
end
local entry
if mode == 'expect' then
  if not meta or meta.g ~= ARGV[3] or meta.v < tonumber(ARGV[4]) then
    return {'refused', meta and meta.g or '', meta and meta.v or 0}
  end
elseif mode == 'join' then
  entry = meta and find(meta.l, ARGV[3])
  if not entry or entry.h ~= 'reseed' or entry.by == ARGV[4] or has(entry.j, ARGV[4]) then
    return {'refused', meta and meta.g or '', meta and meta.v or 0}
  end
end
local bad = check_arms(key, 7)
if bad then return bad end
apply_arms(key, 7)
if not meta then meta = new_meta(ARGV[2], 0) end  -- a new key (or one written before markers existed)
meta.v = meta.v + 1
if entry then entry.j[#entry.j + 1] = ARGV[4] end
if op_by ~= '' then  -- remember the last add of each replica (the MAX_OPS most recent replicas)
  meta.s = meta.s or {}
  meta.s[op_by] = {op_seq, meta.v}
  local count, oldest, oldest_v = 0, nil, nil
  for by, last in pairs(meta.s) do
    count = count + 1
    if not oldest_v or last[2] < oldest_v then oldest, oldest_v = by, last[2] end
  end
  if count > MAX_OPS then meta.s[oldest] = nil end
end
written(key, meta)
return {'ok', meta.g, meta.v}
"""

# KEYS[1] = the key's hash. ARGV[1] = lost generation, ARGV[2] = the version the replica knew of
# it, ARGV[3] = basis (its view's version), ARGV[4] = replica id, ARGV[5] = a new generation,
# ARGV[6] = the lineage of the replica's view (JSON), ARGV[7] = its operator flag (0/1),
# ARGV[8...] = the content to re-seed. Returns {'intact'}, {'superseded'}, {'already'},
# {'covered', basis}, {'reseeded', gen, version} or {'shape', arm, stored_length}.
_RECOVER_LUA = _LUA_PRELUDE + r"""
local key, lost, known, me = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[4]
local meta = get_meta(key)
if meta and meta.g == lost then
  if meta.v >= known then return {'intact'} end
  redis.call('DEL', key)  -- rolled back to an older snapshot: the replica's view replaces it
  meta = nil
else
  local entry = meta and find(meta.l, lost)
  if entry then
    if entry.h ~= 'reseed' then return {'superseded'} end
    if entry.by == me or has(entry.j, me) then return {'already'} end
    return {'covered', entry.b}
  end
  if meta and meta.o == 1 then return {'superseded'} end
end
local bad = check_arms(key, 8)
if bad then return bad end
apply_arms(key, 8)
local base = {}
if meta then base = meta.l else meta = new_meta(ARGV[5], tonumber(ARGV[7])) end
meta.l = merge(base, cjson.decode(ARGV[6]), {{g = lost, h = 'reseed', b = tonumber(ARGV[3]), by = me, j = {}}})
meta.v = meta.v + 1
written(key, meta)
return {'reseeded', meta.g, meta.v}
"""

# KEYS[1] = the key's hash. ARGV[1] = the new generation, ARGV[2] = marker TTL (ms) when no arms
# are given, ARGV[3] = '1' to leave a key without arms alone, ARGV[4] = n_arms, then name, blob
# pairs. Returns the number of arms the key had.
_SET_LUA = _LUA_PRELUDE + r"""
local key = KEYS[1]
local meta = get_meta(key)
local had = n_arms(key, meta)
if had == 0 and ARGV[3] == '1' then return 0 end
local lineage = {}
if meta then lineage = {{g = meta.g, h = 'set', b = meta.v, by = '', j = {}}} end
redis.call('DEL', key)
local n = tonumber(ARGV[4])
for a = 0, n - 1 do redis.call('HSET', key, ARGV[5 + 2 * a], ARGV[6 + 2 * a]) end
if n == 0 then
  put_meta(key, new_meta(ARGV[1], 1, lineage))
  redis.call('PEXPIRE', key, ARGV[2])
else
  written(key, new_meta(ARGV[1], 1, lineage))
end
return had
"""

# KEYS[1] = the key's hash. ARGV[1] = the new generation, ARGV[2] = marker TTL (ms), ARGV[3] =
# cutoff (unix seconds). Deletes the key as _SET_LUA with no arms does, only if it has arms and its
# last write (meta.w) is before the cutoff. Returns the number of arms removed.
_DELETE_IDLE_LUA = _LUA_PRELUDE + r"""
local key = KEYS[1]
local meta = get_meta(key)
if not meta or not meta.w or meta.w >= tonumber(ARGV[3]) then return 0 end
local had = n_arms(key, meta)
if had == 0 then return 0 end
local lineage = {{g = meta.g, h = 'set', b = meta.v, by = '', j = {}}}
redis.call('DEL', key)
put_meta(key, new_meta(ARGV[1], 1, lineage))
redis.call('PEXPIRE', key, ARGV[2])
return had
"""

# KEYS[1] = the key's hash, ARGV[1] = the arm, ARGV[2] = marker TTL (ms). Returns 1 if removed.
_REMOVE_ARM_LUA = _LUA_PRELUDE + r"""
local key = KEYS[1]
local meta = get_meta(key)
if redis.call('HDEL', key, ARGV[1]) == 0 then return 0 end
if meta then
  meta.v = meta.v + 1
  put_meta(key, meta)
  if n_arms(key, meta) == 0 then redis.call('PEXPIRE', key, ARGV[2]) end
end
return 1
"""

_F64 = np.dtype("<f8")
_U32 = np.dtype("<u4")
_META_BYTES = META_FIELD.encode()


def _arm_args(key: str, vectors: Mapping[str, np.ndarray]) -> list[str | bytes]:
    args: list[str | bytes] = [str(len(vectors))]
    for arm, delta in vectors.items():
        if delta.size >= 2**32:
            raise ValueError(f"arm {arm!r} under key {key!r}: vectors are limited to 2**32 - 1 values")
        nonzero = np.flatnonzero(delta)
        args += [arm, str(delta.size), nonzero.astype(_U32).tobytes(), delta[nonzero].astype(_F64).tobytes()]
    return args


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStateStore(_RedisBase):
    """Bandit state shared through Redis (see the module docstring for layout and guarantees)."""

    def __init__(self, url: str, namespace: str = "sigroute:bandit:", *, socket_timeout: float = 5.0,
                 connect_timeout: float = 2.0, retries: int = 1, tombstone_ttl_s: float = TOMBSTONE_TTL_S,
                 hung_hold_s: float = 1.0, idle_ttl_s: float | None = None) -> None:
        super().__init__(url, namespace, socket_timeout=socket_timeout, connect_timeout=connect_timeout,
                         retries=retries, decode_responses=False, hung_hold_s=hung_hold_s)
        self.tombstone_ttl_s = tombstone_ttl_s
        self.idle_ttl_s = idle_ttl_s
        self._add_script = self._redis.register_script(_ADD_LUA)
        self._recover_script = self._redis.register_script(_RECOVER_LUA)
        self._set_script = self._redis.register_script(_SET_LUA)
        self._remove_arm_script = self._redis.register_script(_REMOVE_ARM_LUA)
        self._delete_idle_script = self._redis.register_script(_DELETE_IDLE_LUA)

    def _name(self, key: str) -> str:
        return self.namespace + key

    @property
    def _tombstone_ms(self) -> str:
        return str(max(1, round(self.tombstone_ttl_s * 1000)))

    @property
    def _idle_ms(self) -> str:
        """The idle TTL sent as the last argument of every writing script ("0": none)."""
        return str(max(1, round(self.idle_ttl_s * 1000))) if self.idle_ttl_s else "0"

    def _shape_reply(self, key: str, result: list, vectors: Mapping[str, np.ndarray]) -> None:
        if _text(result[0]) == "shape":
            arm, stored = _text(result[1]), _text(result[2])
            raise _shape_error(key, arm, int(float(stored)), vectors[arm].size)

    async def add(self, key: str, deltas: Mapping[str, np.ndarray], *, expect: tuple[str, int] | None = None,
                  join: tuple[str, str] | None = None, op: tuple[str, int] | None = None) -> AddResult:
        vectors = _as_vectors(key, deltas)
        _check_expect_join(expect, join)
        _check_op(op)
        if not vectors:
            return AddResult(False, None, 0)
        if expect is not None:
            head = ["expect", new_generation(), expect[0], str(expect[1])]
        elif join is not None:
            head = ["join", new_generation(), join[0], join[1]]
        else:
            head = ["any", new_generation(), "", "0"]
        head += [op[0], str(op[1])] if op is not None else ["", "0"]
        with self._guard(f"add to {key!r}"):
            result = await self._add_script(keys=[self._name(key)],
                                            args=head + _arm_args(key, vectors) + [self._idle_ms])
        self._shape_reply(key, result, vectors)
        gen = _text(result[1]) or None
        return AddResult(_text(result[0]) == "ok", gen, int(result[2]))

    async def load(self, key: str) -> dict[str, np.ndarray]:
        return (await self.read(key)).arms

    async def read(self, key: str) -> KeyState:
        _check_key(key)
        with self._guard(f"load {key!r}"):
            fields: dict[bytes, bytes] = await self._redis.hgetall(self._name(key))
        meta = _parse_meta(fields.pop(_META_BYTES, None))
        arms = {arm.decode(): np.frombuffer(blob, dtype=_F64).astype(np.float64) for arm, blob in fields.items()}
        if meta is None:
            return KeyState(arms)
        return KeyState(arms, meta["g"], int(meta["v"]), _lineage_out(meta), bool(meta["o"]), _written_at(meta))

    async def recover(self, key: str, *, lost: str, known_version: int, basis: int,
                      content: Mapping[str, np.ndarray], lineage: tuple[Lineage, ...] = (),
                      operator_set: bool = False, replica: str) -> Recovery:
        vectors = _as_vectors(key, content)
        mine = _lineage_in(lineage)
        args = [lost, str(int(known_version)), str(int(basis)), replica, new_generation(),
                json.dumps(mine) if mine else "[]", "1" if operator_set else "0"] + _arm_args(key, vectors) + [
                    self._idle_ms]
        with self._guard(f"recover {key!r}"):
            result = await self._recover_script(keys=[self._name(key)], args=args)
        self._shape_reply(key, result, vectors)
        outcome = _text(result[0])
        return Recovery(outcome, basis=int(result[1]) if outcome == "covered" else 0)

    async def replace(self, key: str, arms: Mapping[str, np.ndarray]) -> None:
        vectors = _as_vectors(key, arms)
        args: list[str | bytes] = [new_generation(), self._tombstone_ms, "0", str(len(vectors))]
        for arm, vector in vectors.items():
            args += [arm, vector.astype(_F64).tobytes()]
        args.append(self._idle_ms)
        with self._guard(f"replace {key!r}"):
            await self._set_script(keys=[self._name(key)], args=args)

    async def remove_arm(self, key: str, arm: str) -> bool:
        _check_key(key)
        with self._guard(f"remove arm {arm!r} of {key!r}"):
            return bool(await self._remove_arm_script(keys=[self._name(key)], args=[arm, self._tombstone_ms]))

    async def delete_idle(self, key: str, written_before: float) -> int:
        """Delete `key` (as `delete` does: a marker stays, so replicas do not restore it) only if its
        last write was before `written_before` (unix seconds, Redis server time); checked and done in
        one script, so a key written meanwhile is kept. The arms it had (0: kept)."""
        _check_key(key)
        with self._guard(f"delete idle {key!r}"):
            return int(await self._delete_idle_script(keys=[self._name(key)], args=[
                new_generation(), self._tombstone_ms, repr(float(written_before))]))

    async def server_time(self) -> float:
        """Redis's clock (unix seconds): the clock write times are recorded by."""
        with self._guard("read the server time"):
            seconds, micros = await self._redis.time()
        return seconds + micros / 1e6

    async def memory_usage(self, key: str) -> int | None:
        """Bytes Redis holds for `key` (MEMORY USAGE), None if it does not exist."""
        with self._guard(f"measure {key!r}"):
            return await self._redis.memory_usage(self._name(key), samples=0)

    async def _live(self, names: list[str]) -> list[str]:
        """Those of `names` that hold at least one arm (not deleted keys' markers)."""
        live: list[str] = []
        for start in range(0, len(names), 500):
            batch = names[start:start + 500]
            async with self._redis.pipeline(transaction=False) as pipe:
                for name in batch:
                    pipe.hlen(name)
                    pipe.hexists(name, _META_BYTES)
                replies = await pipe.execute()
            live += [name for i, name in enumerate(batch) if replies[2 * i] - int(bool(replies[2 * i + 1])) > 0]
        return live

    async def keys(self, prefix: str = "") -> list[str]:
        with self._guard("list keys"):
            names = await self._live(sorted(await self._scan(_glob_escape(self.namespace + prefix) + "*")))
        cut = len(self.namespace)
        return sorted(name[cut:] for name in names)

    async def delete(self, prefix: str = "") -> int:
        with self._guard(f"delete keys under {prefix!r}"):
            names = sorted(await self._scan(_glob_escape(self.namespace + prefix) + "*"))
            replies = await run_script_many(self._redis, self._set_script, [
                ([name], [new_generation(), self._tombstone_ms, "1", "0"]) for name in names])
            removed = sum(1 for had in replies if had)
        return removed


# --------------------------------------------------------------------------------------------
# Snapshots


async def export_state(store: StateStore, prefix: str = "") -> dict:
    """A JSON-able snapshot of every key under `prefix` (see `import_state` for the format)."""
    out: dict[str, dict[str, list[float]]] = {}
    for key in await store.keys(prefix):
        arms = await store.load(key)
        if arms:  # a key may vanish between keys() and load()
            out[key] = {arm: vector.tolist() for arm, vector in sorted(arms.items())}
    return {"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, "keys": out}


def _parse_snapshot(snapshot: Any) -> dict[str, dict[str, np.ndarray]]:
    if not isinstance(snapshot, dict):
        raise ValueError(f"a bandit state snapshot must be a JSON object, got {type(snapshot).__name__}")
    if snapshot.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"not a bandit state snapshot: 'format' is {snapshot.get('format')!r}, "
                         f"expected {SNAPSHOT_FORMAT!r}")
    version = snapshot.get("version")
    if version != SNAPSHOT_VERSION or isinstance(version, bool):
        raise ValueError(f"unsupported bandit state snapshot version {version!r}; "
                         f"this sigroute reads version {SNAPSHOT_VERSION}")
    keys = snapshot.get("keys")
    if not isinstance(keys, dict):
        raise ValueError(f"snapshot 'keys' must be an object of key -> {{arm: [numbers]}}, "
                         f"got {type(keys).__name__}")
    parsed: dict[str, dict[str, np.ndarray]] = {}
    for key, arms in keys.items():
        where = f"snapshot['keys'][{key!r}]"
        if not isinstance(key, str) or not key:
            raise ValueError(f"{where}: keys must be non-empty strings")
        if not isinstance(arms, dict):
            raise ValueError(f"{where} must be an object of arm -> [numbers], got {type(arms).__name__}")
        parsed[key] = {}
        for arm, values in arms.items():
            at = f"{where}[{arm!r}]"
            if not isinstance(arm, str) or not arm:
                raise ValueError(f"{at}: arm names must be non-empty strings")
            if not isinstance(values, list):
                raise ValueError(f"{at} must be a list of numbers, got {type(values).__name__}")
            for i, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"{at}[{i}] must be a finite number, got {v!r}")
            parsed[key][arm] = np.asarray(values, dtype=np.float64)
    return parsed


async def import_state(store: StateStore, snapshot: dict, *, replace: bool = True) -> int:
    """Write a snapshot made by `export_state` into `store`; returns the number of keys written.

    The whole snapshot is validated first (format, version, shapes), so a bad one writes nothing.
    With ``replace=True`` each key in the snapshot is overwritten; with ``replace=False`` the
    snapshot's sums are added to what is stored (merging replicas or environments), and every
    arm's length is checked against the stored one before anything is written. Keys not in the
    snapshot are left alone either way.
    """
    parsed = _parse_snapshot(snapshot)
    if not replace:
        for key, arms in parsed.items():
            stored = await store.load(key)
            for arm, vector in arms.items():
                if arm in stored and stored[arm].size != vector.size:
                    raise _shape_error(key, arm, stored[arm].size, vector.size)
    for key, arms in parsed.items():
        if replace:
            await store.replace(key, arms)
        else:
            await store.add(key, arms)
    return len(parsed)


def open_state_store(url: str | None, *, namespace: str | None = None, **options: Any) -> StateStore:
    """A state store for `url`: None/"memory" -> memory, redis://, rediss://, unix://,
    redis+cluster:// -> Redis.

    `options` (socket_timeout, connect_timeout, retries) go to `RedisStateStore`.
    """
    if _url_kind(url) == "memory":
        return MemoryStateStore()
    assert url is not None
    if namespace is not None:
        options["namespace"] = namespace
    return RedisStateStore(url, **options)


# --------------------------------------------------------------------------------------------
# Pending feedback


def _encode_record(record: dict) -> tuple[str, str]:
    if not isinstance(record, dict):
        raise ValueError(f"a pending record must be a dict, got {type(record).__name__}")
    tenant = record.get("tenant")
    if not isinstance(tenant, str):
        raise ValueError(f"a pending record needs record['tenant'] as a string, got {tenant!r}")
    try:
        payload = json.dumps(record, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a pending record must be JSON-serialisable: {exc}") from None
    return tenant, payload


def _check_put(request_id: str, ttl_s: float) -> None:
    if not isinstance(request_id, str) or not request_id:
        raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
    if not (isinstance(ttl_s, (int, float)) and math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")


@dataclass(slots=True)
class _Pending:
    tenant: str
    payload: str
    expires: float
    fingerprint: str | None = None
    implicit: str | None = None   # an implicit credit's JSON, once one was applied
    rank: int = 0                 # its source's precedence (bandits.feedback.PRECEDENCE)


class MemoryPendingStore:
    """In-process pending records, at most `max_records` of them (the oldest are dropped first)."""

    description = "memory"

    def __init__(self, max_records: int = 100_000) -> None:
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        self.max_records = max_records
        self._records: OrderedDict[str, _Pending] = OrderedDict()  # in put order, oldest first
        self._lock = threading.Lock()

    def _purge(self, now: float, *, full: bool) -> None:
        if full:
            for rid in [rid for rid, p in self._records.items() if p.expires <= now]:
                del self._records[rid]
            return
        while self._records:  # cheap: drop expired records at the old end
            rid, pending = next(iter(self._records.items()))
            if pending.expires > now:
                break
            del self._records[rid]

    async def put(self, request_id: str, record: dict, ttl_s: float) -> None:
        _check_put(request_id, ttl_s)
        tenant, payload = _encode_record(record)
        now = time.monotonic()
        with self._lock:
            self._records.pop(request_id, None)
            self._purge(now, full=False)
            if len(self._records) >= self.max_records:
                self._purge(now, full=True)
                while len(self._records) >= self.max_records:
                    self._records.popitem(last=False)
            self._records[request_id] = _Pending(tenant, payload, now + ttl_s)

    async def claim(self, request_id: str, tenant: str, feedback_fingerprint: str) -> tuple[str, dict | None]:
        with self._lock:
            pending = self._records.get(request_id)
            if pending is None or pending.expires <= time.monotonic():
                if pending is not None:
                    del self._records[request_id]
                return "unknown", None
            if pending.tenant != tenant:
                return "unknown", None
            if pending.fingerprint is None:
                pending.fingerprint = feedback_fingerprint
                status = "applied"
            elif pending.fingerprint == feedback_fingerprint:
                status = "duplicate"
            else:
                status = "conflict"
            payload, implicit = pending.payload, pending.implicit
        return status, _with_implicit(json.loads(payload), implicit)

    async def claim_implicit(self, request_id: str, tenant: str, credit: str, rank: int = 1) -> tuple[str, dict | None]:
        replaced = None
        with self._lock:
            pending = self._records.get(request_id)
            if pending is None or pending.expires <= time.monotonic() or pending.tenant != tenant:
                return "unknown", None
            if pending.fingerprint is not None:
                status = "explicit_first"
            elif pending.implicit is not None and rank <= (pending.rank or 1):
                status = "duplicate"
            else:
                status, replaced = ("replaced", pending.implicit) if pending.implicit is not None else ("applied", None)
                pending.implicit, pending.rank = credit, rank
            payload = pending.payload
        return status, _with_implicit(json.loads(payload), replaced)

    async def count(self) -> int:
        with self._lock:
            self._purge(time.monotonic(), full=True)
            return len(self._records)

    async def flush_unsent(self) -> int:
        return 0  # a put in memory never fails

    def take_lost(self) -> dict[str, int]:
        return {}

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"MemoryPendingStore(max_records={self.max_records})"


def _with_implicit(record: dict, implicit: str | None) -> dict:
    """The record as an explicit claim returns it: with the implicit credit applied before, if any."""
    if implicit:
        record["implicit"] = json.loads(implicit)
    return record


# KEYS[1] = the record's hash; ARGV = tenant, fingerprint. Returns {status[, record JSON[, implicit JSON]]}.
_CLAIM_LUA = """
local h = redis.call('HMGET', KEYS[1], 't', 'r', 'f', 'i')
if not h[1] or h[1] ~= ARGV[1] then return {'unknown'} end
local implicit = h[4] or ''
if not h[3] then
  redis.call('HSET', KEYS[1], 'f', ARGV[2])
  return {'applied', h[2], implicit}
end
if h[3] == ARGV[2] then return {'duplicate', h[2], implicit} end
return {'conflict', h[2], implicit}
"""

# KEYS[1] = the record's hash; ARGV = tenant, implicit credit JSON, its rank. Returns {status[, record
# JSON[, the credit it replaced]]}.
_CLAIM_IMPLICIT_LUA = """
local h = redis.call('HMGET', KEYS[1], 't', 'r', 'f', 'i', 'p')
if not h[1] or h[1] ~= ARGV[1] then return {'unknown'} end
if h[3] then return {'explicit_first', h[2]} end
if h[4] then
  if tonumber(ARGV[3]) <= tonumber(h[5] or '1') then return {'duplicate', h[2]} end
  redis.call('HSET', KEYS[1], 'i', ARGV[2], 'p', ARGV[3])
  return {'replaced', h[2], h[4]}
end
redis.call('HSET', KEYS[1], 'i', ARGV[2], 'p', ARGV[3])
return {'applied', h[2]}
"""


# KEYS[1] = the record's hash; ARGV = tenant, record JSON, TTL in ms. Replaces the record, fingerprint
# included (one script rather than MULTI: one round trip, and the same on one Redis and a cluster).
_PUT_PENDING_LUA = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 't', ARGV[1], 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class RedisPendingStore(_RedisBase):
    """Pending records in Redis with native TTLs (see the module docstring for the layout)."""

    def __init__(self, url: str, namespace: str = "sigroute:pending:", *, socket_timeout: float = 5.0,
                 connect_timeout: float = 2.0, retries: int = 1, max_unsent: int = 10_000,
                 hung_hold_s: float = 1.0) -> None:
        super().__init__(url, namespace, socket_timeout=socket_timeout, connect_timeout=connect_timeout,
                         retries=retries, decode_responses=True, hung_hold_s=hung_hold_s)
        if max_unsent < 0:
            raise ValueError(f"max_unsent must be at least 0, got {max_unsent}")
        self._claim_script = self._redis.register_script(_CLAIM_LUA)
        self._claim_implicit_script = self._redis.register_script(_CLAIM_IMPLICIT_LUA)
        self._put_script = self._redis.register_script(_PUT_PENDING_LUA)
        self.max_unsent = max_unsent
        self._unsent: OrderedDict[str, tuple[str, str, float]] = OrderedDict()  # id -> (tenant, payload, expires)
        self._lost: Counter[str] = Counter()

    async def _write(self, request_id: str, tenant: str, payload: str, ttl_s: float) -> None:
        name = self.namespace + request_id
        with self._guard("store a pending record"):
            await self._put_script(keys=[name], args=[tenant, payload, str(max(1, round(ttl_s * 1000)))])

    async def put(self, request_id: str, record: dict, ttl_s: float) -> None:
        _check_put(request_id, ttl_s)
        tenant, payload = _encode_record(record)
        self._unsent.pop(request_id, None)
        try:
            await self._write(request_id, tenant, payload, ttl_s)
        except StoreUnavailable:
            self._keep(request_id, tenant, payload, time.monotonic() + ttl_s)
            raise

    def _keep(self, request_id: str, tenant: str, payload: str, expires: float) -> None:
        """Keep a record Redis could not take, for `flush_unsent` (the oldest go when it is full)."""
        self._unsent[request_id] = (tenant, payload, expires)
        while len(self._unsent) > self.max_unsent:
            self._unsent.popitem(last=False)
            self._lost["overflow"] += 1

    @property
    def unsent(self) -> int:
        """Records waiting in this process for Redis to come back."""
        return len(self._unsent)

    async def _send_unsent(self, request_id: str) -> bool:
        tenant, payload, expires = self._unsent[request_id]
        left = expires - time.monotonic()
        if left > 0:
            await self._write(request_id, tenant, payload, left)
        else:
            self._lost["expired"] += 1
        del self._unsent[request_id]
        return left > 0

    async def flush_unsent(self) -> int:
        written = 0
        for request_id in list(self._unsent):
            if request_id in self._unsent:  # (a concurrent put or claim may have sent it)
                written += await self._send_unsent(request_id)
        return written

    def take_lost(self) -> dict[str, int]:
        out = dict(self._lost)
        self._lost.clear()
        return out

    async def claim(self, request_id: str, tenant: str, feedback_fingerprint: str) -> tuple[str, dict | None]:
        if request_id in self._unsent:  # kept here while Redis was away: it goes first
            await self._send_unsent(request_id)
        with self._guard("claim a pending record"):
            result = await self._claim_script(keys=[self.namespace + request_id],
                                              args=[tenant, feedback_fingerprint])
        if result[0] == "unknown":
            return "unknown", None
        return result[0], _with_implicit(json.loads(result[1]), result[2] if len(result) > 2 else None)

    async def claim_implicit(self, request_id: str, tenant: str, credit: str, rank: int = 1) -> tuple[str, dict | None]:
        if request_id in self._unsent:
            await self._send_unsent(request_id)
        with self._guard("claim a pending record for implicit feedback"):
            result = await self._claim_implicit_script(keys=[self.namespace + request_id],
                                                       args=[tenant, credit, int(rank)])
        if result[0] == "unknown":
            return "unknown", None
        return result[0], _with_implicit(json.loads(result[1]), result[2] if len(result) > 2 else None)

    async def count(self) -> int:
        with self._guard("count pending records"):
            return len(await self._scan(_glob_escape(self.namespace) + "*"))


def open_pending_store(url: str | None, *, namespace: str | None = None, **options: Any) -> PendingStore:
    """A pending store for `url`: None/"memory" -> memory, redis://, rediss://, unix://,
    redis+cluster:// -> Redis.

    `options` go to the chosen class (max_records for memory; socket_timeout, connect_timeout,
    retries for Redis).
    """
    if _url_kind(url) == "memory":
        return MemoryPendingStore(**options)
    assert url is not None
    if namespace is not None:
        options["namespace"] = namespace
    return RedisPendingStore(url, **options)
