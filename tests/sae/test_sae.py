"""The Sae module: encoders by hand, forward == decode(encode), formats, boosting, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from backend.sae.boost import BoostedSae
from backend.sae.model import Sae, SaeError, SaeSpec, check_site, load_sae


def _sae(arch: str, k: int = 2) -> Sae:
    s = Sae(SaeSpec(d_in=2, d_sae=3, architecture=arch, k=k))
    with torch.no_grad():
        s.W_enc.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]))
        s.b_enc.copy_(torch.tensor([0.0, -0.5, 0.1]))
        s.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
        s.b_dec.copy_(torch.tensor([0.0, 0.0]))
        s.threshold.copy_(torch.tensor([0.5, 0.5, 3.0]))
    return s


X = torch.tensor([[1.0, 2.0]])  # pre = [1, 2 - 0.5, 2 - 2 + 0.1] = [1.0, 1.5, 0.1]


def test_encoders_by_hand():
    assert _sae("relu").encode(X)[0].tolist() == pytest.approx([1.0, 1.5, 0.1])
    assert _sae("topk", k=2).encode(X)[0].tolist() == pytest.approx([1.0, 1.5, 0.0])
    assert _sae("jumprelu").encode(X)[0].tolist() == pytest.approx([1.0, 1.5, 0.0])  # 0.1 < theta 3
    s = _sae("relu")
    assert s.decode(torch.zeros(1, 3)).tolist() == s.b_dec[None].tolist()  # decode adds b_dec


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "batchtopk"])
def test_forward_is_decode_of_encode(arch):
    s = Sae(SaeSpec(d_in=8, d_sae=32, architecture=arch, k=4), seed=1)
    x = torch.randn(5, 8)
    assert torch.allclose(s(x), s.decode(s.encode(x)))


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "batchtopk"])
def test_saelens_round_trip(tmp_path, arch):
    s = Sae(
        SaeSpec(d_in=8, d_sae=32, architecture=arch, k=4, hook_name="blocks.3.hook_resid_post", model_name="m"), seed=2
    )
    with torch.no_grad():
        s.threshold.fill_(0.3)
    s.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "batchtopk": "jumprelu"}.get(arch, arch)
    assert cfg["hook_name"] == "blocks.3.hook_resid_post" and cfg["metadata"]["hook_layer"] == 3
    t = load_sae(tmp_path / "s")
    x = torch.randn(6, 8)
    assert torch.allclose(t.encode(x), s.encode(x), atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_batchtopk_exported_as_jumprelu_gives_the_same_latents():
    """A BatchTopK SAE keeps the top k*N pre-activations of a batch; at inference it is a JumpReLU whose single
    threshold is the smallest kept value. On a batch whose k*N-th value is that threshold, both agree."""
    torch.manual_seed(0)
    s = Sae(SaeSpec(d_in=8, d_sae=32, architecture="batchtopk", k=4), seed=3)
    x = torch.randn(16, 8)
    pre = torch.relu(s.pre_acts(x))
    vals, flat = pre.reshape(-1).topk(4 * 16)
    batch = torch.zeros_like(pre).reshape(-1).scatter_(0, flat, vals).reshape(pre.shape)
    theta = (vals[-1] + pre.reshape(-1).topk(4 * 16 + 1).values[-1]) / 2  # between kept and first dropped
    with torch.no_grad():
        s.threshold.fill_(float(theta))
    assert torch.equal(s.encode(x), batch)


def test_loads_saelens_v5_and_sparsify_layouts(tmp_path):
    d_in, d_sae = 6, 12
    W_enc, W_dec = torch.randn(d_in, d_sae), torch.randn(d_sae, d_in)
    b_enc, b_dec = torch.randn(d_sae), torch.randn(d_in)
    v5 = tmp_path / "v5"
    v5.mkdir()
    save_file({"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec}, str(v5 / "sae_weights.safetensors"))
    (v5 / "cfg.json").write_text(
        json.dumps(
            {
                "d_in": d_in,
                "d_sae": d_sae,
                "activation_fn_str": "topk",
                "activation_fn_kwargs": {"k": 3},
                "hook_name": "blocks.1.hook_resid_post",
                "model_name": "gpt2",
                "apply_b_dec_to_input": True,
            }
        )
    )
    s = load_sae(v5)
    assert (s.cfg.architecture, s.cfg.k, s.cfg.hook_name) == ("topk", 3, "blocks.1.hook_resid_post")
    x = torch.randn(4, d_in)
    pre = torch.relu((x - b_dec) @ W_enc + b_enc)
    v, i = pre.topk(3, -1)
    assert torch.allclose(s.encode(x), torch.zeros_like(pre).scatter(-1, i, v), atol=1e-5)
    sp = tmp_path / "sparsify"
    sp.mkdir()
    save_file(
        {"encoder.weight": W_enc.T.contiguous(), "encoder.bias": b_enc, "W_dec": W_dec, "b_dec": b_dec},
        str(sp / "sae.safetensors"),
    )
    (sp / "cfg.json").write_text(
        json.dumps({"expansion_factor": 2, "normalize_decoder": True, "num_latents": 0, "k": 3})
    )
    assert torch.allclose(load_sae(sp).encode(x), s.encode(x), atol=1e-5)


def test_boosted_composite_reconstructs_base_plus_residual(tmp_path):
    base = Sae(SaeSpec(d_in=8, d_sae=16, architecture="topk", k=3), seed=4)
    resid = Sae(
        SaeSpec(d_in=8, d_sae=8, architecture="topk", k=2, apply_b_dec=False, meta={"boost_base": "../base"}), seed=5
    )
    both = BoostedSae(base, resid)
    x = torch.randn(5, 8)
    want = base(x) + resid(x - base(x))
    assert torch.allclose(both(x), want, atol=1e-5)
    assert torch.allclose(both.decode(both.encode(x)), want, atol=1e-5)
    assert both.W_dec.shape == (24, 8)
    base.save(tmp_path / "base")
    resid.save(tmp_path / "boost")
    loaded = load_sae(tmp_path / "boost")
    assert isinstance(loaded, BoostedSae) and torch.allclose(loaded(x), want, atol=1e-5)


def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(SaeError, match="k=40 must be between 1 and d_sae=32"):
        SaeSpec(d_in=8, d_sae=32, architecture="topk", k=40)
    with pytest.raises(SaeError, match="unknown SAE architecture 'gated'"):
        SaeSpec(d_in=8, d_sae=32, architecture="gated")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cfg.json").write_text("{not json")
    with pytest.raises(SaeError, match="not valid JSON"):
        load_sae(tmp_path / "bad")
    s = Sae(SaeSpec(d_in=8, d_sae=32))
    s.save(tmp_path / "odd")
    cfg = json.loads((tmp_path / "odd" / "cfg.json").read_text())
    (tmp_path / "odd" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(SaeError, match="unknown architecture 'gated'"):
        load_sae(tmp_path / "odd")
    with pytest.raises(SaeError, match="SAE expects d_in=8 but blocks.6.hook_resid_post has d=576"):
        check_site(s, 576, "blocks.6.hook_resid_post")
    from backend.config import ConfigError, SaeConfig

    with pytest.raises(ConfigError, match="l1_coef must be >= 0"):
        SaeConfig(name="x", architecture="relu", l1_coef=-1)
