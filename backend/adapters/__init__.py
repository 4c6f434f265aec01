"""Model adapters: the only code that touches model internals."""
from __future__ import annotations

from backend.config import ModelConfig
from backend.adapters.base import ModelAdapter, Site, TokenBatch


def load_adapter(cfg: ModelConfig, verbose: bool = True) -> ModelAdapter:
    """The adapter for a model config: a causal LM, a protein LM (ESM-2) or a sequential recommender."""
    if cfg.kind == "protein":
        from backend.adapters.protein import load_protein

        return load_protein(cfg, verbose=verbose)
    if cfg.kind == "recsys":
        from backend.modalities.recsys import load_recsys

        return load_recsys(cfg, verbose=verbose)
    from backend.adapters.causal_lm import load_causal_lm

    return load_causal_lm(cfg, verbose=verbose)


__all__ = ["ModelAdapter", "Site", "TokenBatch", "load_adapter"]
