"""Specialized SAEs: retrieval time over the whole pool, and training time with TERM against without.

    .venv/bin/python bench/bench_subdomain.py --workspace workspaces/demo [--tokens 50000]

1. Dense retrieval (MiniLM embeddings of every window + faiss search) and BM25 over the workspace's
   whole window pool, seeded by the biomedical corpus; precision of each.
2. A TopK SAE (d_sae of the workspace's general SAE, k=32) trained on the same token count of
   (a) general activations, (b) the subdomain cache with TERM (t=0.5), (c) the subdomain cache without;
   seconds and tokens/s side by side.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
from backend import retrieval  # noqa: E402
from backend.config import SaeConfig, TrainConfig  # noqa: E402
from backend.research.subdomain import window_texts  # noqa: E402
from backend.sae.train import train_sae  # noqa: E402
from backend.workspace import open_workspace  # noqa: E402


class Limited:
    """A shard cache cut to n tokens (same protocol)."""

    def __init__(self, cache, n: int):
        self.x = cache.all_acts(n)
        self.d_in, self.n_tokens = self.x.shape[1], len(self.x)

    def batches(self, batch_size: int, seed: int = 0):
        perm = torch.randperm(self.n_tokens, generator=torch.Generator().manual_seed(seed))
        for s in range(0, self.n_tokens, batch_size):
            yield self.x[perm[s : s + batch_size]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default=str(ROOT / "workspaces" / "demo"))
    ap.add_argument("--subdomain", default="biomedical")
    ap.add_argument("--tokens", type=int, default=50_000)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    ws = open_workspace(args.workspace)
    sd = next(d for d in ws.config.subdomains if d.name == args.subdomain)
    w = ws.windows()
    texts = window_texts(ws, w)
    seeds = [texts[i] for i in w.index[w["corpus"] == sd.seed_corpus][: sd.n_seeds]]
    t = time.perf_counter()
    sel = retrieval.select(seeds, texts, sd.select, "dense")
    dense_s = time.perf_counter() - t
    dom = w.loc[w["corpus"] == sd.seed_corpus, "domain"].iloc[0]
    t = time.perf_counter()
    sel_b = retrieval.select(seeds, texts, sd.select, "bm25")
    bm25_s = time.perf_counter() - t
    prec = lambda s: float((w["domain"].to_numpy()[s.indices] == dom).mean())  # noqa: E731
    print(
        f"pool {len(texts):,} windows: dense (embed + faiss) {dense_s:.1f} s, precision {prec(sel):.2f}; "
        f"BM25 {bm25_s:.2f} s, precision {prec(sel_b):.2f} (top {sd.select}, seeds {len(seeds)})"
    )
    d_sae = next(s.d_sae for s in ws.config.saes if s.data == "general")
    runs = [
        ("general, no TERM", "general", 0.0),
        (f"{args.subdomain}, TERM t=0.5", args.subdomain, 0.5),
        (f"{args.subdomain}, no TERM", args.subdomain, 0.0),
    ]
    base = None
    for label, data, tilt in runs:
        src = Limited(ws.activation_source(data), args.tokens)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            train_sae(
                SaeConfig(name="b", architecture="topk", d_sae=d_sae, k=32, term_tilt=tilt),
                TrainConfig(batch_size=1024, lr=1e-3, checkpoint_every=0),
                src,
                Path(tmp) / "s",
                progress=False,
            )
            secs = time.perf_counter() - t
        base = base or secs
        print(
            f"{label:28s} {src.n_tokens:,} tokens in {secs:5.1f} s ({src.n_tokens / secs:,.0f} tok/s), {secs / base:.2f}x general"
        )


if __name__ == "__main__":
    main()
