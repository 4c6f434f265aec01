"""Build the feature index of a workspace: contexts, stats, labels, logit lens and maps -> DuckDB, in bounded memory.

Pipeline (``build_index``):
1. ``collect`` (backend/index/collect.py): activations of a deterministic subset of windows spread across corpora
   (~``index.max_tokens`` tokens), read from the workspace's activation cache for the windows it holds and
   from one model pass for the rest; they go to an unlinked temporary file (``DiskActs``) that every SAE
   encodes chunk by chunk, so the model runs at most once however many SAEs there are. Every 5th indexed
   window (20%) is HELD OUT: it never contributes to statistics or contexts, only to label scores.
2. Per SAE (backend/index/sae_index.py over backend/index/stats.py): ONE encode of the train rows (``CHUNK``
   tokens at a time): counts, sums, maxima, per-domain and per-corpus counts, the streaming top-k, and every
   firing spilled to disk (spill.FiringSpill); one encode of the held-out rows (their firings spilled too,
   samples over activation bands for the scoring contexts); then scans of the spills instead of a second
   encode: histograms (``N_BINS`` equal bins over (0, max]), ``n_quantiles`` quantile bands with
   ``per_quantile`` uniform samples each (reservoir sampling by random keys, seeded), the (latent, bigram) label
   counts partitioned by latent block on disk (spill.LabelBuckets), concept counts; each chosen context's
   activations by lookups in the spill. The statistical labeller (backend/index/label.py) runs one latent block
   at a time, with its detection score on the held-out counts and its fuzzing score on the held-out scoring
   contexts (backend/index/score.py); the tables go to the writer block by block.
3. Logit lens: W_dec[l] @ U^T (U the unembedding, skipped when the adapter has none), top and
   bottom 10 tokens per latent (backend/index/tables.py).
4. Maps: UMAP (or PCA) of unit decoder rows per SAE and jointly (backend/index/maps.py).
Everything is written through store.IndexWriter: built aside, renamed into place.
Under torchrun every rank runs this with the same inputs: each encodes and scans its slice of the rows, the
partials merge on rank 0 (backend/index/sae_index.py), and rank 0 alone writes the file and the maps.

``add_to_index`` (the staged build: one SAE at a time, the app serving those already indexed) indexes
only the SAEs it is given and copies every other SAE's rows unchanged from the current index (per-SAE
map coordinates included); the joint map is recomputed over all indexed SAEs, with PCA while some SAE of
the config is still missing (a UMAP of every indexed row per added SAE would cost the build about
n_saes / 2 times the final joint map) and with the config's method once the last one is added, so the
finished index holds the same rows as ``build_index``'s.

Memory: bounded in the number of indexed tokens but for ~11 bytes per token (token ids, window rows, flags:
backend/index/collect.py; 8 more for the train / held-out row indices while an SAE is indexed) and the corpus'
distinct bigrams; the rest is O(d_sae x contexts per latent) plus one
encode chunk (CHUNK x d_sae float32: 268 MB at 16,384 latents) and one label block (spill.BLOCK_PAIRS).
Disk (temporary, beside the index): n_tokens x d_in x 2 bytes of activations and ~20 bytes per firing of one
SAE (2M tokens x 576 at L0 32: 2.3 GB + 1.3 GB). bench/bench_index_memory.py measures the curve.
Latent statistics describe the train split only; ``density`` is firings / train tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from backend import dist
from backend.config import IndexConfig
from backend.index.collect import CHUNK, HOLDOUT_EVERY, IndexActs, collect, encode_sparse, index_windows
from backend.index.maps import joint_layout, layout
from backend.index.sae_index import index_sae, index_sae_tables
from backend.index.stats import N_BINS
from backend.index.store import IndexWriter
from backend.index.tables import HELDOUT_KINDS, logit_lens
from backend.sae.model import check_site, load_sae

__all__ = [
    "CHUNK",
    "HELDOUT_KINDS",
    "HOLDOUT_EVERY",
    "N_BINS",
    "IndexActs",
    "IndexInputs",
    "add_to_index",
    "build_index",
    "collect",
    "encode_sparse",
    "index_inputs",
    "index_sae",
    "index_windows",
    "indexed_saes",
    "logit_lens",
    "write_index",
]


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
    spill_dir: str | Path | None = None,
) -> dict[str, float]:
    """Index (name, architecture, sae) triples (a lazy iterable: one SAE in memory at a time) over ``ia``
    and write the whole index to ``out`` atomically. Returns seconds per SAE and for the maps.

    ``keep`` (name, W_dec) pairs: SAEs whose rows are copied unchanged from the index at ``keep_from`` (their
    per-SAE map too); the joint map is laid out over them and the new SAEs together, in ``order`` (default:
    kept, then new), with ``joint_method`` (default: the config's, umap or pca). ``ia_of(name)``: the activations of
    an SAE that reads another site than ``ia``'s (the same tokens). ``spill_dir``: where the temporary firing
    spills go (default: beside ``out``)."""
    timings: dict[str, float] = {}
    mats: dict[str, np.ndarray] = dict(keep)
    method = "umap" if cfg.umap else "pca"
    spill_dir = Path(spill_dir) if spill_dir is not None else Path(out).parent

    def tables(name: str, arch: str, sae) -> Iterator[tuple[str, Any]]:
        acts = ia_of(name) if ia_of is not None else ia
        return index_sae_tables(
            name, arch, sae, acts, cfg, unembed, token_strings, seed, device, concepts=concepts, spill_dir=spill_dir
        )

    if not dist.is_leader():  # another rank of a torchrun build: it encodes its slice of every SAE (yielding nothing)
        for name, arch, sae in saes:
            for _ in tables(name, arch, sae):
                pass
        return timings
    with IndexWriter(out) as writer:
        kept_xy = writer.copy_from(keep_from, list(mats)) if mats and keep_from is not None else pd.DataFrame()
        for name, arch, sae in saes:
            t = time.perf_counter()
            for table, frame in tables(name, arch, sae):
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
    """Meaning vectors of ``names`` (backend/index/meaning.py) for the workspace's own index, where the kind has them
    (rank 0 alone under torchrun)."""
    if ws.kind.search_meaning and (out is None or Path(out) == Path(ws.index_path)):
        from backend.index.meaning import build_meaning

        dist.on_rank0(build_meaning, ws.path, ws.index_path, names, progress=progress)


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

    def close(self) -> None:
        """Delete the on-disk activations of every site (the inputs cannot index after this)."""
        for ia in (self.ia, *self.other_sites.values()):
            ia.close()


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
    try:
        timings = _write(ws, inp, [s.name for s in ws.config.saes], out, [], progress)
    finally:
        inp.close()
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
        try:
            timings = _write(ws, inp, list(names), out, keep, progress)
        finally:
            if inputs is None:  # the caller's inputs stay open for its next SAEs
                inp.close()
        _meaning(ws, list(names), out, progress)
        timings.update(tokens=float(len(inp.ia.token)), total_s=time.perf_counter() - t0)
        if progress:
            print(f"[index] added {', '.join(names)} ({len(keep) + len(names)} SAEs indexed) -> {out}", flush=True)
        return timings
