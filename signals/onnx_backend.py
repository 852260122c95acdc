"""Running the sentence encoder with ONNX Runtime instead of PyTorch, on the CPU.

For the short texts a gateway embeds, PyTorch's eager execution spends most of a forward pass on
per-operator overhead; ONNX Runtime runs the same graph with fused kernels and is about twice as
fast for one request (see ``benchmarks.vs_litellm``'s embedding numbers). The numbers it computes
are the same up to float rounding, so trained heads, thresholds and cached embeddings stay valid.

How: the loaded `SentenceTransformer` (Transformer → Pooling → Normalize) is exported once to an
ONNX graph that returns the pooled, unit-length embedding, and kept in a cache directory
(``$SIGROUTE_CACHE_DIR/onnx`` or ``~/.cache/sigroute/onnx``) under the weights' fingerprint, so
later processes only load it. Before it is used, the graph's embeddings of a few probe texts are
compared with PyTorch's; any difference above 1e-4 refuses it.

Serving without PyTorch: a graph that passed that check gets a record beside it
(``<graph>.verified.json``: the fingerprint, pooling, inputs, dimension and the measured
difference). A later process that finds the record trusts the graph without loading PyTorch or
sentence-transformers at all (`OnnxForward.from_verified`): it tokenizes with the `tokenizers`
package from the model's own ``tokenizer.json`` (`WordPieceFeatures`: the same normalization,
word pieces, [CLS]/[SEP], truncation to ``max_seq_length`` and padding to the longest text as the
sentence-transformers path — tests compare the ids and the embeddings) and runs the graph with
ONNX Runtime. That saves seconds of imports and hundreds of megabytes per replica; the export and
its check run once, in ``sigroute prepare`` (or the first process that needs the graph).

Nothing here downloads anything: the export uses the weights already on disk.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

#: pooling modes of sentence-transformers' Pooling module that the exported graph reproduces
SUPPORTED_POOLING = ("mean", "cls")
MAX_PROBE_DIFFERENCE = 1e-4
_PROBES = ("How do I reset my password?", "  leading and trailing spaces  ", "Straße, café, naïve — ünïcode 🙂",
           "word " * 400)


RECORD_SUFFIX = ".verified.json"
RECORD_FORMAT = 1


class OnnxUnavailable(RuntimeError):
    """This encoder cannot run on ONNX Runtime here (the reason says why)."""


def cache_dir() -> Path:
    root = os.environ.get("SIGROUTE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "sigroute") / "onnx"


def graph_path(directory: Path, fingerprint: str, pooling: str, input_names: list[str]) -> Path:
    return directory / f"{fingerprint.replace(':', '-')}-{pooling}-{'-'.join(input_names)}.onnx"


def record_path(graph: Path) -> Path:
    return graph.with_name(graph.name[:-len(".onnx")] + RECORD_SUFFIX)


def _write_json_atomically(path: Path, content: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(content, fh, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def find_verified(fingerprint: str, directory: Path | None = None) -> dict | None:
    """The record of a graph of this fingerprint that passed the PyTorch check, or None.

    The record carries ``path`` (the graph) besides what was written at check time. A record whose
    graph is gone or changed size, that is unreadable, or whose model's tokenizer could not be
    reproduced without sentence-transformers (``tokenizer_matches``) counts as absent."""
    directory = directory or cache_dir()
    prefix = fingerprint.replace(":", "-") + "-"
    try:
        candidates = sorted(directory.glob(prefix + "*" + RECORD_SUFFIX))
    except OSError:
        return None
    for candidate in candidates:
        try:
            record = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        graph = candidate.with_name(candidate.name[:-len(RECORD_SUFFIX)] + ".onnx")
        if (isinstance(record, dict) and record.get("format") == RECORD_FORMAT
                and record.get("fingerprint") == fingerprint and record.get("tokenizer_matches") is True
                and graph.is_file()
                and record.get("graph_bytes") == graph.stat().st_size):
            return {**record, "path": str(graph)}
    return None


class TokenSpans:
    """Where the real word pieces of one encoded text lie in that text.

    `rows` are the positions of the pieces in the model's sequence (so `hidden[rows]` are their
    states), `offsets` their (start, end) character offsets in the original, unstripped text, and
    `words` the index of the pre-tokenizer word each piece belongs to (pieces of one word share
    it). `truncated` says the text went on past the model's window; `covered` is the end of the
    last piece inside it.
    """

    __slots__ = ("rows", "offsets", "words", "truncated", "covered")

    def __init__(self, rows: np.ndarray, offsets: np.ndarray, words: np.ndarray, truncated: bool, covered: int):
        self.rows, self.offsets, self.words, self.truncated, self.covered = rows, offsets, words, truncated, covered

    @classmethod
    def of(cls, text: str, encoding) -> "TokenSpans":
        shift = len(text) - len(text.lstrip())  # the tokenizer saw the stripped text
        special = encoding.special_tokens_mask
        rows = [i for i, (m, a) in enumerate(zip(special, encoding.attention_mask)) if a and not m]
        offsets = np.array([encoding.offsets[i] for i in rows], dtype=np.int64).reshape(-1, 2) + shift
        words = np.array([encoding.word_ids[i] for i in rows], dtype=np.int64)
        covered = int(offsets[-1, 1]) if len(rows) else shift
        truncated = bool(encoding.overflowing)
        return cls(np.array(rows, dtype=np.int64), offsets, words, truncated, covered)


class WordPieceFeatures:
    """The model's inputs for a batch of texts, computed with the `tokenizers` package alone.

    Reads the model directory's ``tokenizer.json`` (the fast tokenizer sentence-transformers itself
    wraps), then sets what sentence-transformers sets on every call: truncation of the longest
    sequence to ``max_seq_length`` word pieces ([CLS] and [SEP] included) and padding to the
    longest text of the batch. Texts are stripped of surrounding whitespace first, as
    sentence-transformers does. A second instance without truncation counts and decodes.
    """

    def __init__(self, model_path: str | Path, max_seq_length: int, input_names: list[str]):
        from tokenizers import Tokenizer

        path = Path(model_path) / "tokenizer.json"
        if not path.is_file():
            raise OnnxUnavailable(f"no tokenizer.json in {model_path}")
        self.max_seq_length = int(max_seq_length)
        self.input_names = list(input_names)
        self.lower_case = _lower_case(Path(model_path))
        self._batch = Tokenizer.from_file(str(path))
        self._batch.enable_truncation(max_length=self.max_seq_length, strategy="longest_first")
        pad = self._batch.padding or {}
        self._batch.enable_padding(pad_id=pad.get("pad_id", 0), pad_type_id=pad.get("pad_type_id", 0),
                                   pad_token=pad.get("pad_token", "[PAD]"))
        self._plain = Tokenizer.from_file(str(path))
        self._plain.no_truncation()
        self._plain.no_padding()

    def _prepare(self, text: str) -> str:
        text = str(text).strip()
        return text.lower() if self.lower_case else text

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self._batch.encode_batch([self._prepare(t) for t in texts])
        features = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
        return {name: features[name] for name in self.input_names}

    def with_offsets(self, texts: Sequence[str]) -> tuple[dict[str, np.ndarray], list["TokenSpans"]]:
        """The model's inputs (as `__call__`) and, per text, where each real word piece lies in
        the *original* text (character offsets; [CLS], [SEP] and padding left out)."""
        prepared = [self._prepare(t) for t in texts]
        encodings = self._batch.encode_batch(prepared)
        features = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                    "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                    "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}
        spans = [TokenSpans.of(str(text), encoding) for text, encoding in zip(texts, encodings)]
        return {name: features[name] for name in self.input_names}, spans

    def ids(self, text: str) -> list[int]:
        """Word-piece ids of `text`, without special tokens and without truncation."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._plain.decode(list(ids), skip_special_tokens=False)


def _tokenizer_matches(st, model_path: str | Path, input_names: list[str]) -> bool:
    """Whether `WordPieceFeatures` gives exactly sentence-transformers' inputs for the probe texts."""
    probes = list(_PROBES) + ["", "x", "Wie spät ist es? 東京は何時ですか", "tab\tand\nnewlines", "word " * 1000]
    try:
        ours = WordPieceFeatures(model_path, int(st.max_seq_length), input_names)(probes)
        theirs = st.preprocess(probes)
        return all(np.array_equal(ours[name], np.asarray(theirs[name])) for name in input_names)
    except Exception as exc:  # a tokenizer this front end cannot read: serve with PyTorch
        log.info("the tokenizer of %s is not reproduced without sentence-transformers (%s)", model_path, exc)
        return False


def _lower_case(model_path: Path) -> bool:
    """sentence-transformers' own `do_lower_case` (sentence_bert_config.json), applied before the tokenizer."""
    try:
        return bool(json.loads((model_path / "sentence_bert_config.json").read_text()).get("do_lower_case", False))
    except (OSError, ValueError):
        return False


def max_seq_length_of(model_path: str | Path) -> int | None:
    """The model's own `max_seq_length` (sentence_bert_config.json), or None."""
    try:
        value = json.loads((Path(model_path) / "sentence_bert_config.json").read_text()).get("max_seq_length")
    except (OSError, ValueError):
        return None
    return int(value) if value else None


def embedding_dimension(st) -> int:
    getter = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    return int(getter())


def _pooling_mode(st) -> str:
    modules = list(st)
    names = [type(m).__name__ for m in modules]
    if len(modules) not in (2, 3) or names[0] != "Transformer" or names[1] != "Pooling" or (
            len(modules) == 3 and names[2] != "Normalize"):
        raise OnnxUnavailable(f"only Transformer → Pooling (→ Normalize) models are exported; this one is {names}")
    config = modules[1].get_config_dict()
    mode = config.get("pooling_mode") or next(
        (m for m in SUPPORTED_POOLING if config.get(f"pooling_mode_{m}_token" if m == "cls" else f"pooling_mode_{m}_tokens")),
        None)
    if mode not in SUPPORTED_POOLING:
        raise OnnxUnavailable(f"pooling {config} is not one of {', '.join(SUPPORTED_POOLING)}")
    return mode


def _export(st, pooling: str, input_names: list[str], path: Path) -> None:
    import torch

    transformer = st[0].auto_model

    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs):
            named = dict(zip(input_names, inputs))
            hidden = self.transformer(**named).last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = named["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    sample = st.preprocess(["an example sentence", "and a second, longer example sentence"])
    args = tuple(sample[name] for name in input_names)
    axes = {name: {0: "batch", 1: "tokens"} for name in input_names}
    axes["embedding"] = {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Embed().eval(), args, tmp, input_names=input_names, output_names=["embedding"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared by several users
        os.replace(tmp, path)  # atomic: replicas starting together never read a half-written graph
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_SHRINK = None


def _shrink_options():
    """Run options that return the CPU arena's unused memory when the pass ends."""
    global _SHRINK
    if _SHRINK is None:
        import onnxruntime

        options = onnxruntime.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        _SHRINK = options
    return _SHRINK


class OnnxForward:
    """Embeds texts with ONNX Runtime; call it like the PyTorch forward (unit rows, float32)."""

    def __init__(self, featurize, session, input_names: list[str], path: Path, st=None):
        self._featurize = featurize  # texts -> {input name: int64 array (or tensor)}
        self._session = session
        self.input_names = input_names
        self.path = path
        self._st = st  # the SentenceTransformer it was checked against (None when trusted from a record)
        self.tokenizer: WordPieceFeatures | None = None  # set when trusted from a record
        self.dimension: int | None = None  # likewise

    @classmethod
    def build(cls, st, fingerprint: str, threads: int | None = None, directory: Path | None = None,
              model_path: str | Path | None = None) -> "OnnxForward":
        """The graph for `st` (exported into the cache when missing), checked against PyTorch. With
        `model_path`, also checks that `WordPieceFeatures` tokenizes the probes exactly as `st`
        does; only then does the record let later processes serve the graph without PyTorch."""
        try:
            import onnxruntime
        except ImportError as exc:
            raise OnnxUnavailable("onnxruntime is not installed") from exc
        pooling = _pooling_mode(st)
        input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
                       if n in st.preprocess(["probe"])]
        if "input_ids" not in input_names or "attention_mask" not in input_names:
            raise OnnxUnavailable(f"the tokenizer gives {input_names}, not input_ids and attention_mask")
        path = graph_path(directory or cache_dir(), fingerprint, pooling, input_names)
        exported = False
        if not path.is_file():
            cls._export_or_refuse(st, pooling, input_names, path)
            exported = True
        try:
            session = cls._session(onnxruntime, path, threads)
        except Exception as exc:
            if exported:
                raise OnnxUnavailable(f"ONNX Runtime cannot load {path}: {exc}") from exc
            # a damaged or foreign file in the cache: export again, once
            log.warning("re-exporting the encoder: ONNX Runtime could not load %s (%s)", path, exc)
            cls._export_or_refuse(st, pooling, input_names, path)
            try:
                session = cls._session(onnxruntime, path, threads)
            except Exception as exc2:
                raise OnnxUnavailable(f"ONNX Runtime cannot load {path}: {exc2}") from exc2
        forward = cls(st.preprocess, session, input_names, path, st=st)
        difference = forward.check_against_torch()
        tokenizer_matches = model_path is not None and _tokenizer_matches(st, model_path, input_names)
        forward.write_record(fingerprint, pooling, embedding_dimension(st), difference, tokenizer_matches)
        return forward

    @classmethod
    def from_verified(cls, record: dict, model_path: str | Path, max_seq_length: int,
                      threads: int | None = None) -> "OnnxForward":
        """The graph of a verified record (`find_verified`), fed by `WordPieceFeatures`: no PyTorch."""
        try:
            import onnxruntime
        except ImportError as exc:
            raise OnnxUnavailable("onnxruntime is not installed") from exc
        input_names = list(record["input_names"])
        features = WordPieceFeatures(model_path, max_seq_length, input_names)
        path = Path(record["path"])
        try:
            session = cls._session(onnxruntime, path, threads)
        except Exception as exc:
            raise OnnxUnavailable(f"ONNX Runtime cannot load {path}: {exc}") from exc
        forward = cls(features, session, input_names, path)
        forward.tokenizer = features
        forward.dimension = int(record["dimension"])
        return forward

    def write_record(self, fingerprint: str, pooling: str, dimension: int, difference: float,
                     tokenizer_matches: bool) -> None:
        """Note beside the graph that it passed the PyTorch check, so later processes trust it without PyTorch."""
        import onnxruntime

        try:
            _write_json_atomically(record_path(self.path), {
                "format": RECORD_FORMAT, "fingerprint": fingerprint, "pooling": pooling,
                "input_names": self.input_names, "dimension": dimension,
                "graph_bytes": self.path.stat().st_size,
                "checked_against": "pytorch (sentence-transformers)", "probe_texts": len(_PROBES),
                "tokenizer_matches": bool(tokenizer_matches),
                "max_probe_difference": difference, "tolerance": MAX_PROBE_DIFFERENCE,
                "onnxruntime": onnxruntime.__version__})
        except OSError as exc:  # a read-only cache: this process still uses the graph
            log.info("could not record the ONNX check beside %s (%s)", self.path, exc)

    @staticmethod
    def _export_or_refuse(st, pooling: str, input_names: list[str], path: Path) -> None:
        try:
            _export(st, pooling, input_names, path)
        except Exception as exc:  # an exporter that cannot handle this model, a read-only cache: stay on PyTorch
            raise OnnxUnavailable(f"exporting to ONNX failed: {exc}") from exc
        log.info("encoder exported to %s", path)

    @staticmethod
    def _session(onnxruntime, path: Path, threads: int | None):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Intra-op threads spin between the many small parallel sections of one forward pass (waking
        # a sleeping thread for each costs ~4 ms a pass) but stop spinning when the pass ends: on a
        # few cores the event loop and the upstream connections need the CPU between passes.
        # Measured at one request in flight: 10 ms and 19 ms CPU a pass, against 14.5 / 19 never
        # spinning and 11 / 37 spinning on after the pass.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def check_against_torch(self) -> float:
        """Largest absolute difference from the PyTorch embeddings on the probe texts; raises if too big."""
        reference = self._st.encode(list(_PROBES), batch_size=len(_PROBES), normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        difference = float(np.max(np.abs(self(list(_PROBES)) - reference)))
        if not difference <= MAX_PROBE_DIFFERENCE:
            raise OnnxUnavailable(f"the ONNX graph's embeddings differ from PyTorch's by {difference:.2e}")
        return difference

    # ONNX Runtime's CPU arena keeps the high-water mark of every pass: one batch of eight 256-token
    # texts grows a replica by ~250 MB for good. Passes larger than this many token positions
    # (batch × padded length) give the arena's free memory back when they end; smaller ones, the
    # usual request, keep it (giving back costs ~7 ms a pass on a 2-core machine).
    SHRINK_ABOVE_POSITIONS = 1024

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        features = self._featurize(list(texts))
        feed = {name: np.asarray(features[name]).astype(np.int64, copy=False) for name in self.input_names}
        options = _shrink_options() if feed["input_ids"].size > self.SHRINK_ABOVE_POSITIONS else None
        return np.asarray(self._session.run(["embedding"], feed, options)[0], dtype=np.float32)

    # token states -------------------------------------------------------------------------------
    # The token tagger (signals.pii_tagger) reads the last layer's state of every word piece. The
    # graph computes those states anyway (pooling averages them); `enable_token_states` rebuilds
    # the session once with that tensor as a second output, so one pass gives both. The embedding
    # path asks for "embedding" only and is unchanged.
    TOKEN_STATES = "token_states"

    @property
    def has_token_states(self) -> bool:
        return self.TOKEN_STATES in {o.name for o in self._session.get_outputs()}

    def enable_token_states(self, threads: int | None = None) -> None:
        """Expose the last layer's hidden states as the output "token_states" (idempotent).

        The graph is loaded with the `onnx` package, the output of the last LayerNormalization
        (the transformer's last layer, which pooling reads) is added as a graph output, and a new
        session replaces the old one. Raises `OnnxUnavailable` when that cannot be done."""
        if self.has_token_states:
            return
        try:
            import onnx
            import onnxruntime
        except ImportError as exc:
            raise OnnxUnavailable("token states need the `onnx` package") from exc
        model = onnx.load(str(self.path))
        norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
        if not norms:
            raise OnnxUnavailable(f"no LayerNormalization node in {self.path}: cannot find the last hidden state")
        last = norms[-1].output[0]
        model.graph.node.append(onnx.helper.make_node("Identity", [last], [self.TOKEN_STATES]))
        model.graph.output.append(onnx.helper.make_tensor_value_info(
            self.TOKEN_STATES, onnx.TensorProto.FLOAT, ["batch", "tokens", None]))
        options = onnxruntime.SessionOptions()
        old = self._session.get_session_options()
        options.graph_optimization_level = old.graph_optimization_level
        options.intra_op_num_threads = threads or old.intra_op_num_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        options.log_severity_level = 3
        try:
            session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise OnnxUnavailable(f"ONNX Runtime cannot load the graph with token states: {exc}") from exc
        self._session = session

    def forward_with_tokens(self, texts: Sequence[str], tokenizer: "WordPieceFeatures"):
        """One pass: (unit embeddings, last-layer states (batch, tokens, dim), `TokenSpans` per text)."""
        features, spans = tokenizer.with_offsets(list(texts))
        feed = {name: np.asarray(features[name]).astype(np.int64, copy=False) for name in self.input_names}
        options = _shrink_options() if feed["input_ids"].size > self.SHRINK_ABOVE_POSITIONS else None
        vectors, states = self._session.run(["embedding", self.TOKEN_STATES], feed, options)
        return np.asarray(vectors, dtype=np.float32), np.asarray(states, dtype=np.float32), spans
