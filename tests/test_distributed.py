"""`torchrun -m backend build` equals `python -m backend build`: configs/dist_tiny.yaml (real SmolLM2, two small
corpora, a TopK and a BatchTopK SAE, eval and index) built once by two gloo ranks on CPU and once by one process,
both with one thread per process so that the same forward batches give the same bits.

Equal: the activation cache (meta.json and every shard, bit for bit), the index's top and sampled contexts (the
same windows and positions, in the same ranks; each rank encoded its own slice of the rows, backend/index/sae_index.py),
statistics, labels and their scores. Within float tolerance (summation order: a matmul
over half the rows, gradients summed in two parts): SAE weights (atol 1e-5; ~1e-7 seen), training and
evaluation metrics (rel 1e-4), contexts' activations (atol 1e-4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
SITE = "blocks.6.hook_resid_post"
SAES = ("topk", "batchtopk")


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> tuple[Path, Path]:
    """(single-process workspace, 2-rank workspace), built side by side."""
    d = tmp_path_factory.mktemp("dist")
    cfg = d / "dist_tiny.yaml"
    shutil.copy(REPO / "configs" / "dist_tiny.yaml", cfg)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    build = ["-m", "backend", "build", str(cfg), "--workspace"]
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    runs = {
        "single": [sys.executable, *build, str(d / "single")],
        "dist": [sys.executable, *torchrun, *build, str(d / "dist")],
    }
    procs = {k: subprocess.Popen(c, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, c in runs.items()}  # fmt: skip
    for name, p in procs.items():
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, f"{name} build failed:\n{out[-4000:]}"
    return d / "single", d / "dist"


def _meta(ws: Path) -> dict:
    return json.loads((ws / "activations" / SITE / "meta.json").read_text())


@pytest.mark.slow
def test_the_ranks_write_the_single_process_cache(builds):
    single, dist = builds
    meta = _meta(single)
    assert _meta(dist) == meta  # shards, token count, the attention-sink rule's record
    assert len(meta["shards"]) >= 2  # so both ranks captured some
    for name in meta["shards"]:
        a, b = (load_file(str(ws / "activations" / SITE / name)) for ws in builds)
        for key in ("token_ids", "window", "pos", "acts"):
            assert torch.equal(a[key], b[key]), (name, key)
    assert not [p for p in (dist / "activations").iterdir() if p.name.startswith(".")]  # no temporaries left


@pytest.mark.slow
@pytest.mark.parametrize("sae", SAES)
def test_the_saes_and_their_metrics_match(builds, sae):
    single, dist = (ws / "saes" / sae for ws in builds)
    a, b = (load_file(str(d / "sae_weights.safetensors")) for d in (single, dist))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), (key, (a[key] - b[key]).abs().max())
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (single, dist))
    assert (ma["train"]["tokens"], ma["train"]["steps"]) == (mb["train"]["tokens"], mb["train"]["steps"])
    for key in ("final_fvu", "final_l0", "dead_frac"):
        assert ma["train"][key] == pytest.approx(mb["train"][key], rel=1e-4, abs=1e-6), key
    for key in ("fvu", "l0", "mse", "cosine", "dead_frac"):  # evaluation (rank 0 in the torchrun build)
        assert ma[key] == pytest.approx(mb[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_the_index_has_the_same_top_contexts_and_labels(builds):
    from backend.index.store import IndexReader

    readers = [IndexReader(ws / "index.duckdb") for ws in builds]
    try:
        q = "SELECT sae, latent, kind, rank, window_row, win_offset, focus, max_act FROM contexts ORDER BY ALL"
        a, b = (r.df(q) for r in readers)
        assert len(a) and a.drop(columns="max_act").equals(b.drop(columns="max_act"))
        assert (a.max_act - b.max_act).abs().max() < 1e-4
        assert {"top", "q0", "hpos", "hneg"} <= set(a.kind)  # train and held-out contexts, both encoded by slices
        q = (
            "SELECT sae, latent, density, mean_act, label, top_tokens, hist_counts, domain_rates, top_corpus, "
            "confidence, fuzz FROM latents ORDER BY sae, latent"
        )
        a, b = (r.df(q) for r in readers)
        same = ["sae", "latent", "density", "label", "top_tokens", "domain_rates", "top_corpus", "confidence", "fuzz"]
        assert a[same].equals(b[same])
        assert all((x == y).all() for x, y in zip(a.hist_counts, b.hist_counts))
        assert (a.mean_act - b.mean_act).abs().max() < 1e-4
        q = "SELECT sae, latent, method, label, detection, fuzz FROM explanations ORDER BY ALL"
        a, b = (r.df(q) for r in readers)
        assert len(a) and a.equals(b)
    finally:
        for r in readers:
            r.close()


def test_other_commands_refuse_to_run_under_torchrun(monkeypatch, capsys):
    from backend.__main__ import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["corpora"]) == 2
    assert "only `build` runs under torchrun" in capsys.readouterr().err


def test_one_process_initializes_nothing(monkeypatch):
    import torch.distributed as td

    from backend import dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with dist.group():
        assert not td.is_initialized() and not dist.active()
        assert (dist.rank(), dist.size(), dist.is_leader()) == (0, 1, True)
        assert dist.on_rank0(lambda: 7) == 7 and dist.broadcast("x") == "x" and dist.gather(1) == [1]
