"""Attention-sink tokens: decided once per cache by an explicit rule, never trained on, never in the
reconstruction metrics, counted in meta.json and metrics.json; and seed stability against a twin."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.config import SaeConfig, TrainConfig
from backend.data.activations import ShardCache
from backend.sae.evaluate import exclusion_record, stability
from backend.sae.model import load_sae, twin_dir
from backend.sae.train import train_sae

D, N_SHARD, SHARDS = 16, 300, 3
SINKS = [(0, 5), (1, 17), (2, 250)]  # (shard, row) of the planted massive activations, all at window position 1


def make_cache(folder) -> ShardCache:
    """A shard cache of Gaussian tokens with norm ~4 and three planted sinks of norm ~400, at position 1."""
    g = torch.Generator().manual_seed(0)
    names = []
    for s in range(SHARDS):
        acts = torch.randn(N_SHARD, D, generator=g)
        pos = torch.arange(N_SHARD) % 32 + 1
        for sh, row in SINKS:
            if sh == s:
                acts[row] *= 100
                pos[row] = 1
        name = f"shard_{s:05d}.safetensors"
        save_file(
            {
                "acts": acts.half(),
                "token_ids": torch.arange(N_SHARD, dtype=torch.int32) + 1000 * s,
                "window": (torch.arange(N_SHARD) // 32).int(),
                "pos": pos.int(),
            },
            str(folder / name),
        )
        names.append(name)
    meta = {
        "site": "blocks.0.hook_resid_post",
        "model": "synthetic",
        "d_in": D,
        "n_tokens": SHARDS * N_SHARD,
        "dtype": "float16",
        "shards": names,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return ShardCache(folder)


def test_the_rule_counts_the_sinks_and_records_itself(tmp_path):
    cache = make_cache(tmp_path)
    assert cache.exclusion is None and cache.n_normal == SHARDS * N_SHARD  # an old cache: everything served
    ex = cache.ensure_exclusion(0, 10.0)
    assert ex.n_excluded == len(SINKS) and 3.0 < ex.median_norm < 5.0
    assert cache.n_normal == SHARDS * N_SHARD - len(SINKS)
    again = ShardCache(tmp_path)  # recorded in meta.json, read back by the next reader
    assert again.exclusion == ex
    mtime = (tmp_path / "meta.json").stat().st_mtime_ns
    assert again.ensure_exclusion(0, 10.0) == ex and (tmp_path / "meta.json").stat().st_mtime_ns == mtime
    by_pos = again.ensure_exclusion(2, 0.0)  # another rule, decided again: positions below 2 (every 32nd row)
    assert by_pos.n_excluded == sum(int((again.load_shard(i)["pos"] < 2).sum()) for i in range(SHARDS))


def test_batches_and_all_acts_serve_normal_tokens_only(tmp_path):
    cache = make_cache(tmp_path)
    ex = cache.ensure_exclusion(0, 10.0)
    rows = torch.cat(list(cache.batches(64, seed=0)))
    assert len(rows) == cache.n_normal and rows.norm(dim=1).max() <= ex.threshold
    x, ids = cache.all_acts(with_ids=True)
    assert len(x) == len(ids) == cache.n_normal
    planted = {1000 * s + r for s, r in SINKS}  # the sinks' token ids
    assert not planted & set(ids.tolist())
    first = cache.load_shard(0)
    keep = first["acts"].float().norm(dim=1) <= ex.threshold
    assert torch.equal(x[: int(keep.sum())], first["acts"][keep].float())  # aligned with ids, row for row
    assert torch.equal(ids[: int(keep.sum())], first["token_ids"][keep].long())
    rec = exclusion_record(cache)
    assert rec["n_excluded_tokens"] == len(SINKS) and rec["exclusion"]["norm_factor"] == 10.0


def test_training_takes_one_pass_over_normal_tokens_and_a_twin(tmp_path):
    (tmp_path / "cache").mkdir()
    cache = make_cache(tmp_path / "cache")
    cache.ensure_exclusion(0, 10.0)
    cfg = SaeConfig(name="s", architecture="topk", d_sae=32, k=4, stability_twin=True)
    out = tmp_path / "saes" / "s"
    train_sae(cfg, TrainConfig(batch_size=128, checkpoint_every=0), cache, out, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["tokens"] >= cache.n_normal and metrics["train"]["tokens"] < cache.n_tokens + 128
    twin = load_sae(twin_dir(out))
    sae = load_sae(out)
    assert twin_dir(out).name == "s@twin" and not torch.equal(twin.W_dec, sae.W_dec)  # another seed


def test_stability_is_the_share_of_latents_a_twin_reproduces():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(100, 64, generator=g)
    assert stability(W, W)["stability"] == pytest.approx(1.0)
    half = torch.cat([W[:50], torch.randn(50, 64, generator=g)])
    s = stability(W, half)
    assert s["stability"] == pytest.approx(0.5, abs=0.02) and 0.0 < s["stability_median_cos"] <= 1.0
    assert stability(W, torch.randn(100, 64, generator=g))["stability"] < 0.05
    assert np.isfinite(s["stability_median_cos"])


def test_learning_rate_warms_up_and_decays_to_zero():
    from backend.sae.train import Trainer

    tr = Trainer(
        SaeConfig(name="s", d_sae=32, k=4), TrainConfig(batch_size=10, lr_warmup_steps=10, lr_decay_frac=0.2), 16, 1000
    )  # 100 steps: warm-up 0..9, constant, decay over the last 20
    f = [tr.lr_factor(s) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[50] == 1.0 and f[79] == 1.0
    assert f[80] == pytest.approx(1.0) and f[90] == pytest.approx(0.5) and f[99] == pytest.approx(0.05)
    flat = Trainer(SaeConfig(name="s", d_sae=32, k=4), TrainConfig(batch_size=10, lr_warmup_steps=10), 16, 1000)
    assert [flat.lr_factor(s) for s in (9, 99)] == [1.0, 1.0]  # the default: no decay (unchanged behaviour)
