"""The causal-LM adapter on the real embedded SmolLM2 (no toy model here)."""

from __future__ import annotations

import threading

import pytest
import torch

from backend.adapters.base import ModelAdapter, Site
from backend.adapters.causal_lm import ModelLoadError, load_causal_lm
from backend.config import ModelConfig


def test_is_a_model_adapter(smollm2):
    assert isinstance(smollm2, ModelAdapter)
    assert (smollm2.d_model, smollm2.n_layers) == (576, 30)


def test_capture_shapes_and_keep_mask(smollm2):
    b = smollm2.tokenize(["The capital of France is", "A much longer sentence than the first one, with commas."], 32)
    acts = smollm2.capture(b, "blocks.6.hook_resid_post")
    assert acts.shape == (*b.input_ids.shape, 576)
    # BOS (position 0) and right padding are never kept; real tokens are.
    assert not b.keep_mask[:, 0].any()
    assert b.keep_mask[1, 1:].all()
    assert b.keep_mask[0].sum() == len(smollm2.encode_ids("The capital of France is"))


@pytest.mark.parametrize("layer", [0, 12, 28])
def test_truncated_forward_equals_full_forward(smollm2, layer):
    b = smollm2.tokenize(["Sparse autoencoders split activations into latents."], 32)
    acts = smollm2.capture(b, f"blocks.{layer}.hook_resid_post")
    with torch.no_grad():
        out = smollm2.model(input_ids=b.input_ids, attention_mask=b.attention_mask.long(), output_hidden_states=True)
    full = out.hidden_states[layer + 1]
    assert torch.allclose(acts, full, atol=1e-4)


def test_mlp_out_matches_a_hook_on_the_full_forward(smollm2):
    b = smollm2.tokenize(["Hello world"], 16)
    seen = {}
    h = smollm2.layers[3].mlp.register_forward_hook(lambda m, i, o: seen.setdefault("o", o.detach()))
    try:
        smollm2.logits(b)
    finally:
        h.remove()
    assert torch.allclose(smollm2.capture(b, "blocks.3.hook_mlp_out"), seen["o"], atol=1e-5)


def test_block_out_of_range_and_bad_site(smollm2):
    b = smollm2.tokenize(["x"], 8)
    with pytest.raises(ValueError, match="out of range.*0..29"):
        smollm2.capture(b, "blocks.30.hook_resid_post")
    with pytest.raises(ValueError, match="unknown hook site"):
        Site.parse("layer12")


def test_intervention_is_scoped(smollm2):
    b = smollm2.tokenize(["The capital of France is"], 16)
    clean = smollm2.logits(b)
    with smollm2.intervene("blocks.6.hook_resid_post", lambda x: x):
        same = smollm2.logits(b)
    with smollm2.intervene("blocks.6.hook_resid_post", lambda x: torch.zeros_like(x)):
        ablated = smollm2.logits(b)
    after = smollm2.logits(b)
    assert torch.allclose(clean, same, atol=1e-5)
    assert not torch.allclose(clean, ablated, atol=1e-2)
    assert torch.allclose(clean, after, atol=1e-5)  # the hook was removed


def test_intervention_does_not_leak_to_other_threads(smollm2):
    b = smollm2.tokenize(["The capital of France is"], 16)
    clean = smollm2.logits(b)
    other: dict = {}
    started, release = threading.Event(), threading.Event()

    def meddler():
        with smollm2.intervene("blocks.6.hook_resid_post", lambda x: torch.zeros_like(x)):
            started.set()
            release.wait(30)

    t = threading.Thread(target=meddler)
    t.start()
    started.wait(30)
    try:
        other["logits"] = smollm2.logits(b)  # runs while the other thread's hook is registered
    finally:
        release.set()
        t.join()
    assert torch.allclose(clean, other["logits"], atol=1e-5)


def test_generation_knows_paris(smollm2):
    text = "".join(smollm2.generate("The capital of France is", max_new_tokens=4, chat=False))
    assert "Paris" in text


def test_chat_template_is_used(smollm2):
    ids = smollm2.prompt_ids("hi", chat=True)
    assert "<|im_start|>" in smollm2.tokenizer.decode(ids) and "assistant" in smollm2.tokenizer.decode(ids)


def test_cached_model_loads_without_the_gguf(smollm2, monkeypatch):
    """The second load reads the safetensors cache: the GGUF asset is never touched."""
    import backend.adapters.causal_lm as cl

    def boom(*a, **k):
        raise AssertionError("GGUF asset read although the safetensors cache exists")

    monkeypatch.setattr(cl, "asset_path", boom)
    a = load_causal_lm(ModelConfig(id="smollm2", device="cpu"), verbose=False)
    b = a.tokenize(["cache"], 8)
    assert torch.allclose(a.logits(b), smollm2.logits(b), atol=1e-5)


def test_unknown_model_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not an embedded model.*local checkpoint"):
        load_causal_lm(ModelConfig(id="nobody/no-such-model"), verbose=False)
