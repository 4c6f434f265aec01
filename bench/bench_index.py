"""Feature-page latency at 18,432 latents, and index build time against encode-only time.

    .venv/bin/python bench/bench_index.py [--workspace workspaces/demo --sae general] [--full]

1. A synthetic index of the real size (bench/synthetic_index.py: 18,432 latents x 60 contexts (20 top + 5 bands x 4
   + 10 + 10 held-out scoring contexts) x 25 tokens = 1.1M context rows) is written through store.IndexWriter;
   Backend.feature() is timed on 300 random latents, alone and with 4 threads at once: p50 / p95 (goal p95 < 100 ms).
   bench/bench_serve.py does the same at 65,536 latents, and with several replica processes.
2. With --workspace: the indexing activations are collected once; then for the named SAE and for a
   random 18,432-latent TopK SAE (k=32, the published shape) over the same activations, in the same
   run: encode only (the floor) against index_sae (encode + statistics + top-k + quantiles + contexts
   + labels + logit lens), per 100k tokens.
3. With --full as well: build_index of the whole workspace into a temporary file (maps included).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from synthetic_index import KINDS, synthetic_workspace  # noqa: E402

from backend.serve.service import Backend  # noqa: E402

D_SAE, TOP, BANDS = 18_432, 20, 5


def _pcts(times: list[float]) -> str:
    p50, p95 = np.percentile(times, [50, 95])
    return f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"


def feature_latency() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        synthetic_workspace(Path(tmp), D_SAE)
        size = (Path(tmp) / "index.duckdb").stat().st_size / 2**20
        print(
            f"synthetic {D_SAE:,}-latent index ({D_SAE * len(KINDS):,} context rows, {size:.0f} MiB) "
            f"written in {time.perf_counter() - t:.1f} s"
        )
        b = Backend(tmp)
        b.feature("big", 0)
        rng = np.random.default_rng(1)

        def run(latents: np.ndarray, out: list[float]) -> None:
            for j in latents:
                t = time.perf_counter()
                f = b.feature("big", int(j))
                out.append((time.perf_counter() - t) * 1e3)
                assert len(f.top_contexts) == TOP and len(f.quantiles) == BANDS

        alone: list[float] = []
        run(rng.integers(0, D_SAE, 300), alone)
        print(f"Backend.feature, 300 random latents, 1 thread: {_pcts(alone)} (goal p95 < 100 ms)")
        together: list[float] = []
        threads = [threading.Thread(target=run, args=(rng.integers(0, D_SAE, 75), together)) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        print(f"Backend.feature, 4 threads x 75 latents at once: {_pcts(together)}")
        b.close()


def build_vs_encode(ws_path: str, sae_name: str, full: bool) -> None:
    from backend.index import build as ix
    from backend.sae.model import Sae, SaeSpec, load_sae
    from backend.workspace import open_workspace

    ws = open_workspace(ws_path)
    t = time.perf_counter()
    ia = ix.collect(ws, progress=False)
    n = len(ia.token)
    per = 100_000 / n
    print(
        f"{ws.config.name}: {n:,} indexing tokens collected in {time.perf_counter() - t:.1f} s "
        f"(activation cache + model for the rest)"
    )
    adapter = ws.adapter(verbose=False)
    d_in = int(ia.acts.shape[1])
    big = Sae(SaeSpec(d_in=d_in, d_sae=D_SAE, architecture="topk", k=32)).eval()
    for name, sae in ((sae_name, load_sae(ws.sae_dir(sae_name))), (f"random topk {D_SAE:,}", big)):
        rows = np.arange(n)
        t = time.perf_counter()
        for _ in ix.encode_sparse(sae, ia.acts, rows):
            pass
        enc = time.perf_counter() - t
        t = time.perf_counter()
        ix.index_sae(name, "topk", sae, ia, ws.config.index, adapter.unembed(), adapter.token_strings)
        full_t = time.perf_counter() - t
        print(
            f"  {name} ({int(sae.W_dec.shape[0]):,} latents): encode only {enc * per:.1f} s / 100k tokens; "
            f"index_sae {full_t * per:.1f} s / 100k tokens = {full_t / enc:.2f}x the encode"
        )
    if full:
        with tempfile.TemporaryDirectory() as tmp:
            tm = ix.build_index(ws, progress=False, out=Path(tmp) / "index.duckdb")
        sae_s = sum(v for k, v in tm.items() if k.startswith("sae:"))
        print(
            f"  build_index, {len(ws.config.saes)} SAEs: {tm['total_s']:.0f} s in all = "
            f"activations {tm['activations_s']:.0f} s "
            f"+ SAEs {sae_s:.0f} s + maps {tm['maps_s']:.0f} s ({'UMAP' if ws.config.index.umap else 'PCA'}); "
            f"{tm['total_s'] * 100_000 / tm['tokens']:.0f} s / 100k tokens"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace")
    ap.add_argument("--sae", default="general")
    ap.add_argument(
        "--full", action="store_true", help="also time build_index of the whole workspace (into a temp file)"
    )
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    feature_latency()
    if args.workspace:
        build_vs_encode(args.workspace, args.sae, args.full)


if __name__ == "__main__":
    main()
