"""Build a workspace from its config, step by step; every step is skipped when its output exists.

Steps: windows (corpora -> context windows), activations (shard cache), subdomains (retrieved
training sets for specialized SAEs, each with its own shard cache), train (each SAE),
eval (metrics.json), index (DuckDB feature index, labels, maps), coverage (general vs subdomain). Each step writes to a temporary
path and renames, so an interrupted build resumes cleanly from the last finished step.

The whole build holds the workspace lock (atomic.workspace_lock): a second build of the same workspace
fails at once with WorkspaceBusy naming the first, and the temporaries of a killed build are removed
when the next one takes the lock.
"""

from __future__ import annotations

import time
from pathlib import Path

from backend.workspace import Workspace, create_workspace, workspace_lock

STEPS = ("windows", "activations", "subdomains", "train", "eval", "index", "coverage")


def build_workspace(
    config: str | Path, path: str | Path | None = None, *, force: bool = False, steps: str = "all", verbose: bool = True
) -> Workspace:
    want = STEPS if steps == "all" else tuple(s.strip() for s in steps.split(","))
    bad = [s for s in want if s not in STEPS]
    if bad:
        raise ValueError(f"unknown build step(s) {bad}; steps are {', '.join(STEPS)}")
    ws = create_workspace(config, path)
    with workspace_lock(ws.path):
        return _build(ws, want, force, verbose)


def _build(ws: Workspace, want: tuple[str, ...], force: bool, verbose: bool) -> Workspace:
    t0 = time.time()
    say = print if verbose else (lambda *a, **k: None)
    say(f"[build] workspace {ws.config.name} in {ws.path}", flush=True)
    if "windows" in want:
        ws.build_windows(force=force, verbose=verbose)
    if "activations" in want:
        cache = ws.build_activations(force=force, verbose=verbose)
        say(f"[build] activations: {cache.n_tokens:,} tokens at {cache.site}", flush=True)
    if "subdomains" in want:
        from backend.research.subdomain import build_subdomain

        for sd in ws.config.subdomains:
            build_subdomain(ws, sd, force=force, verbose=verbose)
    if "train" in want and ws.config.saes:
        train_all(ws, force=force, verbose=verbose)
    if "eval" in want and ws.config.saes:
        eval_all(ws, force=force, verbose=verbose)
    if "index" in want and ws.config.saes:
        from backend.index.build import build_index

        if force or not ws.index_path.exists():
            build_index(ws, progress=verbose)
    if "coverage" in want and ws.config.subdomains:
        from backend.research.coverage import build_coverage

        build_coverage(ws, force=force, verbose=verbose)
    say(f"[build] done in {time.time() - t0:.0f} s", flush=True)
    return ws


def train_all(ws: Workspace, force: bool = False, verbose: bool = True, only: str | None = None) -> None:
    with workspace_lock(ws.path):
        _train_all(ws, force, verbose, only)


def _train_all(ws: Workspace, force: bool, verbose: bool, only: str | None) -> None:
    from backend.sae.model import load_sae
    from backend.sae.train import train_sae

    adapter_name = ws.config.model.id
    for s in ws.config.saes:
        if only and s.name != only:
            continue
        out = ws.sae_dir(s.name)
        if (out / "cfg.json").exists() and not force:
            continue
        base = load_sae(ws.sae_dir(s.boost_base)) if s.boost_base else None
        source = ws.activation_source(s.data)
        if verbose:
            print(f"[train] {s.name}: {s.architecture} d_sae={s.d_sae}", flush=True)
        train_sae(
            s,
            ws.config.train,
            source,
            out,
            base=base,
            hook_name=ws.config.activations.site,
            model_name=adapter_name,
            progress=verbose,
        )


def eval_all(ws: Workspace, force: bool = False, verbose: bool = True) -> None:
    from backend.sae.evaluate import evaluate_workspace

    with workspace_lock(ws.path):
        evaluate_workspace(ws, force=force, progress=verbose)
