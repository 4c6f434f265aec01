"""SAE training throughput and final FVU: our sparse trainer vs a dense step vs SAELens, same activations.

    .venv/bin/python bench/bench_train.py --activations workspaces/demo/activations/blocks.12.hook_resid_post \
        [--tokens 200000] [--widths 4608,18432] [--saelens]

TopK k=32, batch 4096, Adam. Our trainer runs in this process; SAELens (installed in its own venv,
bench/_venvs/saelens, never in the product's) runs in a subprocess on the same activations saved
as .npy, through its own TopK training SAE's forward/backward with Adam. Also reports the achieved
GFLOP/s of our step against this machine's measured fp32 matmul peak.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from backend import losses  # noqa: E402
from backend.activations import ShardCache  # noqa: E402
from backend.config import SaeConfig, TrainConfig  # noqa: E402
from backend.train import Trainer  # noqa: E402

SAELENS_PY = ROOT / "bench" / "_venvs" / "saelens" / "bin" / "python"
SAELENS_SCRIPT = r'''
import json, sys, time, numpy as np, torch
torch.set_num_threads(2)
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
x = torch.from_numpy(np.load(sys.argv[1])); d_sae = int(sys.argv[2]); bs = 4096
cfg = TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=d_sae, k=32, dtype="float32", device="cpu")
sae = TopKTrainingSAE(cfg)
opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (d_sae / 2**14) ** 0.5)
def step(b):
    out = sae.training_forward_pass(TrainStepInput(sae_in=b, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False))
    opt.zero_grad(); out.loss.backward(); opt.step()
step(x[:bs]); t = time.perf_counter(); n = 0
for s in range(0, len(x) - bs + 1, bs):
    step(x[s:s + bs]); n += bs
dt = time.perf_counter() - t
with torch.no_grad():
    r = sae.decode(sae.encode(x[:20000])); v = x[:20000]
    fvu = float(((r - v) ** 2).sum() / ((v - v.mean(0)) ** 2).sum())
print(json.dumps({"tok_s": n / dt, "fvu": fvu}))
'''


def matmul_peak() -> float:
    a, b = torch.randn(4096, 576), torch.randn(576, 4608)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 4096 * 576 * 4608 / (time.perf_counter() - t) / 1e9


def ours(x: torch.Tensor, d_sae: int, dense: bool = False) -> dict:
    cfg = SaeConfig(name=f"bench{d_sae}", architecture="topk", d_sae=d_sae, k=32, auxk_coef=0)
    tr = Trainer(cfg, TrainConfig(batch_size=4096, lr=2e-4 / (d_sae / 2**14) ** 0.5), x.shape[1], len(x))
    if dense:  # the same objective with a dense decoder and autograd everywhere
        tr.losses = lambda xs: _dense_losses(tr, xs)  # type: ignore[method-assign]
    tr.train_step(x[:4096])
    t, n = time.perf_counter(), 0
    for s in range(0, len(x) - 4095, 4096):
        tr.train_step(x[s : s + 4096])
        n += 4096
    dt = time.perf_counter() - t
    sae = tr.export()
    with torch.no_grad():
        fvu = float(losses.fvu(x[:20000], sae(x[:20000])))
    # per token: encoder fwd 2*d*m, encoder weight grad ~2*k*d, decoder fwd+bwd ~4*k*d (sparse)
    flops = 2 * x.shape[1] * d_sae + 6 * 32 * x.shape[1]
    return {"tok_s": n / dt, "fvu": fvu, "gflops": n * flops / dt / 1e9}


def _dense_losses(tr: Trainer, x: torch.Tensor):
    s = tr.sae
    pre = (x - s.b_dec) @ s.W_enc + s.b_enc
    v, i = torch.relu(pre).topk(32, -1)
    z = torch.zeros_like(pre).scatter(-1, i, v)
    per = losses.per_token_loss(x, z @ s.W_dec + s.b_dec)
    return per.mean(), {"loss": float(per.mean()), "fvu": float(per.mean()), "l0": 32.0, "dead": 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--activations", default=str(ROOT / "workspaces/demo/activations/blocks.12.hook_resid_post"))
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--widths", default="4608,18432")
    ap.add_argument("--saelens", action="store_true", help="also run SAELens from bench/_venvs/saelens")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    x = ShardCache(args.activations).all_acts(args.tokens)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    peak = matmul_peak()
    print(f"{len(x):,} real activation tokens (d={x.shape[1]}); fp32 matmul peak here {peak:.0f} GFLOP/s")
    results = {}
    for d_sae in (int(w) for w in args.widths.split(",")):
        r = {"sparse": ours(x, d_sae), "dense": ours(x, d_sae, dense=True)}
        if args.saelens:
            with tempfile.TemporaryDirectory() as tmp:
                np.save(Path(tmp) / "x.npy", x.numpy())
                out = subprocess.run([str(SAELENS_PY), "-c", SAELENS_SCRIPT, str(Path(tmp) / "x.npy"), str(d_sae)],
                                     capture_output=True, text=True)
            r["saelens"] = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-400:]}
        results[d_sae] = r
        for name, v in r.items():
            if "error" in v:
                print(f"d_sae {d_sae:6d} {name:8s} ERROR {v['error']}")
            else:
                extra = f", {v['gflops']:.0f} GFLOP/s ({v['gflops'] / peak:.0%} of peak)" if "gflops" in v else ""
                print(f"d_sae {d_sae:6d} {name:8s} {v['tok_s']:8,.0f} tok/s  FVU {v['fvu']:.3f}{extra}")
        base = r.get("saelens", {}).get("tok_s") or r["dense"]["tok_s"]
        print(f"d_sae {d_sae:6d} sparse / {'saelens' if 'tok_s' in r.get('saelens', {}) else 'dense'}: "
              f"{r['sparse']['tok_s'] / base:.2f}x")


if __name__ == "__main__":
    main()
