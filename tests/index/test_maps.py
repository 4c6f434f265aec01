"""Maps of decoder directions (backend/index/maps.py): UMAP keeps the neighbours of clustered directions."""

from __future__ import annotations

import numpy as np
import pytest

from backend.index.maps import joint_layout, layout


def _clustered(n_clusters: int = 12, per: int = 40, d: int = 300, spread: float = 0.35, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, d))
    return np.concatenate(
        [c + spread * np.linalg.norm(c) / np.sqrt(d) * rng.standard_normal((per, d)) for c in centres]
    )


def _knn(X: np.ndarray, k: int) -> np.ndarray:
    sq = (X**2).sum(1)
    D = sq[:, None] + sq[None, :] - 2 * X @ X.T
    np.fill_diagonal(D, np.inf)
    return np.argpartition(D, k, axis=1)[:, :k]


@pytest.mark.slow  # umap's numba compilation takes ~30 s on the first call
def test_umap_map_keeps_cluster_neighbours_and_is_reproducible():
    W = _clustered()
    xy = layout(W, seed=0)
    assert xy.shape == (len(W), 2) and np.isfinite(xy).all()
    cluster = np.repeat(np.arange(12), 40)
    same = (cluster[_knn(xy, 10)] == cluster[:, None]).mean()
    assert same > 0.9  # chance is 1/12: the map keeps each direction among its own cluster
    assert np.array_equal(xy, layout(W, seed=0))  # the same seed gives the same map


def test_pca_map_and_joint_split():
    W = _clustered(n_clusters=3, per=20, d=40)
    xy = layout(W, method="pca")
    assert xy.shape == (60, 2)
    joint = joint_layout({"a": W[:25], "b": W[25:]}, method="pca")
    assert joint["a"].shape == (25, 2) and joint["b"].shape == (35, 2)
    with pytest.raises(ValueError, match="map method"):
        layout(W, method="tsne")
