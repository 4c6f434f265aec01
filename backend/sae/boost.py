"""SAE Boost: a residual SAE trained on the error of a frozen base SAE; the pair acts as one SAE.

    base_recons = base(x);  residual latents = resid.encode(x - base_recons)
    encode(x) = [base.encode(x), resid.encode(x - base(x))]      (N, d_base + d_resid)
    decode(z) = base.decode(z[:, :d_base]) + z[:, d_base:] @ resid.W_dec   (resid has no b_dec)

so forward(x) == decode(encode(x)) == base(x) + resid(x - base(x)). The composite's W_dec is
the base's rows followed by the residual's, which is what steering and the index use.
"""

from __future__ import annotations

import torch
from torch import nn


class _Cfg:
    def __init__(self, base, resid):
        self.d_in = base.cfg.d_in
        self.d_sae = base.cfg.d_sae + resid.cfg.d_sae
        self.d_base = base.cfg.d_sae
        self.architecture = f"boosted({base.cfg.architecture}+{resid.cfg.architecture})"
        self.k = base.cfg.k + resid.cfg.k
        self.hook_name = base.cfg.hook_name
        self.model_name = base.cfg.model_name
        self.meta = dict(resid.cfg.meta)


class BoostedSae(nn.Module):
    def __init__(self, base: nn.Module, resid: nn.Module):
        super().__init__()
        if resid.cfg.apply_b_dec or bool(resid.b_dec.detach().abs().max() > 0):
            raise ValueError("a boosted residual SAE must have b_dec fixed at 0 (apply_b_dec false)")
        self.base, self.resid = base.eval(), resid
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.cfg = _Cfg(base, resid)

    @property
    def W_dec(self) -> torch.Tensor:
        return torch.cat([self.base.W_dec, self.resid.W_dec])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z_base = self.base.encode(x)
        z_res = self.resid.encode(x - self.base.decode(z_base))
        return torch.cat([z_base, z_res], dim=-1)

    def encode_topk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(x).topk(self.cfg.k, dim=-1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        n = self.cfg.d_base
        return self.base.decode(latents[..., :n]) + latents[..., n:].to(self.resid.W_dec.dtype) @ self.resid.W_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
