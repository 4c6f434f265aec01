"""2-D maps of decoder directions, computed at index time (pure: arrays in, coordinates out).

Each latent is placed by its unit decoder row w_i = W_dec[i] / |W_dec[i]|, so two latents land near
each other when their output directions have a high cosine. UMAP (cosine metric) runs on the rows
projected onto their top ``PROJ_DIM`` right singular vectors (uncentred, so inner products are kept
as well as a rank-256 subspace can keep them), with ``N_NEIGHBORS`` 10 and ``MIN_DIST`` 0.

The settings are measured (bench/bench_maps.py, the demo's `general` SAE, 1,152 latents at d=576): the share of each
latent's 10 nearest decoder directions that are among its 10 nearest map points is 0.198 with these settings, 0.107
with the earlier ones (64 dimensions, n_neighbors 15, min_dist 0.1) and 0.207 in the full space (no projection); a
random decoder laid out the same way keeps 0.124 (0.043 with the earlier settings), so what a map shows beyond chance
is the difference. 256 dimensions keep nearly all of the full space's neighbours at three quarters of its time;
min_dist 0 lets neighbours sit together instead of being spread evenly.

Hazards:
- umap-learn's numba JIT costs ~35 s the first time in a process (the demo index timings in bench/RESULTS.md
  include it); it happens here, during indexing, never on a request. ``import umap`` is deferred so the PCA
  path never pays for it.
- The PCA is an eigendecomposition of the small (d, d) Gram matrix, not an SVD of the (n, d) matrix:
  LAPACK's SVD of 18,432 x 576 takes seconds, and multi-threaded LAPACK on a busy 2-core machine
  spin-waits (a 576 x 576 eigh: 1 s with 2 threads under load, 0.06 s with 1), so it runs on 1 thread.
- Fewer than ``MIN_UMAP`` rows: UMAP's k-NN graph is meaningless, so the first two principal
  components are returned instead (also when ``method="pca"``).
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

MIN_UMAP = 10
PROJ_DIM = 256
N_NEIGHBORS = 10
MIN_DIST = 0.0


def unit_rows(W: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    W = np.asarray(W, dtype=np.float32)
    return W / np.linalg.norm(W, axis=1, keepdims=True).clip(1e-8)


def _top_axes(W: np.ndarray, n: int) -> np.ndarray:
    """(d, n) leading eigenvectors of W^T W (the right singular vectors of W), signs fixed so that
    each axis' largest-magnitude loading is positive (layouts are reproducible across runs)."""
    with threadpool_limits(1):  # a (d, d) problem: threads only add contention
        _, evecs = np.linalg.eigh((W.T @ W).astype(np.float64))  # ascending eigenvalues
    V = evecs[:, ::-1][:, :n]
    V *= np.sign(V[np.abs(V).argmax(0), np.arange(V.shape[1])])
    return V.astype(np.float32)


def pca_2d(W_dec: np.ndarray) -> np.ndarray:
    """(n, 2) coordinates on the first two principal components of the (centred) unit rows."""
    W = unit_rows(W_dec)
    centred = W - W.mean(0)
    return (centred @ _top_axes(centred, 2)).astype(np.float32)


def layout(W_dec: np.ndarray, seed: int = 0, n_neighbors: int = N_NEIGHBORS, method: str = "umap") -> np.ndarray:
    """(n, 2) coordinates for decoder rows (n, d): UMAP with the cosine metric, or PCA (see module doc)."""
    if method not in ("umap", "pca"):
        raise ValueError(f"map method {method!r}: use 'umap' or 'pca'")
    W = unit_rows(W_dec)
    if method == "pca" or len(W) < MIN_UMAP:
        return pca_2d(W)
    import umap

    if W.shape[1] > PROJ_DIM:
        W = W @ _top_axes(W, PROJ_DIM)
    reducer = umap.UMAP(
        n_neighbors=min(n_neighbors, len(W) - 1),
        min_dist=MIN_DIST,
        metric="cosine",
        random_state=seed,
        n_epochs=200,
        low_memory=True,
        n_jobs=1,
    )
    return reducer.fit_transform(W).astype(np.float32)


def joint_layout(mats: dict[str, np.ndarray], seed: int = 0, method: str = "umap") -> dict[str, np.ndarray]:
    """One layout of all SAEs' decoder rows together (shared coordinates), split back per SAE."""
    names = list(mats)
    xy = layout(np.concatenate([mats[n] for n in names]), seed, method=method)
    bounds = np.cumsum([0] + [len(mats[n]) for n in names])
    return {n: xy[bounds[i] : bounds[i + 1]] for i, n in enumerate(names)}
