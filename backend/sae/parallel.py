"""Data-parallel training: the reductions over a training batch, whole (one process) or split across ranks.

The trainer (sae/train.py) computes every quantity that depends on the whole batch through a ``WholeBatch``:
the FVU's variance denominator, the mean / tilted mean over tokens, the latents that fired, BatchTopK's
batch-level threshold, the logged stats. In one process these are the plain functions (the trainer's
arithmetic is exactly what it was before this module existed). Under torchrun (backend/dist.py) the trainer
gets a ``SplitBatch`` instead:

- Every rank reads the same global batches (the shard cache's ``batches`` on the same seed) and keeps its
  slice of each: rows [r n / W, (r+1) n / W) of the n rows, for rank r of W.
- Every loss term is computed as this rank's *share* of the global batch's term, normalized by the global
  batch (sum over my rows / n, with the global variance and the global log-sum-exp), so the shares sum to the
  single-process loss and their gradients sum to its gradient: ``reduce_grads`` all-reduces the gradients
  with a sum (the same as averaging W x share). A term with no data (OrtSAE's penalty on W_dec) counts on
  rank 0 only (``once``).
- Global statistics are all-reduced: sum x and sum ||x||^2 (float64) for the variance, the max and the sum of
  exp for TERM's log-sum-exp, the union of fired latents, the min kept BatchTopK value.
- BatchTopK keeps the top k n activations of the *global* batch: each rank all-gathers its k n largest
  candidates (padded with -inf), finds the global (k n)-th value and keeps its own candidates at or above it.
- The first batch (input scale, b_dec, JumpReLU thresholds) is the global batch on every rank (each has it).

So weights, Adam state, dead-latent counters, AuxK, the target-L0 controller and the learning-rate schedule
follow the single-process run; they differ only by float32 summation order (a matmul over n/W rows, gradients
summed in two parts), about 1e-6 relative per step (tests/sae/test_parallel.py checks 1e-4 after 20 steps).
A BatchTopK tie at the threshold would keep both tied pairs (single-process keeps one of them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from backend import dist
from backend.sae import losses


class WholeBatch:
    """One process: the batch is the whole batch; every reduction is the plain one."""

    leader = True  # this process writes the checkpoints and the SAE

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """This process's rows of the global batch x (N, d): all of them."""
        return x

    def rows(self, x: torch.Tensor) -> int:
        """The rows of the global batch whose slice is x (here x is the whole batch)."""
        return len(x)

    def variance(self, x: torch.Tensor) -> torch.Tensor:
        """losses.total_variance of the global batch."""
        return losses.total_variance(x)

    def tilted(self, per_tok: torch.Tensor, t: float) -> torch.Tensor:
        """losses.tilted over the global batch."""
        return losses.tilted(per_tok, t)

    def mean(self, v: torch.Tensor) -> torch.Tensor:
        """The mean over the global batch of a per-token value v (n,)."""
        return torch.mean(v)

    def any(self, mask: torch.Tensor) -> torch.Tensor:
        """Elementwise 'on some rank' of a bool tensor."""
        return mask

    def flag(self, b: bool) -> bool:
        """True when ``b`` holds on some rank."""
        return b

    def once(self, term: torch.Tensor) -> torch.Tensor:
        """A term that does not depend on the batch (counted once in the global loss)."""
        return term

    def batch_topk(self, values: torch.Tensor, kn: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The entries of the flat ``values`` among the kn largest of the global batch: (their values, their
        indices in ``values``, the smallest kept value)."""
        v, i = values.topk(kn, sorted=False)
        return v, i, v.min()

    def min(self, v: torch.Tensor) -> float | None:
        """min(v) over the global batch (None when empty)."""
        return float(v.min()) if len(v) else None

    def total(self, *values: torch.Tensor | float) -> list[float]:
        """The global values of the logged stats (in one process, the values themselves)."""
        return [float(v) for v in values]

    def reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Sum the gradients over the ranks (nothing to do in one process)."""

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has saved)."""


class SplitBatch(WholeBatch):
    """Rank r of W (torchrun): rows [r n / W, (r+1) n / W) of each global batch; reductions over all ranks."""

    def __init__(self) -> None:
        self.rank, self.size = dist.rank(), dist.size()
        self.leader = self.rank == 0
        self.n = 0  # rows of the current global batch (set by split)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        self.n = len(x)
        return x[self.n * self.rank // self.size : self.n * (self.rank + 1) // self.size]

    def rows(self, x: torch.Tensor) -> int:
        return self.n

    def variance(self, x: torch.Tensor) -> torch.Tensor:
        """(sum ||x||^2 - n ||mean||^2) / n from all-reduced float64 sums."""
        xd = x.detach().double()
        s = dist.all_reduce(torch.cat([xd.sum(0), xd.pow(2).sum().reshape(1)]))
        mean = s[:-1] / self.n
        var = s[-1] / self.n - mean.pow(2).sum()
        return var.to(x.dtype).clamp_min(1e-12)

    def tilted(self, per_tok: torch.Tensor, t: float) -> torch.Tensor:
        """Share of TERM's R(t) = (logsumexp(t l) - log n) / t: value R / W; gradient softmax(t l)_i for my rows."""
        if t == 0:
            return per_tok.sum() / self.n
        tl = t * per_tok.detach().double()
        local_max = tl.max() if len(tl) else tl.new_tensor(-math.inf)
        m = dist.all_reduce(local_max.reshape(1), "max")[0]
        lse = m + dist.all_reduce((tl - m).exp().sum().reshape(1))[0].log()
        r = (lse - math.log(self.n)) / t
        w = (tl - lse).exp()  # (n_mine,) the global softmax weights of my rows
        share = (w * per_tok.double()).sum()
        return (share - share.detach() + r / self.size).to(per_tok.dtype)

    def mean(self, v: torch.Tensor) -> torch.Tensor:
        return v.sum() / self.n

    def any(self, mask: torch.Tensor) -> torch.Tensor:
        return dist.all_reduce(mask.to(torch.int32), "max").bool()

    def flag(self, b: bool) -> bool:
        return bool(dist.all_reduce(torch.tensor([int(b)], dtype=torch.int32), "max")[0])

    def once(self, term: torch.Tensor) -> torch.Tensor:
        return term if self.leader else term * 0.0

    def batch_topk(self, values: torch.Tensor, kn: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = min(kn, values.numel())
        v, i = values.topk(m, sorted=False)
        padded = torch.full((kn,), -math.inf, dtype=v.dtype, device=v.device)
        padded[:m] = v
        thr = dist.all_gather(padded).topk(kn, sorted=False).values.min()
        keep = v >= thr
        return v[keep], i[keep], thr

    def min(self, v: torch.Tensor) -> float | None:
        local = v.detach().min().reshape(1) if len(v) else v.new_full((1,), math.inf)
        t = float(dist.all_reduce(local, "min")[0])
        return t if math.isfinite(t) else None

    def total(self, *values: torch.Tensor | float) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        return dist.all_reduce(t).tolist()

    def reduce_grads(self, params: Iterable[torch.nn.Parameter]) -> None:
        """One all-reduce (sum) of every trainable parameter's gradient. A parameter with no gradient on this
        rank but one on another gets zeros here first; one with none anywhere keeps None (Adam skips it, as in
        one process)."""
        ps = [p for p in params if p.requires_grad]
        if not ps:
            return
        has = self.any(torch.tensor([p.grad is not None for p in ps]))
        ps = [p for p, h in zip(ps, has.tolist(), strict=True) if h]
        for p in ps:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = dist.all_reduce(torch.cat([p.grad.reshape(-1) for p in ps]))
        o = 0
        for p in ps:
            p.grad.copy_(flat[o : o + p.numel()].view(p.shape))
            o += p.numel()

    def barrier(self) -> None:
        dist.barrier()


def batch_reducer() -> WholeBatch:
    """SplitBatch under an active torchrun group (backend/dist.py), else WholeBatch."""
    return SplitBatch() if dist.active() else WholeBatch()
