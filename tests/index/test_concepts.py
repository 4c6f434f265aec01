"""Held-out concept confidence: one implementation (backend/index/concepts.py) for dense latents and for the
index's sparse held-out firings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from backend.index.concepts import concept_confidence, confidence_from_counts, held_out_confidence


def test_confidence_from_counts_by_hand():
    both, n_c, n_fire = np.array([2.0, 0.0, 3.0]), np.array([4.0, 0.0, 3.0]), np.array([2.0, 5.0, 0.0])
    prec, rec, f1 = confidence_from_counts(both, n_c, n_fire)
    assert prec.tolist() == [0.5, 0.0, 1.0] and rec.tolist() == [1.0, 0.0, 0.0]
    assert f1.tolist() == pytest.approx([2 / 3, 0.0, 0.0])  # 0 where a denominator is 0, no warnings


def test_sparse_held_out_confidence_equals_the_dense_one():
    g = np.random.default_rng(0)
    N, L, C = 600, 12, 5
    y = g.random((N, C)) < 0.3
    z = (g.random((N, L)) < 0.2) * g.random((N, L)).astype(np.float32)
    z[:, 3] = y[:, 1] * 2.0  # latent 3 fires exactly on concept 1
    pairs = pd.DataFrame({"latent": [3, 0, 5, 11, 7], "concept": ["c1", "c0", "c4", "c2", "c1"]})
    dense = concept_confidence(z, y, [f"c{i}" for i in range(C)], pairs)
    r, c = np.nonzero(z > 0)
    fires = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(N, L))
    prec, rec, conf, support = held_out_confidence(
        fires, y, pairs["latent"].to_numpy(), pairs["concept"].str[1:].astype(int).to_numpy()
    )
    assert np.allclose(prec, dense["precision"]) and np.allclose(rec, dense["recall"])
    assert np.allclose(conf, dense["f1"]) and support.tolist() == dense["support"].tolist()
    assert (prec[0], rec[0], conf[0]) == (1.0, 1.0, 1.0)
