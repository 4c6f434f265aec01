"""The activation pipeline and shard cache on the real model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from backend.adapters.base import TokenBatch
from backend.config import CorpusConfig
from backend.data.activations import ShardCache, plan_shards, stream_activations
from backend.data.corpora import load_docs, make_windows

SITE = "blocks.4.hook_resid_post"


def _windows(adapter, n_docs=6):
    docs = load_docs(CorpusConfig("news", max_docs=n_docs * 20)) + load_docs(CorpusConfig("hpo", max_docs=n_docs))
    return make_windows(docs, "mix", adapter.encode_ids, context_len=24)


def test_stream_yields_only_kept_tokens_with_provenance(smollm2):
    w = _windows(smollm2)
    chunks = list(stream_activations(smollm2, w, SITE, batch_size=5, progress=False))
    acts = torch.cat([c.acts for c in chunks])
    ids = torch.cat([c.token_ids for c in chunks])
    assert acts.shape == (w["token_ids"].map(len).sum(), 576)
    assert not torch.isin(ids, smollm2.special_ids).any()
    # provenance: (window, pos) points back at the very token id
    c = chunks[1]
    for j in (0, len(c.pos) // 2, len(c.pos) - 1):
        row = w.loc[int(c.window[j])]
        assert row["token_ids"][int(c.pos[j]) - 1] == int(c.token_ids[j])  # pos 0 is BOS
    # the same activations as a direct capture of that window
    row = w.loc[int(c.window[0])]
    direct = smollm2.capture(smollm2.batch_from_ids([row["token_ids"]]), SITE)[0, int(c.pos[0])]
    assert torch.allclose(direct, c.acts[0], atol=1e-4)


def test_max_tokens_budget(smollm2):
    w = _windows(smollm2)
    n = sum(len(c.acts) for c in stream_activations(smollm2, w, SITE, batch_size=4, max_tokens=100, progress=False))
    assert n == 100


def test_shard_cache_round_trip_and_batches(smollm2, tmp_path):
    w = _windows(smollm2)
    cache = ShardCache.build(
        smollm2, w, SITE, tmp_path / "cache", batch_size=8, shard_tokens=128, dtype="float16", progress=False
    )
    assert len(cache.shards) > 2 and cache.d_in == 576
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    direct = torch.cat([c.acts for c in stream_activations(smollm2, w, SITE, batch_size=8, progress=False)])
    cached = cache.all_acts()
    assert cached.shape == direct.shape == (cache.n_tokens, 576)
    assert torch.allclose(cached, direct.half().float())
    # one epoch of batches covers every cached row exactly once, shuffled
    batches = list(cache.batches(batch_size=100, seed=1))
    assert all(len(b) == 100 for b in batches[:-1])
    epoch = torch.cat(batches)
    assert len(epoch) == cache.n_tokens
    key = lambda t: torch.sort(t[:, :4].sum(1)).values  # noqa: E731
    assert torch.allclose(key(epoch), key(cached))
    assert not torch.equal(epoch, cached)
    # reopening reads the same meta
    assert ShardCache(tmp_path / "cache").n_tokens == cache.n_tokens


def test_empty_windows_table_gives_empty_stream(smollm2):
    empty = pd.DataFrame(columns=["corpus", "domain", "doc_id", "source", "start", "token_ids"])
    assert list(stream_activations(smollm2, empty, SITE, progress=False)) == []


class _CountingAdapter:
    """BOS + ids, right-padded; id 0 is special (not kept); the activation at a token is its id (4 dims)."""

    model_id, d_model = "counting", 4

    def batch_from_ids(self, seqs):
        rows = [[1, *map(int, s)] for s in seqs]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        att = torch.zeros_like(ids, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)], att[i, : len(r)] = torch.tensor(r), True
        keep = att & (ids != 0)
        keep[:, 0] = False
        return TokenBatch(ids, att, keep)

    def capture(self, batch, site):
        return batch.input_ids[..., None].float().expand(-1, -1, 4)


@pytest.mark.parametrize(
    "batch_size, max_tokens, shard_tokens", [(3, None, 40), (4, 97, 30), (2, 50, 1), (5, 1000, 64)]
)
def test_the_shard_plan_is_where_a_one_process_build_cuts(tmp_path, batch_size, max_tokens, shard_tokens):
    """torchrun's ranks capture the shards that plan_shards predicts from the keep masks alone (no forward pass):
    they must be the shards, windows and tokens the one-process build writes."""
    g = np.random.default_rng(0)
    w = pd.DataFrame({"token_ids": [list(g.integers(0, 9, g.integers(1, 12))) for _ in range(40)]})
    w = w.sample(frac=1.0, random_state=3)  # a shuffled index, as the workspace's windows are
    ad = _CountingAdapter()
    cache = ShardCache.build(
        ad, w, "s", tmp_path / "c", batch_size=batch_size, max_tokens=max_tokens, shard_tokens=shard_tokens
    )
    plan = plan_shards(ad, w, batch_size, max_tokens, shard_tokens)
    assert len(plan) == len(cache.shards) > 1 and sum(t for *_, t in plan) == cache.n_tokens
    for i, (start, end, tokens) in enumerate(plan):
        sh = cache.load_shard(i)
        assert len(sh["acts"]) == tokens
        assert set(sh["window"].tolist()) <= set(w.index[start:end])  # rows outside the plan's windows: none
        part = list(stream_activations(ad, w.iloc[start:end], "s", batch_size, tokens if i == len(plan) - 1 else None))
        assert torch.equal(torch.cat([c.window for c in part]).int(), sh["window"])
