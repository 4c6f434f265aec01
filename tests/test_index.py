"""The feature index on the real tiny workspace, the streaming top-k, the labeller and the store."""
from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from backend.label import LatentEvidence, StatisticalLabeller, detection_scores
from backend.store import IndexReader, IndexWriter
from backend.topk import StreamingTopK


def test_streaming_topk_equals_a_full_sort():
    rng = np.random.default_rng(0)
    st = StreamingTopK(40, 6)
    g, s, p = rng.integers(0, 40, 30_000), rng.random(30_000), np.arange(30_000)
    for a in range(0, 30_000, 1000):
        st.update(g[a : a + 1000], s[a : a + 1000], p[a : a + 1000])
    for j in range(40):
        m = g == j
        order = np.argsort(-s[m])[:6]
        assert np.allclose(st.score[j], s[m][order]) and (st.payload[j] == p[m][order]).all()


def test_labeller_log_odds_and_detection_by_hand():
    # vocab 0..3; latent 0 fires on token 2 (rare) 4 times and on token 0 (common) 4 times
    pairs = sp.csr_matrix(np.array([[4, 0, 4, 0], [0, 0, 0, 0]], dtype=float))
    freq = np.array([100.0, 50.0, 5.0, 10.0])
    ev = LatentEvidence(pairs, freq, [[], []], np.array([[1.0, 0.0], [0.0, 0.0]]), ["general", "legal"],
                        lambda ids: [f"t{i}" for i in ids])
    ex = StatisticalLabeller(max_tokens=1).explain(ev)
    assert ex[0].tokens == [2] and "'t2'" in ex[0].label and "[general 100%]" in ex[0].label
    assert ex[1].label.startswith("(never fires")
    # held-out: token 2 occurs 4 times, latent 0 fires on 3 of them and on 3 other tokens
    held = sp.csr_matrix(np.array([[3, 0, 3, 0], [0, 0, 0, 0]], dtype=float))
    detection_scores(ex, held, np.array([50.0, 10.0, 4.0, 5.0]))
    assert ex[0].precision == pytest.approx(3 / 4) and ex[0].recall == pytest.approx(3 / 6)
    assert ex[0].confidence == pytest.approx(2 * 0.75 * 0.5 / 1.25)


def test_store_writes_atomically_and_reads_per_latent(tmp_path):
    path = tmp_path / "index.duckdb"
    lat = pd.DataFrame({"sae": "s", "latent": [0, 1], "density": [0.1, 0.2], "mean_act": [1.0, 2.0], "max_act": [3.0, 4.0],
                        "hist_edges": [[0.0, 1.0]] * 2, "hist_counts": [[1]] * 2, "label": ["a'; DROP TABLE latents;--", "b"],
                        "confidence": [0.5, 0.6], "precision": [0.5, 0.5], "recall": [0.5, 0.5], "top_domain": ["x", "y"],
                        "top_tokens": ["[]"] * 2, "logit_top": ["[]"] * 2, "logit_bottom": ["[]"] * 2, "domain_rates": ["{}"] * 2})
    with pytest.raises(RuntimeError):
        with IndexWriter(path) as w:
            w.add("latents", lat)
            raise RuntimeError("interrupted")
    assert not path.exists() and not list(tmp_path.iterdir())  # nothing half-written
    with IndexWriter(path) as w:
        w.add("latents", lat)
    r = IndexReader(path)
    assert r.latent("s", 1)["label"] == "b"
    assert r.latents("s", "density", True, "", 0.0, "'; DROP", 10, 0)["latent"].tolist() == [0]
    assert r.latent("s", 0)["label"].startswith("a'")  # the SQL-looking label is data, the table still exists
    with pytest.raises(duckdb.Error):
        r.con.execute("CREATE TABLE t (a INT)")  # served read-only


def test_tiny_index_contexts_are_consistent(tiny_ws):
    r = IndexReader(tiny_ws.index_path)
    saes = r.saes()
    assert set(saes["sae"]) == {s.name for s in tiny_ws.config.saes}
    lat = r.latents("topk", "density", True, "", 0.0, "", 5, 0)
    assert (np.diff(lat["density"]) <= 0).all()
    j = int(lat["latent"].iloc[0])
    row = r.latent("topk", j)
    ctx = pd.DataFrame(r.contexts("topk", j))
    top = ctx[ctx["kind"] == "top"].sort_values("rank")
    assert len(top) == tiny_ws.config.index.top_k
    assert (np.diff(top["max_act"]) <= 1e-5).all()  # best first
    assert top["max_act"].iloc[0] == pytest.approx(row["max_act"], rel=1e-3)  # the top context holds the max
    for c in top.itertuples():
        assert c.acts[c.focus] == pytest.approx(c.max_act, rel=1e-3) and len(c.tokens) == len(c.acts)
    assert ctx["kind"].str.startswith("q").any()  # quantile samples
    assert sum(row["hist_counts"]) > 0 and 0 <= row["confidence"] <= 1
    assert len(r.feature_map("topk")) == 1152
