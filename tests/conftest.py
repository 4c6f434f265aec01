"""Shared fixtures: the real embedded model (loaded once) and the tiny workspace (built once).

The tiny workspace is built from configs/tiny.yaml into workspaces/tiny with the real SmolLM2
and real corpora (about a minute or two on 2 cores the first time; reused afterwards).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M-Instruct adapter (float32, CPU)."""
    from backend.adapters import load_adapter
    from backend.config import ModelConfig

    return load_adapter(ModelConfig(id="smollm2", device="cpu"), verbose=False)


def _build(config: str, name: str):
    """Build (or reuse) a tiny workspace; a second test session waits for the first one's build (the lock)."""
    from backend.atomic import workspace_lock
    from backend.build import build_workspace

    path = REPO / "workspaces" / name
    path.mkdir(parents=True, exist_ok=True)
    with workspace_lock(path, wait_s=900):
        return build_workspace(REPO / "configs" / config, path, verbose=False)


@pytest.fixture(scope="session")
def tiny_ws():
    """The tiny workspace, fully built (windows, activations, SAEs, metrics, index)."""
    return _build("tiny.yaml", "tiny")


@pytest.fixture(scope="session")
def protein_ws():
    """The tiny protein workspace (configs/protein_tiny.yaml): real ESM-2 8M, Pfam and SUMO proteins, built once."""
    return _build("protein_tiny.yaml", "protein_tiny")


@pytest.fixture(scope="session")
def recsys_ws():
    """The tiny recommender workspace (configs/recsys_tiny.yaml): the embedded SASRec, 300 MovieLens users."""
    return _build("recsys_tiny.yaml", "recsys_tiny")


def _serve(ws):
    from backend.serve.service import Backend

    b = Backend(ws.path)
    yield b
    b.close()


@pytest.fixture(scope="session")
def tb(tiny_ws):
    """The Backend facade over the tiny text workspace (shared by the test modules)."""
    yield from _serve(tiny_ws)


@pytest.fixture(scope="session")
def pb(protein_ws):
    """The Backend facade over the tiny protein workspace."""
    yield from _serve(protein_ws)


@pytest.fixture(scope="session")
def rb(recsys_ws):
    """The Backend facade over the tiny recommender workspace."""
    yield from _serve(recsys_ws)


# Fixtures that build a real workspace or load a real model: a test that uses one is in the slow tier
# (`make test` runs both tiers; `make test-fast` skips these).
SLOW_FIXTURES = {"tiny_ws", "protein_ws", "recsys_ws", "smollm2", "tiny_index"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
