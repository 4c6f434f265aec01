"""CLI: `index` builds (or rebuilds) the workspace's DuckDB feature index."""
from __future__ import annotations

import argparse


def _index(args: argparse.Namespace) -> None:
    from .index import build_index
    from .workspace import open_workspace

    build_index(open_workspace(args.workspace), progress=True)


def add_commands(sub) -> None:
    p = sub.add_parser("index", help="top contexts, stats, labels, logit lens and maps of every SAE -> index.duckdb")
    p.add_argument("--workspace", required=True)
    p.set_defaults(func=_index)
