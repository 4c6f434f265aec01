"""Build a workspace from its config, step by step; every step is skipped when its output exists.

Steps: windows (corpora -> context windows), activations (shard cache), subdomains (retrieved
training sets for specialized SAEs, each with its own shard cache), train (each SAE),
eval (metrics.json), index (DuckDB feature index, labels, maps), coverage (general vs subdomain). Each step writes to a temporary
path and renames, so an interrupted build resumes cleanly from the last finished step.

The whole build holds the workspace lock (atomic.workspace_lock): a second build of the same workspace
fails at once with WorkspaceBusy naming the first, and the temporaries of a killed build are removed
when the next one takes the lock.

Under torchrun (backend/dist.py) activations, train and index run on every rank (the cache's shards split between
them, training data parallel, each SAE's index rows encoded by slices and merged on rank 0); the other steps run on
rank 0 while the others wait.

The staged build (what ``python app.py`` runs) is backend/staged.py.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from backend import dist
from backend.workspace import Workspace, create_workspace, workspace_lock

STEPS = ("windows", "activations", "subdomains", "train", "eval", "index", "coverage")


def build_workspace(
    config: str | Path, path: str | Path | None = None, *, force: bool = False, steps: str = "all", verbose: bool = True
) -> Workspace:
    want = STEPS if steps == "all" else tuple(s.strip() for s in steps.split(","))
    if bad := [s for s in want if s not in STEPS]:
        raise ValueError(f"unknown build step(s) {bad}; steps are {', '.join(STEPS)}")
    ws = dist.rank0_first(create_workspace, config, path)  # under torchrun rank 0 writes workspace.yaml
    with workspace_lock(ws.path):  # under torchrun rank 0 holds it for the group
        return _build(ws, want, force, verbose and dist.is_leader())


def _build(ws: Workspace, want: tuple[str, ...], force: bool, verbose: bool) -> Workspace:
    t0, say = time.time(), print if verbose else (lambda *a, **k: None)
    say(f"[build] workspace {ws.config.name} in {ws.path}", flush=True)
    if "train" in want:
        from backend.sae.pretrained import preflight

        dist.on_rank0(preflight, ws)  # a pretrained SAE that cannot be read fails now, before any work
    if "windows" in want:
        dist.on_rank0(ws.build_windows, force=force, verbose=verbose)
    if "activations" in want:
        cache = ws.build_activations(force=force, verbose=verbose)  # every rank captures its share
        say(f"[build] activations: {cache.n_tokens:,} tokens at {cache.site}", flush=True)
    if "subdomains" in want:
        from backend.research.subdomain import build_subdomain

        for sd in ws.config.subdomains:
            dist.on_rank0(build_subdomain, ws, sd, force=force, verbose=verbose)
    if "train" in want and ws.config.saes:
        train_all(ws, force=force, verbose=verbose)  # data parallel across the ranks
    if "eval" in want and ws.config.saes:
        dist.on_rank0(eval_all, ws, force=force, verbose=verbose)
    if "index" in want and ws.config.saes:
        from backend.index.build import add_to_index, build_index, indexed_saes

        def plan() -> list[str] | None:
            """The SAEs to index: None for all (a new index), [] for none."""
            if force or not ws.index_path.exists():
                return None
            return [s.name for s in ws.config.saes if s.name not in indexed_saes(ws.index_path)]

        todo = dist.broadcast(dist.on_rank0(plan))  # every rank encodes its slice of the rows; rank 0 writes
        if todo is None:
            build_index(ws, progress=verbose)
        elif todo:
            add_to_index(ws, todo, progress=verbose)  # a staged build stopped part-way: add what it lacks
        dist.barrier()
    if "coverage" in want and ws.config.subdomains:
        from backend.research.coverage import build_coverage

        dist.on_rank0(build_coverage, ws, force=force, verbose=verbose)
    say(f"[build] done in {time.time() - t0:.0f} s", flush=True)
    return ws


def train_all(ws: Workspace, force: bool = False, verbose: bool = True, only: str | None = None) -> None:
    with workspace_lock(ws.path):
        for s in ws.config.saes:
            if not only or s.name == only:
                train_one(ws, s, force=force, verbose=verbose)


def train_one(
    ws: Workspace,
    s,
    force: bool = False,
    verbose: bool = True,
    watch: Callable[[int], None] | None = None,
    twin: bool = True,
) -> bool:
    """Train one SAE of the config (``s``, its SaeConfig) unless it is trained; returns whether it trained.
    ``watch(n)`` is called with each batch's token count (and may raise to stop the training); ``twin=False``
    leaves its stability twin for later (``train_twin``)."""
    out = ws.sae_dir(s.name)
    if s.pretrained:  # loaded, not trained; then its site's activations (for evaluation and the index)
        from backend.sae.pretrained import import_pretrained

        done = bool(dist.on_rank0(import_pretrained, ws, s, force=force, verbose=verbose))
        ws.build_activations(verbose=verbose, site=ws.site_of(s.name))
        return done
    if (out / "cfg.json").exists() and not force:
        return False
    if verbose:
        print(f"[train] {s.name}: {s.architecture} d_sae={s.d_sae}", flush=True)
    if s.site:
        ws.build_activations(verbose=verbose, site=s.site)
    _train(ws, s, ws.config.train, out, watch, verbose, twin)
    return True


def _train(ws: Workspace, s, tcfg, out: Path, watch: Callable[[int], None] | None, verbose: bool, twin: bool) -> None:
    """``train_sae`` of one config entry on its data (its boost base loaded), into ``out``."""
    from backend.sae.model import load_sae
    from backend.sae.train import train_sae

    base = load_sae(ws.sae_dir(s.boost_base)) if s.boost_base else None
    source = ws.activation_source(s.data, site=s.site)
    train_sae(
        s,
        tcfg,
        _Watched(source, watch) if watch else source,
        out,
        base=base,
        hook_name=ws.site_of(s.name),
        model_name=ws.config.model.id,
        progress=verbose,
        twin=twin,
    )


def train_twin(ws: Workspace, s, verbose: bool = True, watch: Callable[[int], None] | None = None) -> bool:
    """Train the stability twin of a trained SAE (``s.stability_twin``) unless it exists, then record the SAE's
    seed stability against it in its metrics.json; returns whether it trained."""
    from backend.sae.evaluate import stability
    from backend.sae.model import load_sae, twin_dir, write_metrics
    from backend.sae.train import TWIN_SEED_OFFSET, twin_configs

    d = ws.sae_dir(s.name)
    out = twin_dir(d)
    if not s.stability_twin or not (d / "cfg.json").exists():
        return False
    trained = not (out / "cfg.json").exists()
    if trained:
        if verbose:
            print(f"[train] {s.name}@twin: the stability twin (seed + {TWIN_SEED_OFFSET})", flush=True)
        _train(ws, *twin_configs(s, ws.config.train), out, watch, verbose, twin=False)
    write_metrics(d, stability(load_sae(d).W_dec.detach(), load_sae(out).W_dec.detach()))
    return trained


def eval_all(ws: Workspace, force: bool = False, verbose: bool = True) -> None:
    from backend.sae.evaluate import evaluate_workspace

    with workspace_lock(ws.path):
        evaluate_workspace(ws, force=force, progress=verbose)


def evaluated(ws: Workspace, name: str) -> bool:
    import json

    p = ws.sae_dir(name) / "metrics.json"
    try:
        return p.exists() and "fvu" in json.loads(p.read_text())
    except ValueError:
        return False


def evaluate_one(ws: Workspace, s, verbose: bool = True) -> None:
    """metrics.json for one SAE of the config: ``evaluate_workspace`` on a view of the workspace whose config
    lists only that SAE (it shares the loaded model)."""
    from backend.sae.evaluate import evaluate_workspace

    cfg = copy.copy(ws.config)  # shallow: only the SAE list differs (no re-validation: a boost's base is absent)
    cfg.saes = [s]
    view = Workspace(ws.path, cfg)
    view._adapter = ws.adapter(verbose=False)  # one model in memory, not one per SAE
    evaluate_workspace(view, progress=verbose)


class _Watched:
    """An activation source that reports each training batch's size to ``watch`` (which may raise BuildStopped)."""

    def __init__(self, source: Any, watch: Callable[[int], None]):
        self._source, self._watch = source, watch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def batches(self, *args: Any, **kw: Any) -> Iterator:
        for x in self._source.batches(*args, **kw):
            self._watch(len(x))
            yield x
