"""The record of one model kind: everything the shared pipeline asks of a kind, in one place.

A workspace's ``model.kind`` picks one ``Modality`` (backend/modalities/__init__.py: ``get_modality``). Code
outside backend/modalities/ never compares kind names: it reads the record's fields. A field that is None
means the kind has no such step, and the shared code skips it (text has no token concepts, no
annotation spans and no outcome steering; its windows come from backend/data/corpora.py).

The hooks receive what they need as arguments (the workspace, the adapter, a host with ``windows()``
and ``adapter()``) so that this package never imports the workspace, the index or the facade.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from backend.config import ModelConfig


OUTCOME_PARAMS = ("k", "motif")  # the optional arguments of /steer_outcome that only some kinds use


@dataclass(frozen=True)
class OutcomeRequest:
    """One /steer_outcome request whose common arguments backend/serve/steer.py has checked.

    The edits are parsed and the SAE loaded through the two callables, so each kind keeps the order in which
    its own input checks and the edit checks run (the first bad argument is the one reported)."""

    adapter: Any
    """The workspace's model adapter."""
    site: str
    """The hook site of the workspace's SAEs."""
    inputs: str
    """The raw input (a protein sequence, an item history), checked for length only."""
    k: int
    """How many recommendations (checked against MAX_K; a kind may cap it further)."""
    motif: str
    """A target motif (regex), stripped; empty for none."""
    n_iters: int
    """Masked-resampling iterations per run."""
    seed: int
    """The sampling seed."""
    parse_edits: Callable[[], tuple[list, str | None]]
    """() -> (edits, notice about skipped blank rows); SteeringError when an edit is malformed."""
    load_sae: Callable[[list], tuple[Any, list]]
    """edits -> (the SAE, the edits checked against its width); BackendError for an unknown SAE."""
    turn: Callable[[], AbstractContextManager]
    """One model turn (the facade's TurnLock): hold it around every forward pass."""


@dataclass(frozen=True)
class MoversRequest:
    """One /classifier_movers request whose common arguments backend/serve/steer.py has checked."""

    adapter: Any
    """The workspace's model adapter."""
    sae: Any
    """The loaded SAE."""
    site: str
    """The SAE's hook site (where the clamps act)."""
    inputs: str
    """The raw input (a protein sequence), checked for length only."""
    limit: int
    """How many candidates to verify by clamping (checked against MAX_MOVERS)."""
    max_acts: np.ndarray
    """(d_sae,) each latent's largest activation in the index (0 where it never fired): clamps are multiples of it."""
    labels: Callable[[int], str]
    """latent -> its explanation in the index ('' when it has none)."""
    turn: Callable[[], AbstractContextManager]
    """One model turn (the facade's TurnLock): hold it around every forward pass."""


@dataclass(frozen=True)
class Modality:
    """One model kind: its adapter, corpora, windows, concepts, outcome steering, evaluation and UI."""

    name: str
    """'text' | 'protein' | 'recsys': ``Workspace.modality`` and ``Backend.modality``."""
    kind: str
    """The config's ``model.kind`` that selects this record ('causal_lm', 'protein', 'recsys')."""
    display_name: str
    """How the UI names the kind (header, workspace switcher)."""
    load_adapter: Callable[[ModelConfig, bool], Any]
    """(model config, verbose) -> the ModelAdapter (backend/adapters/)."""
    corpora: dict[str, tuple[str, str]]
    """Named corpora of the kind: name -> (domain, what), listed by `python -m backend corpora`."""
    corpora_heading: str
    """The heading of the kind's block in `python -m backend corpora`."""
    example_input: Callable[[Any, int], str]
    """(host with ``windows()`` and ``adapter()``, n) -> a real input to start from (prompt, sequence, history)."""
    windows: Callable[[Any, Any, bool], pd.DataFrame] | None = None
    """(workspace, adapter, verbose) -> the windows table; None: text corpora (backend/data/corpora.py)."""
    token_concepts: (
        Callable[[Any, pd.DataFrame, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, list[str]] | None] | None
    ) = None
    """(workspace, windows, window row, offset among kept tokens, token id) -> ((n, C) bool labels, C names)
    or None when the workspace has none; None: the kind has no token concepts."""
    context_spans: Callable[[Any, pd.DataFrame, int, int, int], list[tuple[int, int, str]]] | None = None
    """(workspace, windows, window row, offset, n tokens) -> (start, end, concept) spans in context coordinates
    (protein annotations); None: contexts carry no spans."""
    steer_outcome: Callable[[OutcomeRequest], dict] | None = None
    """Before/after of the model's output under latent edits; None: the kind is steered by generation."""
    outcome_input: str = "input"
    """What /steer_outcome's input is called in its error messages ('sequence', 'history')."""
    outcome_params: tuple[str, ...] = ()
    """The optional /steer_outcome arguments the kind uses ('k', 'motif'); the UI shows their controls."""
    model_outcome_params: Callable[[ModelConfig], tuple[str, ...]] | None = None
    """(model config) -> the outcome arguments this particular model can use, read from its files without loading
    it (e.g. a motif needs a masked-LM head); None: ``outcome_params`` for every model of the kind."""
    outcome_help: str = ""
    """Markdown under the outcome Steer tab's edits table."""
    classifier_movers: Callable[[MoversRequest], dict] | None = None
    """The latents whose clamp moves the model's classifier most on one input, ranked by gradient and verified by
    clamping; None: the kind has no classifier to move."""
    model_has_classifier: Callable[[ModelConfig], bool] | None = None
    """(model config) -> whether this particular model has a classifier head, read from its files without loading
    it; None: every model of the kind has one when ``classifier_movers`` is set."""
    outcome_genre_mix: bool = False
    """The outcome has genre mixes before/after (the UI shows their table)."""
    input_label: str = "text"
    """Label of the Search (and outcome Steer) tab's input box."""
    prompt_examples: bool = False
    """Search offers the prompts of assets/examples.txt (else the workspace's example_input())."""
    has_coverage: bool = False
    """Subdomain SAEs, coverage and SHIFT apply (the Coverage tab)."""
    eval_next_token_ce: bool = False
    """Evaluation splices the SAE in and measures next-token (next-item) CE, KL and per-domain perplexity."""
    eval_absorption: bool = False
    """Evaluation runs the first-letter absorption task (needs words)."""
    search_meaning: bool = False
    """Latents get meaning vectors (MiniLM over explanation and contexts) with the index: natural-language search."""
    eval_classifier: bool = False
    """Evaluation measures the classifier's KL with the SAE spliced in (when the model has a classifier head)."""
    add_commands: Callable[[Any], None] | None = None
    """Registers the kind's own CLI commands on the CLI's subparsers; None: it has none."""

    def capabilities(self, model: ModelConfig | None = None) -> dict[str, Any]:
        """What the UI needs to know about the kind (and, given its config, the model), as plain values
        (explorer/ never imports the backend)."""
        params = self.outcome_params
        if model is not None and self.model_outcome_params is not None:
            params = self.model_outcome_params(model)
        return {
            "modality": self.name,
            "display_name": self.display_name,
            "generates_text": self.steer_outcome is None,
            "input_label": self.input_label,
            "prompt_examples": self.prompt_examples,
            "has_coverage": self.has_coverage,
            "map_concepts": self.token_concepts is not None,
            "search_meaning": self.search_meaning,
            "outcome_params": {p: p in params for p in OUTCOME_PARAMS},
            "outcome_help": self.outcome_help,
            "classifier_movers": self.classifier_movers is not None
            and (model is None or self.model_has_classifier is None or self.model_has_classifier(model)),
            "outcome_genre_mix": self.outcome_genre_mix,
        }


def join_notices(*notes: str | None) -> str | None:
    """The non-empty notices joined by spaces; None when there are none."""
    return " ".join(n for n in notes if n) or None
