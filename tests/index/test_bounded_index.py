"""The bounded-memory index builder (backend/index/sae_index.py, stats.py, spill.py) against the in-memory builder
it replaced (tests/index/legacy_index.py, run here on the same activations): every table equal to float tolerance
(statistics, top contexts, seeded quantile and held-out samples, labels and their scores, concept matches), with
one chunk or many, one label block or many, activations in memory or on disk; and the on-disk pieces alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from backend.config import IndexConfig
from backend.index import collect as col
from backend.index import spill
from backend.index.collect import DiskActs, IndexActs
from backend.index.sae_index import index_sae
from backend.index.spill import FiringSpill, LabelBuckets, latent_blocks
from backend.index.stats import encode_heldout, encode_train, held_bands, scan_train
from backend.index.tables import corpora
from tests.index import legacy_index
from tests.stand_ins import ReluSae

pytest_plugins = ("tests._index_fixtures",)  # synth_acts: 60 random windows of 25 tokens, d_in 16, 40 token ids
D_IN, D_SAE = 16, 24  # tests/_index_fixtures.py's sizes
CFG = IndexConfig(max_tokens=1500, top_k=5, n_quantiles=3, per_quantile=2, context_radius=3, umap=False)


def token_strings(ids: list[int]) -> list[str]:
    return [f"t{i}" for i in ids]


KEYS = {
    "saes": ["sae"],
    "latents": ["latent"],
    "contexts": ["latent", "kind", "rank"],
    "explanations": ["latent", "method"],
    "concepts": ["latent", "concept", "method"],
}


def _frame(t: pa.Table, table: str) -> pd.DataFrame:
    return t.to_pandas().sort_values(KEYS[table], kind="stable").reset_index(drop=True)


def assert_same_tables(new: dict[str, pa.Table], old: dict[str, pa.Table]) -> None:
    """Every table, row and column equal: numbers to float tolerance, lists element by element, the rest exactly."""
    assert sorted(new) == sorted(old)
    for table in old:
        a, b = _frame(new[table], table), _frame(old[table], table)
        assert list(a.columns) == list(b.columns) and len(a) == len(b), table
        for c in b.columns:
            x, y = a[c].to_numpy(), b[c].to_numpy()
            if len(y) and isinstance(y[0], np.ndarray | list):
                for u, v in zip(x, y):
                    u, v = np.asarray(u), np.asarray(v)
                    ok = np.allclose(u, v, rtol=1e-6, atol=0) if u.dtype.kind == "f" else np.array_equal(u, v)
                    assert ok, (table, c)
            elif y.dtype.kind == "f":
                assert np.allclose(x.astype(float), y.astype(float), rtol=1e-6, atol=1e-12, equal_nan=True), (table, c)
            else:
                assert (x == y).all(), (table, c, x[x != y][:5], y[x != y][:5])


def _sae(seed: int) -> ReluSae:
    sae = ReluSae(D_IN, D_SAE, seed=seed)
    sae.b_enc -= 2.5  # as in tests/_index_fixtures.py
    return sae


def _both(ia: IndexActs, sae, concepts=None, tmp=None, cfg=CFG) -> tuple[dict, dict]:
    U = torch.from_numpy(np.random.default_rng(3).standard_normal((40, D_IN)).astype(np.float32))
    args = ("a", "relu", sae, ia, cfg, U, token_strings)
    new = index_sae(*args, seed=7, concepts=concepts, spill_dir=tmp)
    old = legacy_index.index_sae(*args, seed=7, concepts=concepts)
    return new, old


def _on_disk(ia: IndexActs, folder, seed: int = 0) -> IndexActs:
    """The same activations in a DiskActs whose file holds the windows in a shuffled order."""
    x = ia.acts
    wins = np.unique(ia.window)
    perm = np.random.default_rng(seed).permutation(len(wins))
    order = np.concatenate([np.flatnonzero(ia.window == wins[j]) for j in perm])  # file row f = logical row order[f]
    d = DiskActs(x.shape[1], folder)
    for s in range(0, len(order), 77):  # appended in uneven pieces
        d.append(x[torch.from_numpy(order[s : s + 77])])
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    d.set_order(inv)
    return IndexActs(
        d, *[getattr(ia, f) for f in ("token", "window", "domain", "heldout", "domains", "tokstr", "source")]
    )


@pytest.mark.parametrize("chunk, block_pairs, block_latents", [(4096, None, None), (64, 40, 5)])
def test_the_streaming_builder_equals_the_in_memory_one(
    synth_acts, monkeypatch, tmp_path, chunk, block_pairs, block_latents
):
    monkeypatch.setattr(col, "CHUNK", chunk)  # many encode chunks, spill chunks and latent blocks
    if block_pairs:
        monkeypatch.setattr(spill, "BLOCK_PAIRS", block_pairs)
        monkeypatch.setattr(spill, "BLOCK_LATENTS", block_latents)
    ia = synth_acts
    for seed in (1, 2):
        new, old = _both(ia, _sae(seed), tmp=tmp_path)
        assert_same_tables(new, old)
        ctx = new["contexts"].to_pandas()
        assert {"top", "q0", "hpos", "hneg"} <= set(ctx["kind"])  # every kind of context was compared
    assert not list(tmp_path.iterdir())  # the spills are unlinked temporaries


def test_on_disk_activations_read_like_the_tensor_and_index_the_same(synth_acts, tmp_path):
    ia = synth_acts
    disk = _on_disk(ia, tmp_path)
    rows = np.random.default_rng(0).integers(0, len(ia.token), 500)
    assert torch.equal(disk.acts[torch.from_numpy(rows)], ia.acts[torch.from_numpy(rows)])
    assert torch.equal(disk.acts[ia.window == 7], ia.acts[torch.from_numpy(ia.window == 7)])
    assert torch.equal(disk.acts[10:40], ia.acts[10:40]) and disk.acts.shape == tuple(ia.acts.shape)
    new, old = _both(disk, _sae(1), tmp=tmp_path)
    assert_same_tables(new, old)
    disk.close()


def test_concept_matches_equal_the_in_memory_ones(synth_acts, monkeypatch, tmp_path):
    monkeypatch.setattr(col, "CHUNK", 128)
    monkeypatch.setattr(spill, "BLOCK_LATENTS", 7)
    ia = synth_acts
    g = np.random.default_rng(5)
    labels = np.stack([ia.token == 7, ia.token < 10, ia.domain == 1, g.random(len(ia.token)) < 0.3], 1)
    new, old = _both(ia, _sae(1), concepts=(labels, ["seven", "low", "legal", "noise"]), tmp=tmp_path)
    assert len(old["concepts"]) > 0 and "concept" in set(old["explanations"].column("method").to_pylist())
    assert_same_tables(new, old)


def test_firing_spill_lookups_and_label_buckets(tmp_path):
    g = np.random.default_rng(0)
    d_sae, rows = 50, np.sort(g.choice(10_000, 3000, replace=False))
    s, truth = FiringSpill(d_sae, tmp_path), {}
    for a in range(0, len(rows), 256):
        chunk = rows[a : a + 256]
        r = np.repeat(chunk, 3)
        c = np.concatenate([np.sort(g.choice(d_sae, 3, replace=False)) for _ in chunk])
        v = g.random(len(r)).astype(np.float32) + 0.1
        s.append(chunk[0], chunk[-1] + 1, r, c, v)
        truth.update({(int(i), int(j)): float(x) for i, j, x in zip(r, c, v)})
    q_rows, q_lat = g.integers(0, 10_001, 5000), g.integers(0, d_sae, 5000)
    want = np.array([truth.get((int(i), int(j)), 0.0) for i, j in zip(q_rows, q_lat)], np.float32)
    assert np.array_equal(s.lookup(q_rows, q_lat), want) and (want > 0).sum() > 50
    assert s.nnz == len(truth) and sum(len(r) for r, _, _ in s.chunks()) == len(truth)
    with pytest.raises(ValueError, match="increasing row order"):
        s.append(0, 5, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    s.close()
    pairs = g.integers(0, 100, 50)
    bounds = latent_blocks(pairs, max_pairs=300, max_latents=20)
    assert bounds[0] == 0 and bounds[-1] == 50 and (np.diff(bounds) <= 20).all()
    assert all(pairs[a:b].sum() <= 300 + pairs[a:b].max() for a, b in zip(bounds[:-1], bounds[1:]))
    lat, key = g.integers(0, 50, 20_000), g.integers(0, 30, 20_000)
    buckets = LabelBuckets(bounds, 30, tmp_path)
    for a in range(0, 20_000, 3000):
        buckets.add(lat[a : a + 3000], key[a : a + 3000])
    got = pd.concat(
        [pd.DataFrame(dict(zip(("l", "k", "n"), buckets.block(b)))) for b in range(len(buckets))], ignore_index=True
    )
    want_counts = pd.DataFrame({"l": lat, "k": key}).value_counts().sort_index()
    assert got.set_index(["l", "k"])["n"].sort_index().astype(int).equals(want_counts.rename("n").astype(int))
    buckets.close()


def _items(topk) -> list:
    return sorted(zip(*(a.tolist() for a in topk.items())))


def test_slices_encode_scan_and_merge_to_the_whole(synth_acts, monkeypatch, tmp_path):
    """The shape of a distributed build: two slices of rows are encoded and scanned on their own (the scan of the
    second advancing the random keys past the first's firings) and their partials merged: the same statistics,
    top-k, samples and label counts as one pass over every row."""
    monkeypatch.setattr(col, "CHUNK", 64)
    ia, sae = synth_acts, _sae(1)
    train, held = np.flatnonzero(~ia.heldout), np.flatnonzero(ia.heldout)
    _, wcorpus = corpora(ia)
    cut = 640  # a chunk boundary: each slice encodes the same chunks as the whole
    whole = encode_train(sae, ia, train, 5, wcorpus, 1, "cpu", tmp_path)
    a, b = (encode_train(sae, ia, r, 5, wcorpus, 1, "cpu", tmp_path) for r in (train[:cut], train[cut:]))
    a_spill, a_nnz = a.spill, a.spill.nnz
    a.merge(b)
    for f in ("fires", "sums", "mx", "dom_fires", "corp_fires", "dom_tokens", "corp_tokens"):
        assert np.allclose(getattr(a, f), getattr(whole, f)), f
    assert _items(a.top) == _items(whole.top) and a.n_rows == whole.n_rows
    assert np.array_equal(a.bigrams.table(40).keys, whole.bigrams.table(40).keys)
    assert np.array_equal(a.bigrams.table(40).freq, whole.bigrams.table(40).freq)
    bounds = latent_blocks(whole.fires, max_pairs=60)
    args = (whole.mx, 3, 2, 7, bounds, tmp_path)
    one = scan_train(whole.spill, ia, train, *args)
    s0 = scan_train(a_spill, ia, train[:cut], *args)
    s0.merge(scan_train(b.spill, ia, train[cut:], *args, rng_offset=a_nnz))
    assert np.array_equal(s0.hist, one.hist) and _items(s0.bands) == _items(one.bands)
    for j in range(len(bounds) - 1):
        assert all(np.array_equal(x, y) for x, y in zip(s0.buckets.block(j), one.buckets.block(j)))
    hcut = 128

    def held_part(rows: np.ndarray, offset: int = 0):
        p = encode_heldout(sae, ia, rows, 3, "cpu", tmp_path)
        p.bands = held_bands(p.spill, whole.mx, 3, 4, 7, offset)
        return p

    h, h0 = held_part(held), held_part(held[:hcut])
    h0.merge(held_part(held[hcut:], h0.spill.nnz))
    assert all(np.array_equal(x, y) for x, y in zip(h0.firing_samples(), h.firing_samples()))
    assert np.array_equal(h0.fires, h.fires)


def test_tiny_workspace_equals_the_in_memory_builder(tiny_ws, tmp_path, monkeypatch):
    """The real tiny workspace (SmolLM2 activations, trained SAEs): the on-disk collect holds the same tokens and
    activations as the in-memory one, and two SAEs index to the same tables, over several label blocks."""
    from pathlib import Path

    from backend.index.build import index_inputs
    from backend.sae.model import load_sae
    from tests._index_fixtures import link_workspace

    monkeypatch.setattr(spill, "BLOCK_LATENTS", 300)
    ws = link_workspace(Path(tiny_ws.path), tmp_path / "ws")
    inp = index_inputs(ws, progress=False)
    ia, old_ia = inp.ia, legacy_index.collect(ws, progress=False)
    old_ia.excluded = ia.excluded  # the old collect had no sink rule; the builders are compared under the same one
    assert isinstance(ia.acts, DiskActs) and not isinstance(old_ia.acts, DiskActs)
    for f in ("token", "window", "domain", "heldout"):
        assert np.array_equal(getattr(ia, f), getattr(old_ia, f)), f
    assert torch.equal(ia.acts[np.arange(len(ia.token))], old_ia.acts)
    cfg, args = ws.config.index, (inp.unembed, inp.token_strings)
    for name in ("topk", "relu"):
        sae = load_sae(ws.sae_dir(name))
        new = index_sae(name, "x", sae, ia, cfg, *args, seed=ws.config.train.seed, spill_dir=tmp_path)
        old = legacy_index.index_sae(name, "x", sae, old_ia, cfg, *args, seed=ws.config.train.seed)
        assert_same_tables(new, old)
    inp.close()


@pytest.mark.parametrize("fixture", ["protein_ws", "recsys_ws"])
def test_concept_workspaces_equal_the_in_memory_builder(fixture, request, tmp_path):
    """Protein residues and recommender items, with their real token concepts: the same tables, concepts included."""
    from pathlib import Path

    from backend.index.build import index_inputs
    from backend.sae.model import load_sae
    from tests._index_fixtures import link_workspace

    ws = link_workspace(Path(request.getfixturevalue(fixture).path), tmp_path / "ws")
    inp = index_inputs(ws, progress=False)
    old_ia = legacy_index.collect(ws, progress=False)
    old_ia.excluded = inp.ia.excluded
    name, seed, args = ws.config.saes[0].name, ws.config.train.seed, (ws.config.index, inp.unembed, inp.token_strings)
    sae = load_sae(ws.sae_dir(name))
    new = index_sae(name, "x", sae, inp.ia, *args, seed=seed, concepts=inp.concepts, spill_dir=tmp_path)
    old = legacy_index.index_sae(name, "x", sae, old_ia, *args, seed=seed, concepts=inp.concepts)
    assert len(old["concepts"]) > 0
    assert_same_tables(new, old)
    inp.close()


def test_excluded_rows_are_shown_but_never_encoded(synth_acts, tmp_path):
    """Rows flagged ``excluded`` (attention sinks, by the cache's rule) with huge activations: no statistic, top
    context or sample comes from them, and inside a context they show activation 0."""
    import dataclasses

    ia = synth_acts
    big = ia.acts.clone()
    rows = np.flatnonzero(ia.token == 7)[::3]  # t7: latent 0 of the SAE fires on most of them
    big[torch.from_numpy(rows)] *= 50
    flagged = np.zeros(len(ia.token), bool)
    flagged[rows] = True
    sae = _sae(1)
    U = torch.from_numpy(np.random.default_rng(3).standard_normal((40, D_IN)).astype(np.float32))
    out = {}
    for name, ex in (("with", flagged), ("without", None)):
        acts = dataclasses.replace(ia, acts=big, excluded=ex, _starts=None)
        out[name] = index_sae(name, "relu", sae, acts, CFG, U, token_strings, seed=7, spill_dir=tmp_path)
    ctx = out["with"]["contexts"].to_pandas()
    centre = ctx["window_row"].to_numpy()  # per context: its window, and the row of its maximum
    start = np.array([np.flatnonzero(ia.window == w)[0] for w in centre])
    focus_rows = start + ctx["win_offset"].to_numpy() + ctx["focus"].to_numpy()
    fired = ctx["max_act"].to_numpy() > 0
    assert not np.isin(focus_rows[fired], rows).any()  # no context is centred on an excluded row
    saes = out["with"]["saes"].to_pandas()
    train, held = ia.split_rows()
    assert saes["n_tokens"][0] == len(np.setdiff1d(train, rows)) and saes["n_heldout"][0] == len(
        np.setdiff1d(held, rows)
    )
    lat = {k: v["latents"].to_pandas().set_index("latent") for k, v in out.items()}
    assert lat["with"]["max_act"].max() < lat["without"]["max_act"].max() / 5  # the 50x rows made the maxima
