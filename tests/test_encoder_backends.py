"""The encoder's two CPU backends give the same embeddings; the ONNX one is exported, cached,
repaired and refused correctly."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from sigroute.signals.encoder import Encoder, EncoderUnavailable
from sigroute.signals.onnx_backend import OnnxForward, OnnxUnavailable

TEXTS = [
    "How do I reset my password?",
    "   spaces around a question   ",
    "Wie spät ist es in Zürich? ¿Qué hora es? 東京は何時ですか",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "token " * 600,  # beyond max_tokens: both truncate the same way
    "x",
]


@pytest.fixture(scope="module")
def encoders():
    return Encoder(backend="torch"), Encoder(backend="onnx")


def test_onnx_and_torch_backends_give_the_same_embeddings(encoders):
    torch_encoder, onnx_encoder = encoders
    assert (torch_encoder.backend, onnx_encoder.backend) == ("torch", "onnx")
    assert "onnx" in repr(onnx_encoder)
    a = torch_encoder.encode(TEXTS)
    b = onnx_encoder.encode(TEXTS)
    assert a.shape == b.shape == (len(TEXTS), 384) and b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float(np.max(np.abs(a - b))) < 1e-5
    # one at a time (no padding) equals the padded batch
    for text, row in zip(TEXTS, b):
        assert float(np.max(np.abs(onnx_encoder.encode([text])[0] - row))) < 1e-5


async def test_onnx_backend_through_the_micro_batcher(encoders):
    import asyncio

    _, onnx_encoder = encoders
    rows = await asyncio.gather(*(onnx_encoder.embed([t]) for t in TEXTS))
    np.testing.assert_allclose(np.vstack(rows), onnx_encoder.encode(TEXTS), atol=1e-5)


def test_export_is_cached_and_a_damaged_file_is_exported_again(encoders, tmp_path, monkeypatch):
    torch_encoder, onnx_encoder = encoders
    st = torch_encoder._st  # the export needs the PyTorch model
    first = OnnxForward.build(st, onnx_encoder.fingerprint, threads=1, directory=tmp_path)
    assert first.path.parent == tmp_path and first.path.stat().st_size > 1_000_000
    assert not list(tmp_path.glob("*.tmp"))  # the export was written aside and moved in place
    assert first.path.stat().st_mode & 0o777 == 0o644

    import sigroute.signals.onnx_backend as backend

    calls = []
    real_export = backend._export
    monkeypatch.setattr(backend, "_export", lambda *a: (calls.append(a), real_export(*a)))
    again = OnnxForward.build(st, onnx_encoder.fingerprint, threads=1, directory=tmp_path)
    assert calls == [] and again.path == first.path  # loaded from the cache, not exported

    first.path.write_bytes(b"not an onnx graph")
    repaired = OnnxForward.build(st, onnx_encoder.fingerprint, threads=1, directory=tmp_path)
    assert len(calls) == 1
    np.testing.assert_allclose(repaired(TEXTS[:2]), onnx_encoder.encode(TEXTS[:2]), atol=1e-5)


def test_a_graph_that_disagrees_with_torch_is_refused(encoders, tmp_path):
    torch_encoder, onnx_encoder = encoders
    forward = OnnxForward.build(torch_encoder._st, onnx_encoder.fingerprint, threads=1, directory=tmp_path)
    run = forward._session.run
    forward._session.run = lambda names, feed, options=None: [run(names, feed)[0][:, ::-1].copy()]  # a broken graph
    with pytest.raises(OnnxUnavailable, match="differ"):
        forward.check_against_torch()


def test_without_onnxruntime_auto_stays_on_torch_and_onnx_is_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert Encoder(backend="auto").backend == "torch"
    with pytest.raises(EncoderUnavailable, match="onnxruntime is not installed"):
        Encoder(backend="onnx")
    with pytest.raises(ValueError, match="backend"):
        Encoder(backend="tensorrt")


def test_policy_encoder_backend_is_validated():
    from sigroute.policies.loader import PolicyError, load_policy_text

    base = ("version: 1\nmodels: {m: {provider: openai/m, api_base: 'http://127.0.0.1:1/v1'}}\n"
            "decisions: [{name: d, models: [m]}]\n")
    assert load_policy_text(base + "encoder: {backend: torch}\n").encoder.backend == "torch"
    assert load_policy_text(base).encoder.backend == "auto"
    with pytest.raises(PolicyError, match="backend"):
        load_policy_text(base + "encoder: {backend: tensorrt}\n")
