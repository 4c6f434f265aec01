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
    """(table name, rows) of one SAE over ``ia`` (see the module doc), in bounded memory."""
    d_sae, V, nb = int(sae.W_dec.shape[0]), len(ia.tokstr), cfg.n_quantiles
    train_rows, held_rows = np.flatnonzero(~ia.heldout), np.flatnonzero(ia.heldout)
    labels, names = concepts if concepts is not None else (None, [])
    corpus_names, wcorpus = corpora(ia)
    folder = spill_dir or tempfile.gettempdir()
    spills = []
    try:
        train = encode_train(sae, ia, train_rows, cfg.top_k, wcorpus, len(corpus_names), device, folder)
        spills.append(train.spill)
        held = encode_heldout(
            sae, ia, held_rows, train.mx, nb, cfg.heldout_contexts, seed, device, folder, labels=labels
        )
        spills.append(held.spill)
        bounds = latent_blocks(train.fires + held.fires)
        scan = scan_train(train.spill, ia, train_rows, train.mx, nb, cfg.per_quantile, seed, bounds, folder, labels)
        spills.append(scan.buckets)
        hb = held_buckets(held.spill, ia, bounds, folder)
        spills.append(hb)
        # the contexts: train top-k and quantile-band samples; held-out scoring contexts
        g, _, _, row = train.top.items()
        qg, _, _, qrow = scan.bands.items()
        ctx_l, ctx_b, ctx_c = np.r_[g, qg // nb], np.r_[np.zeros(len(g), np.int64), 1 + qg % nb], np.r_[row, qrow]
        ctx_acts = context_acts(train.spill, ia, ctx_l, ctx_c, cfg.context_radius)
        pos_l, pos_row = held.firing_samples()
        neg_l, neg_row = heldout_silent(held.spill, held_rows, cfg.heldout_contexts, seed)
        h_l, h_c = np.r_[pos_l, neg_l], np.r_[pos_row, neg_row]
        h_b = np.r_[np.zeros(len(pos_l), np.int64), np.ones(len(neg_l), np.int64)]
        h_acts = context_acts(held.spill, ia, h_l, h_c, cfg.context_radius)
        train_table, held_table = train.bigrams.table(V), held.bigrams.table(V)
        expl: list[Explanation] = []
        labeller = labeller or StatisticalLabeller()
        for b in range(len(bounds) - 1):
            l0, l1 = int(bounds[b]), int(bounds[b + 1])
            tl, tk, tc = scan.buckets.block(b)
            S = SplitStats.from_counts(train_table, tl - l0, tk, tc, l1 - l0)
            in_top = (g >= l0) & (g < l1)
            grams = ngrams_around(g[in_top] - l0, row[in_top], ia.token, ia.window, l1 - l0)
            ev = LatentEvidence(S, grams, lambda ids: ia.tokstr[ids].tolist())
            block = labeller.explain(ev)
            del ev, S
            hl, hk, hc = hb.block(b)
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
        rows = [explanation_row(name, l, e) for l, e in enumerate(expl)]
        if labels is not None:
            from backend.index.matches import concept_explanations, concept_matches

            cm = concept_matches(
                scan.concepts, train.top.items(), labels, held.concept_both, held.fires, held.concept_n, names
            )
            yield "concepts", pa.Table.from_pandas(cm.assign(sae=name), preserve_index=False)
            rows += [explanation_row(name, l, e) for l, e in concept_explanations(cm, expl)]
        yield "explanations", pa.Table.from_pylist(rows)
        logits = logit_lens(sae.W_dec, unembed, token_strings)
        yield "latents", latents_table(name, ia, train, scan.hist, expl, logits, corpus_names, N_BINS)
        yield (
            "saes",
            pa.table(
                {
                    "sae": [name],
                    "architecture": [arch],
                    "d_in": [int(sae.W_dec.shape[1])],
                    "d_sae": [d_sae],
                    "n_tokens": [len(train_rows)],
                    "n_heldout": [len(held_rows)],
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
