"""Model adapters: the only code that touches model internals."""

from __future__ import annotations

from backend.adapters.base import ModelAdapter, Site, TokenBatch
from backend.config import ModelConfig


def load_adapter(cfg: ModelConfig, verbose: bool = True) -> ModelAdapter:
    """The adapter for a model config: the loader of its kind's record (backend/modalities), e.g. a causal LM,
    a protein LM (ESM-2) or a sequential recommender."""
    from backend.modalities import get_modality  # not at import: the kinds' modules import the adapters

    return get_modality(cfg.kind).load_adapter(cfg, verbose)


__all__ = ["ModelAdapter", "Site", "TokenBatch", "load_adapter"]
