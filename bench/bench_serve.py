"""Serving one big index: feature-page latency at 65,536 latents, alone and from several replica processes at once.

    .venv/bin/python bench/bench_serve.py [--latents 65536] [--replicas 3] [--n 300] [--regen]

1. A synthetic index of a 1M-token, 65,536-latent build (bench/synthetic_index.py: 60 contexts per latent, 3.9M
   context rows) is generated once under bench/_data/ (git-ignored; --regen writes it again).
2. The store's two per-latent queries alone (one DuckDB thread against the reader's default, one per core,
   alternated), then
   ``Backend.feature`` (every query of the feature page: the latent row, its contexts, concept matches,
   explanations) on ``--n`` random latents in one process: p50 / p95.
3. ``--replicas`` processes open the SAME index file read-only at once (store.IndexReader ATTACHes it READ_ONLY:
   DuckDB takes a shared lock, so readers never exclude each other) and time ``--n`` random latents each,
   together: p50 / p95 over all and p95 per replica; with one DuckDB thread each, then DuckDB's default (one per
   core, what store.IndexReader uses), alternated twice. Goal: p95 < 100 ms.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _pcts(ms: list[float]) -> str:
    p50, p95 = np.percentile(ms, [50, 95])
    return f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"


def _time_features(b, d_sae: int, n: int, seed: int) -> list[float]:
    """Milliseconds of ``b.feature`` on ``n`` random latents (after one untimed call)."""
    b.feature("big", 0)  # the first query pays for reading the file's metadata
    out = []
    for j in np.random.default_rng(seed).integers(0, d_sae, n):
        t = time.perf_counter()
        f = b.feature("big", int(j))
        out.append((time.perf_counter() - t) * 1e3)
        assert len(f.top_contexts) == 20 and len(f.quantiles) == 5
    return out


def _replica(folder: str, d_sae: int, n: int, seed: int, threads: int, barrier, q) -> None:
    import torch

    torch.set_num_threads(1)
    from backend.serve.service import Backend

    b = Backend(folder)  # every replica holds the file open before any starts timing
    b.index.con.execute("SET threads = ?", [int(threads)])  # DuckDB's default (store.py's reader) is one per core
    barrier.wait(timeout=300)
    try:
        q.put((seed, _time_features(b, d_sae, n, seed)))
    finally:
        b.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latents", type=int, default=65_536)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--regen", action="store_true")
    args = ap.parse_args()
    folder = ROOT / "bench" / "_data" / f"serve_{args.latents}"
    if args.regen or not (folder / "index.duckdb").exists():
        from synthetic_index import synthetic_workspace

        s = synthetic_workspace(folder, args.latents, args.tokens)
        print(f"synthetic index written in {s:.0f} s")
    size = (folder / "index.duckdb").stat().st_size / 2**20
    print(
        f"index: {args.latents:,} latents, 60 contexts each ({args.latents * 60:,} rows), {size:.0f} MiB; {os.cpu_count()} CPUs"
    )

    from backend.index.store import IndexReader

    r = IndexReader(folder / "index.duckdb")
    for rnd in range(2):  # one DuckDB thread against DuckDB's default (a thread per core, the reader's), alternated
        for threads in (1, os.cpu_count() or 1):
            r.con.execute("SET threads = ?", [int(threads)])
            q_ms = []
            for j in np.random.default_rng(1 + rnd).integers(0, args.latents, args.n):
                t = time.perf_counter()
                r.latent("big", int(j))
                r.contexts("big", int(j))
                q_ms.append((time.perf_counter() - t) * 1e3)
            print(f"store: latent row + contexts, {args.n} random latents, {threads} DuckDB thread(s): {_pcts(q_ms)}")
    r.close()
    from backend.serve.service import Backend

    b = Backend(folder)
    alone = _time_features(b, args.latents, args.n, 2)
    b.close()
    print(f"Backend.feature, {args.n} random latents, 1 process: {_pcts(alone)}")

    ctx = mp.get_context("spawn")
    for threads in (1, os.cpu_count() or 1) * 2:
        barrier, q = ctx.Barrier(args.replicas), ctx.Queue()
        procs = [
            ctx.Process(target=_replica, args=(str(folder), args.latents, args.n, 10 + i, threads, barrier, q))
            for i in range(args.replicas)
        ]
        for p in procs:
            p.start()
        results = dict(q.get(timeout=900) for _ in procs)
        for p in procs:
            p.join()
        assert all(p.exitcode == 0 for p in procs)
        every = [x for ms in results.values() for x in ms]
        per = ", ".join(f"{np.percentile(ms, 95):.0f}" for _, ms in sorted(results.items()))
        print(
            f"Backend.feature, {args.replicas} replica processes on one index file at once, {threads} DuckDB "
            f"thread(s) each: {_pcts(every)} (p95 per replica {per} ms; goal p95 < 100 ms)"
        )


if __name__ == "__main__":
    main()
