"""Latent-concept matches of one SAE for the index (protein and recommender workspaces), from streamed counts.

The math is backend/index/concepts.py's; this module assembles it from what the index build accumulates in
bounded memory (backend/index/stats.py): the threshold counts of the train firings (a ``ConceptAccumulator``
fed from the firing spill), the top-k rows per latent, and the held-out (latent, concept) co-occurrence counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from backend.index.concepts import ConceptAccumulator, assign_concepts, confidence_from_counts, enrichment_table
from backend.index.label import Explanation

COLUMNS = [
    "latent",
    "concept",
    "method",
    "threshold",
    "precision",
    "recall",
    "f1",
    "share",
    "lift",
    "q_value",
    "conf_precision",
    "conf_recall",
    "confidence",
    "support",
]


def concept_matches(
    acc: ConceptAccumulator,
    top_items,
    labels: np.ndarray,
    held_both: np.ndarray,
    held_fires: np.ndarray,
    held_concept: np.ndarray,
    names: list[str],
    per_latent: int = 3,
    max_q: float = 0.05,
    min_lift: float = 1.5,
) -> pd.DataFrame:
    """Latent-concept matches of one SAE, two ways, each checked on held-out rows:

    - ``f1`` (InterPLM): on the train rows, precision/recall/F1 of "fires above t x max" against the
      concept over thresholds t, with a Bonferroni x BH-corrected hypergeometric p (``acc``); the ``per_latent``
      best-F1 significant concepts per latent whose precision is >= ``min_lift`` x the concept's base rate;
    - ``top`` (RecSAE): the concept most over-represented among the latent's indexed top activations
      (``top_items`` of the top-k merge; q <= max_q, lift >= 1.5, >= 3 hits).
    Confidence (RecSAE): on the held-out rows, predict "the latent fires" from the concept alone:
    conf_precision = P(fires | concept), conf_recall = P(concept | fires), confidence = their F1, from the held-out
    counts ``held_both`` (d_sae, C) (fires and concept), ``held_fires`` (d_sae,), ``held_concept`` (C,)."""
    d_sae = len(held_fires)
    f1 = acc.result(names)
    # lift = precision / base rate: a frequent concept (a popular-item band, one gender) would otherwise
    # match every dense latent on F1 alone
    f1["lift"] = f1["precision"] / (f1["n_concept"] / max(acc.n, 1)).clip(lower=1e-12)
    f1 = f1[(f1["q_value"] <= max_q) & (f1["tp"] > 0) & (f1["lift"] >= min_lift)]
    f1 = f1.sort_values(["latent", "f1"], ascending=[True, False])
    f1 = f1.groupby("latent").head(per_latent).assign(method="f1")
    g, _, _, row = top_items
    yl = labels[row].astype(np.float64)  # (n_top_pairs, C)
    hits = np.zeros((d_sae, labels.shape[1]))
    np.add.at(hits, g, yl)
    n_train = acc.n_concept.numpy().astype(np.int64)
    enr = enrichment_table(hits, np.bincount(g, minlength=d_sae), n_train, acc.n, names)
    top = assign_concepts(enr, max_q=max_q, min_lift=min_lift).assign(method="top")
    out = pd.concat(
        [
            f1[["latent", "concept", "method", "threshold", "precision", "recall", "f1", "lift", "q_value"]],
            top[["latent", "concept", "method", "share", "lift", "q_value"]],
        ],
        ignore_index=True,
    )
    col = {c: j for j, c in enumerate(names)}
    li, ci = out["latent"].to_numpy(np.int64), out["concept"].map(col).to_numpy(np.int64)
    both = held_both.astype(np.float32)  # counts as the sparse float32 product gave them
    n_c, n_fire = held_concept.astype(np.float32), held_fires.astype(np.float32)
    prec, rec, conf = confidence_from_counts(both[li, ci], n_c[ci], n_fire[li])
    out["conf_precision"], out["conf_recall"], out["confidence"] = prec, rec, conf
    out["support"] = n_c[ci].astype(np.int64)
    return (
        out.reindex(columns=COLUMNS)
        .astype({"latent": np.int32})
        .sort_values(["latent", "confidence"], ascending=[True, False])
    )


def concept_explanations(cm: pd.DataFrame, expl: list[Explanation]) -> list[tuple[int, Explanation]]:
    """The best concept match of each latent as an explanation (method and scorer ``concept``), and in ``expl``
    (in place) it replaces the latent's label when it predicts firing better. Returns (latent, explanation)."""
    out = []
    best = cm.sort_values("confidence", ascending=False).drop_duplicates("latent")
    for r in best.itertuples(index=False):
        e = expl[int(r.latent)]
        c = Explanation(
            str(r.concept),
            e.tokens,
            e.scores,
            method="concept",
            scorer="concept",
            precision=float(r.conf_precision),
            recall=float(r.conf_recall),
            confidence=float(r.confidence),
        )
        out.append((int(r.latent), c))
        if c.confidence > e.confidence:
            expl[int(r.latent)] = c
    return out
