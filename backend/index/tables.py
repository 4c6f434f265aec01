"""The rows one SAE adds to the index (store.SCHEMA): latents, contexts, explanations; and the logit lens.

Pure functions of the statistics (backend/index/stats.py) and the corpus (``IndexActs``): no I/O. The contexts
are built for one block of latents at a time, so the Arrow tables stay small however wide the SAE is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from backend.index.collect import IndexActs
from backend.index.label import Explanation

HELDOUT_KINDS = ["hpos", "hneg"]
"""Kinds of the held-out scoring contexts: centred on a firing (over activation bands), on a silent token."""


def ragged(flat: np.ndarray, lengths: np.ndarray, type_: pa.DataType) -> pa.ListArray:
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=type_))


def corpora(ia: IndexActs) -> tuple[list[str], np.ndarray]:
    """(corpus names, (n_windows,) each windows-table row's corpus index); one unnamed corpus when there are none."""
    if ia.corpus is None:
        return [""], np.zeros(len(ia.source), np.int64)
    names, code = np.unique(ia.corpus.astype(str), return_inverse=True)
    return names.tolist(), code.ravel()


def share(rates: np.ndarray) -> np.ndarray:
    """(d_sae,) the top entry's share of each row of rates (0 for a latent that never fires)."""
    total = rates.sum(1)
    return np.divide(rates.max(1, initial=0), total, out=np.zeros(len(rates)), where=total > 0)


def explanation_row(sae: str, latent: int, e: Explanation) -> dict[str, Any]:
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


def context_table(
    name: str,
    latent: np.ndarray,
    band: np.ndarray,
    center: np.ndarray,
    acts: tuple[np.ndarray, np.ndarray, np.ndarray],
    ia: IndexActs,
    kinds: list[str] | None = None,
) -> pa.Table:
    """Context rows: ``acts`` = (flat activations, lengths, first rows) from stats.context_acts (the tokens within
    +-radius of each center row inside its window and the latent's activation on each). band 0 = top-k (kind
    'top'), b >= 1 = quantile band b-1 (kind 'q<b-1>'), or ``kinds[band]``; rank = position by activation at the
    center, descending, within (latent, kind)."""
    flat, lengths, lo = acts
    offsets = np.r_[0, np.cumsum(lengths)][:-1]
    focus = (center - lo).astype(np.int32)
    max_act = flat[offsets + focus] if len(flat) else np.zeros(len(center), np.float32)
    order = np.lexsort((-max_act, band, latent))
    first = np.r_[True, (latent[order][1:] != latent[order][:-1]) | (band[order][1:] != band[order][:-1])]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order)) - group_start
    kinds = np.array(kinds or ["top"] + [f"q{b}" for b in range(int(band.max(initial=0)))], dtype=object)
    within = np.arange(lengths.sum()) - np.repeat(offsets, lengths)
    start, _ = ia.bounds(center)
    return pa.table(
        {
            "sae": pa.array([name] * len(center), pa.string()),
            "latent": latent.astype(np.int32),
            "kind": pa.array(kinds[band].tolist(), pa.string()),
            "rank": rank,
            "window_row": ia.window[center],
            "win_offset": (lo - start).astype(np.int32),
            "tokens": ragged(ia.tokstr[ia.token[np.repeat(lo, lengths) + within]], lengths, pa.string()),
            "acts": ragged(flat, lengths, pa.float32()),
            "focus": focus,
            "source": pa.array(ia.source[ia.window[center]].tolist(), pa.string()),
            "domain": pa.array([ia.domains[d] for d in ia.domain[center]], pa.string()),
            "max_act": max_act,
        }
    )


def select_contexts(
    sel: np.ndarray, acts: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The contexts ``sel`` (bool or indices) of ``acts`` = (flat, lengths, first rows), in ``sel``'s order."""
    flat, lengths, lo = acts
    idx = np.flatnonzero(sel) if np.asarray(sel).dtype == bool else np.asarray(sel)
    offsets = np.r_[0, np.cumsum(lengths)][:-1]
    n = lengths[idx]
    within = np.arange(n.sum()) - np.repeat(np.r_[0, np.cumsum(n)[:-1]], n)
    return flat[np.repeat(offsets[idx], n) + within], n, lo[idx]


def latents_table(
    name: str,
    ia: IndexActs,
    train,
    hist: np.ndarray,
    expl: list[Explanation],
    logits: tuple[list[str], list[str]],
    corpus_names: list[str],
    n_bins: int,
) -> pa.Table:
    """The ``latents`` rows of one SAE: ``train`` is the merged stats.TrainPartial, ``hist`` (d_sae * n_bins,)."""
    d_sae = len(train.fires)
    n_dom, n_corp = len(ia.domains), len(corpus_names)
    rates = train.dom_fires.reshape(d_sae, n_dom) / np.maximum(train.dom_tokens.astype(float), 1)
    corp_rates = train.corp_fires.reshape(d_sae, n_corp) / np.maximum(train.corp_tokens, 1)
    edges = np.linspace(0, 1, n_bins + 1)[None, :] * train.mx[:, None].astype(np.float64)  # (d_sae, n_bins + 1)
    fired_any = rates.sum(1) > 0
    return pa.table(
        {
            "sae": [name] * d_sae,
            "latent": np.arange(d_sae, dtype=np.int32),
            "density": train.fires / max(train.n_rows, 1),
            "mean_act": train.sums / np.maximum(train.fires, 1),
            "max_act": train.mx.astype(np.float64),
            "hist_edges": ragged(edges.ravel(), np.full(d_sae, n_bins + 1), pa.float64()),
            "hist_counts": ragged(hist, np.full(d_sae, n_bins), pa.int64()),
            "label": [e.label for e in expl],
            "confidence": [e.confidence for e in expl],
            "precision": [e.precision for e in expl],
            "recall": [e.recall for e in expl],
            "fuzz": [e.fuzz for e in expl],
            "method": [e.method for e in expl],
            "scorer": [e.scorer for e in expl],
            "top_domain": [ia.domains[int(j)] if fired_any[i] else "" for i, j in enumerate(rates.argmax(1))],
            "domain_share": share(rates),
            "top_corpus": [corpus_names[int(j)] if fired_any[i] else "" for i, j in enumerate(corp_rates.argmax(1))],
            "corpus_share": share(corp_rates),
            "top_tokens": [json.dumps(ia.tokstr[e.tokens].tolist()) for e in expl],
            "top_token_scores": [json.dumps(e.scores) for e in expl],
            "logit_top": logits[0],
            "logit_bottom": logits[1],
            "domain_rates": [json.dumps(dict(zip(ia.domains, r.round(6).tolist()))) for r in rates],
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
