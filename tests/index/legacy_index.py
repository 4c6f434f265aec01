"""The in-memory index builder as it was before the bounded-memory one (kept verbatim as a test oracle).

tests/index/test_bounded_index.py runs it beside backend/index/sae_index.py on the same activations and
compares every table: the streaming builder must give the same statistics, contexts, samples and labels.
Its memory grows with the corpus (the firings are kept: 12 bytes per nonzero); never use it for real indexes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
import torch

from backend.config import IndexConfig
from backend.data.activations import stream_activations
from backend.index.collect import HOLDOUT_EVERY, IndexActs, _cached_windows, encode_sparse, index_windows
from backend.index.label import (
    Explanation,
    Labeller,
    LatentEvidence,
    SplitStats,
    StatisticalLabeller,
    detection_scores,
    ngrams_around,
    previous_tokens,
)
from backend.index.score import Example, fuzz_items, rule_fuzz
from backend.index.tables import logit_lens
from backend.sae.kernels import StreamingTopK

CHUNK = 4096
N_BINS = 20


@dataclass
class Firings:
    """Every nonzero activation of one SAE on the train rows: key = row * d_sae + latent, strictly
    increasing (rows are encoded in order, nonzero() is row-major), and its value."""

    key: np.ndarray  # (nnz,) int64
    value: np.ndarray  # (nnz,) float32
    d_sae: int

    def lookup(self, rows: np.ndarray, latents: np.ndarray) -> np.ndarray:
        """Activation of latents[i] on rows[i] (0 where it did not fire), by binary search."""
        if len(self.key) == 0:
            return np.zeros(len(rows), np.float32)
        k = rows.astype(np.int64) * self.d_sae + latents
        i = np.searchsorted(self.key, k).clip(max=len(self.key) - 1)
        return np.where(self.key[i] == k, self.value[i], 0).astype(np.float32)

    def slices(self, size: int = 1 << 22) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, latents, values) in slices of ``size`` nonzeros (bounded temporaries)."""
        for s in range(0, len(self.key), size):
            r, c = np.divmod(self.key[s : s + size], self.d_sae)
            yield r, c, self.value[s : s + size]


def _encode_rows(sae, acts: torch.Tensor, rows: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """(key = row * d_sae + latent, value) of every firing on ``rows`` (increasing keys: a ``Firings``)."""
    d_sae, keys, vals = int(sae.W_dec.shape[0]), [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    for r, c, v, _ in encode_sparse(sae, acts, rows, device):
        keys.append(r.astype(np.int64) * d_sae + c)
        vals.append(v.astype(np.float32))
    return np.concatenate(keys), np.concatenate(vals)


def _positions(fired: Firings, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(position of the firing's row among ``rows``, latent) slices of ``fired`` (whose rows are all in ``rows``)."""
    for r, c, _ in fired.slices():
        yield np.searchsorted(rows, r), c


def _corpora(ia: IndexActs) -> tuple[list[str], np.ndarray]:
    """(corpus names, (n,) each row's corpus index); one unnamed corpus when the windows carry none."""
    if ia.corpus is None:
        return [""], np.zeros(len(ia.token), np.int64)
    names, code = np.unique(ia.corpus.astype(str), return_inverse=True)
    return names.tolist(), code.ravel()[ia.window]


def _share(rates: np.ndarray) -> np.ndarray:
    """(d_sae,) the top entry's share of each row of rates (0 for a latent that never fires)."""
    total = rates.sum(1)
    return np.divide(rates.max(1, initial=0), total, out=np.zeros(len(rates)), where=total > 0)


def _heldout_firing(held: Firings, mx: np.ndarray, nb: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(latent, row) of about ``n`` held-out firings per latent, spread evenly over ``nb`` activation bands of
    (0, train max] (a held-out value above the train max falls in the top band), uniformly within a band."""
    per = -(-n // nb)
    bands = StreamingTopK(len(mx) * nb, per)
    rng = np.random.default_rng(seed + 1)
    for r, c, v in held.slices():
        b = np.minimum((v / np.maximum(mx[c], 1e-12) * nb).astype(np.int64), nb - 1)
        bands.update(c * nb + b, rng.random(len(c)), r)
    g, _, _, row = bands.items()
    order = np.lexsort((-(g % nb), g // nb))  # per latent, the top band first
    return (g // nb)[order], row[order]


def _heldout_silent(held: Firings, held_rows: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(latent, row) of up to ``n`` random held-out rows per latent where it does not fire."""
    d_sae = held.d_sae
    if len(held_rows) == 0 or n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rng = np.random.default_rng(seed + 2)
    cand = held_rows[rng.integers(0, len(held_rows), (d_sae, 3 * n))]  # (d_sae, 3n)
    lat = np.repeat(np.arange(d_sae), 3 * n)
    silent = (held.lookup(cand.ravel(), lat) == 0).reshape(d_sae, 3 * n)
    silent &= np.cumsum(silent, 1) <= n  # the first n per latent
    keep = silent.ravel()
    return lat[keep], cand.ravel()[keep]


def _examples(
    latent: np.ndarray, center: np.ndarray, fired: Firings, ia: IndexActs, prev: np.ndarray, V: int, radius: int
) -> dict[int, list[Example]]:
    """Per latent, its contexts (tokens, activations, token ids) around ``center`` rows, for score.py."""
    start, end = ia.window_bounds()
    out: dict[int, list[Example]] = {}
    for l, c in zip(latent.tolist(), center.tolist()):
        rows = np.arange(max(c - radius, start[c]), min(c + radius + 1, end[c]))
        acts = fired.lookup(rows, np.full(len(rows), l))
        ids = ia.token[rows]
        out.setdefault(l, []).append(Example(ia.tokstr[ids].tolist(), acts.tolist(), ids.tolist(), int(prev[rows[0]])))
    return out


def _explanation_row(sae: str, latent: int, e: Explanation) -> dict[str, Any]:
    """A row of the ``explanations`` table (store.SCHEMA)."""
    return {
        "sae": sae,
        "latent": latent,
        "method": e.method,
        "model": e.model,
        "label": e.label,
        "scorer": e.scorer,
        "detection": e.confidence,
        "precision": e.precision,
        "recall": e.recall,
        "fuzz": e.fuzz,
    }


def _ragged(flat: np.ndarray, lengths: np.ndarray, type_: pa.DataType) -> pa.ListArray:
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=type_))


def index_sae(
    name: str,
    arch: str,
    sae,
    ia: IndexActs,
    cfg: IndexConfig,
    unembed: torch.Tensor | None,
    token_strings: Callable[[list[int]], list[str]],
    seed: int = 0,
    device: torch.device | str = "cpu",
    labeller: Labeller | None = None,
    concepts: tuple[np.ndarray, list[str]] | None = None,
) -> dict[str, pa.Table]:
    """Index one SAE over ``ia``: returns the ``saes``, ``latents`` and ``contexts`` tables (see module doc),
    and ``concepts`` when token concept labels (n, C) are given (protein and recommender workspaces)."""
    d_sae = int(sae.W_dec.shape[0])
    train, held = ia.split_rows()  # the excluded (sink) rows left out, as the bounded builder does
    n_dom, V = len(ia.domains), len(ia.tokstr)
    corpora, corpus = _corpora(ia)
    n_corp = len(corpora)
    fires, sums, mx = np.zeros(d_sae), np.zeros(d_sae), np.zeros(d_sae, np.float32)
    dom_fires, corp_fires = np.zeros(d_sae * n_dom), np.zeros(d_sae * n_corp)
    top = StreamingTopK(d_sae, cfg.top_k)
    keys, vals = [], []
    for r, c, v, cmax in encode_sparse(sae, ia.acts, train, device):  # the one encode pass
        fires += np.bincount(c, minlength=d_sae)
        sums += np.bincount(c, weights=v, minlength=d_sae)
        np.maximum(mx, cmax, out=mx)
        dom_fires += np.bincount(c * n_dom + ia.domain[r], minlength=d_sae * n_dom)
        corp_fires += np.bincount(c * n_corp + corpus[r], minlength=d_sae * n_corp)
        top.update(c, v.astype(np.float64), r)
        keys.append(r.astype(np.int64) * d_sae + c)
        vals.append(v)
    fired = Firings(np.concatenate(keys), np.concatenate(vals), d_sae)
    del keys, vals
    # histogram and quantile-band samples from the kept firings (no re-encode)
    nb = cfg.n_quantiles
    hist = np.zeros(d_sae * N_BINS, np.int64)
    bands = StreamingTopK(d_sae * nb, cfg.per_quantile)
    rng = np.random.default_rng(seed)
    for r, c, v in fired.slices():
        frac = v / mx[c]  # in (0, 1]
        hist += np.bincount(c * N_BINS + np.minimum((frac * N_BINS).astype(np.int64), N_BINS - 1), minlength=len(hist))
        bands.update(c * nb + np.minimum((frac * nb).astype(np.int64), nb - 1), rng.random(len(c)), r)
    held_fired = Firings(*_encode_rows(sae, ia.acts, held, device), d_sae)  # the held-out rows, for scoring only
    prev = previous_tokens(ia.token, ia.window, V)
    g, _, _, row = top.items()
    ev = LatentEvidence(
        SplitStats(prev[train], ia.token[train], _positions(fired, train), d_sae, V),
        ngrams_around(g, row, ia.token, ia.window, d_sae),
        lambda ids: ia.tokstr[ids].tolist(),
    )
    expl = (labeller or StatisticalLabeller()).explain(ev)
    del ev
    detection_scores(expl, SplitStats(prev[held], ia.token[held], _positions(held_fired, held), d_sae, V))
    # held-out scoring contexts (backend/index/score.py): firing ones over activation bands, and non-firing ones
    pos_l, pos_row = _heldout_firing(held_fired, mx, nb, cfg.heldout_contexts, seed)
    neg_l, neg_row = _heldout_silent(held_fired, held, cfg.heldout_contexts, seed)
    for l, exs in _examples(pos_l, pos_row, held_fired, ia, prev, V, cfg.context_radius).items():
        expl[l].fuzz = rule_fuzz(expl[l], fuzz_items(exs, seed=l), V)
    dom_tokens = np.bincount(ia.domain[train], minlength=n_dom).astype(float)
    rates = dom_fires.reshape(d_sae, n_dom) / np.maximum(dom_tokens, 1)
    corp_rates = corp_fires.reshape(d_sae, n_corp) / np.maximum(np.bincount(corpus[train], minlength=n_corp), 1)
    rows = [_explanation_row(name, l, e) for l, e in enumerate(expl)]
    tables: dict[str, pa.Table] = {}
    if concepts is not None:
        hr, hc = np.divmod(held_fired.key, d_sae)
        held_fire = sp.csr_matrix(
            (np.ones(len(hr), np.float32), (np.searchsorted(held, hr), hc)), shape=(len(held), d_sae)
        )  # held-out rows x latents: 1 where it fired
        cm = concept_matches(fired, train, held, held_fire, top.items(), mx, *concepts)
        tables["concepts"] = pa.Table.from_pandas(cm.assign(sae=name), preserve_index=False)
        best = cm.sort_values("confidence", ascending=False).drop_duplicates("latent")
        for r in best.itertuples(index=False):  # a concept beats the token label when it predicts firing better
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
            rows.append(_explanation_row(name, int(r.latent), c))
            if c.confidence > e.confidence:
                expl[int(r.latent)] = c
    tables["explanations"] = pa.Table.from_pylist(rows)
    logit_top, logit_bottom = logit_lens(sae.W_dec, unembed, token_strings)
    edges = np.linspace(0, 1, N_BINS + 1)[None, :] * mx[:, None].astype(np.float64)  # (d_sae, N_BINS + 1)
    fired_any = rates.sum(1) > 0
    latents = pa.table(
        {
            "sae": [name] * d_sae,
            "latent": np.arange(d_sae, dtype=np.int32),
            "density": fires / max(len(train), 1),
            "mean_act": sums / np.maximum(fires, 1),
            "max_act": mx.astype(np.float64),
            "hist_edges": _ragged(edges.ravel(), np.full(d_sae, N_BINS + 1), pa.float64()),
            "hist_counts": _ragged(hist, np.full(d_sae, N_BINS), pa.int64()),
            "label": [e.label for e in expl],
            "confidence": [e.confidence for e in expl],
            "precision": [e.precision for e in expl],
            "recall": [e.recall for e in expl],
            "fuzz": [e.fuzz for e in expl],
            "method": [e.method for e in expl],
            "scorer": [e.scorer for e in expl],
            "top_domain": [ia.domains[int(j)] if fired_any[i] else "" for i, j in enumerate(rates.argmax(1))],
            "domain_share": _share(rates),
            "top_corpus": [corpora[int(j)] if fired_any[i] else "" for i, j in enumerate(corp_rates.argmax(1))],
            "corpus_share": _share(corp_rates),
            "top_tokens": [json.dumps(ia.tokstr[e.tokens].tolist()) for e in expl],
            "top_token_scores": [json.dumps(e.scores) for e in expl],
            "logit_top": logit_top,
            "logit_bottom": logit_bottom,
            "domain_rates": [json.dumps(dict(zip(ia.domains, r.round(6).tolist()))) for r in rates],
        }
    )
    qg, _, _, qrow = bands.items()
    contexts = context_table(
        name,
        np.r_[g, qg // nb],
        np.r_[np.zeros(len(g), np.int64), 1 + qg % nb],
        np.r_[row, qrow],
        fired,
        ia,
        cfg.context_radius,
    )
    held_ctx = context_table(
        name,
        np.r_[pos_l, neg_l],
        np.r_[np.zeros(len(pos_l), np.int64), np.ones(len(neg_l), np.int64)],
        np.r_[pos_row, neg_row],
        held_fired,
        ia,
        cfg.context_radius,
        kinds=HELDOUT_KINDS,
    )
    contexts = pa.concat_tables([contexts, held_ctx])
    saes = pa.table(
        {
            "sae": [name],
            "architecture": [arch],
            "d_in": [int(sae.W_dec.shape[1])],
            "d_sae": [d_sae],
            "n_tokens": [len(train)],
            "n_heldout": [len(held)],
            "n_quantiles": [nb],
        }
    )
    return {"saes": saes, "latents": latents, "contexts": contexts, **tables}


def concept_matches(
    fired: Firings,
    train: np.ndarray,
    held: np.ndarray,
    held_fire: sp.csr_matrix,
    top_items,
    mx: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    per_latent: int = 3,
    max_q: float = 0.05,
    min_lift: float = 1.5,
) -> pd.DataFrame:
    """Latent-concept matches of one SAE (backend/index/concepts.py), two ways, each checked on held-out rows:

    - ``f1`` (InterPLM): on the train rows, precision/recall/F1 of "fires above t x max" against the
      concept over thresholds t, with a Bonferroni x BH-corrected hypergeometric p; the ``per_latent``
      best-F1 significant concepts per latent whose precision is >= ``min_lift`` x the concept's base rate;
    - ``top`` (RecSAE): the concept most over-represented among the latent's indexed top activations
      (q <= max_q, lift >= 1.5, >= 3 hits).
    Confidence (RecSAE): on the held-out rows, predict "the latent fires" from the concept alone:
    conf_precision = P(fires | concept), conf_recall = P(concept | fires), confidence = their F1."""
    from backend.index.concepts import ConceptAccumulator, assign_concepts, enrichment_table, held_out_confidence

    d_sae, C = fired.d_sae, labels.shape[1]
    acc = ConceptAccumulator(mx, C)
    for s in range(0, len(train), CHUNK):  # dense chunks rebuilt from the kept firings (no re-encode)
        rows = train[s : s + CHUNK]
        lo, hi = np.searchsorted(fired.key, [rows[0] * d_sae, (rows[-1] + 1) * d_sae])
        r, c = np.divmod(fired.key[lo:hi], d_sae)
        z = np.zeros((len(rows), d_sae), np.float32)
        z[np.searchsorted(rows, r), c] = fired.value[lo:hi]
        acc.add(torch.from_numpy(z), torch.from_numpy(labels[rows]))
    f1 = acc.result(names)
    # lift = precision / base rate: a frequent concept (a popular-item band, one gender) would otherwise
    # match every dense latent on F1 alone
    f1["lift"] = f1["precision"] / (f1["n_concept"] / max(acc.n, 1)).clip(lower=1e-12)
    f1 = f1[(f1["q_value"] <= max_q) & (f1["tp"] > 0) & (f1["lift"] >= min_lift)]
    f1 = f1.sort_values(["latent", "f1"], ascending=[True, False])
    f1 = f1.groupby("latent").head(per_latent).assign(method="f1")
    g, _, _, row = top_items
    yl = labels[row].astype(np.float64)  # (n_top_pairs, C)
    hits = np.zeros((d_sae, C))
    np.add.at(hits, g, yl)
    n_train = labels[train].sum(0)
    enr = enrichment_table(hits, np.bincount(g, minlength=d_sae), n_train, len(train), names)
    top = assign_concepts(enr, max_q=max_q, min_lift=min_lift).assign(method="top")
    out = pd.concat(
        [
            f1[["latent", "concept", "method", "threshold", "precision", "recall", "f1", "lift", "q_value"]],
            top[["latent", "concept", "method", "share", "lift", "q_value"]],
        ],
        ignore_index=True,
    )
    # held-out confidence of every candidate pair (held_fire's rows are in ``held`` order)
    col = {c: j for j, c in enumerate(names)}
    li, ci = out["latent"].to_numpy(np.int64), out["concept"].map(col).to_numpy(np.int64)
    out["conf_precision"], out["conf_recall"], out["confidence"], out["support"] = held_out_confidence(
        held_fire, labels[held], li, ci
    )
    cols = [
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
    return (
        out.reindex(columns=cols)
        .astype({"latent": np.int32})
        .sort_values(["latent", "confidence"], ascending=[True, False])
    )


HELDOUT_KINDS = ["hpos", "hneg"]
"""Kinds of the held-out scoring contexts: centred on a firing (over activation bands), on a silent token."""


def context_table(
    name: str,
    latent: np.ndarray,
    band: np.ndarray,
    center: np.ndarray,
    fired: Firings,
    ia: IndexActs,
    radius: int,
    kinds: list[str] | None = None,
) -> pa.Table:
    """Context rows: the tokens within +-radius of each center row (inside its window) and the latent's
    activation on each. band 0 = top-k (kind 'top'), b >= 1 = quantile band b-1 (kind 'q<b-1>'), or ``kinds[band]``;
    rank = position by activation at the center, descending, within (latent, kind)."""
    start, end = ia.window_bounds()
    rows = center[:, None] + np.arange(-radius, radius + 1)[None, :]  # (n_ctx, 2r+1)
    valid = (rows >= start[center][:, None]) & (rows < end[center][:, None])
    lengths = valid.sum(1)
    flat_rows = rows[valid]
    acts = fired.lookup(flat_rows, np.repeat(latent, lengths))
    max_act = fired.lookup(center, latent)
    order = np.lexsort((-max_act, band, latent))
    first = np.r_[True, (latent[order][1:] != latent[order][:-1]) | (band[order][1:] != band[order][:-1])]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order)) - group_start
    kinds = np.array(kinds or ["top"] + [f"q{b}" for b in range(int(band.max(initial=0)))], dtype=object)
    focus = radius - (~valid[:, :radius]).sum(1)  # the center's position in its (clipped) context
    return pa.table(
        {
            "sae": [name] * len(center),
            "latent": latent.astype(np.int32),
            "kind": kinds[band].tolist(),
            "rank": rank,
            "window_row": ia.window[center],
            "win_offset": (center - focus - start[center]).astype(np.int32),
            "tokens": _ragged(ia.tokstr[ia.token[flat_rows]], lengths, pa.string()),
            "acts": _ragged(acts, lengths, pa.float32()),
            "focus": focus.astype(np.int32),
            "source": ia.source[ia.window[center]].tolist(),
            "domain": [ia.domains[d] for d in ia.domain[center]],
            "max_act": max_act,
        }
    )


def collect(ws, progress: bool = True, site: str | None = None, windows: pd.Index | None = None) -> IndexActs:
    """Activations at ``site`` (default activations.site) of the indexing windows: read from the workspace's
    activation cache there where it holds them, the rest from one model pass (stream_activations); see the module
    doc. ``windows``: the indexing windows chosen for another site (``IndexActs.selected``), so that every site
    indexes the same tokens."""
    adapter, site = ws.adapter(verbose=progress), site or ws.config.activations.site
    allw = ws.windows()
    cache, cached = _cached_windows(ws, adapter, allw, site)
    if windows is None:
        w = index_windows(allw, ws.config.index.max_tokens, ws.config.train.seed, prefer=cached)
    else:
        w = allw.loc[windows]
    hit = w.index.isin(cached)
    chunks = list(
        stream_activations(
            adapter, w[~hit], site, ws.config.activations.batch_size, progress=progress, desc="index activations"
        )
    )
    parts = [(c.acts.half(), c.token_ids.numpy(), c.window.numpy()) for c in chunks]
    for i in range(len(cache.shards) if cache is not None and hit.any() else 0):
        sh = cache.load_shard(i)
        m = np.isin(sh["window"].numpy(), w.index[hit])
        parts.append((sh["acts"][torch.from_numpy(m)].half(), sh["token_ids"].numpy()[m], sh["window"].numpy()[m]))
    if not parts or not sum(len(p[1]) for p in parts):
        raise ValueError("the indexing corpus is empty: check the workspace's corpora and index.max_tokens")
    window = np.concatenate([p[2] for p in parts]).astype(np.int64)
    order = np.argsort(window, kind="stable")  # window order; rows of a window stay in position order
    window, token = window[order], np.concatenate([p[1] for p in parts]).astype(np.int64)[order]
    acts = torch.cat([p[0] for p in parts])[torch.from_numpy(order)]
    domains, domain = np.unique(allw["domain"].to_numpy()[window], return_inverse=True)
    held = np.searchsorted(w.index.to_numpy(), window) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    uniq = np.unique(token)
    tokstr = np.empty(int(uniq.max()) + 1, dtype=object)
    tokstr[uniq] = adapter.token_strings(uniq.tolist())
    return IndexActs(
        acts,
        token,
        window,
        domain,
        held,
        domains.tolist(),
        tokstr,
        allw["source"].to_numpy(),
        allw["corpus"].to_numpy(),
        selected=w.index,
    )
