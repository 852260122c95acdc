"""The embedding's principal basis (signals/principal.py) and the `embedding` group's `basis: principal`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from sigroute.bandits.features import FeatureExtractor
from sigroute.policies.loader import PolicyError, load_policy_text
from sigroute.policies.schema import FeatureGroup
from sigroute.signals.encoder import Encoder
from sigroute.signals.heads import HeadMismatch
from sigroute.signals.learned import SignalResources
from sigroute.signals.principal import BASIS_DIR, fit_basis, load_basis


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder()


def test_fit_basis_finds_the_directions_of_largest_variance():
    rng = np.random.default_rng(0)
    # three known orthogonal directions with decreasing spread, plus a little noise
    q, _ = np.linalg.qr(rng.standard_normal((10, 3)))
    scores = rng.standard_normal((2000, 3)) * np.array([5.0, 2.0, 0.5])
    X = 3.0 + scores @ q.T + 0.01 * rng.standard_normal((2000, 10))
    mean, axes, share = fit_basis(X, axes=3)
    np.testing.assert_allclose(mean, X.mean(axis=0))
    np.testing.assert_allclose(axes.T @ axes, np.eye(3), atol=1e-9)
    for k in range(3):  # each fitted axis is one of the planted directions (up to sign)
        assert abs(float(axes[:, k] @ q[:, k])) > 0.999
    assert share[0] > share[1] > share[2]
    # the sign rule makes the result independent of the SVD's sign choice
    _, again, _ = fit_basis(X[::-1].copy(), axes=3)
    np.testing.assert_allclose(again, axes, atol=1e-8)


def test_the_shipped_basis_belongs_to_the_shared_encoder_and_is_orthonormal(encoder):
    basis = load_basis(encoder.fingerprint)
    assert basis.meta["encoder"]["fingerprint"] == encoder.fingerprint
    assert basis.axes.shape == (encoder.dimension, 64) and basis.size == 64
    np.testing.assert_allclose(basis.axes.T @ basis.axes, np.eye(64), atol=1e-4)
    assert basis.meta["data"]["texts"] > 5000
    # decreasing variance, and 32 axes hold a real share of it
    share = basis.meta["variance_share"]
    assert all(a >= b for a, b in zip(share, share[1:]))
    assert 0.3 < basis.meta["variance_share_cumulative"]["32"] < 1.0
    with pytest.raises(ValueError, match="64 axes"):
        basis.project(np.zeros(encoder.dimension), 65)


def test_a_basis_of_another_encoder_is_refused(tmp_path):
    copy = tmp_path / "principal"
    shutil.copytree(BASIS_DIR, copy)
    meta = json.loads((copy / "head.json").read_text())
    meta["encoder"]["fingerprint"] = "sha256:0000000000000000"
    (copy / "head.json").write_text(json.dumps(meta))
    with pytest.raises(HeadMismatch, match="train principal"):
        load_basis("sha256:53aa51172d142c89", copy)


def test_the_principal_block_is_the_projection_on_the_first_axes(encoder):
    resources = SignalResources(encoder=encoder)
    groups = [FeatureGroup(name="bias"), FeatureGroup(name="embedding", dims=8, basis="principal", weight=1.0)]
    ex = FeatureExtractor(groups, resources)
    assert ex.dim == 9 and ex.names[1:3] == ["embedding:principal:0", "embedding:principal:1"]
    texts = ["How do I reverse a linked list in place?", "What caused the fall of the Western Roman Empire?"]
    E = encoder.encode(texts)
    basis = load_basis(encoder.fingerprint)
    for text, e, row in zip(texts, E, ex.matrix(texts, E)):
        raw = np.concatenate(([1.0], (e - basis.mean) @ basis.axes[:, :8]))
        np.testing.assert_allclose(row, raw / np.linalg.norm(raw), atol=1e-9)
        np.testing.assert_allclose(ex.vector_for_text(text, e), row, atol=1e-12)
    # different questions land on different coordinates; the random projection is another schema
    assert not np.allclose(ex.matrix(texts, E)[0], ex.matrix(texts, E)[1])
    random_ex = FeatureExtractor([FeatureGroup(name="bias"), FeatureGroup(name="embedding", dims=8)], resources)
    assert random_ex.schema_id != ex.schema_id
    assert "principal_basis" in ex.description["fingerprints"]


def test_schemas_without_the_option_keep_their_ids():
    # the id of this schema as computed before `basis` existed (commit ceb1b27): learned state stored
    # under it must still be found
    ex = FeatureExtractor([FeatureGroup(name="bias"), FeatureGroup(name="length"),
                           FeatureGroup(name="shape", weight=2.0)], None)
    assert ex.schema_id == "4b9246302b1a"
    assert all("basis" not in g for g in ex.description["groups"])


POLICY = """\
version: 1
models:
  a: {{provider: openai/a, api_base: "http://127.0.0.1:9/v1"}}
  b: {{provider: openai/b, api_base: "http://127.0.0.1:9/v1"}}
decisions:
  - name: learn
    models: [a, b]
    algorithm:
      linucb:
        features: [bias, {group}]
"""


def test_the_policy_accepts_a_principal_embedding_and_names_bad_options():
    policy = load_policy_text(POLICY.format(group="{embedding: {dims: 32, basis: principal}}"), "p.yaml")
    group = policy.decisions[0].algorithm.options.features[1]
    assert (group.name, group.dims, group.basis) == ("embedding", 32, "principal")
    for bad, needle in (("{embedding: {dims: 65, basis: principal}}", "64 axes"),
                        ("{domain: {basis: principal}}", "embedding group only"),
                        ("{embedding: {basis: pca}}", "basis")):
        with pytest.raises(PolicyError) as info:
            load_policy_text(POLICY.format(group=bad), "p.yaml")
        message = str(info.value)
        assert needle in message and "p.yaml:" in message, message


def test_the_routing_benchmark_spec_names_the_basis():
    from benchmarks import routing as rb

    groups = rb.parse_features("bias*2,shape,embedding:32:principal")
    assert [(g.name, g.weight) for g in groups] == [("bias", 2.0), ("shape", 1.0), ("embedding", 1.0)]
    assert (groups[2].dims, groups[2].basis) == (32, "principal")
    assert rb.features_text(groups) == "bias*2,shape,embedding:32:principal"
    assert rb.features_text(rb.parse_features("embedding:16")) == "embedding:16"
    assert rb.parse_features(rb.DEFAULT_FEATURES)  # the default parses
