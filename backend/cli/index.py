"""CLI: `index` builds the workspace's DuckDB feature index (contexts, statistics, labels, logit lens, maps).

    python -m backend index --workspace DIR [--force]

Labels and maps are computed inside the same build (they need the same encode pass), so there is no
separate `map` command. Without --force an existing index is kept.

    python -m backend meaning --workspace DIR

(re)makes the meaning vectors of an index built before search by meaning (unchanged SAEs are skipped).

    python -m backend add-sae --workspace DIR --name N (--path SAE | --release R --sae-id I | --hf REPO/DIR)
                              [--site S] [--hookpoint H]

adds one pretrained SAE to a built workspace (backend/incremental.py): only it is evaluated and indexed.
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


def _meaning(args: argparse.Namespace) -> None:
    from backend.atomic import workspace_lock
    from backend.index.build import indexed_saes
    from backend.index.meaning import build_meaning
    from backend.workspace import open_workspace

    ws = open_workspace(args.workspace)
    if not ws.index_path.exists():
        raise SystemExit(f"{ws.path} has no index yet: run `python -m backend index --workspace {ws.path}` first")
    with workspace_lock(ws.path):
        done = build_meaning(ws.path, ws.index_path, indexed_saes(ws.index_path), progress=not args.quiet)
    print(f"[meaning] {len(done)} SAE(s) embedded: {', '.join(done) or 'all were up to date'}")


def _add_sae(args: argparse.Namespace) -> None:
    from backend.incremental import add_sae

    add_sae(
        args.workspace,
        args.name,
        path=args.path,
        release=args.release,
        sae_id=args.sae_id,
        hf=args.hf,
        site=args.site,
        hookpoint=args.hookpoint,
        verbose=not args.quiet,
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="top contexts, stats, labels, logit lens and maps of every SAE -> index.duckdb")
    p.add_argument("--workspace", required=True, help="workspace folder (holding workspace.yaml and saes/)")
    p.add_argument("--force", action="store_true", help="rebuild even if the index exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars; one summary line")
    p.set_defaults(func=_index)
    m = sub.add_parser("meaning", help="meaning vectors of every indexed SAE (search by meaning), for an older index")
    m.add_argument("--workspace", required=True, help="workspace folder (holding index.duckdb)")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.set_defaults(func=_meaning)
    a = sub.add_parser("add-sae", help="add a pretrained SAE (SAELens, sparsify, dictionary_learning, Gemma Scope)")
    a.add_argument("--workspace", required=True, help="a built workspace folder")
    a.add_argument("--name", required=True, help="its name in the workspace (the folder saes/<name>)")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--path", help="the SAE's folder or file")
    src.add_argument("--release", help="a SAELens release name (with --sae-id; needs the hub and sae-lens)")
    src.add_argument("--hf", help="owner/repo/folder on the Hugging Face hub (needs the hub)")
    a.add_argument("--sae-id", help="the SAE's id in its SAELens release")
    a.add_argument("--site", help="its hook site, e.g. blocks.6.hook_resid_post (default: what its files say)")
    a.add_argument("--hookpoint", help="a sparsify run with several layers: the layer folder, e.g. layers.6")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=_add_sae)
