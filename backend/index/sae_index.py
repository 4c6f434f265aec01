"""Index one SAE over the indexing corpus: statistics, labels, detection scores, contexts -> index tables.

``index_sae_tables`` runs the passes of backend/index/stats.py (one encode of the train rows, one of the held-out
rows, scans of their spilled firings), then labels the latents one block at a time (the blocks of the label
counts, spill.latent_blocks) and yields the tables as it goes: ``contexts`` per block, then ``latents``,
``explanations``, ``saes`` and, with token concepts, ``concepts``. The spill files are unlinked temporaries in
``spill_dir`` (default: the system's temporary folder), closed before it returns.

Labels (backend/index/label.py): per block, the train label counts (one ``SplitStats`` per block over the
train ``BigramTable``) and the n-grams around the top contexts give the statistical explanation; the held-out
counts give its detection score; the held-out scoring contexts (``hpos`` over activation bands, ``hneg`` on
silent tokens) give its fuzzing score (backend/index/score.py). The domain and the corpus it fires most in
(rates, so big corpora don't win) are columns of ``latents``, not words of its label.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from backend import dist
from backend.config import IndexConfig
from backend.index.collect import IndexActs
from backend.index.label import (
    Explanation,
    Labeller,
    LatentEvidence,
    SplitStats,
    StatisticalLabeller,
    detection_scores,
    ngrams_around,
)
from backend.index.score import Example, fuzz_items, rule_fuzz
from backend.index.spill import latent_blocks
from backend.index.stats import (
    N_BINS,
    context_acts,
    encode_heldout,
    encode_train,
    held_bands,
    held_buckets,
    heldout_silent,
    scan_train,
)
from backend.index.tables import (
    HELDOUT_KINDS,
    context_table,
    corpora,
    explanation_row,
    latents_table,
    logit_lens,
    select_contexts,
)


def _examples(
    latent: np.ndarray, acts: tuple[np.ndarray, np.ndarray, np.ndarray], ia: IndexActs, V: int
) -> dict[int, list[Example]]:
    """Per latent, its contexts (tokens, activations, token ids) for score.py, from stats.context_acts output."""
    flat, lengths, lo = acts
    offsets = np.r_[0, np.cumsum(lengths)]
    prev = ia.prev_tokens(lo, V)
    out: dict[int, list[Example]] = {}
    for i, l in enumerate(latent.tolist()):
        ids = ia.token[lo[i] : lo[i] + lengths[i]]
        a = flat[offsets[i] : offsets[i + 1]]
        out.setdefault(l, []).append(Example(ia.tokstr[ids].tolist(), a.tolist(), ids.tolist(), int(prev[i])))
    return out


def _rank_slice(rows: np.ndarray, ia: IndexActs) -> np.ndarray:
    """This rank's part of ``rows`` (ascending): one of ``dist.size()`` contiguous runs of about equal length, cut
    at window boundaries, so that every context (which never leaves its window) lies in one rank's spill."""
    n, world, me = len(rows), dist.size(), dist.rank()
    if world == 1 or n == 0:
        return rows
    w = ia.window[rows]
    starts = np.flatnonzero(np.r_[True, w[1:] != w[:-1]])  # first position of each window's run
    cuts = [
        0,
        *(int(starts[min(np.searchsorted(starts, n * k // world), len(starts) - 1)]) for k in range(1, world)),
        n,
    ]
    cuts = np.maximum.accumulate(cuts)
    return rows[cuts[me] : cuts[me + 1]]


def _offset(nnz: int) -> int:
    """The firings of the ranks before this one (0 in a single process)."""
    return sum(dist.gather(int(nnz))[: dist.rank()])


def _reduce(a: np.ndarray, op: str = "sum") -> np.ndarray:
    """The elementwise sum or max of ``a`` over the ranks (``a`` itself in a single process)."""
    if dist.size() == 1:
        return a
    return dist.all_reduce(torch.from_numpy(np.ascontiguousarray(a)), op).numpy()


def _merged(part):
    """On rank 0: every rank's ``part`` (its ``portable()`` copy) merged in rank order; None on the others."""
    if dist.size() == 1:
        return part
    parts = dist.gather_to_leader(part.portable())
    if parts is None:
        return None
    out = parts[0]
    for o in parts[1:]:
        out.merge(o)
    return out


def _block_counts(buckets, b: int, kb: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``buckets.block(b)`` summed over the ranks, on rank 0 (None on the others)."""
    mine = buckets.block(b)
    if dist.size() == 1:
        return mine
    parts = dist.gather_to_leader(mine)
    if parts is None:
        return None
    comp = np.concatenate([lat * kb + key for lat, key, _ in parts])
    u, inv = np.unique(comp, return_inverse=True)
    counts = np.bincount(inv.ravel(), weights=np.concatenate([c for _, _, c in parts]), minlength=len(u))
    lat, key = np.divmod(u, kb)
    return lat, key, counts


def _context_acts(spill, ia: IndexActs, latent: np.ndarray, center: np.ndarray, radius: int):
    """stats.context_acts of contexts anywhere in the rows: each rank reads the contexts in its own spill (0
    elsewhere) and the sums over the ranks are the values (exact: one rank holds each context)."""
    flat, lengths, lo = context_acts(spill, ia, latent, center, radius)
    return _reduce(flat), lengths, lo


def index_sae_tables(
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
    spill_dir: str | Path | None = None,
) -> Iterator[tuple[str, pa.Table]]:
    """(table name, rows) of one SAE over ``ia`` (see the module doc), in bounded memory.

    Under torchrun (backend/dist.py, every rank calling it with the same arguments) each rank encodes and scans
    its own slice of the rows (``_rank_slice``: whole windows) into its own spills; the partials travel to rank 0
    over the process group and merge there (sums, maxima, top-k merges, label counts block by block); the random
    samples use keys advanced by the firings of the ranks before (``rng_offset``), so rank 0 yields the tables a
    single process yields and the other ranks yield nothing."""
    d_sae, V, nb = int(sae.W_dec.shape[0]), len(ia.tokstr), cfg.n_quantiles
    train_all, held_all = ia.split_rows()
    train_rows, held_rows = _rank_slice(train_all, ia), _rank_slice(held_all, ia)
    labels, names = concepts if concepts is not None else (None, [])
    corpus_names, wcorpus = corpora(ia)
    folder = spill_dir or tempfile.gettempdir()
    lead = dist.is_leader()
    spills = []
    try:
        part = encode_train(sae, ia, train_rows, cfg.top_k, wcorpus, len(corpus_names), device, folder)
        spills.append(part.spill)
        mx = _reduce(part.mx, "max")
        t_off = _offset(part.spill.nnz)
        held = encode_heldout(sae, ia, held_rows, nb, device, folder, labels=labels)
        spills.append(held.spill)
        h_off = _offset(held.spill.nnz)
        held.bands = held_bands(held.spill, mx, nb, cfg.heldout_contexts, seed, h_off)
        bounds = latent_blocks(_reduce(part.fires + held.fires))
        scan = scan_train(
            part.spill, ia, train_rows, mx, nb, cfg.per_quantile, seed, bounds, folder, labels, rng_offset=t_off
        )
        spills.append(scan.buckets)
        hb = held_buckets(held.spill, ia, bounds, folder)
        spills.append(hb)
        neg_l, neg_row = heldout_silent(held.spill, held_all, cfg.heldout_contexts, seed, combine=_reduce)
        train, held_m, scan_m = _merged(part), _merged(held), _merged(scan)
        # the contexts, chosen on rank 0: train top-k and quantile-band samples; held-out scoring contexts
        if lead:
            g, _, _, row = train.top.items()
            qg, _, _, qrow = scan_m.bands.items()
            ctx_l, ctx_b, ctx_c = np.r_[g, qg // nb], np.r_[np.zeros(len(g), np.int64), 1 + qg % nb], np.r_[row, qrow]
            pos_l, pos_row = held_m.firing_samples()
            h_l, h_c = np.r_[pos_l, neg_l], np.r_[pos_row, neg_row]
            chosen = (ctx_l, ctx_c, h_l, h_c)
        ctx_l, ctx_c, h_l, h_c = dist.broadcast(chosen if lead else None)
        ctx_acts = _context_acts(part.spill, ia, ctx_l, ctx_c, cfg.context_radius)
        h_acts = _context_acts(held.spill, ia, h_l, h_c, cfg.context_radius)
        kb = (V + 1) * V
        if lead:
            h_b = np.r_[np.zeros(len(pos_l), np.int64), np.ones(len(neg_l), np.int64)]
            train_table, held_table = train.bigrams.table(V), held_m.bigrams.table(V)
            labeller = labeller or StatisticalLabeller()
        expl: list[Explanation] = []
        for b in range(len(bounds) - 1):
            tcounts, hcounts = _block_counts(scan.buckets, b, kb), _block_counts(hb, b, kb)
            if not lead:
                continue
            l0, l1 = int(bounds[b]), int(bounds[b + 1])
            tl, tk, tc = tcounts
            S = SplitStats.from_counts(train_table, tl - l0, tk, tc, l1 - l0)
            in_top = (g >= l0) & (g < l1)
            grams = ngrams_around(g[in_top] - l0, row[in_top], ia.token, ia.window, l1 - l0)
            ev = LatentEvidence(S, grams, lambda ids: ia.tokstr[ids].tolist())
            block = labeller.explain(ev)
            del ev, S
            hl, hk, hc = hcounts
            detection_scores(block, SplitStats.from_counts(held_table, hl - l0, hk, hc, l1 - l0))
            pos = np.flatnonzero((pos_l >= l0) & (pos_l < l1))
            for l, exs in _examples(pos_l[pos], select_contexts(pos, h_acts), ia, V).items():
                block[l - l0].fuzz = rule_fuzz(block[l - l0], fuzz_items(exs, seed=l), V)
            expl.extend(block)
            sel = (ctx_l >= l0) & (ctx_l < l1)
            hsel = (h_l >= l0) & (h_l < l1)
            yield (
                "contexts",
                pa.concat_tables(
                    [
                        context_table(name, ctx_l[sel], ctx_b[sel], ctx_c[sel], select_contexts(sel, ctx_acts), ia),
                        context_table(
                            name, h_l[hsel], h_b[hsel], h_c[hsel], select_contexts(hsel, h_acts), ia, HELDOUT_KINDS
                        ),
                    ]
                ),
            )
        if not lead:
            return
        rows = [explanation_row(name, l, e) for l, e in enumerate(expl)]
        if labels is not None:
            from backend.index.matches import concept_explanations, concept_matches

            cm = concept_matches(
                scan_m.concepts, train.top.items(), labels, held_m.concept_both, held_m.fires, held_m.concept_n, names
            )
            yield "concepts", pa.Table.from_pandas(cm.assign(sae=name), preserve_index=False)
            rows += [explanation_row(name, l, e) for l, e in concept_explanations(cm, expl)]
        yield "explanations", pa.Table.from_pylist(rows)
        logits = logit_lens(sae.W_dec, unembed, token_strings)
        yield "latents", latents_table(name, ia, train, scan_m.hist, expl, logits, corpus_names, N_BINS)
        yield (
            "saes",
            pa.table(
                {
                    "sae": [name],
                    "architecture": [arch],
                    "d_in": [int(sae.W_dec.shape[1])],
                    "d_sae": [d_sae],
                    "n_tokens": [len(train_all)],
                    "n_heldout": [len(held_all)],
                    "n_quantiles": [nb],
                }
            ),
        )
    finally:
        for s in spills:
            s.close()


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
    spill_dir: str | Path | None = None,
) -> dict[str, pa.Table]:
    """Index one SAE over ``ia``: the ``saes``, ``latents``, ``contexts``, ``explanations`` tables, and ``concepts``
    when token concept labels (n, C) are given (protein and recommender workspaces); ``index_sae_tables``
    gathered into one table each (the writer takes them block by block instead)."""
    parts: dict[str, list[pa.Table]] = {}
    for table, frame in index_sae_tables(
        name, arch, sae, ia, cfg, unembed, token_strings, seed, device, labeller, concepts, spill_dir
    ):
        parts.setdefault(table, []).append(frame)
    return {t: pa.concat_tables(f) if len(f) > 1 else f[0] for t, f in parts.items()}
