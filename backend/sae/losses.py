"""SAE objective terms as pure functions. Training adds only the terms whose coefficient is non-zero.

Notation: x (N, d_in) inputs, recons (N, d_in), latents (N, d_sae), W_dec (d_sae, d_in).
Reconstruction losses are normalized by the batch's total variance, so the main term *is* the
fraction of variance unexplained (FVU) and every coefficient is independent of activation scale.

Terms that average over tokens take the average as an argument (``mean``, ``var``, ``reduce``; the plain
one by default): a data-parallel rank (sae/parallel.py) passes its share of the global batch's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def total_variance(x: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ||x_i - mean(x)||^2 (scalar); the FVU denominator per token."""
    return (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)


def per_token_loss(x: torch.Tensor, recons: torch.Tensor, var: torch.Tensor | None = None) -> torch.Tensor:
    """l_i = ||x_i - recons_i||^2 / total_variance(x), shape (N,). mean(l) is the FVU."""
    var = total_variance(x) if var is None else var
    return (x - recons).pow(2).sum(-1) / var


def mse(x: torch.Tensor, recons: torch.Tensor) -> torch.Tensor:
    """Mean over tokens and dims of the squared error."""
    return (x - recons).pow(2).mean()


def fvu(x: torch.Tensor, recons: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: sum ||x - recons||^2 / sum ||x - mean x||^2."""
    return per_token_loss(x, recons).mean()


def tilted(losses: torch.Tensor, t: float) -> torch.Tensor:
    """TERM: R(t) = (logsumexp(t * l) - log N) / t; t = 0 is the plain mean, t -> inf the max.

    Large t focuses training on the worst-reconstructed (often rare, subdomain) tokens.
    """
    if t == 0:
        return losses.mean()
    # float64: for small t the difference logsumexp - log N is tiny and float32 loses it.
    r = (torch.logsumexp(t * losses.double(), dim=0) - math.log(losses.numel())) / t
    return r.to(losses.dtype)


def l1(latents: torch.Tensor, W_dec: torch.Tensor, d_in: int, mean: Callable = torch.mean) -> torch.Tensor:
    """Decoder-norm-weighted L1 (Anthropic, April 2024): mean_i sum_j |z_ij| ||W_dec_j|| / d_in.

    The 1/d_in matches Anthropic's convention (inputs at norm sqrt(d_in), unnormalized MSE) once
    the MSE is divided by the variance, so coefficients around 5 are typical.
    """
    return mean((latents.abs() * W_dec.norm(dim=1)).sum(-1)) / d_in


class _Step(torch.autograd.Function):
    """Heaviside H(pre - theta) with a rectangle-kernel straight-through gradient for theta."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - theta).abs() < eps / 2).to(pre.dtype) / eps
        return None, (-g * kernel).sum(0), None


class _JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - theta): exact gradient for pre, straight-through gradient for theta."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        gate = (pre > theta).to(pre.dtype)
        kernel = ((pre - theta).abs() < eps / 2).to(pre.dtype) / eps
        return g * gate, (-g * theta * kernel).sum(0), None


def jumprelu(pre: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return _JumpReLU.apply(pre, theta, bandwidth)


def l0_ste(pre: torch.Tensor, theta: torch.Tensor, bandwidth: float, mean: Callable = torch.mean) -> torch.Tensor:
    """Mean number of active latents per token, differentiable in theta via the STE."""
    return mean(_Step.apply(pre, theta, bandwidth).sum(-1))


def auxk(
    residual: torch.Tensor, aux_recons: torch.Tensor, var: torch.Tensor | None = None, mean: Callable = torch.mean
) -> torch.Tensor:
    """AuxK (Gao et al.): reconstruct the main residual from the top dead latents, normalized by
    the residual's variance (``var``, default total_variance(residual)); nan-safe when there is nothing to
    reconstruct."""
    var = total_variance(residual) if var is None else var
    return mean((residual - aux_recons).pow(2).sum(-1)) / var


def matryoshka(
    x: torch.Tensor,
    prefix_recons: list[torch.Tensor],
    t: float = 0.0,
    var: torch.Tensor | None = None,
    reduce: Callable = tilted,
) -> torch.Tensor:
    """Sum over nested prefixes w of the (tilted) loss of latents[:, :w] @ W_dec[:w] + b_dec (``var``: the FVU
    denominator, default total_variance(x); ``reduce(per_token, t)``: the tilted mean)."""
    var = total_variance(x) if var is None else var
    return sum(reduce(per_token_loss(x, r, var), t) for r in prefix_recons)


def orthogonality(W_dec: torch.Tensor, chunk: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """OrtSAE penalty, linear in d_sae: latents split at random into chunks of ``chunk``; within each,
    the cosine matrix of decoder rows; the mean over latents of the squared max off-diagonal |cos|."""
    d_sae = W_dec.shape[0]
    perm = torch.randperm(d_sae, generator=generator, device="cpu").to(W_dec.device)
    W = F.normalize(W_dec, dim=1)
    total = W.new_zeros(())
    for s in range(0, d_sae, chunk):
        block = W[perm[s : s + chunk]]
        if len(block) < 2:
            continue
        cos = block @ block.T
        cos = cos - torch.eye(len(block), device=cos.device, dtype=cos.dtype) * cos.diagonal()
        total = total + cos.abs().max(1).values.pow(2).sum()
    return total / d_sae
