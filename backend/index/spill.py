"""On-disk intermediates of the index build: the firings of one SAE, and its label counts partitioned by latent.

Both live in unlinked temporary files (``tempfile.TemporaryFile``: invisible, and gone when closed or when the
process dies, so a killed build leaves nothing behind) and are read back with ``pread`` (the page cache holds
them, the process's resident set does not).

- ``FiringSpill``: every nonzero activation of one SAE on a set of rows, appended chunk by chunk in row order:
  key = row * d_sae + latent (int64, strictly increasing) and value (float32), 12 bytes per firing on disk,
  plus a chunk index in memory (first row, end row, first firing: 24 bytes per 4,096-row chunk). Read back
  chunk by chunk (``chunks``, the "second pass" of the build without a second encode) or by lookups of
  (row, latent) pairs (``lookup``: the queries are sorted by key and answered chunk by chunk, reading only
  the chunks in their row range).
- ``LabelBuckets``: the (latent, bigram) pair of every firing, written to one file per block of latents
  (``latent_blocks``: about ``max_pairs`` pairs per block), so that the counts of one block are aggregated
  in memory (np.unique) while the others wait on disk: an external partition by latent, bounded by the
  block size instead of by the corpus.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

BLOCK_PAIRS = 1 << 22
"""About this many firings' (latent, bigram) pairs per latent block of the label counts (32 MiB of keys)."""
BLOCK_LATENTS = 4096
"""At most this many latents per block (bounds the per-block explanations, examples and context tables)."""


def _write(f, a: np.ndarray) -> None:
    f.write(np.ascontiguousarray(a).data)


def _pread(f, dtype, start: int, count: int) -> np.ndarray:
    """``count`` items of ``dtype`` from item ``start`` of the file ``f`` (flushed by the caller)."""
    out = np.empty(count, dtype)
    view, off = memoryview(out).cast("B"), start * out.itemsize
    while len(view):
        got = os.preadv(f.fileno(), [view], off)
        if got <= 0:
            raise OSError("short read from a spill file")
        view, off = view[got:], off + got
    return out


class FiringSpill:
    """The firings of one SAE on some rows, on disk; ``append`` chunks in increasing row order (see module doc)."""

    def __init__(self, d_sae: int, folder: str | Path | None = None):
        self.d_sae = d_sae
        self._keys = tempfile.TemporaryFile(dir=folder)
        self._vals = tempfile.TemporaryFile(dir=folder)
        self.first: list[int] = []  # per chunk: first row, end row (exclusive), first firing
        self.end: list[int] = []
        self._off: list[int] = [0]
        self._dirty = False

    @property
    def nnz(self) -> int:
        return self._off[-1]

    @property
    def n_chunks(self) -> int:
        return len(self.first)

    def append(self, first_row: int, end_row: int, rows: np.ndarray, latents: np.ndarray, values: np.ndarray) -> None:
        """The firings of the rows [first_row, end_row) (only some of them may be encoded), row-major, after every
        firing appended before (``first_row`` >= the previous chunk's end row)."""
        if self.end and first_row < self.end[-1]:
            raise ValueError("FiringSpill chunks must come in increasing row order")
        _write(self._keys, rows.astype(np.int64) * self.d_sae + latents)
        _write(self._vals, values.astype(np.float32))
        self.first.append(int(first_row))
        self.end.append(int(end_row))
        self._off.append(self._off[-1] + len(rows))
        self._dirty = True

    def _flush(self) -> None:
        if self._dirty:
            self._keys.flush()
            self._vals.flush()
            self._dirty = False

    def chunk(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, values) of chunk i."""
        self._flush()
        a, b = self._off[i], self._off[i + 1]
        return _pread(self._keys, np.int64, a, b - a), _pread(self._vals, np.float32, a, b - a)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, latents, values) of every chunk, in order (row-major: the order the firings were encoded in)."""
        for i in range(self.n_chunks):
            k, v = self.chunk(i)
            r, c = np.divmod(k, self.d_sae)
            yield r, c, v

    def lookup(self, rows: np.ndarray, latents: np.ndarray) -> np.ndarray:
        """(m,) float32: the value of latents[i] on rows[i], 0 where it did not fire (or the row is not spilled).
        Reads only the chunks whose rows the queries reach; memory O(m + one chunk)."""
        q = np.asarray(rows, np.int64) * self.d_sae + np.asarray(latents, np.int64)
        out = np.zeros(len(q), np.float32)
        if not len(q) or not self.n_chunks:
            return out
        order = np.argsort(q, kind="stable")
        qs = q[order]
        first, end = np.asarray(self.first, np.int64), np.asarray(self.end, np.int64)
        lo_row, hi_row = qs[0] // self.d_sae, qs[-1] // self.d_sae
        for i in range(np.searchsorted(end, lo_row, side="right"), np.searchsorted(first, hi_row, side="right")):
            a, b = np.searchsorted(qs, [first[i] * self.d_sae, end[i] * self.d_sae])
            if a == b:
                continue
            k, v = self.chunk(i)
            if not len(k):
                continue
            j = np.searchsorted(k, qs[a:b]).clip(max=len(k) - 1)
            out[order[a:b]] = np.where(k[j] == qs[a:b], v[j], 0)
        return out

    def close(self) -> None:
        self._keys.close()
        self._vals.close()


def latent_blocks(pairs: np.ndarray, max_pairs: int | None = None, max_latents: int | None = None) -> np.ndarray:
    """Bounds (n_blocks + 1,) of contiguous latent blocks holding about ``max_pairs`` (default ``BLOCK_PAIRS``) of
    ``pairs`` (d_sae,) each (a latent with more is a block of its own) and at most ``max_latents`` (default
    ``BLOCK_LATENTS``) latents."""
    max_pairs, max_latents = max_pairs or BLOCK_PAIRS, max_latents or BLOCK_LATENTS
    d = len(pairs)
    cum = np.cumsum(pairs, dtype=np.float64)
    by_pairs = np.searchsorted(cum, np.arange(max_pairs, cum[-1] if d else 0, max_pairs), side="left") + 1
    cuts = np.unique(np.r_[0, by_pairs.clip(1, d), np.arange(max_latents, d, max_latents), d])
    return cuts.astype(np.int64)


class LabelBuckets:
    """The (latent, bigram key) pairs of firings, partitioned into one file per latent block (``bounds``).
    ``add`` slices of pairs; ``block(b)`` aggregates block b: (latent, bigram key, count) with unique pairs."""

    def __init__(self, bounds: np.ndarray, n_bigrams: int, folder: str | Path | None = None):
        self.bounds, self.kb = np.asarray(bounds, np.int64), int(n_bigrams)
        self._files = [[tempfile.TemporaryFile(dir=folder)] for _ in range(len(self.bounds) - 1)]  # own file first
        self._dirty = False

    def add(self, latents: np.ndarray, bigrams: np.ndarray) -> None:
        """Pairs (latent, bigram key < n_bigrams) of some firings."""
        b = (np.searchsorted(self.bounds[1:-1], latents, side="right")).astype(np.int16)
        order = np.argsort(b, kind="stable")  # a radix sort on int16
        comp = (latents.astype(np.int64) * self.kb + bigrams)[order]
        cut = np.r_[0, np.cumsum(np.bincount(b, minlength=len(self._files)))]
        for j, files in enumerate(self._files):
            if cut[j + 1] > cut[j]:
                _write(files[0], comp[cut[j] : cut[j + 1]])
        self._dirty = True

    def merge(self, other: LabelBuckets) -> None:
        """Take over another slice's pairs (same bounds): its files join this one's, block by block."""
        if not np.array_equal(self.bounds, other.bounds) or self.kb != other.kb:
            raise ValueError("LabelBuckets of different latent blocks cannot merge")
        other._flush()
        for mine, theirs in zip(self._files, other._files):
            mine.extend(theirs)
        other._files = [[] for _ in other._files]

    def _flush(self) -> None:
        if self._dirty:
            for files in self._files:
                files[0].flush()
            self._dirty = False

    def __len__(self) -> int:
        return len(self._files)

    def block(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(latents, bigram keys, counts float64) of block b, sorted by latent then bigram key."""
        self._flush()
        comp = np.concatenate(
            [np.zeros(0, np.int64)]
            + [_pread(f, np.int64, 0, os.fstat(f.fileno()).st_size // 8) for f in self._files[b]]
        )
        u, counts = np.unique(comp, return_counts=True)
        del comp
        lat, key = np.divmod(u, self.kb)
        return lat, key, counts.astype(np.float64)

    def close(self) -> None:
        for files in self._files:
            for f in files:
                f.close()
