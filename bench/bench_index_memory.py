"""Peak RSS and time of indexing a 16,384-latent SAE at 0.25M, 0.5M, 1M and 2M tokens (one process per size).

    .venv/bin/python bench/bench_index_memory.py [--tokens 250000,500000,1000000,2000000] [--d-in 64]
        [--source workspaces/demo] [--compare 250000,500000]

Each size runs in a fresh child process that
1. writes the indexing activations to disk (``DiskActs``, as ``collect`` does): copies of the real activations
   of the source workspace's cache (SmolLM2 block 12 in the demo: 250k tokens, their real token ids and windows),
   each copy with 5% Gaussian noise per dimension and its own window ids, projected to ``--d-in`` dimensions by
   a fixed random matrix (576 keeps the real width; 64 keeps the bench to minutes on 2 cores: the encode is
   n x d_in x d_sae multiply-adds, everything after it does not depend on d_in);
2. resets the peak RSS (/proc/self/clear_refs 5) and runs ``write_index`` for a random TopK SAE (16,384 latents,
   k = 32: L0 is exactly 32) with the default index config (20 top contexts, 5 bands x 4 samples, 10 + 10
   held-out scoring contexts, 25-token contexts, PCA maps), spills beside the output;
3. reports the peak RSS during indexing (VmHWM), the wall seconds and the CPU seconds of the process (every
   thread: the fair measure while other jobs share the cores).
The parent prints the curve with every size's RSS and time against the 0.5M run's, side by side.
``--compare`` also runs the in-memory builder it replaced (tests/index/legacy_index.py; activations in memory,
firings kept: 12 bytes per nonzero) at those sizes, for the slope it had.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
D_SAE, K = 16_384, 32


def _status(key: str) -> float:
    """A /proc/self/status memory field in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _cpu() -> float:
    """CPU seconds of this process, every thread (robust to other jobs sharing the cores, unlike wall time)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _source_cache(source: Path):
    from backend.data.activations import ShardCache

    metas = sorted(p for p in (source / "activations").glob("*/meta.json") if "@" not in p.parent.name)
    return ShardCache(metas[0].parent)  # the general cache (subdomain caches are named site@subdomain)


def synthetic_acts(n: int, d_in: int, source: Path, folder: str, legacy: bool):
    """IndexActs of ``n`` tokens built from the source cache (see the module doc), on disk (or in memory for the
    legacy builder)."""
    import numpy as np
    import torch

    from backend.index.collect import DiskActs, IndexActs

    cache = _source_cache(source)
    g = torch.Generator().manual_seed(0)
    R = torch.randn(cache.d_in, d_in, generator=g) / cache.d_in**0.5 if d_in != cache.d_in else None
    acts = DiskActs(d_in, folder)
    parts, toks, wins, got, copy = [], [], [], 0, 0
    while got < n:
        for i in range(len(cache.shards)):
            sh = cache.load_shard(i)
            x = sh["acts"].float()
            x = x @ R if R is not None else x
            x += 0.05 * x.std(0) * torch.randn(x.shape, generator=g)
            take = min(len(x), n - got)
            (parts.append(x[:take].half()) if legacy else acts.append(x[:take]))
            toks.append(sh["token_ids"].numpy()[:take].astype(np.int32))
            wins.append(sh["window"].numpy()[:take].astype(np.int64) + copy * 1_000_000)
            got += take
            if got >= n:
                break
        copy += 1
    window = np.concatenate(wins)
    _, window = np.unique(window, return_inverse=True)  # dense window ids, in order of first appearance
    window = window.ravel().astype(np.int32)
    token = np.concatenate(toks)
    n_win = int(window.max()) + 1
    acts.set_order(np.arange(acts.n))
    ia = IndexActs(
        torch.cat(parts) if legacy else acts,
        token,
        window,
        (window % 3).astype(np.int16),
        window % 5 == 4,
        ["general", "legal", "bio"],
        np.array([f"t{i}" for i in range(int(token.max()) + 1)], dtype=object),
        np.array([f"doc{w // 4}" for w in range(n_win)], dtype=object),
        np.array(["wikipedia", "news"] * (n_win // 2 + 1), dtype=object)[:n_win],
    )
    if legacy:
        acts.close()
    return ia


def child(n: int, d_in: int, source: Path, legacy: bool) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from backend.config import IndexConfig
    from backend.index.build import write_index
    from backend.sae.model import Sae, SaeSpec

    sae = Sae(SaeSpec(d_in=d_in, d_sae=D_SAE, architecture="topk", k=K)).eval()
    cfg = IndexConfig(max_tokens=n, umap=False)
    (ROOT / "bench" / "_data").mkdir(parents=True, exist_ok=True)  # git-ignored
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "_data") as tmp:
        t = time.perf_counter()
        ia = synthetic_acts(n, d_in, source, tmp, legacy)
        setup_s = time.perf_counter() - t
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        base = _status("VmRSS")
        t, cpu = time.perf_counter(), _cpu()
        if legacy:
            sys.path.insert(0, str(ROOT))
            from tests.index import legacy_index

            tables = legacy_index.index_sae("big", "topk", sae, ia, cfg, None, str)
            rows = sum(len(v) for v in tables.values())
        else:
            write_index(Path(tmp) / "index.duckdb", ia, [("big", "topk", sae)], cfg, None, str, spill_dir=tmp)
            rows = 0
        seconds, cpu = time.perf_counter() - t, _cpu() - cpu
        return {
            "cpu_s": cpu,
            "tokens": n,
            "legacy": legacy,
            "peak_mib": _status("VmHWM"),
            "base_mib": base,
            "seconds": seconds,
            "setup_s": setup_s,
            "rows": rows,
            "acts_file_mib": n * d_in * 2 / 2**20,
            "held": int(np.sum(ia.heldout)),
        }


def encode_vs_spill(n: int, d_in: int, source: Path) -> None:
    """The choice of stats.py, measured: a second encode pass of the train rows against reading their spill back."""
    import numpy as np
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    from backend.index.collect import encode_chunks
    from backend.index.spill import FiringSpill
    from backend.sae.model import Sae, SaeSpec

    (ROOT / "bench" / "_data").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "_data") as tmp:
        ia = synthetic_acts(n, d_in, source, tmp, False)
        rows = np.flatnonzero(~ia.heldout)
        for width in (d_in, 576):  # the bench's width, and the real one (random rows: the encode cost is the same)
            sae = Sae(SaeSpec(d_in=width, d_sae=D_SAE, architecture="topk", k=K)).eval()
            x, idx = (ia.acts, rows) if width == d_in else (torch.randn(len(rows), width).half(), np.arange(len(rows)))
            spill, c0 = FiringSpill(D_SAE, tmp), _cpu()
            for chunk, r, c, v, _ in encode_chunks(sae, x, idx):
                spill.append(chunk[0], chunk[-1] + 1, r, c, v)
            c1 = _cpu()
            nnz = sum(len(r) for r, _, _ in spill.chunks())
            c2 = _cpu()
            print(
                f"  d_in {width}: encoding {len(rows):,} train rows {c1 - c0:.1f} CPU s; reading their {nnz:,} firings "
                f"back from the spill {c2 - c1:.3f} CPU s ({(c2 - c1) / (c1 - c0):.2%} of the encode)",
                flush=True,
            )
            spill.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="250000,500000,1000000,2000000")
    ap.add_argument("--d-in", type=int, default=64)
    ap.add_argument("--source", type=Path, default=ROOT / "workspaces" / "demo")
    ap.add_argument("--compare", default="", help="token counts at which to run the in-memory builder too")
    ap.add_argument("--child", type=int, default=0)
    ap.add_argument("--legacy", action="store_true")
    ap.add_argument(
        "--encode-vs-spill", type=int, default=0, help="only time a re-encode against a spill read, at N tokens"
    )
    args = ap.parse_args()
    if args.encode_vs_spill:
        encode_vs_spill(args.encode_vs_spill, args.d_in, args.source)
        return
    if args.child:
        print(json.dumps(child(args.child, args.d_in, args.source, args.legacy)), flush=True)
        return
    runs = [(int(n), False) for n in args.tokens.split(",")] + [(int(n), True) for n in args.compare.split(",") if n]
    cache = _source_cache(args.source)
    print(
        f"indexing a random TopK SAE ({D_SAE:,} latents, k={K}, d_in {args.d_in}) over copies of {cache.n_tokens:,} "
        f"real tokens of {args.source.name} ({cache.site}); one process per size; {os.cpu_count()} CPUs",
        flush=True,
    )
    res = []
    for n, legacy in runs:
        cmd = [sys.executable, __file__, "--child", str(n), "--d-in", str(args.d_in), "--source", str(args.source)]
        out = subprocess.run(cmd + (["--legacy"] if legacy else []), capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            sys.exit(f"child {n} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        res.append(r)
        print(
            f"  {'in-memory' if legacy else 'bounded'} {n:>9,} tokens: peak RSS {r['peak_mib']:7.0f} MiB "
            f"(at start {r['base_mib']:.0f}), {r['seconds']:6.1f} s ({r['cpu_s']:.1f} CPU s)",
            flush=True,
        )
    ref = next((r for r in res if r["tokens"] == 500_000 and not r["legacy"]), res[0])
    print(
        "\n| builder | tokens | peak RSS (MiB) | RSS / 0.5M run | wall s | CPU s | CPU s per 100k tokens "
        "| CPU time / 0.5M run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in res:
        print(
            f"| {'in-memory (old)' if r['legacy'] else 'bounded'} | {r['tokens']:,} | {r['peak_mib']:.0f} | "
            f"{r['peak_mib'] / ref['peak_mib']:.3f} | {r['seconds']:.0f} | {r['cpu_s']:.0f} | "
            f"{r['cpu_s'] * 1e5 / r['tokens']:.1f} | {r['cpu_s'] / ref['cpu_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
