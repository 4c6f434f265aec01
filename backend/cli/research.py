"""CLI commands for the specialized-SAE research views: subdomain selection, coverage, SHIFT."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import pandas as pd

from backend.workspace import Workspace, atomic_write_text, open_workspace, workspace_lock


def shift_reports(ws: Workspace, sae_names: list[str], csv: str | None = None, top: int = 50) -> list[dict]:
    """Run SHIFT for each SAE on a CSV (text, label, group[, split]) or on the demo set; save JSON."""
    from backend.research.shift import ShiftError, check_table, pooled_latents, run_shift, speeches_shift_table
    from backend.sae.model import load_sae

    if csv:
        try:
            df = pd.read_csv(csv)
        except Exception as e:  # unreadable CSV: one clear line
            raise ShiftError(f"cannot read {csv} as CSV ({type(e).__name__}: {e})") from None
    else:
        df = speeches_shift_table()
    df = check_table(df)
    unknown = [n for n in sae_names if not (ws.sae_dir(n) / "cfg.json").exists()]
    if unknown:
        raise ShiftError(f"unknown SAE(s) {unknown}; this workspace has {[s.name for s in ws.config.saes]}")
    adapter, site = ws.adapter(verbose=False), ws.config.activations.site
    reports = []
    for name in sae_names:
        feats = pooled_latents(adapter, load_sae(ws.sae_dir(name)), site, df["text"].astype(str).tolist())
        reports.append(asdict(run_shift(name, feats, df, top=top)))
    atomic_write_text(
        ws.path / "shift" / "report.json", json.dumps({"csv": csv or "demo: speeches", "reports": reports})
    )
    return reports


def _shift(args: argparse.Namespace) -> None:
    ws = open_workspace(args.workspace)
    names = args.saes.split(",") if args.saes else default_shift_saes(ws)
    with workspace_lock(ws.path):
        reports = shift_reports(ws, names, args.csv, args.top)
    for r in reports:
        print(
            f"{r['sae']:>12s}  ablated {len(r['ablated']):3d} latents | worst-group acc "
            f"{r['before']['worst_group']:.3f} -> {r['after_ablation']['worst_group']:.3f} (ablate) "
            f"-> {r['after_retrain']['worst_group']:.3f} (retrain) | overall {r['before']['overall']:.3f} -> "
            f"{r['after_retrain']['overall']:.3f}"
        )


def default_shift_saes(ws: Workspace) -> list[str]:
    """The general SAE and the SAEs trained on the politics subdomain when there is one."""
    general = [s.name for s in ws.config.saes if s.data == "general" and not (s.boost_base or s.pretrained or s.site)][
        :1
    ]
    return general + [s.name for s in ws.config.saes if s.data == "politics"]


def _coverage(args: argparse.Namespace) -> None:
    from backend.research.coverage import build_coverage

    ws = open_workspace(args.workspace)
    with workspace_lock(ws.path):
        for p in build_coverage(ws, force=args.force):
            print(f"wrote {p}")


def _subdomains(args: argparse.Namespace) -> None:
    from backend.research.subdomain import build_subdomain

    ws = open_workspace(args.workspace)
    with workspace_lock(ws.path):
        for sd in ws.config.subdomains:
            build_subdomain(ws, sd, force=args.force)


def add_commands(sub) -> None:
    s = sub.add_parser("shift", help="spurious-correlation removal: probe, attribute, ablate; worst-group accuracy")
    s.add_argument("--workspace", required=True)
    s.add_argument("--csv", help="CSV with text, label, group (and optional split) columns; default: the demo set")
    s.add_argument("--saes", help="comma list of SAE names (default: the general SAE + politics SAEs)")
    s.add_argument("--top", type=int, default=50, help="latents by |attribution| examined for ablation")
    s.set_defaults(func=_shift)
    c = sub.add_parser("coverage", help="general vs subdomain feature coverage for each subdomain")
    c.add_argument("--workspace", required=True)
    c.add_argument("--force", action="store_true")
    c.set_defaults(func=_coverage)
    d = sub.add_parser("subdomains", help="retrieve subdomain training sets (dense + BM25) and cache their activations")
    d.add_argument("--workspace", required=True)
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=_subdomains)
