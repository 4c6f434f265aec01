"""CLI: `index` builds the workspace's DuckDB feature index (contexts, statistics, labels, logit lens, maps).

    python -m backend index --workspace DIR [--force]

Labels and maps are computed inside the same build (they need the same encode pass), so there is no
separate `label` or `map` command. Without --force an existing index is kept.
"""

from __future__ import annotations

import argparse


def _index(args: argparse.Namespace) -> None:
    from backend.index.build import build_index
    from backend.workspace import open_workspace

    ws = open_workspace(args.workspace)
    if ws.index_path.exists() and not args.force:
        print(f"[index] {ws.index_path} exists; pass --force to rebuild it")
        return
    timings = build_index(ws, progress=not args.quiet)
    if args.quiet:
        print(
            f"[index] {ws.index_path}: {len(ws.config.saes)} SAEs, {timings['tokens']:,.0f} tokens, "
            f"{timings['total_s']:.0f} s"
        )


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="top contexts, stats, labels, logit lens and maps of every SAE -> index.duckdb")
    p.add_argument("--workspace", required=True, help="workspace folder (holding workspace.yaml and saes/)")
    p.add_argument("--force", action="store_true", help="rebuild even if the index exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars; one summary line")
    p.set_defaults(func=_index)
