"""The trainer: sparse step == dense math, resume, NaN handling, array files, a real short training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend import losses
from backend.config import SaeConfig, TrainConfig
from backend.sae import SaeError
from backend.train import ArrayActivations, Trainer, train_sae


def _structured(n=6000, d=32, n_feat=96, active=3, seed=0):
    """Sparse combinations of random unit directions: an SAE can recover them."""
    g = torch.Generator().manual_seed(seed)
    D = torch.nn.functional.normalize(torch.randn(n_feat, d, generator=g), dim=1)
    idx = torch.randint(0, n_feat, (n, active), generator=g)
    coef = torch.rand(n, active, generator=g) * 3 + 0.5
    return (coef[..., None] * D[idx]).sum(1) + 0.5


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_step_matches_dense_gradients(arch):
    x = _structured(256)
    tr = Trainer(SaeConfig(name="g", architecture=arch, d_sae=64, k=4, auxk_coef=0), TrainConfig(batch_size=256), 32, 10_000)
    tr._init_from(x)
    xs = tr._prepare(x)
    loss, _ = tr.losses(xs)
    loss.backward()
    sparse = {n: p.grad.clone() for n, p in tr.sae.named_parameters() if p.grad is not None}
    # dense reference: same selection, plain autograd
    s = tr.sae
    for p in s.parameters():
        p.grad = None
    pre = (xs - s.b_dec.detach()) @ s.W_enc + s.b_enc
    act = torch.relu(pre)
    if arch == "topk":
        v, i = act.topk(4, -1)
        mask = torch.zeros_like(act).scatter(-1, i, 1.0)
    else:
        v, flat = act.reshape(-1).topk(4 * len(xs))
        mask = torch.zeros(act.numel()).scatter(0, flat, 1.0).reshape(act.shape)
    z = act * mask
    dense = losses.per_token_loss(xs, z @ s.W_dec + s.b_dec).mean()
    dense.backward()
    assert loss.item() == pytest.approx(dense.item(), rel=1e-5)
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.allclose(sparse[n], getattr(s, n).grad, atol=1e-5), n


def test_training_recovers_structured_data(tmp_path):
    np.save(tmp_path / "x.npy", _structured().numpy())
    src = ArrayActivations(tmp_path / "x.npy")
    sae = train_sae(SaeConfig(name="s", architecture="topk", d_sae=128, k=4), TrainConfig(batch_size=256, lr=3e-3, tokens=60_000),
                    src, tmp_path / "sae", progress=False)
    x = torch.from_numpy(np.array(src.data[:2000]))
    fvu = losses.fvu(x, sae(x)).item()
    assert fvu < 0.25  # stated bound (the mean predictor has FVU 1): 3-sparse data from 96 directions, k=4
    assert (sae.W_dec.norm(dim=1) - 1).abs().max() < 1e-4  # unit decoder rows after folding the input scale


def test_checkpoint_resume_continues_the_step_count(tmp_path):
    np.save(tmp_path / "x.npy", _structured(2048).numpy())
    src = ArrayActivations(tmp_path / "x.npy")
    cfg, out = SaeConfig(name="r", architecture="topk", d_sae=64, k=4), tmp_path / "r"
    tr = Trainer(cfg, TrainConfig(batch_size=256), 32, 4096)
    batches = list(src.batches(256, 0))
    for b in batches[:3]:
        tr.train_step(b)
    ckpt = out.with_name(".r.checkpoint")
    tr.save_checkpoint(ckpt)
    tr2 = Trainer(cfg, TrainConfig(batch_size=256), 32, 4096)
    tr2.load_checkpoint(ckpt)
    assert (tr2.step, tr2.tokens, tr2.scale) == (3, 768, tr.scale)
    a, b = tr.train_step(batches[3]), tr2.train_step(batches[3])
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)  # optimizer state restored too
    sae = train_sae(cfg, TrainConfig(batch_size=256, tokens=2048), src, out, progress=False)
    assert sae is not None and not ckpt.exists()


def test_nan_activations_stop_with_the_last_good_state_kept(tmp_path):
    x = _structured(1024).numpy()
    x[700] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(SaeError, match="non-finite activations.*last good state"):
        train_sae(SaeConfig(name="n", architecture="topk", d_sae=64, k=4), TrainConfig(batch_size=128, seed=0),
                  ArrayActivations(tmp_path / "x.npy"), tmp_path / "n", progress=False)
    assert (tmp_path / ".n.checkpoint" / "state.safetensors").exists()
    assert not (tmp_path / "n").exists()


def test_array_file_errors(tmp_path):
    with pytest.raises(SaeError, match="does not exist"):
        ArrayActivations(tmp_path / "none.npy")
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4)))
    with pytest.raises(SaeError, match="expected \\(N, d\\)"):
        ArrayActivations(tmp_path / "bad.npy")


def test_real_smollm2_activations_train_to_a_stated_fvu(tiny_ws):
    """The tiny workspace's TopK SAE (1,152 latents, k=16, 64k tokens) on real SmolLM2 block-6 activations."""
    from backend.evaluate import reconstruction_metrics
    from backend.sae import load_sae

    sae = load_sae(tiny_ws.sae_dir("topk"))
    x = tiny_ws.activation_source().all_acts(4000)
    m = reconstruction_metrics(sae, x)
    assert m["l0"] == pytest.approx(16.0)
    assert m["fvu"] < 0.3
