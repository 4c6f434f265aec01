"""2-D maps of decoder directions (UMAP on unit decoder rows, cosine metric), computed at index time.

Pure: arrays in, coordinates out. umap-learn's numba warm-up (~35 s the first time in a process)
happens here, during indexing, never on a request.
"""
from __future__ import annotations

import numpy as np


def layout(W_dec: np.ndarray, seed: int = 0, n_neighbors: int = 15, method: str = "umap") -> np.ndarray:
    """(n, 2) coordinates for decoder rows (n, d): UMAP (cosine) after a 64-d PCA, or the first two
    principal components (method="pca", and always for fewer than 20 rows)."""
    W = W_dec / np.linalg.norm(W_dec, axis=1, keepdims=True).clip(1e-8)
    centred = W - W.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    if len(W) < 20 or method == "pca":
        return (centred @ vt[:2].T).astype(np.float32)
    import umap

    W = centred @ vt[:64].T  # PCA to 64 dims first: the neighbour search is 10x cheaper

    reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(W) - 1), min_dist=0.1, metric="cosine", random_state=seed,
                        n_epochs=200, low_memory=True)
    return reducer.fit_transform(W).astype(np.float32)


def joint_layout(mats: dict[str, np.ndarray], seed: int = 0, method: str = "umap") -> dict[str, np.ndarray]:
    """One layout over all SAEs' decoder rows together, split back per SAE."""
    names = list(mats)
    xy = layout(np.concatenate([mats[n] for n in names]), seed, method=method)
    out, s = {}, 0
    for n in names:
        out[n] = xy[s : s + len(mats[n])]
        s += len(mats[n])
    return out
