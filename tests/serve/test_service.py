"""The Backend facade: the contract of docs/service_api.md on a synthetic index (no model) and on the
real tiny workspace (search by text through SmolLM2), and every bad-input message."""

from __future__ import annotations

import numpy as np
import pytest

from backend.serve.service import Backend, BackendError, FeatureView

pytest_plugins = ("tests._index_fixtures",)  # shared session fixtures: synth_ws, tiny_index
D_SAE = 24  # the synthetic SAEs' width


@pytest.fixture(scope="module")
def synth(synth_ws):
    return Backend(synth_ws)


@pytest.fixture(scope="module")
def tiny(tiny_index):
    return Backend(tiny_index[0])


def test_browse_and_feature_page(synth):
    assert synth.sae_names == ["a", "b"] and synth.domains() == ["general", "legal"]
    saes = synth.saes()
    assert list(saes.columns[:4]) == ["name", "architecture", "d_sae", "k"] and saes["l0"].tolist() == [10.0, 10.0]
    lat = synth.latents("a", sort_by="confidence", limit=5)
    assert list(lat.columns) == ["latent", "label", "confidence", "density", "mean_act", "max_act", "top_domain"]
    assert len(lat) == 5 and (np.diff(lat["confidence"]) <= 0).all()
    assert synth.latents("a", sort_by="latent", descending=False, offset=20)["latent"].tolist() == [20, 21, 22, 23]
    assert (synth.latents("a", domain="legal")["top_domain"] == "legal").all()
    f = synth.feature("a", 0)
    assert isinstance(f, FeatureView) and f.label.startswith("'t7'")
    assert f.top_tokens[0][0] == "t7" and f.top_tokens[0][1] > 0  # (token, log-odds)
    assert [c.max_act for c in f.top_contexts] == sorted((c.max_act for c in f.top_contexts), reverse=True)
    assert all(c.acts[c.focus] == c.max_act and len(c.tokens) == len(c.acts) for c in f.top_contexts)
    assert [name for name, _ in f.quantiles] == ["66-100% of max", "33-66% of max", "0-33% of max"][: len(f.quantiles)]
    assert len(f.hist_edges) == len(f.hist_counts) + 1 and f.hist_edges[-1] == pytest.approx(f.max_act)
    assert len(f.logits_top) == 10 and f.logits_top[0][1] >= f.logits_top[-1][1] >= f.logits_bottom[-1][1]
    assert set(f.domain_rates) == {"general", "legal"}


def test_nearest_compare_and_maps(synth):
    near = synth.nearest("a", 3, k=5)
    assert list(near.columns) == ["sae", "latent", "cosine", "label"]
    assert len(near) == 5 and 3 not in set(near["latent"])
    assert (np.diff(near["cosine"]) <= 1e-9).all()
    other = synth.nearest("a", 3, k=D_SAE, other_sae="b")
    assert len(other) == D_SAE and set(other["sae"]) == {"b"}
    cmp = synth.compare(["a", "b"], threshold=0.9)
    assert cmp.metrics["name"].tolist() == ["a", "b"] and "train" not in cmp.metrics  # scalar metrics only
    assert (cmp.matches["cosine"] >= 0.9).all() and (np.diff(cmp.matches["cosine"]) <= 1e-9).all()
    assert (cmp.unmatched["best_cosine"] < 0.9).all() and set(cmp.unmatched["latent"]) <= set(range(D_SAE))
    assert cmp.n_matches == len(cmp.matches) and cmp.n_matches + cmp.n_unmatched == D_SAE
    pair = cmp.pairs.iloc[0]
    assert pair["n_matched"] == cmp.n_matches and sum(pair["hist_counts"]) == D_SAE
    cmp = synth.compare(["a", "b", "a"], threshold=0.0)  # duplicates dropped; every latent matches at 0
    assert len(cmp.matches) == D_SAE and cmp.n_unmatched == 0 and len(cmp.pairs) == 1
    page = synth.compare(["a", "b"], threshold=0.0, limit=5, offset=5)
    assert page.matches["latent_a"].tolist() == cmp.matches["latent_a"].tolist()[5:10]
    best = dict(zip(cmp.matches["latent_a"], cmp.matches["cosine"]))
    assert best[3] == pytest.approx(other["cosine"].iloc[0], abs=1e-4)
    joint, one = synth.feature_map(None), synth.feature_map("a")
    assert set(joint["sae"]) == {"a", "b"} and len(joint) == 2 * D_SAE and len(one) == D_SAE
    assert {"x", "y", "density", "top_domain", "label", "confidence"} <= set(one.columns)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda b: b.feature("nope", 1), "unknown SAE 'nope'; this workspace has: a, b"),
        (lambda b: b.feature("a", 5000), "latent 5000 is out of range: SAE 'a' has latents 0..23"),
        (lambda b: b.feature("a", -1), "out of range"),
        (lambda b: b.feature("a", "abc"), "latent must be a whole number between 0 and 23"),
        (lambda b: b.nearest("b", 99), "out of range"),
        (lambda b: b.search_text("a", "   "), "type some text to search"),
        (lambda b: b.search_text("a", ""), "type some text to search"),
        (lambda b: b.search_text("a", "x" * 100_000), "the text has 100,000 characters; the limit is 20,000"),
        (lambda b: b.search_text("zzz", "hello"), "unknown SAE 'zzz'"),
        (lambda b: b.search_features("  "), "type a word"),
        (lambda b: b.compare(["a"]), "at least two SAEs"),
        (lambda b: b.latents("a", sort_by="evil; DROP TABLE latents"), "sort_by must be one of"),
    ],
)
def test_bad_input_messages(synth, call, message):
    with pytest.raises(BackendError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call(synth)


def test_sql_looking_input_is_only_data(synth):
    assert synth.search_features("'; DROP TABLE latents; --").empty
    assert synth.latents("a", query="' OR 1=1 --").empty
    assert len(synth.search_features("t7", sae="a")) >= 1 and len(synth.latents("a")) == D_SAE


def test_real_workspace_browse_and_search_text(tiny):
    saes = tiny.saes()
    assert list(saes["name"]) == ["topk", "relu", "ssae_bio", "boost_bio"]
    assert saes.set_index("name").loc["topk", "l0"] == pytest.approx(16.0)
    r = tiny.search_text("topk", "Abnormality of the kidney. The licence grants permission.")
    assert r.tokens and len(r.per_token) == len(r.tokens) and r.notice == ""
    assert list(r.top_latents.columns) == ["latent", "label", "max_act", "rel_act", "mean_act", "n_tokens_fired"]
    assert (np.diff(r.top_latents["rel_act"]) <= 1e-9).all()
    top = int(r.top_latents["latent"].iloc[0])
    assert len(r.acts[top]) == len(r.tokens) and max(r.acts[top]) == pytest.approx(r.top_latents["max_act"].iloc[0])
    sql = tiny.search_text("topk", "SELECT * FROM latents; DROP TABLE latents; --")
    assert len(sql.tokens) > 5 and len(tiny.latents("topk", limit=3)) == 3  # searched normally, index intact
    long = tiny.search_text("relu", "the cat sat on the mat. " * 250)  # ~1,750 tokens: cut, with a notice
    assert len(long.tokens) < 1100 and "the text was cut" in long.notice
    assert len(tiny.nearest("boost_bio", 1152 + 3, k=3, other_sae="boost_bio")) == 3  # base rows, then residual's


def test_coverage_view(tiny):
    cov = tiny.coverage("biomedical")
    assert cov["reference"] == "topk" and set(cov["saes"]) == {"topk", "ssae_bio", "boost_bio"}
    e = cov["saes"]["ssae_bio"]
    assert 0 <= e["token_recall"] <= 1 and len(e["log_ratio"]) == 1152 and "n_unique" in e
    # dark-matter latents: no match in the reference, enriched on the subdomain, confidently labelled, by log-ratio
    dark = e["dark_matter"]
    assert e["n_dark_matter"] == len(dark) <= e["n_unique"]
    assert all(d["max_cos"] < cov["cos_threshold"] and d["log_ratio"] > 0 for d in dark)
    assert all(d["confidence"] >= cov["f1_threshold"] for d in dark)
    assert [d["log_ratio"] for d in dark] == sorted((d["log_ratio"] for d in dark), reverse=True)
    labels = tiny.latents("ssae_bio", sort_by="latent", descending=False, limit=2000).set_index("latent")
    for d in dark[:5]:
        assert labels.loc[d["latent"], "confidence"] == pytest.approx(d["confidence"], abs=1e-3)
    with pytest.raises(BackendError, match="no coverage for subdomain 'nope'"):
        tiny.coverage("nope")


def test_search_by_meaning_on_the_tiny_workspace(tiny):
    """The index build made meaning vectors; a query finds latents, best first, with their labels and domains."""
    assert (tiny.ws.path / "meaning" / f"{tiny.sae_names[0]}.npz").exists()
    df = tiny.search_meaning("Python source code: def, class and import statements", limit=10)
    assert list(df.columns) == ["sae", "latent", "label", "score", "top_domain"] and len(df) == 10
    assert df["score"].is_monotonic_decreasing and df["score"].between(-1, 1).all()
    assert set(df["sae"]) <= set(tiny.sae_names) and df.attrs["notice"] == ""
    one = tiny.search_meaning("Python source code", sae="relu", limit=5)
    assert set(one["sae"]) == {"relu"} and len(one) == 5
    lat = tiny.latents("relu", sort_by="latent", descending=False, limit=2000).set_index("latent")
    assert all(lat.loc[j, "label"] == lab for j, lab in zip(one["latent"], one["label"]))
    # the code-like query ranks code-domain latents above what a random latent would be
    code = tiny.search_meaning("def __init__(self): return None", limit=20)
    assert (code["top_domain"] == "code").mean() > 2 * (lat["top_domain"] == "code").mean()
    for bad, match in (("", "type what you are looking for"), ("x" * 301, "query")):
        with pytest.raises(BackendError, match=match):
            tiny.search_meaning(bad)
    with pytest.raises(BackendError):
        tiny.search_meaning("code", sae="nope")
    with pytest.raises(BackendError):
        tiny.search_meaning("code", limit=0)
