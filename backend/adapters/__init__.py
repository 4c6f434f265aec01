"""Model adapters: the only code that touches model internals."""
from __future__ import annotations

from ..config import ModelConfig
from .base import ModelAdapter, Site, TokenBatch


def load_adapter(cfg: ModelConfig, verbose: bool = True) -> ModelAdapter:
    """The adapter for a model config (text models today; protein and recsys adapters plug in here)."""
    from .causal_lm import load_causal_lm

    return load_causal_lm(cfg, verbose=verbose)


__all__ = ["ModelAdapter", "Site", "TokenBatch", "load_adapter"]
