"""Each loss term on small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from backend.sae import losses


def test_fvu_and_mse_by_hand():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0); total variance: (1 + 1) / 2 = 1 per token
    r = torch.tensor([[1.0, 1.0], [3.0, 0.0]])  # squared error 1 on token 0
    assert losses.mse(x, r).item() == pytest.approx(0.25)
    assert losses.fvu(x, r).item() == pytest.approx(0.5)  # (1 + 0) / (1 + 1)
    assert losses.per_token_loss(x, r).tolist() == pytest.approx([1.0, 0.0])


def test_tilted_loss():
    l = torch.tensor([0.0, 1.0, 2.0])
    assert losses.tilted(l, 0.0).item() == pytest.approx(1.0)
    t = 2.0
    want = (math.log(math.exp(0) + math.exp(2) + math.exp(4)) - math.log(3)) / t
    assert losses.tilted(l, t).item() == pytest.approx(want)
    assert losses.tilted(l, 1e-6).item() == pytest.approx(1.0, abs=1e-4)  # -> mean as t -> 0
    assert losses.tilted(l, 200.0).item() == pytest.approx(2.0, abs=0.01)  # -> max as t grows


def test_l1_weighted_by_decoder_norms():
    z = torch.tensor([[1.0, 2.0]])
    W = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # norms 5 and 2
    assert losses.l1(z, W, d_in=2).item() == pytest.approx((1 * 5 + 2 * 2) / 2)


def test_jumprelu_and_l0_straight_through():
    pre = torch.tensor([[0.5, 1.0, 1.52]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.5], requires_grad=True)
    z = losses.jumprelu(pre, theta, bandwidth=0.1)
    assert z[0].tolist() == pytest.approx([0.0, 0.0, 1.52])  # pre must exceed theta strictly
    z.sum().backward()
    assert pre.grad[0].tolist() == pytest.approx([0.0, 0.0, 1.0])
    # STE: only latents within bandwidth/2 of their threshold move it: -theta * (1/eps)
    assert theta.grad.tolist() == pytest.approx([0.0, -1.0 / 0.1, -1.5 / 0.1])
    theta.grad = None
    l0 = losses.l0_ste(pre, theta, 0.1)
    assert l0.item() == 1.0
    l0.backward()
    assert theta.grad.tolist() == pytest.approx([0.0, -10.0, -10.0])


def test_auxk_normalized_by_residual_variance():
    e = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # variance 1 per token
    assert losses.auxk(e, torch.zeros_like(e)).item() == pytest.approx(1.0)
    assert losses.auxk(e, e).item() == pytest.approx(0.0)


def test_matryoshka_sums_prefix_losses():
    x = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    full, half = x.clone(), torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    assert losses.matryoshka(x, [half, full]).item() == pytest.approx(0.5)


def test_orthogonality_penalty():
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    ortho = torch.eye(4)
    assert losses.orthogonality(ortho, chunk=4).item() == pytest.approx(0.0)
    assert losses.orthogonality(same, chunk=4).item() == pytest.approx(1.0)  # every row has a twin
    # chunked: cost is per chunk; with chunk 2 the twins may fall into different chunks
    g = torch.Generator().manual_seed(0)
    assert 0.0 <= losses.orthogonality(same, chunk=2, generator=g).item() <= 1.0
