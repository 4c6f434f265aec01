"""Streaming per-group top-k with a threshold filter (the index's hot loop).

Each group (a latent, or a latent x quantile band) keeps its k best (score, payload) pairs. A
chunk's candidates are first filtered against the group's current k-th best score, which after a
few chunks discards almost everything; only survivors are merged by one lexsort together with
the kept entries. Cost per chunk: O(candidates + groups * k), not O(tokens * groups).
"""

from __future__ import annotations

import numpy as np


class StreamingTopK:
    def __init__(self, n_groups: int, k: int):
        self.n, self.k = n_groups, k
        self.score = np.full((n_groups, k), -np.inf, dtype=np.float64)
        self.payload = np.full((n_groups, k), -1, dtype=np.int64)

    @property
    def threshold(self) -> np.ndarray:
        """(n_groups,) current k-th best score (-inf while a group has fewer than k)."""
        return self.score[:, -1]

    def update(self, group: np.ndarray, score: np.ndarray, payload: np.ndarray) -> None:
        keep = score > self.threshold[group]
        if not keep.any():
            return
        g, s, p = group[keep], score[keep], payload[keep]
        touched = np.unique(g)
        old_s = self.score[touched].ravel()
        old_p = self.payload[touched].ravel()
        old_g = np.repeat(touched, self.k)
        G = np.concatenate([old_g, g])
        S = np.concatenate([old_s, s])
        P = np.concatenate([old_p, p])
        order = np.lexsort((-S, G))  # by group, then score descending
        G, S, P = G[order], S[order], P[order]
        start = np.searchsorted(G, touched)
        rank = np.arange(len(G)) - np.repeat(start, np.diff(np.append(start, len(G))))
        top = rank < self.k
        self.score[G[top], rank[top]] = S[top]
        self.payload[G[top], rank[top]] = P[top]

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(group, rank, score, payload) of every filled slot, best first within a group."""
        g, r = np.nonzero(np.isfinite(self.score))
        return g, r, self.score[g, r], self.payload[g, r]


# ---- exact pre-activations of selected (token, latent) pairs (the SAE trainer's bf16 path) ------

_PAIR_DOTS = None


def _pair_dots_kernel():
    """Compile (once per process; cached on disk) the numba kernel behind ``pair_dots``."""
    global _PAIR_DOTS
    if _PAIR_DOTS is None:
        from numba import njit

        @njit(cache=True, fastmath=True)
        def kernel(rows, cols, x_c, W_t, b_enc, out):
            d = x_c.shape[1]
            for n in range(len(rows)):
                i, c = rows[n], cols[n]
                s = np.float32(0.0)
                for t in range(d):
                    s += x_c[i, t] * W_t[c, t]
                out[n] = s + b_enc[c]

        _PAIR_DOTS = kernel
    return _PAIR_DOTS


def pair_dots(rows, cols, x_c, W_t, b_enc=None):
    """float32 x_c[rows[n]] . W_t[cols[n]] + b_enc[cols[n]] (b_enc None: 0) for each pair n: (n_pairs,).

    x_c (N, d), W_t (m, d) (the encoder transposed, rows contiguous) and b_enc (m,) are float32
    tensors. On CPU a threaded numba loop (one length-d dot per pair, reading W_t rows); elsewhere
    torch's embedding_bag per-sample-weight gradient kernel, which computes the same dots.
    """
    import torch

    if x_c.device.type != "cpu":
        return pair_dots_torch(rows, cols, x_c, W_t, b_enc)
    out = np.empty(len(rows), np.float32)
    if b_enc is None:
        b_enc = torch.zeros(W_t.shape[0])
    if len(rows):
        _pair_dots_kernel()(
            rows.numpy(),
            cols.numpy(),
            x_c.detach().contiguous().numpy(),
            W_t.detach().contiguous().numpy(),
            b_enc.detach().contiguous().numpy(),
            out,
        )
    return torch.from_numpy(out)


def pair_dots_torch(rows, cols, x_c, W_t, b_enc=None):
    """``pair_dots`` with torch ops only (any device)."""
    import torch

    offsets = torch.arange(len(rows), device=rows.device)
    dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        x_c.detach().contiguous(), W_t.detach().contiguous(), cols, offsets, rows, 0, -1
    )
    return dots if b_enc is None else dots + b_enc.detach()[cols]


_COUNT_SORT = None


def bucket_order(ids, n: int):
    """(order, offsets): a stable permutation putting ``ids`` (int64, values in [0, n)) in ascending order, and
    each id's start in it, (n,). A serial counting sort: O(len(ids) + n), where torch's threaded sort of a
    few 100k int64s can take 100x longer on a contended 2-core machine."""
    import torch

    global _COUNT_SORT
    if ids.device.type != "cpu":
        order = torch.argsort(ids, stable=True)
        counts = torch.bincount(ids, minlength=n)
        return order, torch.cumsum(counts, 0) - counts
    if _COUNT_SORT is None:
        from numba import njit

        @njit(cache=True)
        def kernel(ids, n, order, offsets):
            counts = np.zeros(n + 1, np.int64)
            for i in range(len(ids)):
                counts[ids[i] + 1] += 1
            for j in range(n):
                counts[j + 1] += counts[j]
            offsets[:] = counts[:n]
            for i in range(len(ids)):
                c = ids[i]
                order[counts[c]] = i
                counts[c] += 1

        _COUNT_SORT = kernel
    order = np.empty(len(ids), np.int64)
    offsets = np.empty(n, np.int64)
    _COUNT_SORT(ids.numpy(), n, order, offsets)
    return torch.from_numpy(order), torch.from_numpy(offsets)
