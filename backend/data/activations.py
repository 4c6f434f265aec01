"""Activations at a hook site: a streaming pipeline and an on-disk shard cache.

``stream_activations`` runs the adapter over context windows (the forward pass stops after the
hooked block) and yields only kept tokens (no BOS, padding or special tokens), each with its
token id, window row and position, so the indexer can map activations back to text.

``ShardCache`` stores those rows as safetensors shards (activations in float16 by default)
so several SAEs train on one pass of the model. A cache is written into a temporary folder and
renamed into place when complete: an interrupted build leaves no half cache behind.

Attention sinks ("massive activations"): a few tokens of small LMs, mostly the first content token of
a window, have residual norms 15-200x the median (83 of 250k tokens at SmolLM2's block 12 hold most of
the variance). They are decided once per cache, at build time, by an explicit rule (``Exclusion``:
positions below ``first_positions`` and tokens whose norm exceeds ``norm_factor`` x the cache's median
norm) recorded in meta.json; ``batches`` and ``all_acts`` then serve the normal tokens only, so SAEs
neither train nor are scored on them (SAELens and SAEBench do the same). They stay in the cache.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from backend import dist
from backend.adapters.base import ModelAdapter
from backend.atomic import atomic_dir, atomic_write_text

_DT = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class ActChunk:
    """Kept-token activations of one forward batch. n = number of kept tokens."""

    acts: torch.Tensor  # (n, d) float32
    token_ids: torch.Tensor  # (n,) long
    window: torch.Tensor  # (n,) long, row index into the windows table
    pos: torch.Tensor  # (n,) long, position within the window (BOS = 0)


def stream_activations(
    adapter: ModelAdapter,
    windows: pd.DataFrame,
    site: str,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = True,
    desc: str = "activations",
) -> Iterator[ActChunk]:
    """Yield kept-token activations at ``site`` over the windows table, in row order."""
    total = int(windows["token_ids"].map(len).sum())
    if max_tokens:
        total = min(total, max_tokens)
    bar = tqdm(total=total, desc=desc, unit="tok", disable=not progress, dynamic_ncols=True)
    seen = 0
    try:
        for start in range(0, len(windows), batch_size):
            rows = windows.iloc[start : start + batch_size]
            batch = adapter.batch_from_ids(list(rows["token_ids"]))
            acts = adapter.capture(batch, site)  # (B, T, d)
            keep = batch.keep_mask.to(acts.device)
            b_idx, t_idx = keep.nonzero(as_tuple=True)
            chunk = ActChunk(
                acts=acts[b_idx, t_idx].float().cpu(),
                token_ids=batch.input_ids[b_idx.cpu(), t_idx.cpu()],
                window=torch.from_numpy(rows.index.to_numpy().copy())[b_idx.cpu()],
                pos=t_idx.cpu(),
            )
            if max_tokens and seen + len(chunk.acts) > max_tokens:
                n = max_tokens - seen
                chunk = ActChunk(chunk.acts[:n], chunk.token_ids[:n], chunk.window[:n], chunk.pos[:n])
            seen += len(chunk.acts)
            bar.update(len(chunk.acts))
            if not torch.isfinite(chunk.acts).all():
                raise FloatingPointError(
                    f"non-finite activations at {site} in windows {start}..{start + len(rows) - 1}"
                )
            yield chunk
            if max_tokens and seen >= max_tokens:
                break
    finally:
        bar.close()


@dataclass(frozen=True)
class Exclusion:
    """Which cached tokens are not normal: attention-sink / massive-activation tokens (decided at build time)."""

    first_positions: int = 0  # kept tokens at window positions below this are excluded (BOS is never cached)
    norm_factor: float = 10.0  # tokens whose L2 norm exceeds norm_factor x the cache's median norm are excluded
    median_norm: float = float("inf")
    n_excluded: int = 0

    @property
    def threshold(self) -> float:
        return self.norm_factor * self.median_norm if self.norm_factor > 0 else float("inf")

    def normal(self, acts: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(n,) bool: the rows that are normal tokens."""
        ok = pos.long() >= self.first_positions
        if math.isfinite(self.threshold):
            ok &= acts.float().norm(dim=1) <= self.threshold
        return ok


class ShardCache:
    """A folder of activation shards: meta.json + shard_NNNNN.safetensors.

    Each shard holds ``acts`` (n, d) in the cache dtype, and ``token_ids``, ``window``, ``pos``.
    Satisfies the trainer's source protocol: ``d_in``, ``n_tokens``, ``batches(batch_size, seed)``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_p = self.path / "meta.json"
        if not meta_p.exists():
            raise FileNotFoundError(
                f"no activation cache at {self.path}: build the workspace first (`python -m backend build`)"
            )
        self.meta = json.loads(meta_p.read_text())
        self.d_in: int = self.meta["d_in"]
        self.n_tokens: int = self.meta["n_tokens"]
        self.site: str = self.meta["site"]
        self.shards = [self.path / s for s in self.meta["shards"]]
        ex = self.meta.get("exclusion")
        self.exclusion: Exclusion | None = Exclusion(**ex) if ex else None

    @property
    def n_normal(self) -> int:
        """Tokens that ``batches`` and ``all_acts`` serve (all of them when no exclusion was decided)."""
        return self.n_tokens - (self.exclusion.n_excluded if self.exclusion else 0)

    def decide_exclusion(self, first_positions: int = 0, norm_factor: float = 10.0) -> Exclusion:
        """Measure the median token norm over the whole cache, count the tokens the rule excludes, and record
        the rule in meta.json (atomically). Idempotent: the same rule on the same cache gives the same record."""
        norms, low_pos = [], 0
        for i in range(len(self.shards)):
            sh = self.load_shard(i)
            n = sh["acts"].float().norm(dim=1)
            keep_pos = sh["pos"].long() >= first_positions
            low_pos += int((~keep_pos).sum())
            norms.append(n[keep_pos])
        allnorm = torch.cat(norms) if norms else torch.empty(0)
        median = float(allnorm.median()) if len(allnorm) else float("inf")
        over = int((allnorm > norm_factor * median).sum()) if norm_factor > 0 and len(allnorm) else 0
        ex = Exclusion(first_positions, float(norm_factor), median, low_pos + over)
        self.meta["exclusion"] = asdict(ex)
        atomic_write_text(self.path / "meta.json", json.dumps(self.meta, indent=1))
        self.exclusion = ex
        return ex

    def _normal_rows(self, shard: dict[str, torch.Tensor]) -> torch.Tensor:
        acts = shard["acts"]
        if self.exclusion is None:
            return acts.float()
        return acts[self.exclusion.normal(acts, shard["pos"])].float()

    @staticmethod
    def build(
        adapter: ModelAdapter,
        windows: pd.DataFrame,
        site: str,
        out: str | Path,
        *,
        batch_size: int = 8,
        max_tokens: int | None = None,
        shard_tokens: int = 65_536,
        dtype: str = "float16",
        progress: bool = True,
    ) -> ShardCache:
        """Capture the kept tokens of ``windows`` (in row order, the first ``max_tokens``) into a cache at ``out``,
        a new shard whenever ``shard_tokens`` are buffered. Under torchrun (backend/dist.py) every rank captures
        its run of the same shards (``_build_split``)."""
        out = Path(out)
        if dist.active():
            return _build_split(adapter, windows, site, out, batch_size, max_tokens, shard_tokens, dtype, progress)
        with atomic_dir(out) as tmp:
            chunks = stream_activations(adapter, windows, site, batch_size, max_tokens, progress, desc=f"cache {site}")
            names, total = _write_shards(chunks, tmp, 0, shard_tokens, dtype)
            _write_meta(tmp, adapter, site, dtype, names, total)
        return ShardCache(out)

    def load_shard(self, i: int) -> dict[str, torch.Tensor]:
        return load_file(str(self.shards[i]))

    def all_acts(self, max_tokens: int | None = None, *, with_ids: bool = False):
        """The first ``max_tokens`` normal-token activations as one float32 tensor (n, d) (mind memory for big
        caches); with ``with_ids`` also their token ids (n,), aligned row for row."""
        out, ids, n = [], [], 0
        for i in range(len(self.shards)):
            sh = self.load_shard(i)
            keep = self.exclusion.normal(sh["acts"], sh["pos"]) if self.exclusion else slice(None)
            out.append(sh["acts"][keep].float())
            ids.append(sh["token_ids"][keep].long())
            n += len(out[-1])
            if max_tokens and n >= max_tokens:
                break
        x, t = torch.cat(out), torch.cat(ids)
        if max_tokens:
            x, t = x[:max_tokens], t[:max_tokens]
        return (x, t) if with_ids else x

    def ensure_exclusion(self, first_positions: int, norm_factor: float) -> Exclusion:
        """The cache's exclusion for this rule: the recorded one, or decided now (a cache built before the rule
        existed, or a changed rule)."""
        ex = self.exclusion
        if ex is None or (ex.first_positions, ex.norm_factor) != (first_positions, float(norm_factor)):
            ex = self.decide_exclusion(first_positions, norm_factor)
        return ex

    def batches(self, batch_size: int, seed: int = 0, mix_shards: int = 4) -> Iterator[torch.Tensor]:
        """One shuffled epoch of float32 batches (n <= batch_size, d) of normal tokens: shards in random order,
        ``mix_shards`` of them mixed at a time, rows permuted within the mix."""
        g = np.random.default_rng(seed)
        order = g.permutation(len(self.shards))
        carry = torch.empty(0, self.d_in)
        for s in range(0, len(order), mix_shards):
            group = [self._normal_rows(self.load_shard(int(i))) for i in order[s : s + mix_shards]]
            pool = torch.cat([carry, *group])
            pool = pool[torch.from_numpy(g.permutation(len(pool)))]
            n_full = len(pool) // batch_size * batch_size
            for b in range(0, n_full, batch_size):
                yield pool[b : b + batch_size]
            carry = pool[n_full:]
        if len(carry):
            yield carry


# ---- writing a cache, in one process or split across the ranks of a torchrun group ---------------------
def _write_shards(
    chunks: Iterator[ActChunk], folder: Path, first: int, shard_tokens: int, dtype: str
) -> tuple[list[str], int]:
    """Write ``chunks`` as shard_NNNNN.safetensors files (numbered from ``first``), a new one whenever
    ``shard_tokens`` are buffered; returns (the file names, the tokens written)."""
    names: list[str] = []
    buf: list[ActChunk] = []
    n_buf = total = 0

    def flush() -> None:
        nonlocal buf, n_buf
        if not buf:
            return
        name = f"shard_{first + len(names):05d}.safetensors"
        save_file(
            {
                "acts": torch.cat([c.acts for c in buf]).to(_DT[dtype]).contiguous(),
                "token_ids": torch.cat([c.token_ids for c in buf]).int(),
                "window": torch.cat([c.window for c in buf]).int(),
                "pos": torch.cat([c.pos for c in buf]).int(),
            },
            str(folder / name),
        )
        names.append(name)
        buf, n_buf = [], 0

    for chunk in chunks:
        buf.append(chunk)
        n_buf += len(chunk.acts)
        total += len(chunk.acts)
        if n_buf >= shard_tokens:
            flush()
    flush()
    return names, total


def _write_meta(folder: Path, adapter: ModelAdapter, site: str, dtype: str, names: list[str], total: int) -> None:
    meta = {"site": site, "model": adapter.model_id, "d_in": adapter.d_model, "n_tokens": total, "dtype": dtype}
    (folder / "meta.json").write_text(json.dumps({**meta, "shards": names}, indent=1))


def plan_shards(
    adapter: ModelAdapter, windows: pd.DataFrame, batch_size: int, max_tokens: int | None, shard_tokens: int
) -> list[tuple[int, int, int]]:
    """The shards a one-process ``ShardCache.build`` writes, as (first window row, end row, tokens), from each
    forward batch's kept-token count (``batch_from_ids``' keep_mask: no forward pass), cut where it cuts them:
    after the batch that brings the buffer to ``shard_tokens``, and at ``max_tokens`` (within a batch)."""
    shards: list[tuple[int, int, int]] = []
    seen = n_buf = start = end = 0
    for s in range(0, len(windows), batch_size):
        rows = windows.iloc[s : s + batch_size]
        c = int(adapter.batch_from_ids(list(rows["token_ids"])).keep_mask.sum())
        c = min(c, max_tokens - seen) if max_tokens else c
        seen, n_buf, end = seen + c, n_buf + c, s + len(rows)
        if n_buf >= shard_tokens:
            shards.append((start, end, n_buf))
            start, n_buf = end, 0
        if max_tokens and seen >= max_tokens:
            break
    if end > start:
        shards.append((start, end, n_buf))
    return shards


def _build_split(
    adapter: ModelAdapter,
    windows: pd.DataFrame,
    site: str,
    out: Path,
    batch_size: int,
    max_tokens: int | None,
    shard_tokens: int,
    dtype: str,
    progress: bool,
) -> ShardCache:
    """``ShardCache.build`` by the ranks of a torchrun group: the same shards (same windows, same forward
    batches, same cuts: ``plan_shards``), rank r of W writing shards [r S / W, (r+1) S / W) of the S planned.
    Rank 0 makes the temporary folder (atomic_dir) and names it to the others; once every rank has written its
    shards it writes meta.json listing them all and renames the folder into place. A rank's failure is raised
    on every rank (nothing is renamed)."""
    plan = plan_shards(adapter, windows, batch_size, max_tokens, shard_tokens)
    r, W = dist.rank(), dist.size()
    lo, hi = len(plan) * r // W, len(plan) * (r + 1) // W

    def capture(tmp: Path) -> tuple[list[str], int, str | None]:
        if lo == hi:
            return [], 0, None
        try:  # the global budget cuts only the last shard's last batch
            budget = sum(t for *_, t in plan[lo:hi]) if max_tokens and hi == len(plan) else None
            mine = windows.iloc[plan[lo][0] : plan[hi - 1][1]]
            desc = f"cache {site} (rank 0 of {W})"
            chunks = stream_activations(adapter, mine, site, batch_size, budget, progress and r == 0, desc=desc)
            return (*_write_shards(chunks, tmp, lo, shard_tokens, dtype), None)
        except Exception as e:
            return [], 0, f"rank {r}: {type(e).__name__}: {e}"

    def check(parts: list[tuple[list[str], int, str | None]]) -> None:
        if errors := [e for *_, e in parts if e]:
            raise RuntimeError(f"capturing activations at {site} failed on {'; '.join(errors)}")
        names, total = [n for ns, *_ in parts for n in ns], sum(t for _, t, _ in parts)
        if names != [f"shard_{i:05d}.safetensors" for i in range(len(plan))] or total != sum(t for *_, t in plan):
            raise RuntimeError(
                f"the ranks' shards at {site} do not match the plan ({len(names)} shards, {total} tokens)"
            )

    if r == 0:
        with atomic_dir(out) as tmp:
            parts = dist.gather(capture(Path(dist.broadcast(str(tmp)))))
            check(parts)
            _write_meta(tmp, adapter, site, dtype, [n for ns, *_ in parts for n in ns], sum(t for _, t, _ in parts))
    else:
        check(dist.gather(capture(Path(dist.broadcast(None)))))
    dist.barrier()  # rank 0 has renamed the folder into place
    return ShardCache(out)
