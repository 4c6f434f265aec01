"""load_pretrained against SAEs written by the outside packages themselves (tests/data/pretrained, made by its
make_fixtures.py with sae-lens, eai-sparsify and dictionary-learning; Gemma Scope in its published npz layout):
our encode/decode must give the package's own outputs, and every bad input one SaeError line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from backend.sae.formats import FORMATS, load_pretrained
from backend.sae.model import Sae, SaeError, SaeSpec, load_sae

FIX = Path(__file__).resolve().parents[1] / "data" / "pretrained"
PYTHIA, L3 = "EleutherAI/pythia-70m", "resid_post_layer_3"

CASES = {  # fixture: (format, our architecture, hook_name, model_name)
    "saelens_standard": ("saelens", "relu", "blocks.3.hook_resid_post", "gpt2"),
    "saelens_standard_no_b_dec_in": ("saelens", "relu", "blocks.4.hook_resid_post", "gpt2"),
    "saelens_topk": ("saelens", "topk", "blocks.5.hook_resid_post", "gpt2"),
    "saelens_jumprelu": ("saelens", "jumprelu", "blocks.6.hook_resid_post", "gpt2"),
    "saelens_v5_standard": ("saelens", "relu", "blocks.1.hook_resid_pre", "gpt2"),
    "saelens_v5_topk": ("saelens", "topk", "blocks.2.hook_resid_pre", "gpt2"),
    "saelens_v5_jumprelu": ("saelens", "jumprelu", "blocks.3.hook_resid_pre", "gpt2"),
    "sparsify_layer/layers.3": ("sparsify", "topk", "layers.3", ""),
    "dictionary_learning_standard": ("dictionary_learning", "relu", L3, PYTHIA),
    "dictionary_learning_topk": ("dictionary_learning", "topk", L3, PYTHIA),
    "dictionary_learning_batchtopk": ("dictionary_learning", "jumprelu", L3, PYTHIA),
    "dictionary_learning_matryoshka": ("dictionary_learning", "jumprelu", L3, PYTHIA),
    "dictionary_learning_jumprelu": ("dictionary_learning", "jumprelu", L3, PYTHIA),
    "gemma_scope": ("gemma_scope", "jumprelu", "", ""),
}


def expected(name: str, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    folder = (FIX / name).parent if name.startswith("sparsify_layer/") else FIX / name
    e = load_file(str(folder / "expected.safetensors"))
    return e[f"{prefix}x"], e[f"{prefix}latents"], e[f"{prefix}recons"]


def assert_reproduces(sae, x, latents, recons) -> None:
    with torch.no_grad():
        z = sae.encode(x)
        assert torch.allclose(z, latents, atol=1e-5), (z - latents).abs().max()
        assert torch.equal(z != 0, latents != 0)  # the same latents fire, not just values within tolerance
        assert torch.allclose(sae.decode(latents), recons, atol=1e-5)
        assert torch.allclose(sae(x), recons, atol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_each_package_sae_reproduces_its_own_outputs(name):
    fmt, arch, hook, model = CASES[name]
    sae, prov = load_pretrained(FIX / name)
    x, latents, recons = expected(name)
    assert (latents != 0).any(dim=1).all() and ((latents == 0).any() or arch == "relu")  # the fixture is not trivial
    assert_reproduces(sae, x, latents, recons)
    assert isinstance(sae, Sae) and not sae.training
    assert (prov["format"], prov["architecture"], prov["hook_name"], prov["model_name"]) == (fmt, arch, hook, model)
    assert (prov["d_in"], prov["d_sae"], prov["hookpoint"]) == (16, 32, None)
    assert prov["path"] == str((FIX / name).resolve()) and prov["format"] in FORMATS
    assert (sae.cfg.hook_name, sae.cfg.model_name, sae.cfg.architecture) == (hook, model, arch)
    assert json.loads(json.dumps(prov["cfg"])) == prov["cfg"] and len(json.dumps(prov)) < 4000


def test_conventions_are_folded_not_ignored():
    """The fixtures make each convention matter: read the raw tensors the naive way and the outputs differ."""
    x, latents, _ = expected("gemma_scope")
    with np.load(FIX / "gemma_scope" / "params.npz") as z:
        p = {k: torch.from_numpy(z[k]) for k in z.files}
    naive = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]  # our equation on Gemma's raw tensors
    assert not torch.allclose(naive * (naive > p["threshold"]), latents, atol=1e-3)
    sae = load_sae(FIX / "saelens_standard_no_b_dec_in")
    x, latents, _ = expected("saelens_standard_no_b_dec_in")
    w = load_file(str(FIX / "saelens_standard_no_b_dec_in" / "sae_weights.safetensors"))
    assert not torch.allclose(torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]), latents, atol=1e-3)
    assert torch.allclose(sae.encode(x), latents, atol=1e-5)  # load_sae reads outside SAELens folders the same way
    assert sae.cfg.apply_b_dec  # b_dec folded into b_enc: our pre subtracts it
    theta = load_file(str(FIX / "saelens_jumprelu" / "sae_weights.safetensors"))["threshold"]
    assert (theta < 0).any() and (load_sae(FIX / "saelens_jumprelu").threshold >= 0).all()
    ae = torch.load(FIX / "dictionary_learning_standard" / "ae.pt", weights_only=True)
    assert not torch.allclose(ae["decoder.weight"].norm(dim=0), torch.ones(32), atol=0.1)  # normalized on load
    assert torch.allclose(load_pretrained(FIX / "dictionary_learning_standard")[0].W_dec.norm(dim=1), torch.ones(32))


def test_our_own_folder_is_sae_explorer_and_keeps_its_threshold(tmp_path):
    s = Sae(SaeSpec(d_in=16, d_sae=32, architecture="jumprelu", hook_name="blocks.1.hook_resid_post", model_name="m"))
    with torch.no_grad():
        s.threshold.fill_(-0.2)  # ours is pre * (pre > t): a negative threshold is kept as saved, never clamped
        s.b_enc.normal_()
    s.save(tmp_path / "ours")
    t, prov = load_pretrained(tmp_path / "ours")
    assert (prov["format"], prov["architecture"], prov["hook_name"], prov["model_name"]) == (
        "sae_explorer",
        "jumprelu",
        "blocks.1.hook_resid_post",
        "m",
    )
    assert "saex" in prov["cfg"] and torch.allclose(t.threshold, torch.full((32,), -0.2))
    x = torch.randn(5, 16)
    assert torch.allclose(t.encode(x), s.encode(x), atol=1e-6) and (t.encode(x) < 0).any()


# ---- hookpoints and paths ----------------------------------------------------------------------------------------
def test_a_sparsify_run_folder_picks_its_hookpoint():
    for hook, k in (("layers.0", 3), ("layers.1", 6)):
        sae, prov = load_pretrained(FIX / "sparsify_run", hookpoint=hook)
        assert_reproduces(sae, *expected("sparsify_run", prefix=f"{hook}/"))
        assert (prov["format"], prov["hookpoint"], prov["hook_name"], sae.cfg.k) == ("sparsify", hook, hook, k)
        assert prov["model_name"] == PYTHIA and prov["cfg"]["run"]["hookpoints"] == ["layers.0", "layers.1"]
        assert prov["path"] == str((FIX / "sparsify_run").resolve())
        again, _ = load_pretrained(prov["path"], prov["hookpoint"])  # the provenance reads the same SAE again
        assert torch.equal(again.W_enc, sae.W_enc)
    with pytest.raises(
        SaeError, match=r"sparsify_run holds 2 SAEs, one per hookpoint: layers\.0, layers\.1; pass hookpoint="
    ):
        load_pretrained(FIX / "sparsify_run")
    with pytest.raises(SaeError, match=r"has no hookpoint 'layers\.7'; available: layers\.0, layers\.1$"):
        load_pretrained(FIX / "sparsify_run", hookpoint="layers.7")


def test_a_run_folder_with_one_layer_picks_it_and_a_layer_folder_names_itself():
    sae, prov = load_pretrained(FIX / "sparsify_layer")
    assert (prov["hookpoint"], prov["hook_name"]) == ("layers.3", "layers.3")
    assert_reproduces(sae, *expected("sparsify_layer/layers.3"))
    _, prov = load_pretrained(FIX / "sparsify_layer" / "layers.3", hookpoint="layers.3")
    assert prov["hookpoint"] == "layers.3"
    with pytest.raises(SaeError, match=r"is one SAE \(at 'blocks\.3\.hook_resid_post'\), not a folder of hookpoints"):
        load_pretrained(FIX / "saelens_standard", hookpoint="layers.5")
    assert load_pretrained(FIX / "saelens_standard", hookpoint="blocks.3.hook_resid_post")[1]["hookpoint"] == (
        "blocks.3.hook_resid_post"
    )


def test_files_are_accepted_as_paths(tmp_path):
    for f, name in (("gemma_scope/params.npz", "gemma_scope"), ("dictionary_learning_topk/ae.pt", None)):
        sae, prov = load_pretrained(FIX / f)
        assert prov["path"] == str((FIX / f).resolve())
        assert_reproduces(sae, *expected(name or "dictionary_learning_topk"))
    assert load_pretrained(FIX / "saelens_topk" / "cfg.json")[1]["format"] == "saelens"
    ckpt = tmp_path / "trainer_0" / "checkpoints"  # trainSAE's save_steps checkpoints: config.json one level up
    ckpt.mkdir(parents=True)
    shutil.copy(FIX / "dictionary_learning_topk" / "config.json", ckpt.parent)
    shutil.copy(FIX / "dictionary_learning_topk" / "ae.pt", ckpt / "ae_20.pt")
    shutil.copy(FIX / "dictionary_learning_topk" / "ae.pt", ckpt.parent)
    assert_reproduces(load_pretrained(ckpt / "ae_20.pt")[0], *expected("dictionary_learning_topk"))
    sae, prov = load_pretrained(tmp_path)  # trainSAE's save_dir: trainer_<i> folders are its hookpoints
    assert prov["hookpoint"] == "trainer_0" and prov["format"] == "dictionary_learning"


# ---- one SaeError line per bad input ----------------------------------------------------------------------------
def copy_fixture(tmp_path, name: str):
    return shutil.copytree(FIX / name, tmp_path / name)


def test_dictionary_learning_errors(tmp_path):
    with pytest.raises(
        SaeError,
        match=r"dictionary_learning class 'GatedAutoEncoder' is not supported .*; supported: AutoEncoder, "
        r"AutoEncoderTopK, BatchTopKSAE, MatryoshkaBatchTopKSAE, JumpReluAutoEncoder$",
    ):
        load_pretrained(FIX / "dictionary_learning_gated")
    d = copy_fixture(tmp_path, "dictionary_learning_topk")
    w = torch.load(d / "ae.pt", weights_only=True)
    torch.save({k: v for k, v in w.items() if k != "b_dec"}, d / "ae.pt")
    with pytest.raises(
        SaeError, match=r"ae\.pt: AutoEncoderTopK's state dict holds exactly .* lacks \['b_dec'\] and has extra \[\]"
    ):
        load_pretrained(d)
    torch.save({**w, "decoder.weight": w["decoder.weight"][:, :30]}, d / "ae.pt")
    with pytest.raises(SaeError, match=r"decoder\.weight has shape \[16, 30\] but needs \[16, 32\] \(d_in, d_sae\)"):
        load_pretrained(d)
    torch.save(w, d / "ae.pt")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({"trainer": {**cfg["trainer"], "dict_size": 64}}))
    with pytest.raises(SaeError, match=r"says activation_dim=16, dict_size=64 but ae\.pt has d_in=16, d_sae=32"):
        load_pretrained(d)
    (d / "config.json").unlink()
    with pytest.raises(SaeError, match=r"ae\.pt has no config\.json next to it"):
        load_pretrained(d)


ran: list[str] = []


def _payload() -> dict:
    ran.append("unpickled")
    return {}


class Payload:
    """Pickles to a call of _payload: if anything unpickled it, ``ran`` would say so."""

    def __reduce__(self):
        return (_payload, ())


def test_pickle_bearing_files_are_refused_without_running_them(tmp_path):
    d = copy_fixture(tmp_path, "dictionary_learning_topk")
    torch.save({**torch.load(d / "ae.pt", weights_only=True), "extra": Payload()}, d / "ae.pt")
    with pytest.raises(
        SaeError,
        match=r"ae\.pt holds pickled Python objects \(tests\.sae\.test_pretrained_formats\._payload\), .*weights_only",
    ):
        load_pretrained(d)
    (d / "ae.pt").write_bytes(b"not a torch file")
    with pytest.raises(SaeError, match=r"ae\.pt is not a readable torch file"):
        load_pretrained(d)
    g = copy_fixture(tmp_path, "gemma_scope")
    with np.load(g / "params.npz") as z:
        p = dict(z)
    np.savez(g / "params.npz", **{**p, "W_enc": np.array([Payload()], dtype=object)})
    with pytest.raises(
        SaeError, match=r"params\.npz holds object arrays, which are not unpickled \(allow_pickle=False\)"
    ):
        load_pretrained(g)
    assert ran == []


def test_gemma_scope_errors(tmp_path):
    g = copy_fixture(tmp_path, "gemma_scope")
    with np.load(g / "params.npz") as z:
        p = dict(z)
    np.savez(g / "params.npz", **{k: v for k, v in p.items() if k != "threshold"})
    with pytest.raises(SaeError, match=r"params\.npz: Gemma Scope params lack \['threshold'\]"):
        load_pretrained(g)
    np.savez(g / "params.npz", **{**p, "W_dec": p["W_dec"].T})
    with pytest.raises(
        SaeError, match=r"W_dec has shape \[16, 32\] but needs \[32, 16\] \(d_sae, d_in\) to fit W_enc \[16, 32\]"
    ):
        load_pretrained(g / "params.npz")
    np.savez(g / "params.npz", **{**p, "b_enc": np.full(32, np.nan, np.float32)})
    with pytest.raises(SaeError, match=r"\['b_enc'\] hold NaN or inf values"):
        load_pretrained(g)
    (g / "params.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SaeError, match=r"params\.npz is not a readable \.npz file \(File is not a zip file\)"):
        load_pretrained(g)
    (g / "params.npz").write_bytes(b"not numpy at all")
    with pytest.raises(SaeError, match=r"params\.npz is a pickle, not an \.npz archive, and is not unpickled"):
        load_pretrained(g)
    np.save(g / "one.npy", p["W_enc"])
    (g / "one.npy").rename(g / "params.npz")
    with pytest.raises(SaeError, match=r"params\.npz holds one array, not an \.npz archive of W_enc, b_enc"):
        load_pretrained(g)


def test_unrecognised_paths(tmp_path):
    with pytest.raises(SaeError, match=r"does not exist: give the folder"):
        load_pretrained(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(
        SaeError,
        match=r"is not a recognised pretrained SAE: looked for cfg\.json \+ sae_weights\.safetensors .*params\.npz",
    ):
        load_pretrained(tmp_path)
    with pytest.raises(SaeError, match=r"notes\.txt is not a pretrained SAE file"):
        load_pretrained(tmp_path / "notes.txt")
    s = copy_fixture(tmp_path, "saelens_standard")
    w = load_file(str(s / "sae_weights.safetensors"))
    save_file({**w, "W_dec": w["W_dec"][:, :8].contiguous()}, str(s / "sae_weights.safetensors"))
    with pytest.raises(SaeError, match=r"W_dec has shape \[32, 8\] but needs \[32, 16\] \(d_sae, d_in\)"):
        load_pretrained(s)
    v5 = copy_fixture(tmp_path, "saelens_v5_standard")
    (v5 / "cfg.json").write_text(
        json.dumps({**json.loads((v5 / "cfg.json").read_text()), "activation_fn_str": "tanh-relu"})
    )
    with pytest.raises(SaeError, match=r"activation_fn_str 'tanh-relu' is not supported; known: relu, topk"):
        load_pretrained(v5)  # SAELens 5 applies it whatever the architecture says: never read as a plain relu


def test_sparsify_options(tmp_path):
    l3 = copy_fixture(tmp_path, "sparsify_layer") / "layers.3"
    cfg = json.loads((l3 / "cfg.json").read_text())
    (l3 / "cfg.json").write_text(json.dumps({**cfg, "multi_topk": True}))  # a training loss; inference keeps top k
    assert_reproduces(load_pretrained(l3.parent)[0], *expected("sparsify_layer/layers.3"))
    (l3 / "cfg.json").write_text(json.dumps({**cfg, "activation": "groupmax"}))
    with pytest.raises(SaeError, match=r"only sparsify TopK SAEs load .* activation 'groupmax'"):
        load_pretrained(l3.parent)
    (l3 / "cfg.json").write_text(json.dumps({**cfg, "transcode": True}))
    with pytest.raises(SaeError, match=r"only sparsify TopK SAEs load .* activation 'topk', transcode$"):
        load_pretrained(l3)
    (l3 / "cfg.json").write_text(json.dumps({**cfg, "d_in": 24}))
    with pytest.raises(SaeError, match=r"cfg\.json d_in=24 but sae\.safetensors has d_in=16"):
        load_pretrained(l3)
