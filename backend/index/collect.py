"""The indexing corpus: which windows are indexed, their activations (on disk), and the sparse encode.

``collect`` gathers the activations of a deterministic subset of windows spread across corpora
(~``index.max_tokens`` tokens, ``index_windows``): read from the workspace's activation cache for the windows
it holds completely (preferred when choosing) and from one model pass for the rest. The model runs at most
once however many SAEs there are, so the activations are kept for every SAE to encode; they are kept on DISK
(``DiskActs``: an unlinked temporary float16 file beside the workspace, written as the chunks arrive and read
back chunk by chunk with ``pread``), never whole in memory: indexing 2M tokens of a 576-wide site would
otherwise hold 2.3 GB. Reads go through the page cache, not through a memory map, so they add nothing to
the process's resident set. What stays in memory is a few bytes per token (``IndexActs``: token id and window
row as int32, domain as int16, the held-out flag), about 11 bytes per token.

Every 5th indexed window (20%) is HELD OUT: it never contributes to statistics or contexts, only to label
detection scores and the scoring contexts (backend/index/stats.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

from backend.data.activations import ShardCache, stream_activations

CHUNK = 4096
HOLDOUT_EVERY = 5


class DiskActs:
    """(n, d) float16 activations in an unlinked temporary file, indexed like a tensor (``acts[rows]``).

    Rows are appended in arrival order (``append``) and then put in their logical order by ``set_order``
    (logical row i is file row order[i]; stored as runs of consecutive file rows, about one per window, not
    per token). ``acts[idx]`` (integer or boolean index, tensor or array, or a slice) reads the rows asked for
    with one ``preadv`` per run of consecutive file rows and returns a float16 tensor (m, d).
    Hazard: the file lives as long as this object (it is deleted when closed or collected)."""

    def __init__(self, d: int, folder: str | Path | None = None):
        self.d = d
        self._f = tempfile.TemporaryFile(dir=folder)  # O_TMPFILE: never visible, gone when closed or killed
        self.n = 0
        self._run_logical = np.zeros(1, np.int64)  # first logical row of each run
        self._run_file = np.zeros(1, np.int64)  # its file row

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.d)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16

    def __len__(self) -> int:
        return self.n

    def append(self, x: torch.Tensor | np.ndarray) -> None:
        """Append rows (m, d) at the end of the file (any float dtype; stored as float16)."""
        a = (x.detach().cpu().half().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float16)).reshape(
            -1, self.d
        )
        self._f.write(np.ascontiguousarray(a).data)
        self.n += len(a)

    def set_order(self, order: np.ndarray) -> None:
        """Logical row i is file row ``order[i]`` (a permutation of the appended rows)."""
        order = np.asarray(order, np.int64)
        self._f.flush()
        starts = np.flatnonzero(np.r_[True, order[1:] != order[:-1] + 1]) if len(order) else np.zeros(1, np.int64)
        self._run_logical, self._run_file = starts.astype(np.int64), order[starts] if len(order) else starts

    def _file_rows(self, rows: np.ndarray) -> np.ndarray:
        run = np.searchsorted(self._run_logical, rows, side="right") - 1
        return self._run_file[run] + (rows - self._run_logical[run])

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """(len(rows), d) float16: the logical rows ``rows`` (any order, repeats allowed)."""
        rows = np.asarray(rows, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise IndexError(f"row out of range for {self.n} activation rows")
        f = self._file_rows(rows)
        order = np.argsort(f, kind="stable")
        fs = f[order]
        buf = np.empty((len(rows), self.d), np.float16)
        cut = np.flatnonzero(np.diff(fs) != 1) + 1
        fd, rowbytes = self._f.fileno(), self.d * 2
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(fs)]):
            view, off = memoryview(buf[a:b]).cast("B"), int(fs[a]) * rowbytes
            while len(view):  # a regular file answers in full, but preadv may legally return less
                got = os.preadv(fd, [view], off)
                if got <= 0:
                    raise OSError("short read from the activation file")
                view, off = view[got:], off + got
        out = np.empty_like(buf)
        out[order] = buf
        return torch.from_numpy(out)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = np.arange(*idx.indices(self.n))
        idx = idx.cpu().numpy() if isinstance(idx, torch.Tensor) else np.asarray(idx)
        return self.read(np.flatnonzero(idx) if idx.dtype == bool else idx)

    def close(self) -> None:
        self._f.close()


@dataclass
class IndexActs:
    """Kept-token activations of the indexing windows, in window order (rows of one window are contiguous)."""

    acts: torch.Tensor | DiskActs  # (n, d) float16: a CPU tensor, or rows on disk (what ``collect`` makes)
    token: np.ndarray  # (n,) token id
    window: np.ndarray  # (n,) row of the windows table
    domain: np.ndarray  # (n,) domain index into ``domains``
    heldout: np.ndarray  # (n,) bool: the row's window is held out for label scoring
    domains: list[str]
    tokstr: np.ndarray  # (max id + 1,) object: rendered strings of the ids that occur
    source: np.ndarray  # (n_windows,) object: source of every windows-table row
    corpus: np.ndarray | None = None  # (n_windows,) object: corpus name of every windows-table row
    selected: pd.Index | None = None  # the indexing windows (rows of the windows table), for other sites
    excluded: np.ndarray | None = (
        None  # (n,) bool: not normal tokens (attention sinks; the cache's rule): never encoded
    )
    _starts: np.ndarray | None = field(default=None, repr=False, compare=False)  # first row of each window run

    def split_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, held-out rows), ascending, without the excluded rows: those are shown inside contexts (with
        activation 0) but never encoded, counted, sampled or chosen as a context's centre."""
        ok = ~self.excluded if self.excluded is not None else np.ones(len(self.heldout), bool)
        return np.flatnonzero(ok & ~self.heldout), np.flatnonzero(ok & self.heldout)

    def offsets(self) -> np.ndarray:
        """(n,) each row's offset among its window's kept tokens (rows of a window are contiguous, in order)."""
        return np.arange(len(self.window)) - self.window_bounds()[0]

    def window_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(first row, end row) of the window each row belongs to (n-sized: prefer ``bounds`` of some rows)."""
        return self.bounds(np.arange(len(self.window)))

    def bounds(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first row, end row) of the windows that ``rows`` belong to; memory O(windows + len(rows))."""
        if self._starts is None:
            self._starts = np.flatnonzero(np.r_[True, self.window[1:] != self.window[:-1]])
        starts = self._starts
        run = np.searchsorted(starts, rows, side="right") - 1
        ends = np.r_[starts[1:], len(self.window)]
        return starts[run], ends[run]

    def prev_tokens(self, rows: np.ndarray, none: int) -> np.ndarray:
        """(len(rows),) int64: the token before each row in its window (``none`` at a window's first row);
        ``label.previous_tokens`` of the rows asked for, without an n-sized array."""
        rows = np.asarray(rows, np.int64)
        prev = np.full(len(rows), none, np.int64)
        before = rows - 1
        ok = before >= 0
        ok[ok] &= self.window[before[ok]] == self.window[rows[ok]]
        prev[ok] = self.token[before[ok]]
        return prev

    def close(self) -> None:
        """Delete the on-disk activations (when they are on disk)."""
        if isinstance(self.acts, DiskActs):
            self.acts.close()


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
    """Activations at ``site`` (default activations.site) of the indexing windows, on disk (``DiskActs``): read
    from the workspace's activation cache there where it holds them, the rest from one model pass
    (stream_activations), chunk by chunk; see the module doc. ``windows``: the indexing windows chosen for another
    site (``IndexActs.selected``), so that every site indexes the same tokens."""
    adapter, site = ws.adapter(verbose=progress), site or ws.config.activations.site
    allw = ws.windows()
    cache, cached = _cached_windows(ws, adapter, allw, site)
    if windows is None:
        w = index_windows(allw, ws.config.index.max_tokens, ws.config.train.seed, prefer=cached)
    else:
        w = allw.loc[windows]
    hit = w.index.isin(cached)
    rule = cache.exclusion if cache is not None else None  # the training cache's sink rule, applied to every row
    acts = DiskActs(adapter.d_model, folder=ws.path)
    toks, wins, exc = [], [], []
    for c in stream_activations(
        adapter, w[~hit], site, ws.config.activations.batch_size, progress=progress, desc="index activations"
    ):
        acts.append(c.acts)
        toks.append(c.token_ids.numpy().astype(np.int32))
        wins.append(c.window.numpy().astype(np.int32))
        exc.append(~rule.normal(c.acts, c.pos).numpy() if rule else np.zeros(len(c.acts), bool))
    for i in range(len(cache.shards) if cache is not None and hit.any() else 0):
        sh = cache.load_shard(i)  # one shard in memory at a time
        m = np.isin(sh["window"].numpy(), w.index[hit])
        mt = torch.from_numpy(m)
        acts.append(sh["acts"][mt])
        toks.append(sh["token_ids"].numpy()[m].astype(np.int32))
        wins.append(sh["window"].numpy()[m].astype(np.int32))
        exc.append(~rule.normal(sh["acts"][mt], sh["pos"][mt]).numpy() if rule else np.zeros(int(m.sum()), bool))
        del sh
    if not acts.n:
        acts.close()
        raise ValueError("the indexing corpus is empty: check the workspace's corpora and index.max_tokens")
    window = np.concatenate(wins)
    order = np.argsort(window, kind="stable")  # window order; rows of a window stay in position order
    acts.set_order(order)
    window, token, excluded = window[order], np.concatenate(toks)[order], np.concatenate(exc)[order]
    del order, toks, wins, exc
    domains, domain = np.unique(allw["domain"].to_numpy()[window], return_inverse=True)
    held = np.searchsorted(w.index.to_numpy(), window) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    uniq = np.unique(token)
    tokstr = np.empty(int(uniq.max()) + 1, dtype=object)
    tokstr[uniq] = adapter.token_strings(uniq.tolist())
    return IndexActs(
        acts,
        token,
        window,
        domain.ravel().astype(np.int16),
        held,
        domains.tolist(),
        tokstr,
        allw["source"].to_numpy(),
        allw["corpus"].to_numpy(),
        selected=w.index,
        excluded=excluded if excluded.any() else None,
    )


def encode_chunks(
    sae, acts: torch.Tensor | DiskActs, rows: np.ndarray, device: torch.device | str = "cpu"
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (chunk rows, rows, latents, values, chunk max (d_sae,)) of the nonzero latents, CHUNK of ``rows`` at a
    time (row-major: rows ascending when ``rows`` is, latents ascending within a row)."""
    with torch.inference_mode():
        for s in range(0, len(rows), CHUNK):
            r = rows[s : s + CHUNK]
            lat = sae.encode(acts[torch.from_numpy(r)].to(device).float())  # (chunk, d_sae)
            rr, cc = torch.nonzero(lat > 0, as_tuple=True)
            yield r, r[rr.cpu().numpy()], cc.cpu().numpy(), lat[rr, cc].cpu().numpy(), lat.amax(0).cpu().numpy()


def encode_sparse(
    sae, acts: torch.Tensor | DiskActs, rows: np.ndarray, device: torch.device | str = "cpu"
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (rows, latents, values, chunk max (d_sae,)) of the nonzero latents, CHUNK rows at a time."""
    for _, r, c, v, cmax in encode_chunks(sae, acts, rows, device):
        yield r, c, v, cmax
