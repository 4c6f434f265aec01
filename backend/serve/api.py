"""The contract between the UI and the backend: what explorer/ may read and call on a workspace's facade.

``BackendAPI`` is implemented by ``backend.serve.service.Backend`` (the real facade over a workspace) and by
``tests/fake_backend.py`` (an in-memory stand-in for the UI tests); tests/test_architecture.py checks that
the three agree method by method (names, parameters, defaults), so a method added to one and not the
others fails there. docs/service_api.md describes the values; this file is the source of truth.

Rules of the contract: plain Python values, dataclasses and pandas DataFrames out (never torch);
every bad argument raises ``BackendError`` (a ValueError) with one line saying what was wrong
(backend/errors.py); request text is only ever looked up in the workspace's own lists.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pandas as pd

    from backend.serve.service import CompareResult, FeatureView, TextSearchResult
    from backend.serve.steer import SteerUpdate

# Public methods of Backend that are for the server side only (the app, the CLI, tests), not for explorer/.
SERVER_ONLY = ("adapter", "best_matches", "close", "refresh", "sae", "windows")


class BackendAPI(Protocol):
    workspace_name: str
    """The workspace's name (its config's ``name``)."""
    model_name: str
    """The model id of the workspace's config."""
    modality: str
    """'text' | 'protein' | 'recsys': which model kind the workspace holds."""
    sae_names: list[str]
    """The SAEs served, in config order (broken ones are left out, see ``problems``)."""
    problems: list[str]
    """One line per SAE left out because its files are broken: the file and what to run."""
    capabilities: dict[str, Any]
    """What the model kind offers the UI, as plain values (backend/modalities: ``Modality.capabilities``):
    display_name, generates_text, input_label, prompt_examples, has_coverage, map_concepts, outcome_params..."""

    # ---- browse ----
    def saes(self) -> pd.DataFrame:
        """One row per SAE: name, architecture, d_sae, k, site, source ('trained here' or where a pretrained one came from),
        l0, fvu, ce_recovered, dead_frac, n_latents_indexed."""
        ...

    def domains(self) -> list[str]:
        """The corpus domains of the index."""
        ...

    def latents(
        self,
        sae: str,
        *,
        sort_by: str = "density",
        descending: bool = True,
        domain: str | None = None,
        min_density: float = 0.0,
        query: str = "",
        limit: int = 200,
        offset: int = 0,
    ) -> pd.DataFrame:
        """A page of an SAE's latents: latent, label, confidence, density, mean_act, max_act, top_domain."""
        ...

    def feature(self, sae: str, latent: int) -> FeatureView:
        """One latent's dashboard."""
        ...

    def example_input(self, n: int = 20) -> str:
        """A real input to start from: a prompt, a protein sequence or an item history."""
        ...

    # ---- search ----
    def search_text(self, sae: str, text: str, top_n: int = 10) -> TextSearchResult:
        """The latents firing on a text, token by token."""
        ...

    def search_features(self, query: str, sae: str | None = None, limit: int = 50) -> pd.DataFrame:
        """Latents whose explanation contains the words: sae, latent, label, confidence, density, score."""
        ...

    def search_meaning(self, query: str, sae: str = "", limit: int = 20) -> pd.DataFrame:
        """Latents closest in meaning (explanation and top contexts, MiniLM cosine): sae, latent, label, score,
        top_domain; attrs['notice'] names SAEs without vectors."""
        ...

    def nearest(self, sae: str, latent: int, k: int = 10, other_sae: str | None = None) -> pd.DataFrame:
        """The decoder directions nearest to a latent's: sae, latent, cosine, label."""
        ...

    def feature_map(self, sae: str | None = None) -> pd.DataFrame:
        """2-D map of decoder directions (sae None: the joint map): sae, latent, x, y, density, top_domain, label."""
        ...

    # ---- compare ----
    def compare(self, saes: list[str], threshold: float = 0.7, limit: int = 100, offset: int = 0) -> CompareResult:
        """Metrics side by side (metrics.json flattened); a page of matches >= threshold and of unmatched latents;
        per-pair summaries with the histogram of best-match cosines; the levels of Matryoshka SAEs."""
        ...

    # ---- steer ----
    def steer_stream(
        self,
        sae: str,
        prompt: str,
        edits: Any,
        *,
        max_new_tokens: int = 48,
        temperature: float = 0.7,
        seed: int = 0,
        chat: bool = True,
    ) -> Iterator[SteerUpdate]:
        """Baseline and steered generations streamed side by side (text workspaces)."""
        ...

    def steer(self, sae: str, prompt: str, edits: Any, **kw: Any) -> SteerUpdate:
        """The last update of ``steer_stream``."""
        ...

    def steer_outcome(
        self, sae: str, inputs: str, edits: Any, *, k: int = 10, motif: str = "", n_iters: int = 50, seed: int = 0
    ) -> dict:
        """The model's output before and after latent edits (protein and recommender workspaces)."""
        ...

    def classifier_movers(self, sae: str, sequence: str, limit: int = 8) -> dict:
        """The latents whose clamp (2 x max activation, at the residues) moves the classifier most on a sequence:
        ranked by gradient, the ``limit`` best (1..10) verified by clamping (protein classifier workspaces only,
        ``capabilities['classifier_movers']``): classes, predicted, before, factor, n_ranked, rows (latent,
        label, direction, value, max_act, predicted, measured, delta), largest, sign_agreement, notice."""
        ...

    # ---- the staged build (app.py builds workspaces SAE by SAE while serving them) ----
    def build_status(self) -> dict:
        """Progress of this workspace's build in the serving process: workspace, active (still building), step,
        line (one line for the header: "building: 3 of 11 SAEs ready; training topk (step 2 of 5)..."), saes
        (name, state: waiting | training | evaluating | indexing | ready | failed, detail: progress or the
        one-line error), others (the same for the process' other builds). Inactive with an empty line when
        the workspace is not being built. SAEs become servable (``sae_names``) as they turn ready."""
        ...

    # ---- research views (read-only) ----
    def subdomains(self) -> list[str]:
        """The subdomains with a stored coverage analysis."""
        ...

    def coverage(self, subdomain: str) -> dict:
        """The stored coverage analysis of one subdomain."""
        ...

    def shift_report(self) -> dict | None:
        """The last SHIFT report written by ``python -m backend shift``, or None."""
        ...
