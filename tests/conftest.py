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


@pytest.fixture(scope="session")
def tiny_ws():
    """The tiny workspace, fully built (windows, activations, SAEs, metrics, index)."""
    from backend.build import build_workspace

    return build_workspace(REPO / "configs" / "tiny.yaml", REPO / "workspaces" / "tiny", verbose=False)


@pytest.fixture(scope="session")
def protein_ws():
    """The tiny protein workspace (configs/protein_tiny.yaml): real ESM-2 8M, Pfam and SUMO proteins, built once."""
    from backend.build import build_workspace

    return build_workspace(REPO / "configs" / "protein_tiny.yaml", REPO / "workspaces" / "protein_tiny", verbose=False)


@pytest.fixture(scope="session")
def recsys_ws():
    """The tiny recommender workspace (configs/recsys_tiny.yaml): the embedded SASRec, 300 MovieLens users."""
    from backend.build import build_workspace

    return build_workspace(REPO / "configs" / "recsys_tiny.yaml", REPO / "workspaces" / "recsys_tiny", verbose=False)
