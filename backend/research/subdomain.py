"""Subdomain training sets for specialized SAEs: seeds -> retrieval over the pool -> shard cache.

For each ``subdomains:`` entry of the workspace config:
1. seeds: the first ``n_seeds`` windows of ``seed_corpus`` (held out of the pool);
2. pool: every other window of the workspace (all corpora, the seed corpus's other windows too);
3. retrieval (dense MiniLM + faiss by default, BM25 for comparison) picks ``select`` windows;
   both methods are scored by retrieval precision = share of picked windows whose domain is the
   seed corpus's domain (a property of the data, not used for picking);
4. the picked windows (plus the seeds) get their own activation shard cache, on which SAEs with
   ``data: <name>`` train (specialized SAEs with the TERM loss, boosted residual SAEs).

Outputs: ``<ws>/subdomains/<name>.parquet`` (window row, score, rank) and ``<name>.json`` (stats).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

from backend.config import SubdomainConfig
from backend.data.activations import ShardCache
from backend.research import retrieval
from backend.workspace import Workspace, atomic_write_parquet, atomic_write_text


class SubdomainError(ValueError):
    """A subdomain set cannot be built; the message says what to change."""


def window_texts(ws: Workspace, windows: pd.DataFrame) -> list[str]:
    tok = ws.adapter(verbose=False).tokenizer
    return tok.batch_decode(list(windows["token_ids"]), skip_special_tokens=True)


def window_embeddings(ws: Workspace, texts: list[str], verbose: bool) -> np.ndarray:
    """MiniLM embeddings of every window, computed once per workspace and shared by all subdomains."""
    p = ws.path / "subdomains" / "window_embeddings.npy"
    if p.exists():
        v = np.load(p, allow_pickle=False)
        if len(v) == len(texts):
            return v
    v = retrieval.embed(texts, progress=verbose)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(".window_embeddings.tmp.npy")
    np.save(tmp, v)
    tmp.replace(p)
    return v


def build_subdomain(ws: Workspace, sd: SubdomainConfig, force: bool = False, verbose: bool = True) -> ShardCache:
    sel_path = ws.path / "subdomains" / f"{sd.name}.parquet"
    cache_path = ws.cache_dir(sd.name)
    if (cache_path / "meta.json").exists() and sel_path.exists() and not force:
        return ShardCache(cache_path)
    w = ws.windows()
    seed_rows = w.index[w["corpus"] == sd.seed_corpus][: sd.n_seeds]
    if len(seed_rows) == 0:
        raise SubdomainError(f"subdomain {sd.name!r}: corpus {sd.seed_corpus!r} has no windows to seed from")
    domain = str(w.loc[seed_rows[0], "domain"])
    pool = w.drop(index=seed_rows)
    texts = window_texts(ws, w)
    seeds = [texts[i] for i in seed_rows]
    pool_texts = [texts[i] for i in pool.index]
    vecs = window_embeddings(ws, texts, verbose)
    stats: dict = {
        "name": sd.name,
        "seed_corpus": sd.seed_corpus,
        "domain": domain,
        "n_seeds": len(seed_rows),
        "pool": len(pool),
        "method": sd.method,
    }
    chosen = None
    for method in ("dense", "bm25"):  # run both: the configured one is used, the other is reported
        t0 = time.time()
        if method == "dense":
            scores = retrieval.dense_scores_from_vectors(vecs[seed_rows.to_numpy()], vecs[pool.index.to_numpy()])
        else:
            scores = retrieval.bm25_scores(seeds, pool_texts)
        sel = retrieval.top_n(scores, sd.select, retrieval.DEFAULT_FLOOR[method], method, len(seeds))
        picked = pool.iloc[sel.indices]
        stats[method] = {
            "seconds": round(time.time() - t0, 2),
            "selected": int(len(sel.indices)),
            "precision": float((picked["domain"] == domain).mean()),
        }
        if method == sd.method:
            chosen = sel
        if verbose:
            print(
                f"[subdomain] {sd.name}: {method} picked {len(sel.indices)} windows, "
                f"precision {stats[method]['precision']:.2f} ({stats[method]['seconds']} s)",
                flush=True,
            )
    assert chosen is not None
    rows = np.concatenate([seed_rows.to_numpy(), pool.index.to_numpy()[chosen.indices]])
    table = pd.DataFrame(
        {
            "window": rows,
            "score": np.concatenate([np.full(len(seed_rows), np.inf), chosen.scores]),
            "seed": np.arange(len(rows)) < len(seed_rows),
        }
    )
    if len(rows) < 2:
        raise SubdomainError(f"subdomain {sd.name!r} has fewer than 2 windows: add seeds or raise `select`")
    ac = ws.config.activations
    cache = ShardCache.build(
        ws.adapter(verbose=False),
        w.loc[rows].sample(frac=1.0, random_state=0),
        ac.site,
        cache_path,
        batch_size=ac.batch_size,
        max_tokens=sd.max_tokens,
        shard_tokens=ac.shard_tokens,
        dtype=ac.cache_dtype,
        progress=verbose,
    )
    if cache.n_tokens < ws.config.train.batch_size:
        raise SubdomainError(
            f"subdomain {sd.name!r} has {cache.n_tokens:,} tokens, fewer than one training batch "
            f"({ws.config.train.batch_size:,}): raise `select` or lower train.batch_size"
        )
    stats["tokens"] = cache.n_tokens
    atomic_write_parquet(table, sel_path)
    atomic_write_text(sel_path.with_suffix(".json"), json.dumps(stats, indent=1))
    return cache
