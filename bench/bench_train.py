"""SAE training throughput and FVU at equal tokens: our sparse trainer (float32 and bfloat16 selection) vs SAELens.

    .venv/bin/python bench/bench_train.py [--activations workspaces/demo/activations/blocks.12.hook_resid_post] \
        [--tokens 98304] [--widths 4608,18432] [--no-saelens]

TopK k=32, batch 4096, Adam, the same lr, on the same real activations in the same order. SAELens
(installed in its own venv, bench/_venvs/saelens, never in the product's) runs as a persistent worker
subprocess driving its TopKTrainingSAE (default config) forward/backward + Adam. The variants are
interleaved *step by step* (ours bf16, SAELens, ours fp32, ...), so load from other jobs on the
machine hits all alike; tokens/s = tokens / summed step time, and the ratio is also given per step
(median of paired ratios). FVU is measured after the same tokens on 20k held-out tokens. Achieved
GFLOP/s counts the dense encoder matmul plus the sparse work, against fp32 and bf16 matmul peaks
measured at the start and the end of the run (best of both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
from backend import losses  # noqa: E402
from backend.config import SaeConfig, TrainConfig  # noqa: E402
from backend.data.activations import ShardCache  # noqa: E402
from backend.sae.train import Trainer  # noqa: E402

BS, K = 4096, 32
SAELENS_PY = Path(os.environ.get("SAELENS_VENV", ROOT / "bench" / "_venvs" / "saelens")) / "bin" / "python"
SAELENS_WORKER = r"""
import json, sys, time, numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput
x = torch.from_numpy(np.load(sys.argv[1])); d_sae = int(sys.argv[2])
cfg = TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=d_sae, k=32, dtype="float32", device="cpu")
sae = TopKTrainingSAE(cfg)
opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (d_sae / 2**14) ** 0.5)
print("ready", flush=True)
for line in sys.stdin:
    cmd, *a = line.split()
    if cmd == "step":
        b = x[int(a[0]):int(a[1])]
        t = time.perf_counter()
        out = sae.training_forward_pass(TrainStepInput(sae_in=b, coefficients={}, dead_neuron_mask=None,
                                                       n_training_steps=0, is_logging_step=False))
        opt.zero_grad(); out.loss.backward(); opt.step()
        print(time.perf_counter() - t, flush=True)
    elif cmd == "fvu":
        with torch.no_grad():
            v = x[int(a[0]):int(a[1])]; r = sae.decode(sae.encode(v))
            print(float(((r - v) ** 2).sum() / ((v - v.mean(0)) ** 2).sum()), flush=True)
"""


def matmul_peaks() -> dict[str, float]:
    """Best-of-5 GFLOP/s of a (4096, 576) x (576, 4608) matmul in float32 and bfloat16."""
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(BS, 576).to(dt), torch.randn(576, 4608).to(dt)
        a @ b
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        out[name] = 2 * BS * 576 * 4608 / best / 1e9
    return out


def flops_per_token(d_in: int, d_sae: int, bf16: bool) -> int:
    """Dense encoder matmul + sparse work: exact re-score of k+8 candidates (bf16 only), encoder weight grad,
    decoder forward, decoder value + weight grads (2 flops per multiply-add)."""
    return 2 * d_in * d_sae + 2 * K * d_in * 4 + (2 * (K + 8) * d_in if bf16 else 0)


def ensure_saelens() -> None:
    """Create bench/_venvs/saelens with sae-lens (and the same CPU torch) when it is missing: SAELens is only
    ever installed there, never in the product's environment. Takes a few minutes the first time."""
    if SAELENS_PY.exists():
        return
    venv = SAELENS_PY.parent.parent
    print(f"[bench] installing sae-lens into {venv} (first run only)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(SAELENS_PY), "install", "-q", "torch==2.13.0", "sae-lens>=6.0"],
        check=True,
    )


class SaeLensWorker:
    def __init__(self, npy: Path, d_sae: int, threads: int):
        self.p = subprocess.Popen(
            [str(SAELENS_PY), "-c", SAELENS_WORKER, str(npy), str(d_sae), str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.p.stdout.readline().strip() != "ready":
            raise RuntimeError("SAELens worker failed to start")

    def ask(self, line: str) -> float:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return float(self.p.stdout.readline())

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait()


def run_width(x: torch.Tensor, held: torch.Tensor, d_sae: int, npy: Path | None, threads: int) -> dict:
    lr = 2e-4 / (d_sae / 2**14) ** 0.5
    ours = {
        dt: Trainer(
            SaeConfig(name=f"bench{d_sae}", architecture="topk", d_sae=d_sae, k=K, auxk_coef=0),
            TrainConfig(batch_size=BS, lr=lr, dtype=dt),
            x.shape[1],
            len(x),
        )
        for dt in ("bfloat16", "float32")
    }
    sl = SaeLensWorker(npy, d_sae, threads) if npy else None
    times: dict[str, list[float]] = {"bfloat16": [], "float32": [], "saelens": []}
    for s in range(0, len(x) - BS + 1, BS):
        for dt, tr in ours.items():
            time.sleep(0.1)  # let the other side's spinning OpenMP threads go idle first
            t = time.perf_counter()
            tr.train_step(x[s : s + BS])
            times[dt].append(time.perf_counter() - t)
        if sl:
            time.sleep(0.1)
            times["saelens"].append(sl.ask(f"step {s} {s + BS}"))
    res = {}
    for dt, tr in ours.items():
        sae = tr.export()
        with torch.no_grad():
            fvu = float(losses.fvu(held, sae(held)))
        res[dt] = {"fvu": fvu}
    if sl:
        res["saelens"] = {"fvu": sl.ask(f"fvu {len(x)} {len(x) + len(held)}")}
        sl.close()
    for name, ts in times.items():
        if not ts:
            continue
        ts = ts[1:]  # the first step includes one-off costs (init, JIT compile, page faults) on every side
        res[name].update(tok_s=BS * len(ts) / sum(ts), step_ms=1e3 * statistics.median(ts), steps=ts)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--activations", default=str(ROOT / "workspaces/demo/activations/blocks.12.hook_resid_post"))
    ap.add_argument("--tokens", type=int, default=24 * BS)
    ap.add_argument("--widths", default="4608,18432")
    ap.add_argument("--no-saelens", action="store_true")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_held = 20_000
    allx = ShardCache(args.activations).all_acts(args.tokens + n_held)
    allx = allx[torch.randperm(len(allx), generator=torch.Generator().manual_seed(0))].float().contiguous()
    x, held = allx[: args.tokens], allx[args.tokens :]
    peaks = matmul_peaks()
    print(
        f"{len(x):,} training + {len(held):,} held-out real activation tokens (d={x.shape[1]}), {args.threads} threads; "
        f"matmul peak at start fp32 {peaks['fp32']:.0f}, bf16 {peaks['bf16']:.0f} GFLOP/s",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        npy = None
        if not args.no_saelens:
            ensure_saelens()
            npy = Path(tmp) / "x.npy"
            np.save(npy, allx.numpy())
        results = {d: run_width(x, held, d, npy, args.threads) for d in (int(w) for w in args.widths.split(","))}
    end = matmul_peaks()
    peaks = {k: max(v, end[k]) for k, v in peaks.items()}
    print(f"matmul peak at end fp32 {end['fp32']:.0f}, bf16 {end['bf16']:.0f} GFLOP/s; best used below")
    print(
        "| d_sae | ours bf16 tok/s | ours fp32 tok/s | SAELens tok/s | bf16 / SAELens (paired median) | fp32 / SAELens "
        "| FVU bf16 / fp32 / SAELens | ours bf16 GFLOP/s (% fp32 peak, % bf16 peak) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for d_sae, r in results.items():
        b, f, s = r["bfloat16"], r["float32"], r.get("saelens")
        gf = b["tok_s"] * flops_per_token(x.shape[1], d_sae, True) / 1e9
        if s:
            paired = statistics.median(sb / ob for ob, sb in zip(b["steps"], s["steps"]))
            rb, rf = f"{b['tok_s'] / s['tok_s']:.2f}x ({paired:.2f}x)", f"{f['tok_s'] / s['tok_s']:.2f}x"
            st, sf = f"{s['tok_s']:,.0f}", f"{s['fvu']:.3f}"
        else:
            rb = rf = st = sf = "-"
        print(
            f"| {d_sae:,} | {b['tok_s']:,.0f} | {f['tok_s']:,.0f} | {st} | {rb} | {rf} | "
            f"{b['fvu']:.3f} / {f['fvu']:.3f} / {sf} | {gf:.0f} ({gf / peaks['fp32']:.0%}, {gf / peaks['bf16']:.0%}) |"
        )
    print(
        "median step ms: "
        + "; ".join(
            f"{d}: " + ", ".join(f"{n} {v['step_ms']:.0f}" for n, v in r.items() if "step_ms" in v)
            for d, r in results.items()
        )
    )
    print(
        json.dumps(
            {d: {n: {k: v for k, v in e.items() if k != "steps"} for n, e in r.items()} for d, r in results.items()}
        )
    )


if __name__ == "__main__":
    main()
