"""On-disk formats: our SAELens layout round trips; folders written with SAELens' and sparsify's own conventions load.

The hand-made folders copy the keys SAELens 6.54 writes (`SAE.save_model`: cfg.to_dict() with "architecture",
hooks under "metadata", "k" and "rescale_acts_by_decoder_norm" for topk, a "threshold" tensor for jumprelu), the
pre-6.0 keys it still reads ("activation_fn_str", "activation_fn_kwargs", "hook_point"), and sparsify's
`save_to_disk` (cfg.json = SparseCoderConfig + d_in; sae.safetensors with encoder.weight/bias, W_dec, b_dec).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from backend.sae.model import Sae, SaeError, SaeSpec, load_sae

D_IN, D_SAE = 6, 12
META6 = {
    "sae_lens_version": "6.54.12",
    "sae_lens_training_version": "6.54.12",
    "model_name": "gpt2",
    "hook_name": "blocks.3.hook_resid_post",
    "hook_head_index": None,
    "prepend_bos": True,
}


@pytest.fixture()
def weights():
    g = torch.Generator().manual_seed(0)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g) * 0.3,
        "b_dec": torch.randn(D_IN, generator=g),
    }


def _folder(path, cfg: dict, tensors: dict, name: str = "sae_weights.safetensors"):
    path.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / name))
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def _pre(w, x):
    return (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]


def _v6(arch: str, **extra) -> dict:
    return {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": META6,
        **extra,
        "architecture": arch,
    }


X = torch.randn(9, D_IN, generator=torch.Generator().manual_seed(1))


def test_saelens_v6_standard_topk_jumprelu(tmp_path, weights):
    pre = _pre(weights, X)
    s = load_sae(_folder(tmp_path / "std", _v6("standard"), weights))
    assert s.cfg.architecture == "relu" and s.cfg.hook_name == "blocks.3.hook_resid_post" and s.cfg.model_name == "gpt2"
    assert torch.allclose(s.encode(X), torch.relu(pre), atol=1e-5)
    assert torch.allclose(s(X), torch.relu(pre) @ weights["W_dec"] + weights["b_dec"], atol=1e-5)

    s = load_sae(_folder(tmp_path / "topk", _v6("topk", k=3, rescale_acts_by_decoder_norm=False), weights))
    v, i = pre.topk(3, -1)
    assert s.cfg.k == 3 and torch.allclose(s.encode(X), torch.zeros_like(pre).scatter(-1, i, v.relu()), atol=1e-5)

    theta = torch.rand(D_SAE, generator=torch.Generator().manual_seed(2)) * 0.5
    s = load_sae(_folder(tmp_path / "jr", _v6("jumprelu"), {**weights, "threshold": theta}))
    assert torch.allclose(s.encode(X), torch.relu(pre) * (pre > theta), atol=1e-5)


def test_saelens_topk_rescaled_by_decoder_norm_is_folded(tmp_path, weights):
    """rescale_acts_by_decoder_norm: latents = topk(pre * ||W_dec_i||), decode(z / ||W_dec_i||)."""
    s = load_sae(_folder(tmp_path / "t", _v6("topk", k=3, rescale_acts_by_decoder_norm=True), weights))
    n = weights["W_dec"].norm(dim=1)
    pre = _pre(weights, X) * n
    v, i = pre.topk(3, -1)
    z = torch.zeros_like(pre).scatter(-1, i, v.relu())
    assert torch.allclose(s.encode(X), z, atol=1e-5)
    assert torch.allclose(s(X), (z / n) @ weights["W_dec"] + weights["b_dec"], atol=1e-5)
    assert torch.allclose(s.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5)


def test_saelens_pre_6_keys_and_bfloat16_weights(tmp_path, weights):
    v5 = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "context_size": 128,
        "model_name": "gpt2-small",
        "hook_point": "blocks.5.hook_resid_pre",
        "hook_layer": 5,
        "hook_head_index": None,
        "prepend_bos": True,
        "dataset_path": "x",
        "normalize_activations": "none",
        "dtype": "bfloat16",
        "device": "cpu",
        "sae_lens_training_version": "3.0.0",
    }
    s = load_sae(_folder(tmp_path / "v5", v5, {k: v.bfloat16() for k, v in weights.items()}))
    assert (s.cfg.architecture, s.cfg.k, s.cfg.hook_name) == ("topk", 4, "blocks.5.hook_resid_pre")
    assert s.W_enc.dtype == torch.float32
    w16 = {k: v.bfloat16().float() for k, v in weights.items()}
    v, i = _pre(w16, X).topk(4, -1)
    assert torch.allclose(s.encode(X), torch.zeros(9, D_SAE).scatter(-1, i, v.relu()), atol=1e-4)
    relu5 = {k: v for k, v in v5.items() if k not in ("activation_fn_str", "activation_fn_kwargs", "architecture")}
    s = load_sae(
        _folder(
            tmp_path / "v5relu",
            {**relu5, "activation_fn_str": "relu", "dtype": "float32"},
            {**weights, "scaling_factor": torch.full((D_SAE,), 2.0)},
        )
    )
    assert s.cfg.architecture == "relu"  # finetuning scaling factor folded into W_dec
    assert torch.allclose(s(X), (torch.relu(_pre(weights, X)) * 2) @ weights["W_dec"] + weights["b_dec"], atol=1e-4)


def test_sparsify_layout(tmp_path, weights):
    cfg = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": 3,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
    }
    tensors = {
        "encoder.weight": weights["W_enc"].T,
        "encoder.bias": weights["b_enc"],
        "W_dec": weights["W_dec"],
        "b_dec": weights["b_dec"],
    }
    s = load_sae(_folder(tmp_path / "layers.3", cfg, tensors, "sae.safetensors"))
    pre = _pre(weights, X)
    v, i = torch.relu(pre).topk(3, -1)
    assert s.cfg.k == 3 and torch.allclose(s.encode(X), torch.zeros_like(pre).scatter(-1, i, v), atol=1e-5)
    with pytest.raises(SaeError, match="only sparsify TopK"):
        load_sae(_folder(tmp_path / "tc", {**cfg, "transcode": True}, tensors, "sae.safetensors"))


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu", "batchtopk"])
def test_our_layout_round_trips(tmp_path, arch):
    s = Sae(
        SaeSpec(
            d_in=8,
            d_sae=32,
            architecture=arch,
            k=4,
            hook_name="blocks.3.hook_resid_post",
            model_name="m",
            meta={"name": "x"},
        ),
        seed=2,
    )
    with torch.no_grad():
        s.threshold.fill_(0.3)
        s.b_dec.normal_()
    s.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "batchtopk": "jumprelu"}.get(arch, arch)
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert cfg["normalize_activations"] == "none" and cfg["saex"] == {"trained_as": arch, "name": "x"}
    assert cfg.get("k") == (4 if arch == "topk" else None)
    t = load_sae(tmp_path / "s")
    x = torch.randn(6, 8)
    assert torch.allclose(t.encode(x), s.encode(x), atol=1e-6)
    s.save(tmp_path / "s")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp folders left behind


def test_bad_folders_are_one_clear_error(tmp_path, weights):
    with pytest.raises(SaeError, match="not an SAE folder"):
        load_sae(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cfg.json").write_text("{not json")
    with pytest.raises(SaeError, match=r"bad/cfg.json is not valid JSON"):
        load_sae(bad)
    with pytest.raises(SaeError, match="unknown architecture 'gated'; known: .*jumprelu.*standard.*topk"):
        load_sae(_folder(tmp_path / "gated", _v6("gated"), weights))
    with pytest.raises(SaeError, match="k=40 must be between 1 and d_sae=12"):
        load_sae(_folder(tmp_path / "bigk", _v6("topk", k=40), weights))
    with pytest.raises(SaeError, match="cfg.json d_sae=99 but the weights have 12"):
        load_sae(_folder(tmp_path / "shape", {**_v6("standard"), "d_sae": 99}, weights))
    with pytest.raises(SaeError, match="lack \\['b_dec'\\]"):
        load_sae(_folder(tmp_path / "missing", _v6("standard"), {k: v for k, v in weights.items() if k != "b_dec"}))
    with pytest.raises(SaeError, match="normalize_activations 'layer_norm' is not supported"):
        load_sae(_folder(tmp_path / "ln", {**_v6("standard"), "normalize_activations": "layer_norm"}, weights))
    with pytest.raises(SaeError, match="needs a 'threshold' tensor"):
        load_sae(_folder(tmp_path / "jr", _v6("jumprelu"), weights))
    trunc = _folder(tmp_path / "trunc", _v6("standard"), weights)
    (trunc / "sae_weights.safetensors").write_bytes((trunc / "sae_weights.safetensors").read_bytes()[:50])
    with pytest.raises(SaeError, match="not a readable safetensors file"):
        load_sae(trunc)
    (trunc / "sae_weights.safetensors").unlink()
    with pytest.raises(SaeError, match="sae_weights.safetensors is missing"):
        load_sae(trunc)
