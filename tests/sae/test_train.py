"""The trainer: sparse step == dense math, resume, NaN handling, array files, a real short training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from backend.config import SaeConfig, TrainConfig
from backend.sae import losses
from backend.sae.model import SaeError
from backend.sae.train import ArrayActivations, Trainer, train_sae


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
    tr = Trainer(
        SaeConfig(name="g", architecture=arch, d_sae=64, k=4, auxk_coef=0), TrainConfig(batch_size=256), 32, 10_000
    )
    tr._init_from(x)
    xs = tr._prepare(x)
    loss, _ = tr.loss_and_stats(xs)
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
    sae = train_sae(
        SaeConfig(name="s", architecture="topk", d_sae=128, k=4),
        TrainConfig(batch_size=256, lr=3e-3, tokens=60_000),
        src,
        tmp_path / "sae",
        progress=False,
    )
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
        train_sae(
            SaeConfig(name="n", architecture="topk", d_sae=64, k=4),
            TrainConfig(batch_size=128, seed=0),
            ArrayActivations(tmp_path / "x.npy"),
            tmp_path / "n",
            progress=False,
        )
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
    from backend.sae.evaluate import reconstruction_metrics
    from backend.sae.model import load_sae

    sae = load_sae(tiny_ws.sae_dir("topk"))
    x = tiny_ws.activation_source().all_acts(4000)
    m = reconstruction_metrics(sae, x)
    assert m["l0"] == pytest.approx(16.0)
    assert m["fvu"] < 0.3


def test_bf16_selection_keeps_exact_float32_values():
    """train.dtype=bfloat16: the kept latents are the float32 top k and their values are the float32 pre-activations."""
    x = _structured(512)
    tr32 = Trainer(
        SaeConfig(name="q", architecture="topk", d_sae=96, k=6, auxk_coef=0), TrainConfig(batch_size=512), 32, 10_000
    )
    tr16 = Trainer(
        SaeConfig(name="q", architecture="topk", d_sae=96, k=6, auxk_coef=0),
        TrainConfig(batch_size=512, dtype="bfloat16"),
        32,
        10_000,
    )
    tr32._init_from(x)
    tr16._init_from(x)
    xs = tr16._prepare(x)
    s = tr16.sae
    with torch.no_grad():
        x_c = xs - s.b_dec
        W_t = s.W_enc.t()
        p16 = tr16._select(tr16._pre_acts(x_c, W_t), x_c, W_t)
        p32 = tr32._select(tr32._pre_acts(x_c, W_t), x_c, W_t)
        exact = x_c @ s.W_enc + s.b_enc
    assert tr16._pre_buf.dtype == torch.bfloat16
    assert torch.allclose(p16.vals, exact[p16.rows, p16.cols], rtol=1e-5, atol=1e-5)  # float32 values, not bf16
    a = {(int(r), int(c)) for r, c in zip(p16.rows, p16.cols)}
    b = {(int(r), int(c)) for r, c in zip(p32.rows, p32.cols)}
    assert len(a ^ b) <= 0.002 * len(b)  # the k + 8 bf16 candidates contain the exact top k (ties aside)


def test_bf16_training_reaches_the_float32_fvu(tmp_path):
    np.save(tmp_path / "x.npy", _structured().numpy())
    src = ArrayActivations(tmp_path / "x.npy")
    x = torch.from_numpy(np.array(src.data[:2000]))
    fvus = {}
    for dt in ("float32", "bfloat16"):
        sae = train_sae(
            SaeConfig(name="s", architecture="topk", d_sae=128, k=4),
            TrainConfig(batch_size=256, lr=3e-3, tokens=60_000, dtype=dt),
            src,
            tmp_path / dt,
            progress=False,
        )
        fvus[dt] = losses.fvu(x, sae(x)).item()
    assert fvus["bfloat16"] < 0.25  # the same stated bound as the float32 run
    assert fvus["bfloat16"] <= fvus["float32"] * 1.05 + 0.005


def test_pair_dots_and_bucket_order():
    from backend.sae.kernels import bucket_order, pair_dots, pair_dots_torch

    g = torch.Generator().manual_seed(1)
    x, W_t, b = torch.randn(50, 24, generator=g), torch.randn(70, 24, generator=g), torch.randn(70, generator=g)
    rows, cols = torch.randint(0, 50, (300,), generator=g), torch.randint(0, 70, (300,), generator=g)
    ref = (x[rows] * W_t[cols]).sum(-1) + b[cols]
    assert torch.allclose(pair_dots(rows, cols, x, W_t, b), ref, atol=1e-5)
    assert torch.allclose(pair_dots_torch(rows, cols, x, W_t, b), ref, atol=1e-5)
    assert torch.allclose(pair_dots(rows, cols, x, W_t), ref - b[cols], atol=1e-5)
    order, offsets = bucket_order(cols, 70)
    assert torch.equal(order, torch.argsort(cols, stable=True))
    counts = torch.bincount(cols, minlength=70)
    assert torch.equal(offsets, torch.cumsum(counts, 0) - counts)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_auxk_and_matryoshka_sparse_paths_run(dtype):
    """AuxK (on dead latents, reusing the selection's pre-activations) and Matryoshka prefixes give finite grads."""
    x = _structured(256)
    tr = Trainer(
        SaeConfig(name="a", architecture="topk", d_sae=64, k=4, auxk_coef=1 / 32, matryoshka_widths=[16, 64]),
        TrainConfig(batch_size=256, dtype=dtype),
        32,
        10_000,
    )
    tr._init_from(x)
    tr.since_fired[:32] = tr.dead_after  # half the latents dead
    loss, stats = tr.loss_and_stats(tr._prepare(x))
    loss.backward()
    assert math.isfinite(stats["loss"])
    assert tr.sae.W_enc.grad is not None and torch.isfinite(tr.sae.W_enc.grad).all()
    assert tr.sae.W_enc.grad[:, :32].abs().sum() > 0  # the dead latents get a gradient (from AuxK)


@pytest.mark.parametrize(
    "arch,coef,tokens", [("relu", {"l1_coef": 5.0}, 120_000), ("jumprelu", {"l0_coef": 0.002}, 320_000)]
)
def test_target_l0_steers_the_sparsity_coefficient(tmp_path, arch, coef, tokens):
    """relu / jumprelu with target_l0 end near it from a coefficient that alone lands far away (jumprelu's
    thresholds answer slowly, so it gets more steps); the final coefficient is recorded."""
    np.save(tmp_path / "x.npy", _structured(8192).numpy())
    src = ArrayActivations(tmp_path / "x.npy")
    tcfg = TrainConfig(batch_size=256, lr=3e-3, tokens=tokens, lr_decay_frac=0.2, checkpoint_every=0)
    x = torch.from_numpy(np.array(src.data[:2000]))
    l0 = {}
    for target in (0.0, 6.0):
        cfg = SaeConfig(name="s", architecture=arch, d_sae=128, k=12, target_l0=target, **coef)
        sae = train_sae(cfg, tcfg, src, tmp_path / f"{arch}{target}", progress=False)
        l0[target] = float((sae.encode(x) > 0).sum(-1).float().mean())
    assert abs(l0[6.0] - 6.0) < 2.0, l0  # steered to within 2 of the target
    assert abs(l0[0.0] - 6.0) > 2 * abs(l0[6.0] - 6.0), l0  # and much closer than the fixed coefficient gets
    m = json.loads((tmp_path / f"{arch}6.0" / "metrics.json").read_text())
    assert m["train"]["sparsity_coef"] != pytest.approx(next(iter(coef.values())))


def test_target_l0_controller_state_is_checkpointed(tmp_path):
    cfg = SaeConfig(name="r", architecture="relu", d_sae=64, target_l0=3.0)
    tr = Trainer(cfg, TrainConfig(batch_size=256, l1_warmup_frac=0.0, lr_warmup_steps=1), 32, 20_000)
    for b in _structured(2048).split(256):
        tr.train_step(b)
    assert tr.sparsity_mult != 1.0
    tr.save_checkpoint(tmp_path / "ck")
    tr2 = Trainer(cfg, TrainConfig(batch_size=256, l1_warmup_frac=0.0, lr_warmup_steps=1), 32, 20_000)
    tr2.load_checkpoint(tmp_path / "ck")
    assert (tr2.sparsity_mult, tr2.sparsity_integral) == (tr.sparsity_mult, tr.sparsity_integral)


def test_target_l0_is_refused_for_topk():
    with pytest.raises(Exception, match="target_l0 applies to relu and jumprelu"):
        SaeConfig(name="s", architecture="topk", d_sae=64, k=4, target_l0=8)
