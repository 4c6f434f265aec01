"""Feature-page latency at 18,432 latents, and index build time against encode-only time.

    .venv/bin/python bench/bench_index.py [--workspace workspaces/demo --sae general]

1. A synthetic index of the real size (18,432 latents x 35 contexts x 25 tokens, ~645k context
   rows) is written through store.IndexWriter; Backend.feature() is timed on 300 random latents:
   p50 / p95 (goal p95 < 100 ms).
2. With --workspace: index_sae() for one SAE over the workspace's indexing activations, against
   encoding the same activations once (the floor), in the same run; per 100k tokens.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from backend.service import Backend  # noqa: E402
from backend.store import IndexWriter  # noqa: E402


def synthetic_workspace(folder: Path, d_sae: int = 18_432, n_ctx: int = 35, width: int = 25) -> None:
    shutil.copy(ROOT / "configs" / "tiny.yaml", folder / "workspace.yaml")
    rng = np.random.default_rng(0)
    lat = pd.DataFrame({
        "sae": "big", "latent": np.arange(d_sae), "density": rng.random(d_sae) * 0.01, "mean_act": rng.random(d_sae),
        "max_act": rng.random(d_sae) * 10, "hist_edges": [np.linspace(0, 1, 21).tolist()] * d_sae,
        "hist_counts": [rng.integers(0, 50, 20).tolist()] * d_sae, "label": [f"'tok{i}' · [general 50%]" for i in range(d_sae)],
        "confidence": rng.random(d_sae), "precision": rng.random(d_sae), "recall": rng.random(d_sae),
        "top_domain": "general", "top_tokens": '["a"]', "logit_top": '[["a", 1.0]]', "logit_bottom": '[["b", -1.0]]',
        "domain_rates": '{"general": 0.01}'})
    n = d_sae * n_ctx
    words = np.array([f" w{i}" for i in range(500)], dtype=object)
    toks = words[rng.integers(0, 500, (n, width))]
    ctx = pd.DataFrame({"sae": "big", "latent": np.repeat(np.arange(d_sae), n_ctx),
                        "kind": np.tile(["top"] * 20 + [f"q{i // 3}" for i in range(15)], d_sae),
                        "rank": np.tile(np.r_[np.arange(20), np.arange(15) % 3], d_sae),
                        "tokens": list(toks), "acts": list(rng.random((n, width)).astype(np.float32)),
                        "focus": 12, "source": "synthetic", "domain": "general", "max_act": rng.random(n)})
    saes = pd.DataFrame([{"sae": "big", "architecture": "topk", "d_in": 576, "d_sae": d_sae, "n_tokens": 1, "n_heldout": 1}])
    with IndexWriter(folder / "index.duckdb") as w:
        w.add("latents", lat)
        w.add("contexts", ctx)
        w.add("saes", saes)


def feature_latency() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        synthetic_workspace(Path(tmp))
        print(f"synthetic 18,432-latent index written in {time.perf_counter() - t:.1f} s")
        b = Backend(tmp)
        rng = np.random.default_rng(1)
        b.feature("big", 0)
        times = []
        for j in rng.integers(0, 18_432, 300):
            t = time.perf_counter()
            f = b.feature("big", int(j))
            times.append((time.perf_counter() - t) * 1e3)
            assert len(f.top_contexts) == 20
        p50, p95 = np.percentile(times, [50, 95])
        print(f"feature page (Backend.feature, 300 random latents): p50 {p50:.1f} ms, p95 {p95:.1f} ms (goal p95 < 100 ms)")


def build_vs_encode(ws_path: str, sae_name: str) -> None:
    from backend import index as ix
    from backend.config import IndexConfig
    from backend.sae import load_sae
    from backend.workspace import open_workspace

    ws = open_workspace(ws_path)
    ia = ix.collect(ws, progress=False)
    sae = load_sae(ws.sae_dir(sae_name))
    n = len(ia.token)
    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, n, ix.CHUNK):
            sae.encode(ia.acts[s : s + ix.CHUNK].float())
    enc = time.perf_counter() - t
    t = time.perf_counter()
    ix.index_sae(sae_name, sae, ia, ws.config.index or IndexConfig(), ws.adapter(False), np.random.default_rng(0))
    full = time.perf_counter() - t
    per = 100_000 / n
    print(f"SAE {sae_name} ({int(sae.W_dec.shape[0])} latents) over {n:,} tokens: encode only {enc * per:.1f} s / 100k tokens, "
          f"index (3 passes, contexts, labels, logit lens) {full * per:.1f} s / 100k tokens: {full / enc:.1f}x the encode")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace")
    ap.add_argument("--sae", default="general")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    feature_latency()
    if args.workspace:
        build_vs_encode(args.workspace, args.sae)


if __name__ == "__main__":
    main()
