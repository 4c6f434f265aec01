"""Latent-concept association, shared by protein (residue) and recommender (item position) workspaces.

Inputs are aligned per token: SAE latents ``z`` (N, L) and boolean concept labels ``y`` (N, C)
(a residue inside a Pfam domain, the item at a position being a comedy, the user being a student...).
Everything is computed for all latents x concepts at once with matrix products, never a Python
loop over latents.

1. Threshold F1 (InterPLM). Latent l fires at relative threshold t when z_nl > t * max_n z_nl
   (t = 0 means z > 0). With f = fires (N, L) and y (N, C):
       TP = f^T y,  precision = TP / sum_n f,  recall = TP / sum_n y,  F1 = 2PR / (P + R),
   for each t in ``THRESHOLDS``; the best-F1 threshold is kept per (latent, concept).
2. Enrichment: the one-sided Fisher exact test of over-representation is the hypergeometric tail
       p = P[X >= TP],  X ~ Hypergeom(N total, K = sum_n y_c positives, n = sum_n f_l draws).
   The threshold was chosen for best F1, so p is Bonferroni-multiplied by the number of
   thresholds, then Benjamini-Hochberg across all latent x concept pairs gives q.
3. Top-activation over-representation (RecSAE): among latent l's ``top_n`` highest (firing)
   positions, share_lc = mean y_c; lift = share / base rate of c; p as in (2) with n = top count.
4. Confidence (RecSAE): predict "latent l fires" on HELD-OUT data from its concept c alone:
       precision = |fires and c| / |c|,   recall = |fires and c| / |fires|,   confidence = their F1
   (``confidence_from_counts``; from dense latents ``concept_confidence``, from the index's sparse
   held-out firings ``held_out_confidence``).

Hazards: max-relative thresholds make a latent with one huge outlier look sparse; latents that
never fire get precision 0 and p = 1. Labels and latents must come from the same token order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.stats import false_discovery_control, hypergeom

THRESHOLDS = (0.0, 0.15, 0.3, 0.5, 0.8)


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _enrichment_p(tp: np.ndarray, n_total: int, n_concept: np.ndarray, n_draw: np.ndarray) -> np.ndarray:
    """P[X >= tp], X ~ Hypergeom(n_total, n_concept, n_draw); broadcast over (L, C)."""
    p = hypergeom.sf(tp - 1, n_total, n_concept, n_draw)
    return np.where(tp > 0, np.clip(p, 0.0, 1.0), 1.0)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values over all entries of ``p`` (same shape)."""
    flat = np.clip(np.asarray(p, dtype=float).ravel(), 0.0, 1.0)
    return false_discovery_control(flat, method="bh").reshape(np.shape(p)) if flat.size else np.asarray(p)


class ConceptAccumulator:
    """Streaming threshold counts for ``concept_f1`` over chunks of tokens.

    ``max_act`` (L,) is each latent's maximum over the whole corpus (thresholds are relative to it),
    e.g. from a first pass or the feature index."""

    def __init__(self, max_act, n_concepts: int, thresholds: Sequence[float] = THRESHOLDS):
        self.max_act = _t(max_act).float()  # (L,)
        self.thr = torch.tensor(thresholds, dtype=torch.float32)  # (K,)
        L, K = len(self.max_act), len(thresholds)
        self.tp = torch.zeros(K, L, n_concepts, dtype=torch.float64)
        self.n_fire = torch.zeros(K, L, dtype=torch.float64)
        self.n_concept = torch.zeros(n_concepts, dtype=torch.float64)
        self.n = 0

    def add(self, latents, labels) -> None:
        """latents (n, L) float, labels (n, C) bool for the same n tokens."""
        z, y = _t(latents).float(), _t(labels).float()
        if z.shape[0] != y.shape[0]:
            raise ValueError(f"latents have {z.shape[0]} tokens but labels have {y.shape[0]}: they must be aligned")
        for k, t in enumerate(self.thr):
            f = (z > t * self.max_act).float()  # (n, L)
            self.tp[k] += (f.T @ y).double()  # (L, C)
            self.n_fire[k] += f.sum(0).double()
        self.n_concept += y.sum(0).double()
        self.n += z.shape[0]

    def result(self, concepts: Sequence[str]) -> pd.DataFrame:
        """One row per (latent, concept) at its best-F1 threshold, with enrichment p and BH q."""
        tp, nf, nc = self.tp.numpy(), self.n_fire.numpy()[:, :, None], self.n_concept.numpy()[None, None, :]
        prec = np.divide(tp, nf, out=np.zeros_like(tp), where=nf > 0)
        rec = np.divide(tp, nc, out=np.zeros_like(tp), where=nc > 0)
        f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
        best = f1.argmax(0)  # (L, C)
        pick = lambda a: np.take_along_axis(a, best[None], 0)[0]  # noqa: E731
        tp_b, nf_b = pick(tp), pick(np.broadcast_to(nf, tp.shape))
        p = np.minimum(1.0, _enrichment_p(tp_b, self.n, np.broadcast_to(nc[0], tp_b.shape), nf_b) * len(self.thr))
        L, C = best.shape
        return pd.DataFrame(
            {
                "latent": np.repeat(np.arange(L), C),
                "concept": np.tile(np.asarray(concepts, dtype=object), L),
                "threshold": self.thr.numpy()[best].ravel(),
                "precision": pick(prec).ravel(),
                "recall": pick(rec).ravel(),
                "f1": pick(f1).ravel(),
                "tp": tp_b.ravel().astype(np.int64),
                "n_fire": nf_b.ravel().astype(np.int64),
                "n_concept": np.tile(nc[0, 0], L).astype(np.int64),
                "p_value": p.ravel(),
                "q_value": bh_qvalues(p).ravel(),
            }
        )


def concept_f1(
    latents, labels, concepts: Sequence[str], thresholds: Sequence[float] = THRESHOLDS, chunk: int = 8192
) -> pd.DataFrame:
    """Best-threshold precision/recall/F1 and enrichment q for every (latent, concept); in-memory input."""
    z, y = _t(latents).float(), _t(labels).bool()
    if y.shape[1] != len(concepts):
        raise ValueError(f"labels have {y.shape[1]} columns but {len(concepts)} concept names were given")
    acc = ConceptAccumulator(z.max(0).values.clamp_min(0), len(concepts), thresholds)
    for s in range(0, len(z), chunk):
        acc.add(z[s : s + chunk], y[s : s + chunk])
    return acc.result(concepts)


def best_concept_per_latent(table: pd.DataFrame, min_f1: float = 0.0, max_q: float = 0.05) -> pd.DataFrame:
    """For each latent, its highest-F1 concept among significant pairs (q <= max_q, F1 >= min_f1)."""
    ok = table[(table["q_value"] <= max_q) & (table["f1"] >= min_f1)]
    return ok.sort_values(["latent", "f1"], ascending=[True, False]).drop_duplicates("latent").reset_index(drop=True)


def top_activation_enrichment(latents, labels, concepts: Sequence[str], top_n: int = 50) -> pd.DataFrame:
    """Over-representation of each concept among each latent's top-``top_n`` firing positions.

    Rows (latent, concept): n_top (firing positions used, <= top_n), share, base_rate, lift, p, q."""
    z, y = _t(latents).float(), _t(labels).float()
    N, L = z.shape
    vals, idx = torch.topk(z.T, min(top_n, N), dim=1)  # (L, k)
    firing = (vals > 0).float()  # (L, k)
    hits = torch.einsum("lk,lkc->lc", firing, y[idx])  # (L, C)
    return enrichment_table(hits.numpy(), firing.sum(1).numpy(), y.sum(0).numpy(), N, concepts)


def enrichment_table(
    hits: np.ndarray, n_top: np.ndarray, n_concept: np.ndarray, n_total: int, concepts: Sequence[str]
) -> pd.DataFrame:
    """The ``top_activation_enrichment`` frame from counts: hits (L, C) concept positives among each
    latent's n_top (L,) top positions; n_concept (C,) positives among all n_total positions."""
    hits = np.round(hits)
    L, C = hits.shape
    n_top = np.asarray(n_top, dtype=float)[:, None]
    share = np.divide(hits, n_top, out=np.zeros_like(hits, dtype=float), where=n_top > 0)
    base = np.asarray(n_concept, dtype=float)[None, :] / max(n_total, 1)
    lift = np.divide(share, base, out=np.zeros_like(share), where=base > 0)
    p = _enrichment_p(
        hits, n_total, np.broadcast_to(np.asarray(n_concept)[None, :], hits.shape), np.broadcast_to(n_top, hits.shape)
    )
    return pd.DataFrame(
        {
            "latent": np.repeat(np.arange(L), C),
            "concept": np.tile(np.asarray(concepts, dtype=object), L),
            "n_top": np.repeat(n_top[:, 0].astype(np.int64), C),
            "hits": hits.ravel().astype(np.int64),
            "share": share.ravel(),
            "base_rate": np.tile(base[0], L),
            "lift": lift.ravel(),
            "p_value": p.ravel(),
            "q_value": bh_qvalues(p).ravel(),
        }
    )


def assign_concepts(
    enrichment: pd.DataFrame, max_q: float = 0.05, min_hits: int = 3, min_lift: float = 1.5
) -> pd.DataFrame:
    """Each latent's interpretation: its most significant over-represented concept (smallest p,
    then largest lift) among pairs with q <= max_q, lift >= min_lift and >= ``min_hits`` top positions.
    (min_lift keeps near-universal concepts, e.g. a decade holding 80% of ratings, from winning on p alone.)"""
    ok = enrichment[
        (enrichment["q_value"] <= max_q) & (enrichment["hits"] >= min_hits) & (enrichment["lift"] >= min_lift)
    ]
    ok = ok.sort_values(["latent", "p_value", "lift"], ascending=[True, True, False])
    return ok.drop_duplicates("latent")[["latent", "concept", "share", "lift", "q_value"]].reset_index(drop=True)


def concept_confidence(
    latents, labels, concepts: Sequence[str], assignment: pd.DataFrame, fire_threshold: float = 0.0
) -> pd.DataFrame:
    """RecSAE confidence on held-out tokens: predict fires(l) := concept(l) present.

    ``assignment`` has columns latent, concept (e.g. from ``assign_concepts`` on a training split).
    Returns latent, concept, precision = P(fires | c), recall = P(c | fires), f1, support (|c|), n_fire."""
    z, y = _t(latents).float(), _t(labels).bool()
    col = {c: j for j, c in enumerate(concepts)}
    unknown = sorted(set(assignment["concept"]) - set(col))
    if unknown:
        raise ValueError(f"assigned concept(s) {unknown[:5]} are not among the label columns")
    lat = torch.tensor(assignment["latent"].to_numpy(dtype=np.int64))
    con = torch.tensor(assignment["concept"].map(col).to_numpy(dtype=np.int64))
    fires = z[:, lat] > fire_threshold  # (N, m)
    pred = y[:, con]  # (N, m)
    both = (fires & pred).sum(0).double().numpy()
    n_pred, n_fire = pred.sum(0).double().numpy(), fires.sum(0).double().numpy()
    prec, rec, f1 = confidence_from_counts(both, n_pred, n_fire)
    return pd.DataFrame(
        {
            "latent": lat.numpy(),
            "concept": assignment["concept"].to_numpy(),
            "precision": prec,
            "recall": rec,
            "f1": f1,
            "support": n_pred.astype(np.int64),
            "n_fire": n_fire.astype(np.int64),
        }
    )


def held_out_confidence(
    fires: sp.csr_matrix, labels: np.ndarray, latent: np.ndarray, concept: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``concept_confidence`` of the pairs (latent[i], concept[i]) from sparse firings: ``fires`` (N, L) is 1
    where a latent fired on a held-out token, ``labels`` (N, C) the same tokens' concepts (the index keeps
    firings sparse). Returns precision, recall, confidence (float32 for a float32 ``fires``) and support |c|
    per pair."""
    Y = sp.csr_matrix(labels.astype(np.float32))  # (N, C)
    both = (fires.T @ Y).toarray()  # (L, C)
    n_fire = np.asarray(fires.sum(0)).ravel()
    n_c = np.asarray(Y.sum(0)).ravel()
    prec, rec, conf = confidence_from_counts(both[latent, concept], n_c[concept], n_fire[latent])
    return prec, rec, conf, n_c[concept].astype(np.int64)


def confidence_from_counts(
    both: np.ndarray, n_concept: np.ndarray, n_fire: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair, from held-out counts both = |fires and c|, n_concept = |c|, n_fire = |fires|:
    precision = both / n_concept = P(fires | c), recall = both / n_fire = P(c | fires) and their F1,
    0 where a denominator is 0; in both's dtype."""
    prec = np.divide(both, n_concept, out=np.zeros_like(both), where=n_concept > 0)
    rec = np.divide(both, n_fire, out=np.zeros_like(both), where=n_fire > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(both), where=(prec + rec) > 0)
    return prec, rec, f1
