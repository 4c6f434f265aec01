"""The demo's SAEs re-measured with their seed noise (issue 13): build times, FVU and stability per SAE, and the
seed papers' effects, each with its 2-seed spread.

    make bench-demo          # after `make demo` has built workspaces/demo
    .venv/bin/python bench/bench_demo.py [--workspace workspaces/demo] [--seed 1] [--no-train]

1. **Build times** from ``<demo>/build_times.json``, which the staged build of ``make demo`` writes: seconds from the
   builder's start to the first served SAE, to each SAE, and to the end (twins and coverage included).
2. **A second seed of every SAE**: ``<demo>_seed1`` holds hard links to the demo's windows, activation cache and
   subdomain sets, and the demo's config with ``train.seed`` + 1 (no twins); the build's own steps train, evaluate,
   index and compute coverage there (resumable; ``--no-train`` only reads what is built).
3. **Per SAE**: L0, FVU on normal tokens, CE recovered, for both seeds; seed stability = the share of the seed-0
   latents whose best decoder match in the seed-1 SAE has cosine >= 0.7 (Paulo & Belrose 2025).
4. **Effects**: each claim compares a variant with its baseline on one metric, per seed (the paired difference
   uses the same seed on both sides). A claim **holds beyond seed noise** when both seeds' differences have the
   claimed sign and the smaller of them exceeds the larger of the two SAEs' seed spreads (|seed 0 - seed 1|).
   Two seeds give a crude noise estimate: a claim that holds here is consistent, not significant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent


def seed_workspace(demo: Path, seed: int, only: list[str] | None = None) -> Path:
    """``<demo>_seed<seed>``: hard links to the demo's inputs and its config with another training seed (only the
    SAEs ``only``, and the SAEs they build on, when given)."""
    dst = demo.with_name(f"{demo.name}_seed{seed}")
    cfg = yaml.safe_load((demo / "workspace.yaml").read_text())
    cfg["name"] = f"{cfg['name']}_seed{seed}"
    cfg.setdefault("train", {})["seed"] = int(cfg["train"].get("seed") or 0) + seed
    if only:
        keep = set(only) | {s["boost_base"] for s in cfg["saes"] if s["name"] in only and s.get("boost_base")}
        cfg["saes"] = [s for s in cfg["saes"] if s["name"] in keep]
    for s in cfg["saes"]:
        s["stability_twin"] = False
    dst.mkdir(exist_ok=True)
    for part in ("corpora", "activations", "subdomains"):
        if (demo / part).exists() and not (dst / part).exists():  # hard links: atomic rewrites never touch the demo
            subprocess.run(["cp", "-al", str(demo / part), str(dst / part)], check=True)
    (dst / "seed.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


def load(ws: Path) -> tuple[dict, dict]:
    """({sae: metrics.json}, {subdomain: coverage json}) of a built workspace."""
    metrics = {}
    for d in sorted((ws / "saes").iterdir()):
        if (d / "metrics.json").exists() and "@" not in d.name and not d.name.startswith("."):
            metrics[d.name] = json.loads((d / "metrics.json").read_text())
    cov = {p.stem: json.loads(p.read_text()) for p in sorted((ws / "coverage").glob("*.json"))}
    return metrics, cov


def tail_recall(entry: dict) -> float:
    """Recall over the rarer half of the subdomain's token types (ranked by their frequency in general text)."""
    toks = sorted(entry["tokens"], key=lambda t: t["gen_freq"])
    rare = toks[: max(1, len(toks) // 2)]
    return float(np.mean([t["captured"] for t in rare]))


def fmt(v: float | None, nd: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def mean_spread(a: float, b: float, nd: int = 3) -> str:
    return f"{(a + b) / 2:.{nd}f} ± {abs(a - b) / 2:.{nd}f}"


def verdict(base: list[float], var: list[float], lower: bool) -> tuple[str, list[float]]:
    """Per-seed paired differences (variant - base) and whether the claim holds beyond the seed spread."""
    diffs = [v - b for b, v in zip(base, var)]
    good = [(-d if lower else d) for d in diffs]
    noise = max(abs(base[0] - base[1]), abs(var[0] - var[1]))
    if all(g > 0 for g in good) and min(good) > noise:
        return "holds", diffs
    if all(g > 0 for g in good):
        return "same sign, within noise", diffs
    return "does not hold", diffs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default=str(ROOT / "workspaces" / "demo"))
    ap.add_argument("--seed", type=int, default=1, help="the second seed's offset from the demo's train.seed")
    ap.add_argument("--no-train", action="store_true", help="only read what is built")
    ap.add_argument("--table-only", action="store_true", help="build times and the demo's own table; no second seed")
    ap.add_argument("--saes", default="", help="train the second seed of these SAEs only (comma-separated)")
    args = ap.parse_args()
    demo = Path(args.workspace)
    if not (demo / "saes").exists():
        sys.exit(f"{demo} has no SAEs: run `make demo` (or `python -m backend build configs/demo.yaml`) first")

    print("## Build times (the staged build of `make demo`, seconds since the builder started)")
    bt = demo / "build_times.json"
    if bt.exists():
        t = json.loads(bt.read_text())
        at = t["at_s"]
        print(f"started {t['builder_started']}; resumed with {t['resumed_with'] or 'nothing (a fresh build)'}")
        print(
            f"windows {fmt(at.get('windows'), 0)} s, activations {fmt(at.get('activations'), 0)} s, first served "
            f"({t.get('first_served')}) {fmt(t.get('first_served_s'), 0)} s, complete {fmt(at.get('done'), 0)} s"
        )
        print("per SAE ready at: " + ", ".join(f"{k} {v:.0f}" for k, v in at.items() if k not in ("windows",)))
    else:
        print(f"(no {bt}: it is written by the staged build of `make demo`)")

    m_demo, _ = load(demo)
    print("\n## The demo's SAEs (seed 0; metrics.json: FVU on held-out windows' normal tokens, CE/KL on 32 windows)")
    print("| SAE | L0 | FVU | CE recovered | KL | mean max decoder cos | absorption | stability vs twin |")
    print("|---|---|---|---|---|---|---|---|")
    for n, m in m_demo.items():
        cells = [
            fmt(m.get("l0"), 1),
            fmt(m.get("fvu")),
            fmt(m.get("ce_recovered")),
            fmt(m.get("kl")),
            fmt((m.get("decoder_max_cos") or {}).get("mean")),
            fmt(m.get("absorption_rate")),
            f"{m['stability']:.1%}" if "stability" in m else "—",
        ]
        print(f"| {n} | " + " | ".join(cells) + " |")
    if args.table_only:
        return

    other = seed_workspace(demo, args.seed, [n for n in args.saes.split(",") if n] or None)
    if not args.no_train:
        from backend.build import build_workspace

        os.environ.setdefault("TQDM_DISABLE", "1")
        build_workspace(other / "seed.yaml", other, steps="train,eval,index,coverage", verbose=True)
    m0, c0 = load(demo)
    m1, c1 = load(other)
    names = [n for n in m0 if n in m1]

    import torch

    from backend.sae.evaluate import stability
    from backend.sae.model import load_sae

    print(f"\n## Per SAE: seed 0 ({demo.name}) and seed {args.seed} ({other.name}), normal tokens")
    print("| SAE | L0 | FVU | CE recovered | stability (best match >= 0.7) | median best match |")
    print("|---|---|---|---|---|---|")
    with torch.no_grad():
        for n in names:
            a, b = m0[n], m1[n]
            st = stability(load_sae(demo / "saes" / n).W_dec, load_sae(other / "saes" / n).W_dec)
            ce = (
                mean_spread(a["ce_recovered"], b["ce_recovered"])
                if "ce_recovered" in a and "ce_recovered" in b
                else "—"
            )
            print(
                f"| {n} | {mean_spread(a['l0'], b['l0'], 1)} | {mean_spread(a['fvu'], b['fvu'])} | {ce} | "
                f"{st['stability']:.1%} | {st['stability_median_cos']:.3f} |"
            )

    claims = []  # (claim, base label, variant label, metric label, base values, variant values, lower is better)

    def metric_claim(claim, base, var, label, get, lower):
        if base in m0 and var in m0 and base in m1 and var in m1:
            try:
                claims.append(
                    (claim, base, var, label, [get(m0[base]), get(m1[base])], [get(m0[var]), get(m1[var])], lower)
                )
            except (KeyError, TypeError):
                print(f"(skipped: {claim}: {label} missing)")

    max_cos = lambda m: m["decoder_max_cos"]["mean"]  # noqa: E731
    absorb = lambda m: m["absorption_rate"]  # noqa: E731
    metric_claim("OrtSAE: decoder rows less alike", "batchtopk", "ortsae", "mean max decoder cos", max_cos, True)
    metric_claim("OrtSAE: less absorption", "batchtopk", "ortsae", "absorption (first letter)", absorb, True)
    metric_claim("Matryoshka: less absorption", "batchtopk", "matryoshka", "absorption (first letter)", absorb, True)

    for sd in c0:
        if sd not in c1:
            continue
        s0, s1, ref = c0[sd]["saes"], c1[sd]["saes"], c0[sd]["reference"]
        for var in s0:
            if var == ref or var not in s1:
                continue
            rows = [
                ("tail-token recall (rarer half)", tail_recall, False),
                ("token recall", lambda e: e["token_recall"], False),
                ("subdomain tokens covered", lambda e: e["token_share_covered"], False),
                (f"CE on {sd} text", lambda e: e["ce"]["subdomain"], True),
                ("CE on general text", lambda e: e["ce"]["general"], True),
            ]
            for label, f, lower in rows:
                b, v = [f(s0[ref]), f(s1[ref])], [f(s0[var]), f(s1[var])]
                claims.append((f"{var} on {sd}", ref, var, label, b, v, lower))

    if m0.get("matryoshka", {}).get("matryoshka_fvu") and m1.get("matryoshka", {}).get("matryoshka_fvu"):
        a, b = m0["matryoshka"]["matryoshka_fvu"], m1["matryoshka"]["matryoshka_fvu"]
        levels = ", ".join(f"{w} latents {mean_spread(a[w], b[w])}" for w in a if w in b)
        print(f"\nMatryoshka per-level FVU (prefix widths, normal tokens): {levels}")

    print("\n## SHIFT on the speeches set (label party, spurious group register; worst-group accuracy)")
    from backend.cli.research import default_shift_saes, shift_reports
    from backend.workspace import open_workspace

    runs = {}
    for ws_path in (demo, other):
        ws = open_workspace(ws_path)
        runs[ws_path.name] = {r["sae"]: r for r in shift_reports(ws, default_shift_saes(ws))}
    for n in runs[demo.name]:
        if n not in runs[other.name]:
            continue
        r0, r1 = runs[demo.name][n], runs[other.name][n]
        before = [r0["before"]["worst_group"], r1["before"]["worst_group"]]
        after = [r0["after_retrain"]["worst_group"], r1["after_retrain"]["worst_group"]]
        claims.append(
            (f"SHIFT with {n}", "before", "after ablate + retrain", "worst-group accuracy", before, after, False)
        )
        print(f"{n}: ablated {len(r0['ablated'])} / {len(r1['ablated'])} latents (seed 0 / 1)")

    print("\n## Effects: variant against its baseline, 2 seeds (mean ± half the seed spread)")
    print("| claim | metric | baseline | variant | difference per seed | verdict |")
    print("|---|---|---|---|---|---|")
    for claim, base, var, label, b, v, lower in claims:
        word, diffs = verdict(b, v, lower)
        print(
            f"| {claim} | {label} ({'lower' if lower else 'higher'} is better) | {base} {mean_spread(*b)} | "
            f"{var} {mean_spread(*v)} | {', '.join(f'{d:+.3f}' for d in diffs)} | {word} |"
        )


if __name__ == "__main__":
    main()
