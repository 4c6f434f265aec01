"""Evaluation metrics on hand-computed cases and on the real model with SAEs whose effect is known exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from backend.sae.evaluate import ce_metrics, decoder_max_cos, reconstruction_metrics
from backend.sae.model import Sae, SaeSpec

SITE = "blocks.6.hook_resid_post"


def test_reconstruction_metrics_by_hand():
    s = Sae(SaeSpec(d_in=2, d_sae=2, architecture="relu"))
    with torch.no_grad():
        s.W_enc.copy_(torch.eye(2))
        s.W_dec.copy_(torch.eye(2))
        s.b_enc.zero_()
        s.b_dec.zero_()
    x = torch.tensor([[1.0, -1.0], [3.0, 1.0]])  # recons = relu(x): error 1 on token 0; variance 1+1+1+1 = 4
    m = reconstruction_metrics(s, x, widths=[1])
    assert m["fvu"] == pytest.approx(0.25) and m["explained_variance"] == pytest.approx(0.75)
    assert m["mse"] == pytest.approx(1 / 4) and m["l0"] == pytest.approx(1.5)
    assert m["cosine"] == pytest.approx((1 / 2**0.5 + 1) / 2)
    assert m["dead_frac"] == 0 and m["dense_frac"] == 1.0  # latent 0 fires on 2/2 tokens, latent 1 on 1/2
    assert list(m["matryoshka_fvu"].values())[0] == pytest.approx(2 / 4)  # latent 0 alone: error 1 on each token


def test_decoder_max_cos_is_chunked_brute_force():
    W = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    Wn = torch.nn.functional.normalize(W, dim=1)
    c = (Wn @ Wn.T).abs().fill_diagonal_(0)
    assert np.allclose(decoder_max_cos(W, chunk=7), c.max(1).values.numpy(), atol=1e-6)


def test_decoder_max_cos_to_another_sae_is_signed_and_keeps_identical_rows():
    g = torch.Generator().manual_seed(1)
    W, R = torch.randn(50, 8, generator=g), torch.randn(30, 8, generator=g)
    c = torch.nn.functional.normalize(W, dim=1) @ torch.nn.functional.normalize(R, dim=1).T
    assert np.allclose(decoder_max_cos(W, R, chunk=7), c.max(1).values.numpy(), atol=1e-6)
    assert np.allclose(decoder_max_cos(W, W), 1.0, atol=1e-6)  # a row of the other SAE may be the same row


def test_write_metrics_merges_and_evaluation_does_not_import_the_trainer(tmp_path):
    import ast
    from pathlib import Path

    from backend.sae import evaluate
    from backend.sae.model import write_metrics

    assert write_metrics(tmp_path, {"train": {"steps": 3}}) == {"train": {"steps": 3}}
    assert write_metrics(tmp_path, {"fvu": 0.5}) == {"train": {"steps": 3}, "fvu": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary left
    tree = ast.parse(Path(evaluate.__file__).read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "backend.sae.train" not in modules


def _identity_sae(d: int) -> Sae:
    """relu(x) - relu(-x) == x: a 2d-latent ReLU SAE that reconstructs every input exactly."""
    s = Sae(SaeSpec(d_in=d, d_sae=2 * d, architecture="relu"))
    with torch.no_grad():
        s.W_enc.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 1))
        s.W_dec.copy_(torch.cat([torch.eye(d), -torch.eye(d)], 0))
        s.b_enc.zero_()
        s.b_dec.zero_()
    return s


def test_spliced_ce_recovered_and_kl_on_the_real_model(smollm2):
    texts = {
        "general": "The capital of France is Paris, a city on the Seine with many museums.",
        "code": "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0.0",
    }
    windows = pd.DataFrame({"token_ids": [smollm2.encode_ids(t) for t in texts.values()], "domain": list(texts)})
    perfect = ce_metrics(smollm2, _identity_sae(smollm2.d_model), SITE, windows)
    assert perfect["ce_recovered"] == pytest.approx(1.0, abs=2e-3) and perfect["kl"] == pytest.approx(0.0, abs=2e-3)
    assert perfect["ce_zero"] > perfect["ce_clean"] + 1  # ablating the residual stream wrecks the model
    assert set(perfect["ppl_by_domain"]) == {"general", "code"}
    zero = Sae(SaeSpec(d_in=smollm2.d_model, d_sae=8, architecture="relu"))
    with torch.no_grad():  # encodes nothing, decodes to 0: exactly the zero-ablation
        for p in zero.parameters():
            p.zero_()
    none = ce_metrics(smollm2, zero, SITE, windows)
    assert none["ce_recovered"] == pytest.approx(0.0, abs=2e-3) and none["ce_sae"] == pytest.approx(
        none["ce_zero"], rel=1e-3
    )


def test_heldout_tokens_come_from_windows_the_cache_never_saw(tiny_ws, tmp_path, monkeypatch):
    """Reconstruction metrics are measured on normal tokens of uncached windows, captured once and kept."""
    import shutil

    import numpy as np
    from safetensors import safe_open

    from backend.sae.evaluate import heldout_tokens
    from backend.workspace import open_workspace

    src = tiny_ws.path
    for part in ("corpora", "activations"):
        shutil.copytree(src / part, tmp_path / part)
    shutil.copy2(src / "workspace.yaml", tmp_path / "workspace.yaml")
    ws = open_workspace(tmp_path)
    cache = ws.activation_source()
    cached = set()
    for p in cache.shards:
        with safe_open(str(p), "np") as f:
            cached.update(np.unique(f.get_tensor("window")).tolist())
    x, tok, win = heldout_tokens(ws, 1500)
    assert x.shape == (1500, cache.d_in) and len(tok) == len(win) == 1500
    assert not set(win.tolist()) & cached  # no held-out token comes from a training window
    assert bool((x.norm(dim=1) <= cache.exclusion.threshold).all())  # the cache's sink rule applies
    w = ws.windows()
    for j in np.unique(win.numpy())[:5]:  # token ids are the windows' own (BOS is never kept)
        assert set(tok[win == j].tolist()) <= set(w["token_ids"].iat[int(j)])
    monkeypatch.setattr(type(ws), "adapter", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    x2, tok2, win2 = heldout_tokens(open_workspace(tmp_path), 1500)  # read back from the file, no model
    assert torch.equal(x2, x) and torch.equal(tok2, tok) and torch.equal(win2, win)
