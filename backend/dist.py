"""The build under torchrun: the process group and the few collective steps the build uses.

``torchrun --nproc_per_node N -m backend build CONFIG`` starts N copies of the build; each reads its rank from
the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and ``group()`` joins them into
one torch.distributed group: NCCL when CUDA is present (each rank on its own GPU, ``cuda:LOCAL_RANK``), gloo on
CPUs. Without WORLD_SIZE (a plain ``python -m backend build``), or with WORLD_SIZE=1, nothing is initialized and
every helper here is the single-process identity: rank 0 of 1, barriers return at once.

What runs where (backend/build.py):
    windows, subdomains, eval, coverage  rank 0 only (``on_rank0``); the other ranks wait for it
    activations   every rank captures a disjoint run of the cache's shards (data/activations.py); rank 0 writes
                  meta.json and renames the folder into place
    train         data parallel: every rank reads the same global batches and trains on its slice of each;
                  the losses are shares of the global batch's loss, so summed gradients equal the
                  single-process gradient (sae/parallel.py)
    index         every rank encodes and scans its run of whole windows per SAE; the partials go to rank 0
                  (``gather_to_leader``), which merges, labels and writes the index (index/sae_index.py)

Rank 0 speaks for the group: it holds the workspace lock (the others' ``workspace_lock`` is a no-op, see
atomic.follow_group_leader) and it alone prints progress and writes every file but its own cache shards.
Control messages (barriers, rank 0's success or failure) travel over gloo even when the tensors go over NCCL,
so ranks waiting for rank 0's steps hold no GPU. The group's timeout is ``SAEX_DIST_TIMEOUT_H`` hours
(default 24): ranks wait that long at a barrier for rank 0's steps. All ranks must see one shared workspace
folder (a shared filesystem across nodes).

``active()`` is False inside a rank-0-only step (``on_rank0``), so code it calls (a subdomain's cache, an
evaluation) runs single-process there even though the group exists.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from backend import atomic

T = TypeVar("T")
_state: dict[str, Any] = {"ctrl": None, "solo": 0}  # the gloo control group; depth of rank-0-only steps


class RankFailed(RuntimeError):
    """Rank 0 failed in a step the other ranks were waiting for (its message says why)."""


def requested() -> bool:
    """Whether this process was started by torchrun with more than one rank (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


@contextmanager
def group() -> Iterator[None]:
    """Join the torchrun group for the block (no-op without WORLD_SIZE > 1); leave it after."""
    if not requested():
        yield
        return
    import torch
    import torch.distributed as td

    hours = float(os.environ.get("SAEX_DIST_TIMEOUT_H", "24"))
    timeout = datetime.timedelta(hours=hours)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    td.init_process_group(backend, timeout=timeout)
    _state["ctrl"] = td.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    atomic.follow_group_leader(td.get_rank() != 0)
    try:
        yield
        barrier()  # every rank done before any leaves the group
    finally:
        atomic.follow_group_leader(False)
        _state["ctrl"] = None
        td.destroy_process_group()


def active() -> bool:
    """A group of several ranks is running and this is not a rank-0-only step."""
    if _state["solo"]:
        return False
    try:
        import torch.distributed as td
    except ImportError:  # pragma: no cover - torch without distributed support
        return False
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when no group is active)."""
    import torch.distributed as td

    return td.get_rank() if active() else 0


def size() -> int:
    """The number of ranks (1 when no group is active)."""
    import torch.distributed as td

    return td.get_world_size() if active() else 1


def is_leader() -> bool:
    """Rank 0, or a single process: the one that prints and writes."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (over the gloo control group)."""
    if active():
        import torch.distributed as td

        td.barrier(group=_state["ctrl"])


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (any picklable value)."""
    if not active():
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0, group=_state["ctrl"])
    return box[0]


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * size()
    td.all_gather_object(out, obj, group=_state["ctrl"])
    return out


def gather_to_leader(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0, None on the others (``[obj]`` in a single process)."""
    if not active():
        return [obj]
    import torch.distributed as td

    out: list[Any] | None = [None] * size() if rank() == 0 else None
    td.gather_object(obj, out, dst=0, group=_state["ctrl"])
    return out


@contextmanager
def rank0_step() -> Iterator[bool]:
    """A block that rank 0 runs alone (single-process inside: ``active()`` is False there) while the other ranks
    wait at its end: yields whether this rank runs it (``with rank0_step() as mine: if mine: ...``). A failure
    on rank 0 is raised on every rank (RankFailed on the others, saying what rank 0 said): none is left waiting."""
    if not active():
        yield True
        return
    err: Exception | None = None
    if rank() == 0:
        _state["solo"] += 1
        try:
            yield True
        except Exception as e:
            err = e
        finally:
            _state["solo"] -= 1
    else:
        yield False
    said = broadcast(None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    if said is not None:
        raise RankFailed(f"rank 0 failed, so rank {rank()} stops too: {said}")


def on_rank0(fn: Callable[..., T], *args: Any, **kw: Any) -> T | None:
    """``fn(*args, **kw)`` in a ``rank0_step``: its value on rank 0, None on the other ranks."""
    out = None
    with rank0_step() as mine:
        if mine:
            out = fn(*args, **kw)
    return out


def rank0_first(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """``fn(*args, **kw)`` on rank 0, then (once it succeeded) on the other ranks; every rank gets its own
    value. For opening what rank 0 may have to write first (a workspace's config, a cache's exclusion record);
    ``fn`` must not use the group."""
    out = on_rank0(fn, *args, **kw)
    return out if is_leader() else fn(*args, **kw)  # type: ignore[return-value]


# ---- tensors: the data plane (NCCL on GPUs, gloo on CPUs) ----------------------------------------------
def _comm_device():
    import torch
    import torch.distributed as td

    return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(t, op: str = "sum"):
    """The elementwise sum / max / min of ``t`` over the ranks (a new tensor on ``t``'s device)."""
    import torch.distributed as td

    if not active():
        return t.clone()
    ops = {"sum": td.ReduceOp.SUM, "max": td.ReduceOp.MAX, "min": td.ReduceOp.MIN}
    buf = t.detach().to(_comm_device(), copy=True)
    td.all_reduce(buf, op=ops[op])
    return buf.to(t.device)


def all_gather(t):
    """Every rank's ``t`` (the same shape on every rank) concatenated along dim 0 in rank order."""
    import torch
    import torch.distributed as td

    if not active():
        return t.clone()
    buf = t.detach().to(_comm_device()).contiguous()
    parts = [torch.empty_like(buf) for _ in range(size())]
    td.all_gather(parts, buf)
    return torch.cat(parts).to(t.device)
