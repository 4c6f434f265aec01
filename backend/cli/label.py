"""CLI: `label` (re)labels latents with an explainer and one scorer (backend/index/relabel.py).

    python -m backend label --workspace DIR [--explainer statistical|llm|local] [--base-url URL --model NAME]
                            [--api-key-env VAR] [--saes a,b] [--limit N]

The explainer's settings come from ``label: {explainer: {...}}`` in the workspace's workspace.yaml; each flag
generated from config.ExplainerConfig (--base-url, --model, --concurrency, ...) overrides its field for this run.
--explainer defaults to llm when an endpoint is configured, else statistical. Resumable: replies already in
<ws>/label_cache.duckdb are not asked again.
"""

from __future__ import annotations

import argparse
import dataclasses

from backend.config import EXPLAINERS, ExplainerConfig


def _label(args: argparse.Namespace) -> None:
    from backend.index.relabel import label_workspace
    from backend.workspace import open_workspace

    ws = open_workspace(args.workspace)
    over = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExplainerConfig) if hasattr(args, f.name)}
    cfg = dataclasses.replace(ws.config.label.explainer, **over)  # validated again (__post_init__)
    explainer = args.explainer or ("llm" if cfg.base_url else "statistical")
    saes = [s for s in args.saes.split(",") if s] if args.saes else None
    summaries, cost = label_workspace(ws, explainer, cfg, saes, args.limit, progress=not args.quiet)
    for s in summaries:
        methods = ", ".join(f"{m}: {n}" for m, n in sorted(s.by_method.items()))
        print(
            f"[label] {s.sae}: {s.latents} latents relabelled, {s.explained} new explanations; scorer {s.scorer}; "
            f"labels by method: {methods or 'none'}; detection F1 >= 0.5: {s.good:.0%}"
        )
    if cost:
        print(f"[label] cost: {cost}")
    print(f"[label] wrote {ws.index_path}")
    if getattr(ws.kind, "search_meaning", False) and (ws.path / "meaning").is_dir():
        print(f"[label] search by meaning reads the new labels after `python -m backend meaning --workspace {ws.path}`")


def add_commands(sub: argparse._SubParsersAction) -> None:
    from backend.cli.sae import config_flags

    p = sub.add_parser(
        "label", help="explain latents (statistical, an LLM endpoint, or the local model), score, relabel"
    )
    p.add_argument("--workspace", required=True, help="workspace folder (holding workspace.yaml and index.duckdb)")
    p.add_argument(
        "--explainer",
        choices=EXPLAINERS,
        default=None,
        help="who writes explanations (default: llm when an endpoint is configured, else statistical)",
    )
    p.add_argument("--saes", help="comma list of SAE names (default: every indexed SAE)")
    p.add_argument("--limit", type=int, default=None, help="relabel at most N latents per SAE (those that fire, by id)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("explainer (the fields of `label: {explainer: ...}`; a flag overrides the config)")
    for flag, kw in config_flags(ExplainerConfig):
        kw["default"] = argparse.SUPPRESS  # unset flags leave the config's value
        g.add_argument(flag, **kw)
    p.set_defaults(func=_label)
