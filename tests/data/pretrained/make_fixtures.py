"""Write the pretrained-SAE fixtures of tests/sae/test_pretrained_formats.py with the outside packages' own code.

Each fixture folder holds a tiny SAE (d_in 16, d_sae 32, seeded weights, non-zero biases and thresholds so that
every convention matters) saved by the package's own save function, and ``expected.safetensors``: a fixed input
``x`` (8, 16), the package's ``latents`` = encode(x) and ``recons`` = decode(latents), computed by the package's
own code on the SAE re-loaded from the saved files by the package's own loader.

    saelens_*              sae_lens.SAE.save_model; expected from SAE.load_from_disk(...).encode / decode
    sparsify_layer/, sparsify_run/   SparseCoder.save_to_disk (sparsify_run: two hookpoints and the run's
                           config.json, written by RunConfig.save_json as sparsify's trainer does; no optimizer
                           state); expected from SparseCoder.load_from_disk(...).encode / decode, latents scattered
                           dense; sparsify_run's keys are prefixed "<hookpoint>/"
    dictionary_learning_*  trained a few steps on random data by dictionary_learning.training.trainSAE (which
                           writes config.json and ae.pt); then the biases/thresholds are perturbed and ae.pt
                           re-saved the way trainSAE saves it (a state dict of CPU tensors); expected from
                           <Class>.from_pretrained(ae.pt) (AutoEncoder's default normalize_decoder=True included)
    gemma_scope/           no package: params.npz written with numpy in the published layout (W_enc (d_in, d_sae),
                           W_dec (d_sae, d_in), b_enc, b_dec, threshold); expected from the published reference
                           JumpReLU in numpy: pre = x @ W_enc + b_enc; latents = relu(pre) * (pre > threshold)

Run it in a throwaway venv, never the project's (the packages pull in transformer-lens, nnsight, wandb ...):

    python -m venv /tmp/fixvenv
    /tmp/fixvenv/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    /tmp/fixvenv/bin/pip install sae-lens==6.54.12 eai-sparsify==1.3.3 dictionary-learning==0.1.0 torch==2.13.0
    /tmp/fixvenv/bin/pip uninstall -y torchvision   # the PyPI build does not match torch+cpu and breaks transformers
    /tmp/fixvenv/bin/python tests/data/pretrained/make_fixtures.py

SAELens 5 writes a different cfg.json (activation_fn_str, hook_name at the top level); its folders (saelens_v5_*)
come from a second venv, where this script writes only those:

    python -m venv /tmp/fixvenv5
    /tmp/fixvenv5/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    /tmp/fixvenv5/bin/pip install sae-lens==5.11.0 torch==2.13.0 "pyarrow<20"  # 5.x pins numpy<2
    /tmp/fixvenv5/bin/pip uninstall -y torchvision
    /tmp/fixvenv5/bin/python tests/data/pretrained/make_fixtures.py

The versions used are recorded in VERSIONS.md next to this script (each run rewrites its own section). Both runs
are deterministic: run again, they write byte-identical files.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file as save_np
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
D_IN, D_SAE, N = 16, 32, 8
X = (np.random.default_rng(0).standard_normal((N, D_IN)) + 0.5).astype(np.float32)  # (N, d_in), non-zero mean
PACKAGES = ("sae-lens", "eai-sparsify", "dictionary-learning", "torch", "numpy")


def rand(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen) * scale


def expected(folder: Path, latents: torch.Tensor, recons: torch.Tensor, prefix: str = "", into=None) -> dict:
    out = into if into is not None else {}
    out[f"{prefix}x"] = torch.from_numpy(X.copy())
    out[f"{prefix}latents"] = latents.detach().float().contiguous()
    out[f"{prefix}recons"] = recons.detach().float().contiguous()
    if into is None:
        save_file(out, str(folder / "expected.safetensors"))
    return out


def fresh(name: str) -> Path:
    p = HERE / name
    shutil.rmtree(p, ignore_errors=True)
    p.mkdir(parents=True)
    return p


# ---- SAELens ---------------------------------------------------------------------------------------------------
def saelens() -> None:
    from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    def meta(layer: int) -> SAEMetadata:
        return SAEMetadata(model_name="gpt2", hook_name=f"blocks.{layer}.hook_resid_post")

    cases = {
        "saelens_standard": (StandardSAE, StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta(3))),
        # SAELens then encodes x @ W_enc + b_enc (no b_dec subtracted)
        "saelens_standard_no_b_dec_in": (
            StandardSAE,
            StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False, metadata=meta(4)),
        ),
        # topk(pre * |W_dec_i|), decoded with z / |W_dec_i|; the decoder rows below are not unit norm
        "saelens_topk": (
            TopKSAE,
            TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=5, rescale_acts_by_decoder_norm=True, metadata=meta(5)),
        ),
        "saelens_jumprelu": (JumpReLUSAE, JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=meta(6))),
    }
    for i, (name, (cls, cfg)) in enumerate(cases.items()):
        g = torch.Generator().manual_seed(100 + i)
        sae = cls(cfg)
        with torch.no_grad():
            sae.W_enc.copy_(rand(g, D_IN, D_SAE, scale=0.5))
            sae.W_dec.copy_(rand(g, D_SAE, D_IN, scale=0.5))
            sae.b_enc.copy_(rand(g, D_SAE, scale=0.3))
            sae.b_dec.copy_(rand(g, D_IN, scale=0.5))
            if hasattr(sae, "threshold"):  # some negative: SAELens keeps relu(pre) * (pre > threshold)
                sae.threshold.copy_(rand(g, D_SAE, scale=0.4))
        folder = fresh(name)
        sae.save_model(folder)
        back = SAE.load_from_disk(folder)
        with torch.no_grad():
            z = back.encode(torch.from_numpy(X))
            expected(folder, z, back.decode(z))


def saelens_v5() -> None:
    """SAELens 5 (one SAE class; cfg.json with activation_fn_str, hook_name at the top level): standard with a
    finetuning scaling factor, topk as architecture "standard" + activation_fn_str "topk", jumprelu without
    b_dec subtracted from the input."""
    from sae_lens import SAE, SAEConfig

    def cfg(arch: str, layer: int, **kw) -> SAEConfig:
        base = {"activation_fn_str": "relu", "apply_b_dec_to_input": True, "finetuning_scaling_factor": False}
        return SAEConfig(
            **{
                "architecture": arch,
                "d_in": D_IN,
                "d_sae": D_SAE,
                "context_size": 128,
                "model_name": "gpt2",
                "hook_name": f"blocks.{layer}.hook_resid_pre",
                "hook_layer": layer,
                "hook_head_index": None,
                "prepend_bos": True,
                "dataset_path": "",
                "dataset_trust_remote_code": False,
                "normalize_activations": "none",
                "dtype": "float32",
                "device": "cpu",
                "sae_lens_training_version": None,
                **base,
                **kw,
            }
        )

    cases = {
        "saelens_v5_standard": cfg("standard", 1, finetuning_scaling_factor=True),
        "saelens_v5_topk": cfg("standard", 2, activation_fn_str="topk", activation_fn_kwargs={"k": 5}),
        "saelens_v5_jumprelu": cfg("jumprelu", 3, apply_b_dec_to_input=False),
    }
    for i, (name, c) in enumerate(cases.items()):
        g = torch.Generator().manual_seed(150 + i)
        sae = SAE(c)
        with torch.no_grad():
            sae.W_enc.copy_(rand(g, D_IN, D_SAE, scale=0.5))
            sae.W_dec.copy_(rand(g, D_SAE, D_IN, scale=0.5))
            sae.b_enc.copy_(rand(g, D_SAE, scale=0.3))
            sae.b_dec.copy_(rand(g, D_IN, scale=0.5))
            if hasattr(sae, "threshold"):
                sae.threshold.copy_(rand(g, D_SAE, scale=0.4))
            if c.finetuning_scaling_factor:
                sae.finetuning_scaling_factor.copy_(0.5 + torch.rand(D_SAE, generator=g))
        folder = fresh(name)
        sae.save_model(folder)
        with torch.no_grad():
            z = sae.encode(torch.from_numpy(X))
            expected(folder, z, sae.decode(z))
            # 5.11 writes the tensor as "finetuning_scaling_factor" but its load_from_disk only knows the older
            # "scaling_factor" (RuntimeError: unexpected key): that folder's expected outputs come from the SAE
            # that saved it; the others are also re-loaded by the package and must agree
            if not c.finetuning_scaling_factor:
                back = SAE.load_from_disk(folder)
                assert torch.allclose(back.decode(back.encode(torch.from_numpy(X))), sae.decode(z))


# ---- sparsify --------------------------------------------------------------------------------------------------
def sparsify() -> None:
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.__main__ import RunConfig

    def coder(seed: int, k: int) -> SparseCoder:
        g = torch.Generator().manual_seed(seed)
        sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=k))
        with torch.no_grad():
            sae.encoder.weight.copy_(rand(g, D_SAE, D_IN, scale=0.5))
            sae.encoder.bias.copy_(rand(g, D_SAE, scale=0.3))
            sae.b_dec.copy_(rand(g, D_IN, scale=0.5))
            W_dec = rand(g, D_SAE, D_IN)
            sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))  # normalize_decoder: unit rows, as trained
        return sae

    def outputs(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
        back = SparseCoder.load_from_disk(folder)
        with torch.no_grad():
            enc = back.encode(torch.from_numpy(X))
            dense = torch.zeros(N, D_SAE).scatter_(-1, enc.top_indices, enc.top_acts)
            return dense, back.decode(enc.top_acts, enc.top_indices)

    one = fresh("sparsify_layer")
    coder(200, 4).save_to_disk(one / "layers.3")
    expected(one, *outputs(one / "layers.3"))

    run = fresh("sparsify_run")
    hookpoints = {"layers.0": coder(201, 3), "layers.1": coder(202, 6)}
    tensors: dict = {}
    for hook, sae in hookpoints.items():
        sae.save_to_disk(run / hook)
        expected(run, *outputs(run / hook), prefix=f"{hook}/", into=tensors)
    save_file(tensors, str(run / "expected.safetensors"))
    cfg = RunConfig(
        sae=SparseCoderConfig(num_latents=D_SAE, k=3), model="EleutherAI/pythia-70m", hookpoints=list(hookpoints)
    )
    cfg.save_json(run / "config.json")


# ---- dictionary_learning ---------------------------------------------------------------------------------------
def dictionary_learning() -> None:
    from dictionary_learning.dictionary import AutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE, BatchTopKTrainer
    from dictionary_learning.trainers.gdm import GatedSAETrainer
    from dictionary_learning.trainers.jumprelu import JumpReluTrainer
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE, MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainer
    from dictionary_learning.trainers.top_k import AutoEncoderTopK, TopKTrainer
    from dictionary_learning.training import trainSAE

    steps = 30
    common = {
        "steps": steps,
        "activation_dim": D_IN,
        "dict_size": D_SAE,
        "layer": 3,
        "lm_name": "EleutherAI/pythia-70m",
    }
    common |= {"device": "cpu", "submodule_name": "resid_post_layer_3", "seed": 0}
    fast = {"warmup_steps": 2, "sparsity_warmup_steps": 2}
    topk = {"k": 4, "threshold_start_step": 5, "warmup_steps": 2}
    cases = {  # name: (trainer config, class whose from_pretrained gives the expected outputs)
        "dictionary_learning_standard": ({"trainer": StandardTrainer, **fast}, AutoEncoder),
        "dictionary_learning_topk": ({"trainer": TopKTrainer, **topk}, AutoEncoderTopK),
        "dictionary_learning_batchtopk": ({"trainer": BatchTopKTrainer, **topk}, BatchTopKSAE),
        "dictionary_learning_matryoshka": (
            {"trainer": MatryoshkaBatchTopKTrainer, **topk, "group_fractions": [0.25, 0.75]},
            MatryoshkaBatchTopKSAE,
        ),
        "dictionary_learning_jumprelu": ({"trainer": JumpReluTrainer, **fast, "target_l0": 4.0}, JumpReluAutoEncoder),
        "dictionary_learning_gated": ({"trainer": GatedSAETrainer, **fast}, None),  # unsupported: no expected
    }
    g = torch.Generator().manual_seed(300)
    data = [torch.randn(64, D_IN, generator=g) + 0.5 for _ in range(steps + 1)]
    for i, (name, (trainer_cfg, cls)) in enumerate(cases.items()):
        with tempfile.TemporaryDirectory() as tmp:
            trainSAE(
                data=iter(data), trainer_configs=[{**common, **trainer_cfg}], steps=steps, save_dir=tmp, device="cpu"
            )
            folder = fresh(name)
            for f in ("config.json", "ae.pt"):
                shutil.copy2(Path(tmp) / "trainer_0" / f, folder / f)
        if cls is None:
            continue
        state = torch.load(folder / "ae.pt", map_location="cpu", weights_only=True)
        _perturb(state, torch.Generator().manual_seed(310 + i))
        torch.save({k: v.cpu() for k, v in state.items()}, folder / "ae.pt")  # as trainSAE saves
        ae = cls.from_pretrained(str(folder / "ae.pt"))
        with torch.no_grad():
            z = ae.encode(torch.from_numpy(X))
            x_hat = ae.decode(z)
            assert torch.allclose(ae(torch.from_numpy(X)), x_hat)
        expected(folder, z, x_hat)


def _perturb(state: dict, g: torch.Generator) -> None:
    """Make every convention visible: biases well away from 0, decoder norms off 1 (AutoEncoder's from_pretrained
    normalizes them), a scalar (BatchTopK) threshold lowered so that a few latents fire per row, JumpReLU's
    per-latent thresholds random with some negative."""
    for k in ("bias", "b_dec"):
        if k in state:
            state[k] = state[k] + rand(g, *state[k].shape, scale=0.5)
    for k in ("encoder.bias", "b_enc"):
        if k in state:
            state[k] = state[k] + rand(g, *state[k].shape, scale=0.2)
    if "bias" in state:  # AutoEncoder: decoder.weight (d_in, d_sae); scale each latent's column
        state["decoder.weight"] = state["decoder.weight"] * (0.5 + 1.5 * torch.rand(D_SAE, generator=g))
    if "threshold" in state:
        th = state["threshold"]
        state["threshold"] = rand(g, D_SAE, scale=0.3) if th.dim() else th.abs() * 0.4  # scalar: a few fire


# ---- Gemma Scope -----------------------------------------------------------------------------------------------
def gemma_scope() -> None:
    rng = np.random.default_rng(400)
    p = {
        "W_enc": rng.standard_normal((D_IN, D_SAE)) * 0.5,
        "W_dec": rng.standard_normal((D_SAE, D_IN)) * 0.5,
        "b_enc": rng.standard_normal(D_SAE) * 0.3,
        "b_dec": rng.standard_normal(D_IN) * 0.5,
        "threshold": np.abs(rng.standard_normal(D_SAE)) * 0.4,
    }
    p["threshold"][:3] = -0.2  # negative thresholds: the reference keeps relu(pre) there
    p = {k: v.astype(np.float32) for k, v in p.items()}
    folder = fresh("gemma_scope")
    np.savez(folder / "params.npz", **p)
    pre = X @ p["W_enc"] + p["b_enc"]  # the published reference: no b_dec subtracted before encoding
    latents = (pre > p["threshold"]) * np.maximum(pre, 0)
    recons = latents @ p["W_dec"] + p["b_dec"]
    save_np(
        {"x": X, "latents": latents.astype(np.float32), "recons": recons.astype(np.float32)},
        str(folder / "expected.safetensors"),
    )


def versions(section: str, packages: tuple[str, ...]) -> None:
    """Rewrite this run's section of VERSIONS.md, keeping the other run's."""
    p = HERE / "VERSIONS.md"
    head = "# Package versions that wrote these fixtures\n\nWritten by `make_fixtures.py` (see its docstring).\n"
    parts = dict(re.findall(r"(?ms)^## (.+?)\n(.*?)(?=^## |\Z)", p.read_text())) if p.exists() else {}
    parts[section] = "".join(f"- {name} {md.version(name)}\n" for name in packages)
    parts[section] += f"- Python {sys.version.split()[0]}\n\n"
    (HERE / "VERSIONS.md").write_text(
        head + "".join(f"\n## {k}\n{v}" for k, v in sorted(parts.items())).rstrip() + "\n"
    )


if __name__ == "__main__":
    if md.version("sae-lens").startswith("5."):  # the second venv: only the SAELens 5 folders
        saelens_v5()
        versions("saelens_v5_*", ("sae-lens", "torch", "numpy"))
    else:
        saelens()
        sparsify()
        dictionary_learning()
        gemma_scope()
        versions("all other folders (gemma_scope/: numpy in the published params.npz layout)", PACKAGES)
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in HERE.iterdir() if p.is_dir()}
    print(json.dumps(sizes, indent=1), "total", sum(sizes.values()))
