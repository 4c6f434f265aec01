"""index.py: the streaming top-k, quantile samples and statistics against naive dense computations on a
synthetic corpus, and one build of the real tiny workspace (SmolLM2 + its trained SAEs)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from backend.__main__ import main
from backend.index import build as ix
from backend.index import collect as collect_module
from backend.index.build import index_windows
from backend.index.store import IndexReader
from backend.sae.kernels import StreamingTopK
from tests.stand_ins import ReluSae

pytest_plugins = ("tests._index_fixtures",)  # shared session fixtures: synth_acts, synth_ws, tiny_index
D_SAE = 24  # the synthetic SAEs' width


def test_streaming_topk_equals_a_naive_topk():
    rng = np.random.default_rng(0)
    n, groups, k = 50_000, 300, 7
    g, s, p = rng.integers(0, groups, n), rng.standard_normal(n), np.arange(n)
    st = StreamingTopK(groups, k)
    for a in range(0, n, 4096):
        st.update(g[a : a + 4096], s[a : a + 4096], p[a : a + 4096])
    for j in range(groups):
        m = np.nonzero(g == j)[0]
        best = m[np.argsort(-s[m])[:k]]
        assert (st.payload[j] == p[best]).all() and np.allclose(st.score[j], s[best])
    sparse = StreamingTopK(3, 4)  # groups with fewer than k candidates keep what they saw, best first
    sparse.update(np.array([0, 0, 2]), np.array([1.0, 3.0, 2.0]), np.array([10, 11, 12]))
    g2, r2, _, p2 = sparse.items()
    assert g2.tolist() == [0, 0, 2] and r2.tolist() == [0, 1, 0] and p2.tolist() == [11, 10, 12]


def test_logit_lens_equals_the_exact_product():
    g = torch.Generator().manual_seed(0)
    W, U = torch.randn(60, 32, generator=g), torch.randn(500, 32, generator=g)
    top, bottom = ix.logit_lens(W, U, lambda ids: [f"t{i}" for i in ids], n=5)
    exact = W @ U.T
    for i in range(60):
        hi, lo = exact[i].topk(5), exact[i].topk(5, largest=False)
        assert [t for t, _ in json.loads(top[i])] == [f"t{j}" for j in hi.indices.tolist()]
        assert [t for t, _ in json.loads(bottom[i])] == [f"t{j}" for j in lo.indices.tolist()]
        assert np.allclose([v for _, v in json.loads(top[i])], hi.values.numpy(), atol=1e-3)
    assert ix.logit_lens(W, None, str) == (["[]"] * 60, ["[]"] * 60)


def _dense(synth_acts, seed: int) -> np.ndarray:
    """Dense latents of the synthetic workspace's stand-in SAE (as built in tests/_index_fixtures.py)."""
    sae = ReluSae(synth_acts.acts.shape[1], D_SAE, seed=seed)
    sae.b_enc -= 2.5
    return sae.encode(synth_acts.acts.float()).numpy()


def test_statistics_and_contexts_match_a_dense_encode(synth_acts, synth_ws):
    cfg = synth_ws.config.index
    lat = _dense(synth_acts, seed=1)
    train = ~synth_acts.heldout
    r = IndexReader(synth_ws.index_path)
    stats = r.df("SELECT * FROM latents WHERE sae = 'a' ORDER BY latent")
    fires = (lat[train] > 0).sum(0)
    assert np.allclose(stats["density"], fires / train.sum())
    assert np.allclose(stats["max_act"], lat[train].max(0), rtol=1e-6)
    assert np.allclose(stats["mean_act"], lat[train].sum(0) / np.maximum(fires, 1), rtol=1e-5)
    assert [sum(h) for h in stats["hist_counts"]] == fires.tolist()
    ctx = pd.DataFrame(r.rows("SELECT * FROM contexts WHERE sae = 'a'"))
    held_ctx, ctx = ctx[ctx["kind"].isin(["hpos", "hneg"])], ctx[~ctx["kind"].isin(["hpos", "hneg"])]
    assert not synth_acts.heldout[np.isin(synth_acts.window, ctx["window_row"])].any()  # held-out windows unused
    # the scoring contexts come from held-out windows only: centred on a firing (hpos) or a silent token (hneg)
    assert synth_acts.heldout[np.isin(synth_acts.window, held_ctx["window_row"])].all()
    for c in held_ctx.itertuples():
        w0 = c.window_row * 25
        assert np.allclose(c.acts, lat[w0 + c.win_offset : w0 + c.win_offset + len(c.acts), c.latent], rtol=1e-6)
        assert (c.acts[c.focus] > 0) == (c.kind == "hpos")
    n_pos = held_ctx[held_ctx["kind"] == "hpos"].groupby("latent").size()
    held_fires = (lat[synth_acts.heldout] > 0).sum(0)
    assert (n_pos <= np.minimum(held_fires[n_pos.index], cfg.heldout_contexts + cfg.n_quantiles)).all()
    assert set(n_pos.index) == set(np.nonzero(held_fires)[0])
    assert (held_ctx[held_ctx["kind"] == "hneg"].groupby("latent").size() <= cfg.heldout_contexts).all()
    for j in range(D_SAE):
        top = ctx[(ctx["latent"] == j) & (ctx["kind"] == "top")].sort_values("rank")
        fired = lat[train, j][lat[train, j] > 0]  # a latent that fired fewer than k times keeps only those
        assert np.allclose(top["max_act"], np.sort(fired)[::-1][: cfg.top_k], rtol=1e-6)
        for c in top.itertuples():  # the acts are the latent's on the window's rows within +-radius of the max
            w0, rad = c.window_row * 25, cfg.context_radius  # window w holds rows 25w .. 25w + 24
            center = w0 + int(np.argmin(np.abs(lat[w0 : w0 + 25, j] - c.max_act)))
            lo, hi = max(w0, center - rad), min(w0 + 25, center + rad + 1)
            assert c.focus == center - lo and c.acts[c.focus] == c.max_act
            assert c.win_offset == lo - w0  # the context's first token's offset among its window's tokens
            assert np.allclose(c.acts, lat[lo:hi, j], rtol=1e-6)
            assert c.tokens == [f"t{t}" for t in synth_acts.token[lo:hi]]
        # quantile samples: each in its band of (0, max], as many as the band holds up to per_quantile
        mx, nb = lat[train, j].max(), cfg.n_quantiles
        band = np.minimum((lat[train, j][lat[train, j] > 0] / mx * nb).astype(int), nb - 1)
        for b in range(nb):
            got = ctx[(ctx["latent"] == j) & (ctx["kind"] == f"q{b}")]["max_act"].to_numpy()
            assert len(got) == min(cfg.per_quantile, int((band == b).sum()))
            assert ((got >= b / nb * mx * (1 - 1e-6)) & (got <= (b + 1) / nb * mx * (1 + 1e-6))).all()


def test_focus_tokens_logit_lens_and_planted_label(synth_acts, synth_ws):
    r = IndexReader(synth_ws.index_path)
    row = r.latent("a", 0)
    assert row["label"].startswith("'t7'") and row["confidence"] > 0.5 and json.loads(row["top_tokens"])[0] == "t7"
    top = [c for c in r.contexts("a", 0) if c["kind"] == "top"]
    assert all(c["tokens"][c["focus"]] == "t7" for c in top)
    logit_top, logit_bottom = json.loads(row["logit_top"]), json.loads(row["logit_bottom"])
    assert len(logit_top) == 10 and logit_top[0][1] >= logit_top[-1][1] >= logit_bottom[-1][1]
    assert set(json.loads(row["domain_rates"])) == {"general", "legal"}
    assert len(r.feature_map("")) == 2 * D_SAE and r.saes()["n_quantiles"].tolist() == [3, 3]


def test_index_windows_spread_across_corpora():
    w = pd.DataFrame({"corpus": ["a"] * 50 + ["b"] * 5 + ["c"] * 20, "token_ids": [[1] * 10] * 75})
    sub = index_windows(w, 200, seed=0)
    assert sub["token_ids"].map(len).sum() <= 200 and sub.index.is_monotonic_increasing
    assert sub["corpus"].value_counts().to_dict() == {"a": 8, "c": 7, "b": 5}
    assert index_windows(w, 200, seed=0).index.equals(sub.index)


def test_tiny_workspace_index(tiny_index):
    ws, timings = tiny_index
    r = IndexReader(ws.index_path)
    assert r.saes()["sae"].tolist() == sorted(s.name for s in ws.config.saes)
    assert timings["tokens"] > 0.8 * ws.config.index.max_tokens
    from backend.sae.model import load_sae

    sae, adapter = load_sae(ws.sae_dir("topk")), ws.adapter(verbose=False)
    windows = ws.windows()
    for j in r.latents("topk", "density", True, "", 0.0, "", 3, 0)["latent"]:
        row = r.latent("topk", int(j))
        top = [c for c in r.contexts("topk", int(j)) if c["kind"] == "top"]
        assert len(top) == ws.config.index.top_k
        assert all(a["max_act"] >= b["max_act"] for a, b in itertools.pairwise(top))  # sorted descending
        assert top[0]["max_act"] == pytest.approx(row["max_act"], rel=1e-6)
        for c in top:
            assert c["acts"][c["focus"]] == c["max_act"] and len(c["tokens"]) == len(c["acts"])
        # the stored max is what the real model + SAE give on that window (float16 activations: ~1e-2)
        ids = windows.loc[top[0]["window_row"], "token_ids"]
        batch = adapter.batch_from_ids([list(ids)])
        with torch.inference_mode():
            lat = sae.encode(adapter.capture(batch, ws.config.activations.site)[batch.keep_mask])[:, int(j)]
        assert float(lat.max()) == pytest.approx(row["max_act"], rel=2e-2)
        assert sum(row["hist_counts"]) == round(row["density"] * r.saes().set_index("sae").loc["topk", "n_tokens"])
    assert len(r.feature_map("topk")) == 1152 and len(r.feature_map("boost_bio")) == 1152 + 576


def test_index_cli_keeps_an_existing_index(tiny_index, capsys):
    ws, _ = tiny_index
    assert main(["index", "--workspace", str(ws.path)]) == 0
    assert "exists; pass --force" in capsys.readouterr().out


def test_cached_and_computed_activations_agree(tiny_index, monkeypatch):
    """The index reads the windows the activation cache holds and runs the model on the rest: both agree."""
    ws, _ = tiny_index
    cache = ws.activation_source()
    shards = [cache.load_shard(i) for i in range(len(cache.shards))]
    c_win = np.concatenate([s["window"].numpy() for s in shards])
    c_acts = torch.cat([s["acts"] for s in shards]).float()
    monkeypatch.setattr(collect_module, "_cached_windows", lambda *a: (None, np.zeros(0, np.int64)))
    monkeypatch.setattr(ws.config.index, "max_tokens", 400)
    computed = ix.collect(ws, progress=False)  # no cache: a model pass over ~400 tokens
    compared = 0
    for w in np.unique(computed.window):
        mine, theirs = computed.acts[computed.window == w].float(), c_acts[c_win == w]
        if len(mine) == len(theirs):  # windows the cache holds completely
            assert torch.allclose(mine, theirs, rtol=2e-2, atol=2e-2)
            compared += 1
    assert compared >= 3
