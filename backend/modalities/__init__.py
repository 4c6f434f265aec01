"""The model kinds a workspace can hold: one ``Modality`` record each (backend/modalities/base.py).

Everything that depends on what a token is lives here, one module per kind (text.py, protein.py, recsys.py,
each ending with its ``MODALITY`` record): the adapter loader, the named corpora, the windows, the token
concepts and annotation spans, the example input, outcome steering, the evaluation extras and what the UI
offers. The rest of the backend looks the record up (``get_modality``) and reads its fields; it never
compares kind names. A new kind is one module plus one entry in ``MODALITIES``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.modalities import protein, recsys, text
from backend.modalities.base import Modality, OutcomeRequest

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MODALITIES: tuple[Modality, ...] = (text.MODALITY, protein.MODALITY, recsys.MODALITY)
_LOOKUP = {**{m.kind: m for m in MODALITIES}, **{m.name: m for m in MODALITIES}}


def get_modality(name_or_kind: str) -> Modality:
    """The record of a kind by its name ('text', 'protein', 'recsys') or its config model.kind ('causal_lm', ...)."""
    try:
        return _LOOKUP[name_or_kind]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model kind {name_or_kind!r}: use one of {', '.join(m.kind for m in MODALITIES)}"
        ) from None


def token_concepts(
    ws, windows: pd.DataFrame, window: np.ndarray, offset: np.ndarray, token: np.ndarray
) -> tuple[np.ndarray, list[str]] | None:
    """(n, C) bool labels and C concept names for indexed tokens given by window row, offset among the
    window's kept tokens and token id; None when the workspace has no token concepts (text)."""
    fn = get_modality(ws.modality).token_concepts
    return None if fn is None else fn(ws, windows, window, offset, token)


__all__ = ["MODALITIES", "Modality", "OutcomeRequest", "get_modality", "token_concepts"]
