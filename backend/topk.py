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
