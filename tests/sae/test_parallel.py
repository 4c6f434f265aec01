"""Data-parallel training (sae/parallel.py): two gloo ranks, each on its slice of the same global batches, end
with the single-process trainer's state (weights, Adam moments, dead-latent counters, BatchTopK threshold,
target-L0 controller, logged stats) for every architecture and loss term, within float32 summation order; and a
failing rank-0 step (backend/dist.py) stops both ranks."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp

from backend import dist
from backend.config import SaeConfig, TrainConfig
from backend.sae.parallel import SplitBatch, WholeBatch, batch_reducer
from backend.sae.train import Trainer

VARIANTS = {
    "topk_auxk": dict(architecture="topk", d_sae=96, k=4, auxk_coef=1 / 32),
    "topk_matryoshka_bf16": dict(architecture="topk", d_sae=96, k=4, matryoshka_widths=[24, 96]),
    "batchtopk_tilted": dict(architecture="batchtopk", d_sae=96, k=4, term_tilt=0.5),
    "batchtopk_ortho": dict(architecture="batchtopk", d_sae=96, k=4, ortho_coef=0.1, ortho_chunk=32),
    "relu_target_l0": dict(architecture="relu", d_sae=96, l1_coef=5.0, target_l0=6),
    "jumprelu_matryoshka": dict(architecture="jumprelu", d_sae=96, k=4, matryoshka_widths=[24, 96]),
}
SIZES = [160] * 10 + [3, 1]  # the global batches; the last two leave a rank 1 row, then none
RTOL, ATOL = 1e-4, 1e-5  # float32 summation order over 12 steps of Adam; ATOL is relative to the tensor's scale
# (the 1-row batch has zero variance: its FVU, gradients and Adam moments are ~1e11)


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    D = torch.nn.functional.normalize(torch.randn(64, 24, generator=g), dim=1)
    n = sum(SIZES)
    idx = torch.randint(0, 64, (n, 3), generator=g)
    x = ((torch.rand(n, 3, generator=g) * 3 + 0.5)[..., None] * D[idx]).sum(1) + 0.5
    return list(torch.split(x, SIZES))


def _train(name: str) -> dict[str, torch.Tensor]:
    """One variant over the global batches; its whole state as tensors."""
    cfg = SaeConfig(name=name, **VARIANTS[name])
    dtype = "bfloat16" if name.endswith("bf16") else "float32"
    tcfg = TrainConfig(batch_size=160, lr=2e-3, dead_tokens=320, lr_warmup_steps=2, lr_decay_frac=0.3, dtype=dtype)
    tcfg = dataclasses.replace(tcfg, l1_warmup_frac=0.1)
    tr = Trainer(cfg, tcfg, 24, sum(SIZES), device=torch.device("cpu"))
    stats = [list(tr.train_step(x).values()) for x in _batches()]
    out = {f"p.{n}": p.detach().clone() for n, p in tr.sae.named_parameters()}
    for i, p in enumerate(tr.sae.parameters()):
        for k, v in tr.opt.state.get(p, {}).items():
            out[f"adam.{i}.{k}"] = torch.as_tensor(v).clone()
    out["since_fired"] = tr.since_fired.clone()
    out["stats"] = torch.tensor(stats, dtype=torch.float64)
    out["scalars"] = torch.tensor([tr.scale, tr.bt_threshold, tr.sparsity_mult, tr.sparsity_integral, tr.tokens])
    return out


def _fail() -> None:
    raise ValueError("the index could not be written")


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        assert isinstance(batch_reducer(), SplitBatch)
        res = {name: _train(name) for name in VARIANTS}
        try:  # a rank-0 step that fails fails every rank, none left waiting
            dist.on_rank0(_fail)
        except Exception as e:
            res["failure"] = f"{type(e).__name__}: {e}"
        if rank == 0:
            torch.save(res, out)
        else:
            Path(out).with_suffix(".rank1").write_text(res["failure"])
        td.barrier()
    finally:
        td.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    d = tmp_path_factory.mktemp("ddp")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    mp.spawn(_worker, args=(2, str(d / "init"), str(d / "out.pt")), nprocs=2, join=True)
    res = torch.load(d / "out.pt", weights_only=True)
    res["failure@1"] = (d / "out.rank1").read_text()
    return res


def test_one_process_gets_the_whole_batch():
    assert type(batch_reducer()) is WholeBatch


def test_a_failed_rank0_step_stops_every_rank(two_ranks):
    assert two_ranks["failure"] == "ValueError: the index could not be written"
    assert two_ranks["failure@1"].startswith("RankFailed: rank 0 failed, so rank 1 stops too: ValueError: the index")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_two_ranks_end_with_the_single_process_state(two_ranks, name):
    torch.set_num_threads(1)
    want, got = _train(name), two_ranks[name]
    assert sorted(want) == sorted(got)
    for key in want:
        a, b = want[key], got[key]
        if key == "since_fired":  # integer counters: exact
            assert torch.equal(a, b), key
        else:
            atol = ATOL * max(1.0, float(a.abs().max()))
            assert torch.allclose(a.double(), b.double(), rtol=RTOL, atol=atol), (key, (a - b).abs().max())
