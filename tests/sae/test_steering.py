"""Steering on the real SmolLM2 with a small ReLU SAE whose decoder is known."""

from __future__ import annotations

import threading

import pytest
import torch

from backend.sae.steering import Edit, SteeringError, fit_prompt, make_intervention, side_by_side, validate_edits
from tests.stand_ins import ReluSae

SITE = "blocks.6.hook_resid_post"


@pytest.fixture(scope="module")
def sae(smollm2):
    return ReluSae(smollm2.d_model, 256)


def test_untouched_latents_leave_the_output_unchanged(smollm2, sae):
    b = smollm2.tokenize(["The capital of France is Paris."], 16)
    clean = smollm2.logits(b)
    x = smollm2.capture(b, SITE)
    lat = sae.encode(x.reshape(-1, 576))
    firing = int(lat.sum(0).argmax())
    # clamping a latent to its own value and scaling by 1 are no-ops: the error term is kept
    for edits in ([], [Edit(firing, "scale", 1.0)]):
        with smollm2.intervene(SITE, make_intervention(sae, edits)):
            assert torch.allclose(smollm2.logits(b), clean, atol=1e-4)
    with smollm2.intervene(SITE, make_intervention(sae, [Edit(firing, "clamp", 200.0)])):
        assert not torch.allclose(smollm2.logits(b), clean, atol=1e-2)


def test_edit_math_matches_decode_difference(sae):
    x = torch.randn(5, 576) * 3
    edits = [Edit(3, "clamp", 7.0), Edit(10, "zero"), Edit(20, "scale", 2.5)]
    got = make_intervention(sae, edits)(x.reshape(1, 5, 576)).reshape(5, 576)
    lat = sae.encode(x)
    new = lat.clone()
    new[:, 3], new[:, 10], new[:, 20] = 7.0, 0.0, lat[:, 20] * 2.5
    assert torch.allclose(got, x + sae.decode(new) - sae.decode(lat), atol=1e-4)
    added = make_intervention(sae, [Edit(4, "add", 3.0)])(x[None])[0]
    assert torch.allclose(added, x + 3.0 * sae.W_dec[4], atol=1e-5)


def test_bad_edits_and_prompts(smollm2):
    with pytest.raises(SteeringError, match="out of range.*0..255"):
        validate_edits([Edit(256, "clamp", 1.0)], 256)
    with pytest.raises(SteeringError, match="not a finite"):
        validate_edits([Edit(1, "clamp", float("nan"))], 256)
    with pytest.raises(SteeringError, match="exceeds the bound"):
        validate_edits([Edit(1, "scale", 1e9)], 256)
    with pytest.raises(SteeringError, match="prompt is empty"):
        fit_prompt(smollm2, "   ")
    text, notice = fit_prompt(smollm2, "word " * 3000, limit=100)
    assert "last 100" in notice and len(smollm2.encode_ids(text)) <= 101


def _run(smollm2, sae, edits, seed=3):
    *_, last = side_by_side(
        smollm2, sae, SITE, edits, "Write a sentence about cats.", max_new_tokens=12, temperature=0.8, seed=seed
    )
    return last


def test_side_by_side_same_seed_and_isolation(smollm2, sae):
    plain_b, plain_s = _run(smollm2, sae, [])
    assert plain_b == plain_s  # no edits: steered == baseline, same prompt and seed
    strong = [Edit(0, "add", 60.0)]
    alone = _run(smollm2, sae, strong)
    assert alone[0] == plain_b and alone[1] != plain_b
    # concurrent requests never see each other's steering
    results: dict = {}
    ts = [
        threading.Thread(target=lambda k=k, e=e: results.__setitem__(k, _run(smollm2, sae, e)))
        for k, e in (("plain", []), ("steer", strong))
    ]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert results["plain"] == (plain_b, plain_s)
    assert results["steer"] == alone
