"""Running the sentence encoder with ONNX Runtime instead of PyTorch, on the CPU.

For the short texts a gateway embeds, PyTorch's eager execution spends most of a forward pass on
per-operator overhead; ONNX Runtime runs the same graph with fused kernels and is about twice as
fast for one request (see ``benchmarks.vs_litellm``'s embedding numbers). The numbers it computes
are the same up to float rounding, so trained heads, thresholds and cached embeddings stay valid.

How: the loaded `SentenceTransformer` (Transformer → Pooling → Normalize) is exported once to an
ONNX graph that returns the pooled, unit-length embedding, and kept in a cache directory
(``$SIGROUTE_CACHE_DIR/onnx`` or ``~/.cache/sigroute/onnx``) under the weights' fingerprint, so
later processes only load it. Tokenization stays the sentence-transformers one (the same ids,
truncation and stripping as the PyTorch path). Before it is used, the graph's embeddings of a few
probe texts are compared with PyTorch's; any difference above 1e-4 refuses it.

Nothing here downloads anything: the export uses the weights already on disk.
"""

from __future__ import annotations

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


class OnnxUnavailable(RuntimeError):
    """This encoder cannot run on ONNX Runtime here (the reason says why)."""


def cache_dir() -> Path:
    root = os.environ.get("SIGROUTE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "sigroute") / "onnx"


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


class OnnxForward:
    """Embeds texts with ONNX Runtime; call it like the PyTorch forward (unit rows, float32)."""

    def __init__(self, st, session, input_names: list[str], path: Path):
        self._st = st
        self._session = session
        self.input_names = input_names
        self.path = path

    @classmethod
    def build(cls, st, fingerprint: str, threads: int | None = None, directory: Path | None = None) -> "OnnxForward":
        try:
            import onnxruntime
        except ImportError as exc:
            raise OnnxUnavailable("onnxruntime is not installed") from exc
        pooling = _pooling_mode(st)
        input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
                       if n in st.preprocess(["probe"])]
        if "input_ids" not in input_names or "attention_mask" not in input_names:
            raise OnnxUnavailable(f"the tokenizer gives {input_names}, not input_ids and attention_mask")
        path = (directory or cache_dir()) / f"{fingerprint.replace(':', '-')}-{pooling}-{'-'.join(input_names)}.onnx"
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
        forward = cls(st, session, input_names, path)
        forward.check_against_torch()
        return forward

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

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        features = self._st.preprocess(list(texts))
        feed = {name: features[name].numpy().astype(np.int64, copy=False) for name in self.input_names}
        return np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
