"""The Backend facade on the real tiny workspace: results and every bad-input message."""
from __future__ import annotations

import pytest

from backend.service import Backend, BackendError


@pytest.fixture(scope="module")
def backend(tiny_ws):
    return Backend(tiny_ws.path)


def test_browse_and_feature(backend):
    saes = backend.saes()
    assert list(saes["name"]) == ["topk", "relu", "ssae_bio", "boost_bio"]
    assert saes.set_index("name").loc["topk", "l0"] == pytest.approx(16.0)
    lat = backend.latents("topk", sort_by="confidence", limit=10)
    assert len(lat) == 10 and (lat["confidence"].diff().dropna() <= 1e-12).all()
    f = backend.feature("topk", int(lat["latent"].iloc[0]))
    assert f.top_contexts and all(len(c.tokens) == len(c.acts) for c in f.top_contexts)
    assert f.label and set(f.domain_rates) <= set(backend.domains())
    assert len(f.logits_top) == 10 and f.logits_top[0][1] >= f.logits_top[-1][1]


def test_search_text_token_by_token(backend):
    r = backend.search_text("topk", "Abnormality of the kidney. The licence grants permission.")
    assert r.tokens[0] == "Ab" or r.tokens[0].strip()
    assert len(r.per_token) == len(r.tokens)
    top = int(r.top_latents["latent"].iloc[0])
    assert len(r.acts[top]) == len(r.tokens) and max(r.acts[top]) == pytest.approx(r.top_latents["max_act"].iloc[0])


def test_search_labels_nearest_map_compare(backend):
    some = backend.latents("topk", limit=1)["label"].iloc[0].split("'")[1]
    hits = backend.search_features(some, sae="topk")
    assert len(hits) >= 1 and all(some.strip().lower() in l.lower() for l in hits["label"])
    near = backend.nearest("topk", 3, k=5)
    assert len(near) == 5 and 3 not in set(near["latent"]) and (near["cosine"].diff().dropna() <= 1e-9).all()
    assert set(backend.feature_map(None)["sae"]) == set(backend.sae_names)
    cmp = backend.compare(["topk", "ssae_bio", "relu"])
    assert list(cmp.metrics["name"]) == ["topk", "ssae_bio", "relu"]
    assert set(cmp.matches["sae_b"]) == {"ssae_bio", "relu"} and (cmp.unmatched["best_cosine"] < 0.7).all()
    # the boosted composite's latents are the base's followed by the residual's
    assert len(backend.nearest("boost_bio", 1152 + 3, k=3, other_sae="boost_bio")) == 3


@pytest.mark.parametrize("call,message", [
    (lambda b: b.feature("nope", 1), "unknown SAE 'nope'"),
    (lambda b: b.feature("topk", 5000), "out of range.*0..1151"),
    (lambda b: b.feature("topk", "abc"), "must be an integer"),
    (lambda b: b.search_text("topk", "   "), "type some text"),
    (lambda b: b.search_text("topk", "x" * 100_000), "100,000 characters; the limit is 20,000"),
    (lambda b: b.search_features(""), "type a word"),
    (lambda b: b.compare(["topk"]), "at least two SAEs"),
    (lambda b: b.latents("topk", sort_by="evil; DROP"), "sort_by must be one of"),
])
def test_bad_input_messages(backend, call, message):
    with pytest.raises(BackendError, match=message):
        call(backend)


def test_sql_looking_text_is_only_data(backend):
    assert backend.search_features("'; DROP TABLE latents; --").empty
    r = backend.search_text("topk", "SELECT * FROM latents; DROP TABLE latents; --")
    assert len(r.tokens) > 5
    assert len(backend.latents("topk", limit=3)) == 3  # the index is intact


def test_coverage_view(backend):
    cov = backend.coverage("biomedical")
    assert cov["reference"] == "topk" and set(cov["saes"]) == {"topk", "ssae_bio", "boost_bio"}
    e = cov["saes"]["ssae_bio"]
    assert 0 <= e["token_recall"] <= 1 and len(e["log_ratio"]) == 1152 and "n_unique" in e
    assert e["cumulative"] == sorted(e["cumulative"])
    with pytest.raises(BackendError, match="no coverage for subdomain 'nope'"):
        backend.coverage("nope")
