"""Text workspaces (causal LMs): tokens are subwords of real text.

Windows come from the text corpora of backend/data/corpora.py (``Workspace.build_windows``); there are no
token concepts and no annotation spans. Text is steered by generation (backend/sae/steering.py), and its
evaluation adds next-token CE with the SAE spliced in and the first-letter absorption task.
"""

from __future__ import annotations

from typing import Any

from backend.adapters.causal_lm import load_causal_lm
from backend.data.corpora import REGISTRY
from backend.modalities.base import Modality

EXAMPLE_PROMPT = "Tell me about your favourite place."


def example_input(host: Any, n: int = 20) -> str:
    """A prompt to steer with (the workspace's windows are not needed)."""
    return EXAMPLE_PROMPT


MODALITY = Modality(
    name="text",
    kind="causal_lm",
    display_name="text",
    load_adapter=load_causal_lm,
    corpora={name: (domain, what) for name, (_, domain, what) in REGISTRY.items()},
    corpora_heading="text (model.kind causal_lm)",
    example_input=example_input,
    input_label="text",
    prompt_examples=True,
    has_coverage=True,
    eval_next_token_ce=True,
    eval_absorption=True,
    search_meaning=True,
)
