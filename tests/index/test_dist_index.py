"""Indexing one SAE across ranks (backend/index/sae_index.py under a torch.distributed group) equals indexing it in
one process: 3 gloo processes on CPU, each encoding and scanning its own slice of the rows, the partials merged
on rank 0; every table (statistics, top contexts, seeded quantile and held-out samples, labels, their scores,
concept matches) equal to float tolerance, with many encode chunks and latent blocks. The whole torchrun build
is compared with a single-process build in tests/test_distributed.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from backend.index import collect as col
from backend.index import spill
from backend.index.sae_index import index_sae
from tests.index.test_bounded_index import CFG, _sae, assert_same_tables, token_strings

pytest_plugins = ("tests._index_fixtures",)
WORLD = 3


def _small_blocks() -> None:
    col.CHUNK, spill.BLOCK_PAIRS, spill.BLOCK_LATENTS = 64, 40, 5


def _args(ia):
    U = torch.from_numpy(np.random.default_rng(3).standard_normal((40, 16)).astype(np.float32))
    return ("a", "relu", _sae(1), ia, CFG, U, token_strings)


def _labels(ia) -> tuple[np.ndarray, list[str]]:
    g = np.random.default_rng(5)
    labels = np.stack([ia.token == 7, ia.token < 10, ia.domain == 1, g.random(len(ia.token)) < 0.3], 1)
    return labels, ["seven", "low", "legal", "noise"]


def _rank(rank: int, ia, folder: str) -> None:
    import torch.distributed as td

    from backend.index import sae_index

    td.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        _small_blocks()
        rows = sae_index._rank_slice(np.flatnonzero(~ia.heldout), ia)
        tables = index_sae(*_args(ia), seed=7, concepts=_labels(ia), spill_dir=folder)
        out = {"rows": rows, "tables": tables}
        with open(f"{folder}/rank{rank}.pkl", "wb") as f:
            pickle.dump(out, f)
    finally:
        td.destroy_process_group()


@pytest.mark.slow
def test_three_ranks_index_like_one_process(synth_acts, monkeypatch, tmp_path):
    ia = synth_acts
    mp.spawn(_rank, args=(ia, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]
    # every rank encoded a nonempty run of whole windows, and together they are the train rows, once each
    parts = [r["rows"] for r in ranks]
    assert all(len(p) for p in parts)
    assert np.array_equal(np.concatenate(parts), np.flatnonzero(~ia.heldout))
    assert all(ia.window[a[-1]] != ia.window[b[0]] for a, b in zip(parts, parts[1:]))
    for r in (1, 2):
        assert ranks[r]["tables"] == {}  # only rank 0 yields tables

    monkeypatch.setattr(col, "CHUNK", 64)
    monkeypatch.setattr(spill, "BLOCK_PAIRS", 40)
    monkeypatch.setattr(spill, "BLOCK_LATENTS", 5)
    one = index_sae(*_args(ia), seed=7, concepts=_labels(ia), spill_dir=tmp_path)
    assert_same_tables(ranks[0]["tables"], one)
    kinds = set(one["contexts"].to_pandas()["kind"])
    assert {"top", "q0", "hpos", "hneg"} <= kinds and len(one["concepts"])  # every part was compared
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".pkl" and p.name != "rendezvous"]  # spills unlinked
