"""Incremental work on a built workspace: add one pretrained SAE without rebuilding the others.

    python -m backend add-sae --workspace DIR --name N --path SAE_DIR [--site S] [--hookpoint H]

Under the workspace lock: the SAE is imported (backend/sae/pretrained.py) and checked against the model, its
site's activations are captured if no SAE read that site before, it is evaluated, the entry is appended to
workspace.yaml (written atomically), and it is indexed with ``add_to_index``: every other SAE's rows are copied
unchanged, the joint map is laid out again, and the new index file is renamed over the old one. A running app
serves it on its next refresh (a page reload), with no restart. A failure before the config is written leaves
the workspace as it was (the imported folder of an SAE the config does not list is never served).
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from backend.atomic import atomic_write_text, workspace_lock
from backend.config import ConfigError, WorkspaceConfig
from backend.workspace import CONFIG_NAME, Workspace, open_workspace


def add_sae(
    workspace: str | Path,
    name: str,
    *,
    path: str | None = None,
    release: str | None = None,
    sae_id: str | None = None,
    hf: str | None = None,
    site: str | None = None,
    hookpoint: str | None = None,
    verbose: bool = True,
) -> dict[str, float]:
    """Add the pretrained SAE ``name`` to the built workspace; returns seconds per step."""
    from backend.build import evaluate_one, train_one
    from backend.index.build import add_to_index
    from backend.sae.pretrained import preflight

    t0, times = time.perf_counter(), {}
    old = open_workspace(workspace)
    with workspace_lock(old.path):
        if any(s.name == name for s in old.config.saes):
            raise ConfigError(f"{old.path} already has an SAE named {name!r}: pick another --name")
        entry = {"name": name, "path": path, "release": release, "sae_id": sae_id, "hf": hf}
        entry.update(site=site, hookpoint=hookpoint)
        d = old.config.to_dict()
        d["saes"] = [*d["saes"], {k: v for k, v in entry.items() if v is not None}]
        cfg = WorkspaceConfig.from_dict(d)  # validates the entry: one source, no training fields, a valid name
        ws = Workspace(old.path, cfg)
        s = cfg.saes[-1]
        preflight(ws)
        train_one(ws, s, force=True, verbose=verbose)  # import (+ its site's activations)
        times["import_s"] = time.perf_counter() - t0
        evaluate_one(ws, s, verbose=verbose)
        times["eval_s"] = time.perf_counter() - t0 - times["import_s"]
        atomic_write_text(ws.path / CONFIG_NAME, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        t = time.perf_counter()
        add_to_index(ws, [name], progress=verbose)
        times["index_s"] = time.perf_counter() - t
    times["total_s"] = time.perf_counter() - t0
    if verbose:
        print(
            f"[add-sae] {name} added to {ws.path} in {times['total_s']:.0f} s (import {times['import_s']:.0f}, "
            f"eval {times['eval_s']:.0f}, index {times['index_s']:.0f}); a running app serves it after a reload",
            flush=True,
        )
    return times
