"""Every statistic of one SAE over the indexing corpus in bounded memory: one encode, then scans of spilled firings.

The build of one SAE is split into functions of two kinds, so that a distributed build can run the first kind on
each worker's slice of rows (whole windows) and merge the results (the ``merge`` methods: sums, maxima, top-k
merges, label files joined): "encode / scan a slice of rows -> a partial" and "merge partials". Per SAE:

1. ``encode_train`` (the one encode of the train rows, collect.CHUNK rows at a time) -> ``TrainPartial``: firing
   counts, sums, maxima, per-domain and per-corpus counts, the streaming top-k rows per latent (the
   threshold-filtered merge of backend/sae/kernels.py), the bigram counts of the rows, and every firing
   spilled to disk (spill.FiringSpill, 12 bytes per firing on disk, none in memory).
2. ``encode_heldout`` (the held-out rows, once) -> ``HeldPartial``: the held-out firings spilled, their bigram counts
   and the held-out concept counts (protein, recommender); then ``held_bands`` samples the spilled firings over
   activation bands of the train maxima (merged first) for the scoring contexts (kind ``hpos``).
3. ``scan_train`` reads the train spill back chunk by chunk instead of encoding again -> ``ScanPartial``: the
   histogram over ``N_BINS`` equal bins of (0, max], ``n_quantiles`` bands of (0, max] with ``per_quantile``
   uniform samples each (the same merge on uniform random keys = reservoir sampling without replacement), the
   (latent, bigram) pairs of the label counts partitioned by latent block on disk (spill.LabelBuckets), and the
   concept threshold counts. ``held_buckets`` does the same for the held-out pairs.
4. ``context_acts``: each chosen context's activations of its latent, by lookups in the spill, the contexts
   taken in row order so that the spill is read about once (distributed: in the spill of the slice holding the
   context's window; a context never leaves its window).

Why spill rather than encode twice: the maxima are needed before binning, so the alternative is a second encode
pass (pass 1 counts and maxima, pass 2 bins and samples). Encoding is the dominant cost of indexing, while reading
the spill back costs 0.02-0.04% of an encode (bench/RESULTS.md, 16,384 latents: 57-94 CPU s against 0.02 s for 200k
rows), so the spill keeps the build at one encode per row for ~20 bytes of disk per firing (firings and label
pairs: 0.64 GB per million tokens at L0 32). It also keeps the output identical to the in-memory builder: the random
keys are drawn in the same order (the firings' row-major order), so the samples are the same for the same seed; a
slice starting at firing ``offset`` advances the generator by ``offset`` draws (``rng_offset``: PCG64 ``advance``),
so a distributed build samples the same too.

Memory: O(d_sae x (top_k + bands) + one chunk + one label block), independent of the number of tokens, except
the few bytes per token of ``IndexActs`` (token ids, windows) and the distinct bigrams of the corpus.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from backend.index.collect import IndexActs, encode_chunks
from backend.index.label import BigramTable
from backend.index.spill import FiringSpill, LabelBuckets
from backend.sae.kernels import StreamingTopK

N_BINS = 20


def _rng(seed: int, offset: int) -> np.random.Generator:
    """np.random.default_rng(seed) advanced by ``offset`` draws (one draw per uniform double)."""
    g = np.random.Generator(np.random.PCG64(seed))
    g.bit_generator.advance(offset)
    return g


class BigramCounts:
    """Rows counted per bigram key (prev * V + tok), added chunk by chunk; memory O(distinct bigrams)."""

    def __init__(self) -> None:
        self.keys, self.counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, keys: np.ndarray) -> None:
        self._pending.append(np.unique(keys, return_counts=True))
        if len(self._pending) >= 32:
            self._fold()

    def _fold(self) -> None:
        if self._pending:
            k = np.concatenate([self.keys, *(p[0] for p in self._pending)])
            c = np.concatenate([self.counts, *(p[1] for p in self._pending)])
            self.keys, inv = np.unique(k, return_inverse=True)
            self.counts = np.bincount(inv.ravel(), weights=c, minlength=len(self.keys)).astype(np.int64)
            self._pending = []

    def merge(self, other: BigramCounts) -> None:
        other._fold()
        self._pending.append((other.keys, other.counts))
        self._fold()

    def table(self, V: int) -> BigramTable:
        self._fold()
        return BigramTable(self.keys, self.counts, V)


def _bigrams(ia: IndexActs, rows: np.ndarray, V: int) -> np.ndarray:
    """(len(rows),) the bigram key prev * V + tok of each row."""
    return ia.prev_tokens(rows, V) * V + ia.token[rows]


@dataclass
class TrainPartial:
    """What encoding a slice of train rows leaves (``encode_train``); ``merge`` adds another slice's."""

    fires: np.ndarray  # (d_sae,) firings
    sums: np.ndarray  # (d_sae,) sum of activations
    mx: np.ndarray  # (d_sae,) float32 maximum
    dom_fires: np.ndarray  # (d_sae * n_dom,) firings per (latent, domain)
    corp_fires: np.ndarray  # (d_sae * n_corp,) firings per (latent, corpus)
    dom_tokens: np.ndarray  # (n_dom,) rows per domain
    corp_tokens: np.ndarray  # (n_corp,) rows per corpus
    top: StreamingTopK  # top_k rows per latent by activation
    bigrams: BigramCounts
    spill: FiringSpill
    n_rows: int

    def merge(self, o: TrainPartial) -> None:
        """Add another slice's partial (its spill stays its own: scan each slice's spill, then merge the scans)."""
        for a in ("fires", "sums", "dom_fires", "corp_fires", "dom_tokens", "corp_tokens"):
            getattr(self, a).__iadd__(getattr(o, a))
        np.maximum(self.mx, o.mx, out=self.mx)
        g, _, s, p = o.top.items()
        self.top.update(g, s, p)
        self.bigrams.merge(o.bigrams)
        self.n_rows += o.n_rows

    def portable(self) -> TrainPartial:
        """This partial without its spill (which stays with the rank that wrote it): what travels to be merged."""
        return replace(self, spill=None)


def encode_train(
    sae, ia: IndexActs, rows: np.ndarray, top_k: int, wcorpus: np.ndarray, n_corp: int, device, folder
) -> TrainPartial:
    """Encode the train ``rows`` (ascending) once: counts, sums, maxima, domain/corpus counts, top-k, bigram counts,
    and the firings spilled to ``folder``. ``wcorpus``: the corpus index of every windows-table row."""
    d_sae, n_dom, V = int(sae.W_dec.shape[0]), len(ia.domains), len(ia.tokstr)
    p = TrainPartial(
        np.zeros(d_sae),
        np.zeros(d_sae),
        np.zeros(d_sae, np.float32),
        np.zeros(d_sae * n_dom),
        np.zeros(d_sae * n_corp),
        np.zeros(n_dom, np.int64),
        np.zeros(n_corp, np.int64),
        StreamingTopK(d_sae, top_k),
        BigramCounts(),
        FiringSpill(d_sae, folder),
        len(rows),
    )
    for chunk, r, c, v, cmax in encode_chunks(sae, ia.acts, rows, device):
        p.fires += np.bincount(c, minlength=d_sae)
        p.sums += np.bincount(c, weights=v, minlength=d_sae)
        np.maximum(p.mx, cmax, out=p.mx)
        p.dom_fires += np.bincount(c * n_dom + ia.domain[r], minlength=d_sae * n_dom)
        p.corp_fires += np.bincount(c * n_corp + wcorpus[ia.window[r]], minlength=d_sae * n_corp)
        p.dom_tokens += np.bincount(ia.domain[chunk], minlength=n_dom)
        p.corp_tokens += np.bincount(wcorpus[ia.window[chunk]], minlength=n_corp)
        p.top.update(c, v.astype(np.float64), r)
        p.spill.append(chunk[0], chunk[-1] + 1, r, c, v)
        p.bigrams.add(_bigrams(ia, chunk, V))
    return p


@dataclass
class HeldPartial:
    """What encoding a slice of held-out rows leaves (``encode_heldout``)."""

    fires: np.ndarray  # (d_sae,) held-out firings
    bands: StreamingTopK | None  # (d_sae * n_bands groups) sampled held-out firings per band (``held_bands``)
    n_bands: int
    bigrams: BigramCounts
    spill: FiringSpill
    concept_both: np.ndarray | None  # (d_sae, C) held-out rows where the latent fires and the concept holds
    concept_n: np.ndarray | None  # (C,) held-out rows where the concept holds

    def merge(self, o: HeldPartial) -> None:
        """Add another slice's partial (sampled with ``rng_offset`` = the held-out firings before it)."""
        self.fires += o.fires
        if o.bands is not None:
            g, _, s, p = o.bands.items()
            self.bands.update(g, s, p)
        self.bigrams.merge(o.bigrams)
        if self.concept_both is not None:
            self.concept_both += o.concept_both
            self.concept_n += o.concept_n

    def portable(self) -> HeldPartial:
        return replace(self, spill=None)

    def firing_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """(latent, row) of the sampled held-out firings, per latent the top band first."""
        nb = self.n_bands
        g, _, _, row = self.bands.items()
        order = np.lexsort((-(g % nb), g // nb))
        return (g // nb)[order], row[order]


def encode_heldout(sae, ia: IndexActs, rows: np.ndarray, n_bands: int, device, folder, labels=None) -> HeldPartial:
    """Encode the held-out ``rows`` (ascending) once: firings spilled, bigram counts, and with ``labels`` (n, C) the
    concept counts of the held-out confidence. The band samples come after, from the spill (``held_bands``): they
    need the train maxima and, in a distributed build, the held-out firings of the ranks before this one."""
    d_sae, V = int(sae.W_dec.shape[0]), len(ia.tokstr)
    C = labels.shape[1] if labels is not None else 0
    both = np.zeros((d_sae, C)) if labels is not None else None
    n_c = np.zeros(C) if labels is not None else None
    p = HeldPartial(np.zeros(d_sae), None, n_bands, BigramCounts(), FiringSpill(d_sae, folder), both, n_c)
    for chunk, r, c, v, _ in encode_chunks(sae, ia.acts, rows, device):
        p.fires += np.bincount(c, minlength=d_sae)
        p.spill.append(chunk[0], chunk[-1] + 1, r, c, v)
        p.bigrams.add(_bigrams(ia, chunk, V))
        if labels is not None:
            y = labels[chunk]
            fire = sp.csr_matrix(
                (np.ones(len(r), np.float32), (np.searchsorted(chunk, r), c)), shape=(len(chunk), d_sae)
            )
            both += (fire.T @ sp.csr_matrix(y.astype(np.float32))).toarray()
            n_c += y.sum(0)
    return p


def held_bands(
    spill: FiringSpill, mx: np.ndarray, n_bands: int, n_samples: int, seed: int, rng_offset: int = 0
) -> StreamingTopK:
    """The held-out firings of a spill (``encode_heldout``'s), sampled: about ``n_samples`` per latent spread evenly over
    ``n_bands`` activation bands of (0, train max ``mx``] (a held-out value above the train max falls in the top band),
    uniformly within a band by random keys from ``seed + 1``, drawn in the firings' order and advanced by
    ``rng_offset`` (the held-out firings of the slices before this one)."""
    bands = StreamingTopK(spill.d_sae * n_bands, -(-n_samples // n_bands))
    rng = _rng(seed + 1, rng_offset)
    for r, c, v in spill.chunks():
        b = np.minimum((v / np.maximum(mx[c], 1e-12) * n_bands).astype(np.int64), n_bands - 1)
        bands.update(c * n_bands + b, rng.random(len(c)), r)
    return bands


def heldout_silent(
    spill: FiringSpill, held_rows: np.ndarray, n: int, seed: int, combine=None
) -> tuple[np.ndarray, np.ndarray]:
    """(latent, row) of up to ``n`` random held-out rows per latent where it does not fire (``seed + 2``).
    ``combine``: sums the lookups over the ranks of a distributed build (each rank's spill holds its rows)."""
    d_sae = spill.d_sae
    if len(held_rows) == 0 or n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rng = np.random.default_rng(seed + 2)
    cand = held_rows[rng.integers(0, len(held_rows), (d_sae, 3 * n))]  # (d_sae, 3n)
    lat = np.repeat(np.arange(d_sae), 3 * n)
    found = spill.lookup(cand.ravel(), lat)
    silent = ((combine(found) if combine is not None else found) == 0).reshape(d_sae, 3 * n)
    silent &= np.cumsum(silent, 1) <= n  # the first n per latent
    keep = silent.ravel()
    return lat[keep], cand.ravel()[keep]


@dataclass
class ScanPartial:
    """What scanning a slice's train spill leaves (``scan_train``)."""

    hist: np.ndarray  # (d_sae * N_BINS,) int64
    bands: StreamingTopK  # (d_sae * n_quantiles groups) uniform samples per activation band
    buckets: LabelBuckets  # (latent, bigram) pairs per latent block
    concepts: object | None  # concepts.ConceptAccumulator of the threshold F1 (protein, recommender)

    def merge(self, o: ScanPartial) -> None:
        """Add another slice's scan (made with ``rng_offset`` = the train firings before it)."""
        self.hist += o.hist
        g, _, s, p = o.bands.items()
        self.bands.update(g, s, p)
        if o.buckets is not None:
            self.buckets.merge(o.buckets)
        if self.concepts is not None:
            for a in ("tp", "n_fire", "n_concept"):
                getattr(self.concepts, a).add_(getattr(o.concepts, a))
            self.concepts.n += o.concepts.n

    def portable(self) -> ScanPartial:
        """Without the label buckets (files of this rank: ``LabelBuckets.block`` travels block by block instead)."""
        return replace(self, buckets=None)


def scan_train(
    spill: FiringSpill,
    ia: IndexActs,
    rows: np.ndarray,
    mx: np.ndarray,
    n_quantiles: int,
    per_quantile: int,
    seed: int,
    bounds: np.ndarray,
    folder: str | Path | None,
    labels: np.ndarray | None = None,
    rng_offset: int = 0,
) -> ScanPartial:
    """Read the train spill of ``rows`` (the rows ``encode_train`` encoded) chunk by chunk, in the order it was
    encoded, given the maxima ``mx``: histogram, quantile-band samples (keys from ``seed``, advanced by
    ``rng_offset`` train firings), label pairs per latent block (``bounds``), concept threshold counts."""
    d_sae, nb, V = spill.d_sae, n_quantiles, len(ia.tokstr)
    hist = np.zeros(d_sae * N_BINS, np.int64)
    bands = StreamingTopK(d_sae * nb, per_quantile)
    buckets = LabelBuckets(bounds, (V + 1) * V, folder)
    acc = None
    if labels is not None:
        import torch

        from backend.index.concepts import ConceptAccumulator

        acc = ConceptAccumulator(mx, labels.shape[1])
    rng = _rng(seed, rng_offset)
    for i, (r, c, v) in enumerate(spill.chunks()):
        frac = v / mx[c]  # in (0, 1]
        hist += np.bincount(c * N_BINS + np.minimum((frac * N_BINS).astype(np.int64), N_BINS - 1), minlength=len(hist))
        bands.update(c * nb + np.minimum((frac * nb).astype(np.int64), nb - 1), rng.random(len(c)), r)
        buckets.add(c, _bigrams(ia, r, V))
        if acc is not None:  # a dense chunk rebuilt from the spill (no re-encode)
            chunk = rows[np.searchsorted(rows, spill.first[i]) : np.searchsorted(rows, spill.end[i])]
            z = np.zeros((len(chunk), d_sae), np.float32)
            z[np.searchsorted(chunk, r), c] = v
            acc.add(torch.from_numpy(z), torch.from_numpy(labels[chunk]))
    return ScanPartial(hist, bands, buckets, acc)


def held_buckets(spill: FiringSpill, ia: IndexActs, bounds: np.ndarray, folder) -> LabelBuckets:
    """The (latent, bigram) pairs of the held-out firings per latent block (``bounds``), for detection scores."""
    V = len(ia.tokstr)
    out = LabelBuckets(bounds, (V + 1) * V, folder)
    for r, c, _ in spill.chunks():
        out.add(c, _bigrams(ia, r, V))
    return out


def context_acts(
    spill: FiringSpill, ia: IndexActs, latent: np.ndarray, center: np.ndarray, radius: int, group: int = 16384
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat acts, lengths, first rows) of contexts: the rows within +-radius of each ``center`` inside its window
    and the activation of the context's ``latent`` on each (ragged, in context order). Lookups go ``group``
    contexts at a time in row order, so each reads only the spill chunks near its rows."""
    start, end = ia.bounds(center)
    lo = np.maximum(center - radius, start)
    lengths = np.minimum(center + radius + 1, end) - lo
    offsets = np.r_[0, np.cumsum(lengths)]
    flat = np.zeros(offsets[-1], np.float32)
    order = np.argsort(center, kind="stable")
    for g in range(0, len(order), group):
        idx = order[g : g + group]
        n = lengths[idx]
        within = np.arange(n.sum()) - np.repeat(np.r_[0, np.cumsum(n)[:-1]], n)
        flat[np.repeat(offsets[idx], n) + within] = spill.lookup(
            np.repeat(lo[idx], n) + within, np.repeat(latent[idx], n)
        )
    return flat, lengths, lo
