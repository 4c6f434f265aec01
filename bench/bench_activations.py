"""Activation throughput at block 15 of SmolLM2: truncated forward vs the full model, one run.

Also the seconds of a cold model load (GGUF dequantize + safetensors cache write) and a warm load.
Prints ratios; results are recorded by hand in bench/RESULTS.md.

    .venv/bin/python bench/bench_activations.py [--layer 15] [--batches 6] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from backend import assets  # noqa: E402
from backend.adapters.causal_lm import load_causal_lm  # noqa: E402
from backend.config import CorpusConfig, ModelConfig  # noqa: E402
from backend.data.corpora import load_docs, make_windows  # noqa: E402


def timed_load(home: Path) -> float:
    old = os.environ.get("SAEX_HOME")
    os.environ["SAEX_HOME"] = str(home)
    try:
        t = time.perf_counter()
        load_causal_lm(ModelConfig(device="cpu"), verbose=False)
        return time.perf_counter() - t
    finally:
        if old is None:
            os.environ.pop("SAEX_HOME")
        else:
            os.environ["SAEX_HOME"] = old


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "assets").mkdir()
        os.symlink(assets.asset_dir("smollm2"), home / "assets" / "smollm2")
        cold = timed_load(home)
        warm = timed_load(home)

    a = load_causal_lm(ModelConfig(device="cpu", dtype=args.dtype), verbose=False)
    docs = load_docs(CorpusConfig("wikipedia", max_docs=20))
    w = make_windows(docs, "wikipedia", a.encode_ids, args.ctx)
    w = w[w["token_ids"].map(len) == args.ctx - 1].head(args.batches * args.batch_size)
    batches = [
        a.batch_from_ids(list(w["token_ids"].iloc[i : i + args.batch_size])) for i in range(0, len(w), args.batch_size)
    ]
    site = f"blocks.{args.layer}.hook_resid_post"

    def run(fn) -> float:
        fn(batches[0])  # warm-up
        t = time.perf_counter()
        n = 0
        for b in batches:
            fn(b)
            n += int(b.attention_mask.sum())
        return n / (time.perf_counter() - t)

    rounds = [(run(a.logits), run(lambda b: a.capture(b, site))) for _ in range(2)]
    full = max(r[0] for r in rounds)
    trunc = max(r[1] for r in rounds)
    print(
        f"model load: cold (GGUF dequantize + cache) {cold:.1f} s, warm (safetensors) {warm:.2f} s, ratio {cold / warm:.0f}x"
    )
    print(f"{args.dtype}, batch {args.batch_size}x{args.ctx}, {len(batches)} batches, best of 2")
    print(f"full model (with lm_head): {full:,.0f} tok/s")
    print(f"stop after block {args.layer}:  {trunc:,.0f} tok/s")
    print(f"ratio truncated / full: {trunc / full:.2f}x (goal >= 3x at block 15 of 30)")


if __name__ == "__main__":
    main()
