"""Small stand-ins for mechanics tests (never used by the demo)."""

from __future__ import annotations

import torch


class ReluSae:
    """A minimal affine-decoder SAE (mechanics only; real SAEs are tested in test_sae*)."""

    def __init__(self, d_in: int, d_sae: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1)
        self.W_enc = self.W_dec.T.clone()
        self.b_enc = torch.zeros(d_sae)
        self.b_dec = torch.zeros(d_in)

    def encode(self, x):
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, latents):
        return latents @ self.W_dec + self.b_dec
