"""A synthetic feature index of a chosen size, for serving benchmarks (no model, no SAE, no corpus).

    .venv/bin/python bench/synthetic_index.py OUT_DIR [--latents 65536] [--tokens 1000000]

Writes OUT_DIR/workspace.yaml (configs/tiny.yaml), OUT_DIR/saes/big (zero float16 weights of the right shape,
for the Backend's integrity check) and OUT_DIR/index.duckdb holding one SAE ``big`` with the rows a
real build of that size writes (store.SCHEMA): per latent one ``latents`` row (histogram, label, top tokens, logit
lens, domain rates), one ``explanations`` row, a ``map`` row, and the contexts of a ``--tokens`` corpus: 20 top
contexts, 5 quantile bands x 4 samples, 10 held-out firing (``hpos``) and 10 silent (``hneg``) scoring contexts of
25 tokens each (60 per latent: 3.9M context rows at 65,536 latents). Token strings follow a Zipf law over 20,000
words; window rows are spread over the windows of ``--tokens`` tokens. Written in blocks of latents through
store.IndexWriter (the builder's path: staged, sorted by latent, renamed), so memory stays at one block.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from safetensors.numpy import save_file

from backend.index.store import IndexWriter

ROOT = Path(__file__).resolve().parent.parent
TOP, BANDS, PER_BAND, HELD, WIDTH, WINDOW = 20, 5, 4, 10, 25, 128
KINDS = ["top"] * TOP + [f"q{b}" for b in range(BANDS) for _ in range(PER_BAND)] + ["hpos"] * HELD + ["hneg"] * HELD
RANKS = list(range(TOP)) + list(range(PER_BAND)) * BANDS + list(range(HELD)) * 2


def _lists(values: pa.Array, n: int, width: int) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * width), values)


def _words(rng: np.random.Generator, vocab: pa.Array, n: int) -> pa.Array:
    """n strings drawn from ``vocab`` by a Zipf law (a dictionary cast: no Python objects)."""
    ids = np.minimum(rng.zipf(1.2, n) - 1, len(vocab) - 1).astype(np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(ids), vocab).cast(pa.string())


def _block(rng: np.random.Generator, lo: int, hi: int, n_windows: int, vocab: pa.Array) -> dict[str, pa.Table]:
    d, per = hi - lo, len(KINDS)
    mx = rng.gamma(2.0, 3.0, d)
    latent = np.arange(lo, hi, dtype=np.int32)
    top_words = np.asarray(vocab.to_pylist(), dtype=object)[rng.integers(0, 200, (d, 2))]
    latents = pa.table(
        {
            "sae": pa.array(["big"] * d),
            "latent": latent,
            "density": rng.random(d) * 0.01,
            "mean_act": mx * 0.3,
            "max_act": mx,
            "hist_edges": _lists(pa.array((np.linspace(0, 1, 21)[None] * mx[:, None]).ravel()), d, 21),
            "hist_counts": _lists(pa.array(rng.integers(0, 500, d * 20)), d, 20),
            "label": [f"'{a}', '{b}'; after ' the' (at max: ' the{a}')" for a, b in top_words],
            "confidence": rng.random(d),
            "precision": rng.random(d),
            "recall": rng.random(d),
            "fuzz": rng.random(d),
            "method": ["statistical"] * d,
            "scorer": ["rule"] * d,
            "top_domain": ["general"] * d,
            "domain_share": rng.random(d),
            "top_corpus": ["wikipedia"] * d,
            "corpus_share": rng.random(d),
            "top_tokens": [f'["{a}", "{b}"]' for a, b in top_words],
            "top_token_scores": ["[3.1, 2.0]"] * d,
            "logit_top": [json.dumps([[a, 1.0], [b, 0.5]]) for a, b in top_words],
            "logit_bottom": ['[["b", -1.0]]'] * d,
            "domain_rates": ['{"general": 0.01, "legal": 0.002}'] * d,
        }
    )
    n = d * per
    contexts = pa.table(
        {
            "sae": pa.array(["big"] * n),
            "latent": np.repeat(latent, per),
            "kind": pa.array(KINDS * d),
            "rank": np.array(RANKS * d, np.int32),
            "window_row": rng.integers(0, n_windows, n),
            "win_offset": rng.integers(0, WINDOW - WIDTH, n).astype(np.int32),
            "tokens": _lists(_words(rng, vocab, n * WIDTH), n, WIDTH),
            "acts": _lists(pa.array(rng.random(n * WIDTH, dtype=np.float32)), n, WIDTH),
            "focus": np.full(n, WIDTH // 2, np.int32),
            "source": pa.array(["synthetic"] * n),
            "domain": pa.array(["general"] * n),
            "max_act": rng.random(n, dtype=np.float32),
        }
    )
    explanations = pa.table(
        {
            "sae": pa.array(["big"] * d),
            "latent": latent,
            "method": ["statistical"] * d,
            "model": [""] * d,
            "label": latents.column("label"),
            "scorer": ["rule"] * d,
            "detection": latents.column("confidence"),
            "precision": latents.column("precision"),
            "recall": latents.column("recall"),
            "fuzz": latents.column("fuzz"),
        }
    )
    xy = rng.standard_normal((d, 2)).astype(np.float32)
    m = pa.table({"sae": pa.array(["big"] * d), "latent": latent, "x": xy[:, 0], "y": xy[:, 1], "jx": xy[:, 0]})
    return {
        "latents": latents,
        "contexts": contexts,
        "explanations": explanations,
        "map": m.append_column("jy", m["y"]),
    }


def synthetic_workspace(folder: Path, d_sae: int = 65_536, tokens: int = 1_000_000, block: int = 4096) -> float:
    """Write the synthetic workspace (see the module doc) into ``folder``; returns the seconds it took."""
    t = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "configs" / "tiny.yaml", folder / "workspace.yaml")
    sae = folder / "saes" / "big"  # the Backend checks that an indexed SAE's files are there and fit
    sae.mkdir(parents=True, exist_ok=True)
    (sae / "cfg.json").write_text(json.dumps({"architecture": "topk", "d_in": 576, "d_sae": d_sae, "k": 32}))
    save_file({"W_dec": np.zeros((d_sae, 576), np.float16)}, str(sae / "sae_weights.safetensors"))
    rng = np.random.default_rng(0)
    vocab = pa.array([f" w{i}" for i in range(20_000)])
    saes = {
        "sae": ["big"],
        "architecture": ["topk"],
        "d_in": [576],
        "d_sae": [d_sae],
        "n_tokens": [int(tokens * 0.8)],
        "n_heldout": [int(tokens * 0.2)],
        "n_quantiles": [BANDS],
    }
    with IndexWriter(folder / "index.duckdb") as w:
        w.add("saes", pa.table(saes))
        for lo in range(0, d_sae, block):
            for table, frame in _block(rng, lo, min(lo + block, d_sae), tokens // WINDOW, vocab).items():
                w.add(table, frame)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--latents", type=int, default=65_536)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    args = ap.parse_args()
    s = synthetic_workspace(args.out, args.latents, args.tokens)
    size = (args.out / "index.duckdb").stat().st_size / 2**20
    print(
        f"{args.latents:,} latents x {len(KINDS)} contexts -> {args.out / 'index.duckdb'} ({size:.0f} MiB) in {s:.0f} s"
    )


if __name__ == "__main__":
    main()
