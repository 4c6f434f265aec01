"""The model adapter interface: the only way the rest of SAE Explorer touches a model.

A model is seen as a map from token sequences to activations at named *sites*. The SAE,
index and UI code speak only of token ids, rendered token strings, sites and tensors, so a
causal LM (text tokens), a protein LM (residue tokens) and a sequential recommender
(item-id tokens) plug in behind the same surface.

Sites use SAELens hook names: ``blocks.{L}.hook_resid_post`` (output of block L) and
``blocks.{L}.hook_mlp_out`` (output of block L's MLP).

Hazards:
- ``capture`` stops the forward pass after the hooked block; its activations equal the full
  forward's (tests check this), but it never returns logits.
- ``intervene`` is a context manager scoped to one call: the hook is removed in ``finally``.
  Interventions never leak between requests because nothing is global.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

SITE_RE = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|mlp_out)$")

# fn(acts (B, T, d)) -> acts (B, T, d); applied at the site during a forward pass.
Intervention = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Site:
    """A hook site: a block index and what is read there."""

    layer: int
    kind: str  # "resid_post" | "mlp_out"

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_{self.kind}"

    @classmethod
    def parse(cls, name: str, n_layers: int | None = None) -> Site:
        m = SITE_RE.match(name.strip())
        if not m:
            raise ValueError(
                f"unknown hook site {name!r}: use 'blocks.<L>.hook_resid_post' or 'blocks.<L>.hook_mlp_out'"
            )
        site = cls(int(m.group(1)), m.group(2))
        if n_layers is not None and not 0 <= site.layer < n_layers:
            raise ValueError(f"block index {site.layer} is out of range: this model has blocks 0..{n_layers - 1}")
        return site


@dataclass
class TokenBatch:
    """A padded batch of token sequences.

    input_ids (B, T) long; attention_mask (B, T) bool (True = real token);
    keep_mask (B, T) bool: True where an activation is worth keeping (real and not a
    BOS/EOS/pad/special token).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    keep_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.keep_mask.to(device))


@runtime_checkable
class ModelAdapter(Protocol):
    """What every model kind provides. Shapes: B batch, T tokens, d = d_model."""

    model_id: str
    modality: str  # "text" | "protein" | "recsys"
    d_model: int
    n_layers: int
    vocab_size: int
    device: torch.device

    def tokenize(self, texts: Sequence[str], max_len: int) -> TokenBatch:
        """Tokenize raw inputs (text, residue strings, item-id strings), truncating to max_len."""

    def encode_ids(self, text: str) -> list[int]:
        """Token ids of one input without special tokens (used to cut corpora into windows)."""

    def batch_from_ids(self, seqs: Sequence[Sequence[int]]) -> TokenBatch:
        """Pad already-tokenized sequences (adding BOS etc. if the model wants it)."""

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Render each token id as a display string (one per id)."""

    def capture(self, batch: TokenBatch, site: str) -> torch.Tensor:
        """Activations (B, T, d) at ``site``; the forward pass stops after the hooked block."""

    def intervene(self, site: str, fn: Intervention) -> AbstractContextManager[None]:
        """Context manager: while open, forward passes apply ``fn`` to the acts at ``site``."""

    def logits(self, batch: TokenBatch) -> torch.Tensor:
        """Full forward: output scores (B, T, vocab) (a classifier adapter returns (B, n_classes))."""

    def unembed(self) -> torch.Tensor | None:
        """(vocab, d) output embedding for the logit lens, or None if the model has none."""

    def generate(
        self, prompt: str, max_new_tokens: int, temperature: float, seed: int, chat: bool = True
    ) -> Iterator[str]:
        """Stream generated text pieces (respects any open ``intervene`` context)."""
