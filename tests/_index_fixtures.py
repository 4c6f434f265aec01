"""Session fixtures of the index/service tests (imported by test_store, test_index, test_label, test_service).

- ``synth_acts``: a synthetic indexing corpus (random activations, 60 windows of 25 tokens, 2 domains).
- ``synth_ws``: a workspace folder holding two stand-in ReLU SAEs (weights on disk) and the index
  written by index.write_index over ``synth_acts``: no model, builds in about a second.
- ``tiny_index``: the real tiny workspace (conftest's ``tiny_ws``: SmolLM2, real corpora, trained SAEs)
  re-indexed by the current code into a temporary workspace that links the real one's parts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import save_file

from backend.config import IndexConfig
from backend.index.build import IndexActs, write_index
from backend.workspace import Workspace, open_workspace
from tests.stand_ins import ReluSae

D_IN, D_SAE, VOCAB = 16, 24, 40
N_WIN, WIN_LEN = 60, 25
SYNTH_CFG = IndexConfig(
    max_tokens=N_WIN * WIN_LEN, top_k=5, n_quantiles=3, per_quantile=2, context_radius=3, umap=False
)


def make_acts(seed: int = 0) -> IndexActs:
    """Random activations with a planted structure: token 7 adds 4x the direction of latent 0 of SAE "a"."""
    g = np.random.default_rng(seed)
    n = N_WIN * WIN_LEN
    token = g.integers(0, VOCAB, n)
    window = np.repeat(np.arange(N_WIN), WIN_LEN)
    x = torch.from_numpy(g.standard_normal((n, D_IN)).astype(np.float32))
    x[token == 7] += 4 * ReluSae(D_IN, D_SAE, seed=1).W_dec[0]
    pos_in_index = window  # every window is indexed, in order
    return IndexActs(
        acts=x.half(),
        token=token,
        window=window,
        domain=(window % 2),
        heldout=pos_in_index % 5 == 4,
        domains=["general", "legal"],
        tokstr=np.array([f"t{i}" for i in range(VOCAB)], dtype=object),
        source=np.array([f"doc{w // 3}" for w in range(N_WIN)], dtype=object),
    )


def token_strings(ids: list[int]) -> list[str]:
    return [f"t{i}" for i in ids]


@pytest.fixture(scope="session")
def synth_acts() -> IndexActs:
    return make_acts()


@pytest.fixture(scope="session")
def synth_ws(tmp_path_factory, synth_acts) -> Workspace:
    root = tmp_path_factory.mktemp("synth_ws")
    cfg = {
        "name": "synth",
        "corpora": [{"name": "hpo"}],
        "saes": [{"name": n, "architecture": "relu", "d_sae": D_SAE} for n in ("a", "b")],
        "index": {
            k: getattr(SYNTH_CFG, k)
            for k in ("max_tokens", "top_k", "n_quantiles", "per_quantile", "context_radius", "umap")
        },
    }
    (root / "workspace.yaml").write_text(yaml.safe_dump(cfg))
    saes = {"a": ReluSae(D_IN, D_SAE, seed=1), "b": ReluSae(D_IN, D_SAE, seed=2)}
    for sae in saes.values():
        sae.b_enc -= 2.5  # sparse: a latent fires on ~0.6% of random tokens, latent 0 of "a" on most t7
    for name, sae in saes.items():
        d = root / "saes" / name
        d.mkdir(parents=True)
        save_file({"W_dec": sae.W_dec.numpy()}, str(d / "sae_weights.safetensors"))
        (d / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE}))
        (d / "metrics.json").write_text(json.dumps({"l0": 10.0, "fvu": 0.5, "train": {"steps": 1}}))
    U = torch.from_numpy(np.random.default_rng(3).standard_normal((VOCAB, D_IN)).astype(np.float32))
    write_index(
        root / "index.duckdb", synth_acts, [(n, "relu", s) for n, s in saes.items()], SYNTH_CFG, U, token_strings
    )
    return open_workspace(root)


def link_workspace(src: Path, dst: Path) -> Workspace:
    """A workspace at ``dst`` sharing src's config, windows, activations, SAEs and coverage (symlinks),
    with its own index path, and a copy of its meaning vectors (kept when an index build finds the same texts,
    instead of embedding every latent again; re-embedded, in the copy, when the labels differ)."""
    dst.mkdir(parents=True, exist_ok=True)
    for part in ("workspace.yaml", "corpora", "activations", "saes", "coverage"):
        if (src / part).exists():
            (dst / part).symlink_to((src / part).resolve())
    if (src / "meaning").is_dir():
        shutil.copytree(src / "meaning", dst / "meaning")
    return open_workspace(dst)


@pytest.fixture(scope="session")
def tiny_index(tiny_ws, tmp_path_factory) -> tuple[Workspace, dict[str, float]]:
    """(the re-indexed tiny workspace, build timings)."""
    from backend.index.build import build_index

    ws = link_workspace(Path(tiny_ws.path), tmp_path_factory.mktemp("tiny_index") / "ws")
    return ws, build_index(ws, progress=False)
