"""Build the feature index of a workspace: contexts, stats, labels, logit lens and maps -> DuckDB.

Pipeline (``build_index``):
1. ``collect``: activations of a deterministic subset of windows spread across corpora
   (~``index.max_tokens`` tokens), read from the workspace's activation cache for the windows it holds
   (preferred when choosing) and from one model pass for the rest; they stay in memory (float16) and
   every SAE encodes them, so the model runs at most once however many SAEs there are. Every 5th indexed window
   (20%) is HELD OUT: it never contributes to statistics or contexts, only to label detection scores.
2. Per SAE, ONE encode pass over the train rows (``CHUNK`` tokens at a time) yields the sparse
   firings (row, latent, value); per chunk: firing counts, sums, maxima, per-domain counts, and the
   top-k rows per latent by a streaming threshold-filtered merge (backend/sae/kernels.py: only candidates
   above a latent's current k-th best are merged, O(candidates) per chunk; bench/RESULTS.md times it).
   The firings are kept (``Firings``: 12 bytes per nonzero), so that the rest needs no re-encode:
   - a histogram per latent, ``N_BINS`` equal bins over (0, max];
   - ``n_quantiles`` bands of equal width over (0, max] and ``per_quantile`` uniform samples from
     each (the same merge on uniform random keys = reservoir sampling without replacement);
   - each chosen context's per-token activations of its latent (a sorted-key lookup);
   - the (previous token, token) bigram firing counts for the statistical labeller (backend/index/label.py).
   The held-out rows are encoded once more (20% of the tokens) for the rule's detection scores and for the
   scoring contexts of every explanation method (backend/index/score.py): about ``index.heldout_contexts`` per
   latent centred on a firing, spread over activation bands (kind ``hpos``), and as many centred on a token
   where it does not fire (``hneg``). The statistical explanation of each latent (with its rule-scored
   detection and fuzzing) goes to the ``explanations`` table; the domain and the corpus it fires most in
   (rates, so big corpora don't win) are columns of ``latents``, not words of its label.
3. Logit lens: W_dec[l] @ U^T (U the unembedding, skipped when the adapter has none), top and
   bottom 10 tokens per latent.
4. Maps: UMAP (or PCA) of unit decoder rows per SAE and jointly (backend/index/maps.py).
Everything is written through store.IndexWriter: built aside, renamed into place.

``add_to_index`` (the staged build: one SAE at a time, the app serving those already indexed) indexes
only the SAEs it is given and copies every other SAE's rows unchanged from the current index (per-SAE
map coordinates included); the joint map is recomputed over all indexed SAEs, with PCA while some SAE of
the config is still missing (a UMAP of every indexed row per added SAE would cost the build about
n_saes / 2 times the final joint map) and with the config's method once the last one is added, so the
finished index holds the same rows as ``build_index``'s.

Hazards: memory is n_tokens x d x 2 bytes for the activations (1M x 576: 1.15 GB) plus 12 bytes per
nonzero latent for one SAE's firings (1M tokens at L0 32: 384 MB). Latent statistics describe the
train split only; ``density`` is firings / train tokens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
import torch
from safetensors import safe_open

from backend.config import IndexConfig
from backend.data.activations import ShardCache, stream_activations
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
from backend.index.maps import joint_layout, layout
from backend.index.score import Example, fuzz_items, rule_fuzz
from backend.index.store import IndexWriter
from backend.sae.kernels import StreamingTopK
from backend.sae.model import check_site, load_sae

CHUNK = 4096
N_BINS = 20
HOLDOUT_EVERY = 5


@dataclass
class IndexActs:
    """Kept-token activations of the indexing windows, in window order (rows of one window are contiguous)."""

    acts: torch.Tensor  # (n, d) float16, on the CPU
    token: np.ndarray  # (n,) token id
    window: np.ndarray  # (n,) row of the windows table
    domain: np.ndarray  # (n,) domain index into ``domains``
    heldout: np.ndarray  # (n,) bool: the row's window is held out for label scoring
    domains: list[str]
    tokstr: np.ndarray  # (max id + 1,) object: rendered strings of the ids that occur
    source: np.ndarray  # (n_windows,) object: source of every windows-table row
    corpus: np.ndarray | None = None  # (n_windows,) object: corpus name of every windows-table row
    selected: pd.Index | None = None  # the indexing windows (rows of the windows table), for other sites

    def offsets(self) -> np.ndarray:
        """(n,) each row's offset among its window's kept tokens (rows of a window are contiguous, in order)."""
        return np.arange(len(self.window)) - self.window_bounds()[0]

    def window_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(first row, end row) of the window each row belongs to."""
        change = np.r_[True, self.window[1:] != self.window[:-1]]
        starts = np.nonzero(change)[0]
        ends = np.r_[starts[1:], len(self.window)]
        seg = np.cumsum(change) - 1
        return starts[seg], ends[seg]


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


def index_windows(
    windows: pd.DataFrame, max_tokens: int, seed: int = 0, prefer: np.ndarray | None = None
) -> pd.DataFrame:
    """A deterministic subset of windows spread evenly across corpora, ~max_tokens tokens in all:
    each corpus' windows are shuffled (``prefer``-red rows first: those already in the activation
    cache, itself a seeded uniform sample), then taken round-robin (1st of every corpus, 2nd, ...)."""
    shuffled = windows.sample(frac=1.0, random_state=seed)
    if prefer is not None:
        shuffled = shuffled.iloc[np.argsort(~shuffled.index.isin(prefer), kind="stable")]
    rank = shuffled.groupby("corpus").cumcount().to_numpy()
    ordered = shuffled.iloc[np.argsort(rank, kind="stable")]
    keep = ordered["token_ids"].map(len).cumsum().to_numpy() <= max_tokens
    return ordered[keep].sort_index()


def _cached_windows(ws, adapter, windows: pd.DataFrame, site: str) -> tuple[ShardCache | None, np.ndarray]:
    """The workspace's activation cache at ``site`` (if it was made by this model there) and the windows it
    holds completely: their cached token ids equal windows.token_ids (this also rejects the window cut by
    the cache's token budget, windows with special tokens, and a cache older than windows.parquet)."""
    try:
        cache = ws.activation_source(site=site)
    except FileNotFoundError:
        return None, np.zeros(0, np.int64)
    made_by = (cache.site, cache.meta.get("model"), cache.d_in)
    if made_by != (site, adapter.model_id, adapter.d_model):
        return None, np.zeros(0, np.int64)
    tok, win = [], []
    for path in cache.shards:  # only the small id tensors, not the activations
        with safe_open(str(path), "np") as f:
            tok.append(f.get_tensor("token_ids"))
            win.append(f.get_tensor("window").astype(np.int64))
    tok, win = np.concatenate(tok), np.concatenate(win)
    win = np.where(win < len(windows), win, -1)
    u, first, counts = np.unique(win, return_index=True, return_counts=True)
    ok = (u >= 0) & (counts == windows["token_ids"].map(len).to_numpy()[u.clip(0)])
    for j in np.nonzero(ok)[0]:  # a window's rows are contiguous in the cache, in position order
        ok[j] = np.array_equal(tok[first[j] : first[j] + counts[j]], windows["token_ids"].iat[u[j]])
    return cache, u[ok]


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


def encode_sparse(sae, acts: torch.Tensor, rows: np.ndarray, device: torch.device | str = "cpu"):
    """Yield (rows, latents, values, chunk max (d_sae,)) of the nonzero latents, CHUNK rows at a time."""
    with torch.inference_mode():
        for s in range(0, len(rows), CHUNK):
            r = rows[s : s + CHUNK]
            lat = sae.encode(acts[torch.from_numpy(r)].to(device).float())  # (chunk, d_sae)
            rr, cc = torch.nonzero(lat > 0, as_tuple=True)
            yield r[rr.cpu().numpy()], cc.cpu().numpy(), lat[rr, cc].cpu().numpy(), lat.amax(0).cpu().numpy()


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
    train, held = np.nonzero(~ia.heldout)[0], np.nonzero(ia.heldout)[0]
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


def logit_lens(
    W_dec: torch.Tensor,
    U: torch.Tensor | None,
    token_strings: Callable[[list[int]], list[str]],
    n: int = 10,
    chunk: int = 1024,
    margin: int = 8,
) -> tuple[list[str], list[str]]:
    """JSON [[token, score], ...] of the n highest and n lowest entries of W_dec[l] @ U^T per latent
    ("[]" for every latent when the model has no unembedding).

    W_dec @ U^T is d_sae x vocab x d_in multiply-adds (18,432 x 49,152 x 576: 1 TFLOP, 7 s in fp32 on
    2 cores), so candidates (the n + margin extremes) come from a bfloat16 product (3x faster) and
    are rescored exactly in float32; only a token within bf16 error of the margin-th could be missed."""
    d_sae = int(W_dec.shape[0])
    if U is None:
        return ["[]"] * d_sae, ["[]"] * d_sae
    ids, vals = [], []
    with torch.inference_mode():
        U = U.to(W_dec.device, torch.float32)
        Ut16 = U.T.to(torch.bfloat16).contiguous()
        m = min(n + margin, U.shape[0])
        for s in range(0, d_sae, chunk):
            W = W_dec[s : s + chunk].float()  # (c, d)
            rough = W.to(torch.bfloat16) @ Ut16  # (c, vocab)
            cand = torch.cat([rough.topk(m, dim=1).indices, rough.topk(m, dim=1, largest=False).indices], 1)
            exact = torch.einsum("cd,cmd->cm", W, U[cand])  # (c, 2m) float32
            hi = exact[:, :m].topk(n, dim=1)
            lo = exact[:, m:].topk(n, dim=1, largest=False)
            best = torch.cat([cand[:, :m].gather(1, hi.indices), cand[:, m:].gather(1, lo.indices)], 1)
            ids.append(best.cpu().numpy())
            vals.append(torch.cat([hi.values, lo.values], 1).cpu().numpy())
    I, S = np.concatenate(ids), np.concatenate(vals).astype(np.float64).round(3)
    uniq, inv = np.unique(I, return_inverse=True)
    strs = np.array(token_strings(uniq.tolist()), dtype=object)[inv.reshape(I.shape)]
    top = [json.dumps([[t, float(v)] for t, v in zip(ts[:n], vs[:n])]) for ts, vs in zip(strs, S)]
    bottom = [json.dumps([[t, float(v)] for t, v in zip(ts[n:], vs[n:])]) for ts, vs in zip(strs, S)]
    return top, bottom


def _check_saes(ws, names: list[str] | None = None) -> None:
    if not ws.config.saes:
        raise ValueError("the workspace config lists no SAEs under 'saes:': there is nothing to index")
    known = [s.name for s in ws.config.saes]
    if unknown := [n for n in names or [] if n not in known]:
        raise ValueError(f"SAE(s) {', '.join(unknown)} are not in the workspace config (it lists {', '.join(known)})")
    missing = [n for n in names or known if not (ws.sae_dir(n) / "cfg.json").exists()]
    if missing:
        raise FileNotFoundError(
            f"SAE(s) {', '.join(missing)} not trained yet (no cfg.json under {ws.path / 'saes'}): "
            f"run `python -m backend build {ws.path / 'workspace.yaml'} --steps train` first"
        )


def _arch(s, sae) -> str:
    """The architecture shown: a pretrained SAE's comes from its files (and its format), a trained one's from its
    config entry."""
    if s.pretrained:
        fmt = (sae.cfg.meta.get("source") or {}).get("format", "pretrained")
        return f"{sae.cfg.architecture} ({fmt})"
    return f"{s.architecture} (boosted on {s.boost_base})" if s.boost_base else s.architecture


def write_index(
    out: str | Path,
    ia: IndexActs,
    saes: Iterable[tuple[str, str, Any]],
    cfg: IndexConfig,
    unembed: torch.Tensor | None,
    token_strings: Callable[[list[int]], list[str]],
    *,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
    concepts: tuple[np.ndarray, list[str]] | None = None,
    keep_from: str | Path | None = None,
    keep: Iterable[tuple[str, np.ndarray]] = (),
    order: list[str] | None = None,
    joint_method: str | None = None,
    ia_of: Callable[[str], IndexActs] | None = None,
) -> dict[str, float]:
    """Index (name, architecture, sae) triples (a lazy iterable: one SAE in memory at a time) over ``ia``
    and write the whole index to ``out`` atomically. Returns seconds per SAE and for the maps.

    ``keep`` (name, W_dec) pairs: SAEs whose rows are copied unchanged from the index at ``keep_from`` (their
    per-SAE map too); the joint map is laid out over them and the new SAEs together, in ``order`` (default:
    kept, then new), with ``joint_method`` (default: the config's, umap or pca). ``ia_of(name)``: the activations of
    an SAE that reads another site than ``ia``'s (the same tokens)."""
    timings: dict[str, float] = {}
    mats: dict[str, np.ndarray] = dict(keep)
    method = "umap" if cfg.umap else "pca"
    with IndexWriter(out) as writer:
        kept_xy = writer.copy_from(keep_from, list(mats)) if mats and keep_from is not None else pd.DataFrame()
        for name, arch, sae in saes:
            t = time.perf_counter()
            acts = ia_of(name) if ia_of is not None else ia
            for table, frame in index_sae(
                name, arch, sae, acts, cfg, unembed, token_strings, seed, device, concepts=concepts
            ).items():
                writer.add(table, frame)
            mats[name] = sae.W_dec.detach().float().cpu().numpy()
            timings[f"sae:{name}_s"] = time.perf_counter() - t
            if progress:
                print(f"[index] {name}: {len(mats[name]):,} latents in {timings[f'sae:{name}_s']:.1f} s", flush=True)
        t = time.perf_counter()
        ordered = [n for n in order or [] if n in mats] + [n for n in mats if n not in (order or [])]
        joint = joint_layout({n: mats[n] for n in ordered}, seed=seed, method=joint_method or method)
        old_xy = {n: g[["x", "y"]].to_numpy() for n, g in kept_xy.groupby("sae")} if len(kept_xy) else {}
        for name, W in mats.items():
            xy = old_xy[name] if len(old_xy.get(name, ())) == len(W) else layout(W, seed=seed, method=method)
            writer.add(
                "map",
                pd.DataFrame(
                    {
                        "sae": name,
                        "latent": np.arange(len(W)),
                        "x": xy[:, 0],
                        "y": xy[:, 1],
                        "jx": joint[name][:, 0],
                        "jy": joint[name][:, 1],
                    }
                ),
            )
        timings["maps_s"] = time.perf_counter() - t
    return timings


def build_index(ws, progress: bool = True, out: str | Path | None = None) -> dict[str, float]:
    """Index every SAE of the workspace into ``out`` (default ws.index_path), built aside and renamed
    into place. Returns timings in seconds (activations, each SAE, maps, total) and the token count.

    Holds the workspace lock (atomic.workspace_lock): taking it removes the staging files of a killed build."""
    from backend.atomic import workspace_lock

    with workspace_lock(ws.path):
        timings = _build_index(ws, progress, out)
        _meaning(ws, [s.name for s in ws.config.saes], out, progress)
        return timings


def _meaning(ws, names: list[str], out: str | Path | None, progress: bool) -> None:
    """Meaning vectors of ``names`` (backend/index/meaning.py) for the workspace's own index, where the kind has them."""
    if ws.kind.search_meaning and (out is None or Path(out) == Path(ws.index_path)):
        from backend.index.meaning import build_meaning

        build_meaning(ws.path, ws.index_path, names, progress=progress)


@dataclass
class IndexInputs:
    """What indexing any SAE of a workspace needs besides the SAE: the indexing activations (one model pass at
    most), the token concepts (protein, recommender), the unembedding and the adapter's token strings.
    The staged build computes them once and indexes its SAEs one by one with them."""

    ia: IndexActs
    concepts: tuple[np.ndarray, list[str]] | None
    unembed: torch.Tensor | None
    token_strings: Callable[[list[int]], list[str]]
    device: torch.device | str
    seconds: float  # time spent collecting the activations
    other_sites: dict[str, IndexActs] = field(default_factory=dict)  # SAEs at their own site: the same tokens there

    def at(self, ws, site: str, progress: bool = False) -> IndexActs:
        """The indexing activations at ``site``: ``ia`` at activations.site, else collected once for the same
        windows (so every SAE's contexts and statistics are over the same tokens)."""
        if site == ws.config.activations.site:
            return self.ia
        if site not in self.other_sites:
            other = collect(ws, progress, site=site, windows=self.ia.selected)
            if not np.array_equal(other.token, self.ia.token):
                raise RuntimeError(f"the indexing tokens at {site} differ from those at {ws.config.activations.site}")
            self.other_sites[site] = other
        return self.other_sites[site]


def index_inputs(ws, progress: bool = True) -> IndexInputs:
    t0 = time.perf_counter()
    ia = collect(ws, progress)
    seconds = time.perf_counter() - t0
    adapter = ws.adapter(verbose=False)
    from backend.modalities import token_concepts

    concepts = token_concepts(ws, ws.windows(), ia.window, ia.offsets(), ia.token)  # None for text
    return IndexInputs(ia, concepts, adapter.unembed(), adapter.token_strings, adapter.device, seconds)


def _load_saes(ws, names: list[str], device) -> Iterator[tuple[str, str, Any]]:
    """(name, architecture as shown, sae) of the named SAEs, loaded one at a time and checked against their site."""
    adapter = ws.adapter(verbose=False)
    specs = {s.name: s for s in ws.config.saes}
    for name in names:
        sae = load_sae(ws.sae_dir(name), device=device)
        check_site(sae, adapter.d_model, ws.site_of(name))
        yield name, _arch(specs[name], sae), sae


def _write(ws, inp: IndexInputs, names: list[str], out: Path, keep: list[str], progress: bool) -> dict[str, float]:
    """Index ``names`` into ``out`` with ``inp``, copying the rows of ``keep`` from the index already at ``out``;
    the joint map is laid out in config order, with the config's method once every configured SAE is in it."""
    config_order = [s.name for s in ws.config.saes]
    order = [n for n in config_order if n in keep or n in names] + sorted(n for n in keep if n not in config_order)
    kept = [(n, load_sae(ws.sae_dir(n)).W_dec.detach().float().cpu().numpy()) for n in keep]  # for the joint map
    complete = set(config_order) <= set(keep) | set(names)
    return write_index(
        out,
        inp.ia,
        _load_saes(ws, [n for n in config_order if n in names], inp.device),
        ws.config.index,
        inp.unembed,
        inp.token_strings,
        seed=ws.config.train.seed,
        device=inp.device,
        progress=progress,
        ia_of=lambda name: inp.at(ws, ws.site_of(name), progress),
        concepts=inp.concepts,
        keep_from=out if keep else None,
        keep=kept,
        order=order,
        joint_method=None if complete else "pca",
    )


def _build_index(ws, progress: bool, out: str | Path | None) -> dict[str, float]:
    _check_saes(ws)
    t0 = time.perf_counter()
    inp = index_inputs(ws, progress)
    out = Path(out or ws.index_path)
    timings = _write(ws, inp, [s.name for s in ws.config.saes], out, [], progress)
    timings.update(tokens=float(len(inp.ia.token)), activations_s=inp.seconds, total_s=time.perf_counter() - t0)
    if progress:
        print(
            f"[index] {len(ws.config.saes)} SAEs over {len(inp.ia.token):,} tokens in {timings['total_s']:.0f} s -> {out}",
            flush=True,
        )
    return timings


def indexed_saes(path: str | Path) -> list[str]:
    """The SAEs an index file holds ([] when there is no file)."""
    from backend.index.store import IndexReader

    if not Path(path).exists():
        return []
    reader = IndexReader(path)
    try:
        return reader.saes()["sae"].tolist()
    finally:
        reader.close()


def add_to_index(
    ws, names: list[str], *, inputs: IndexInputs | None = None, progress: bool = True, out: str | Path | None = None
) -> dict[str, float]:
    """Index the SAEs ``names`` and add them to the workspace's index (``out``, default ws.index_path; created
    when absent), replacing their rows if they were there and leaving every other SAE's rows exactly as they
    are; the joint map is recomputed over all of them (see the module doc). The new file is built aside and
    renamed into place, so readers see the old index or the new one, never a mix (``Backend.refresh``).

    ``inputs``: from ``index_inputs``, to index several SAEs one call at a time without collecting the
    activations again. Holds the workspace lock. Returns timings in seconds, like ``build_index``."""
    from backend.atomic import workspace_lock

    with workspace_lock(ws.path):
        _check_saes(ws, list(names))
        t0 = time.perf_counter()
        inp = inputs or index_inputs(ws, progress)
        out = Path(out or ws.index_path)
        keep = [n for n in indexed_saes(out) if n not in names]
        timings = _write(ws, inp, list(names), out, keep, progress)
        _meaning(ws, list(names), out, progress)
        timings.update(tokens=float(len(inp.ia.token)), total_s=time.perf_counter() - t0)
        if progress:
            print(f"[index] added {', '.join(names)} ({len(keep) + len(names)} SAEs indexed) -> {out}", flush=True)
        return timings
