"""The SAE trainer: streams activations, sparse TopK/BatchTopK steps, Adam, checkpoints, progress.

Inputs are scaled by a fixed c = sqrt(d_in) / E||x|| (measured on the first batch) so that
coefficients and learning rates do not depend on the model's activation scale; the scale is
folded back into the weights when saving, so saved SAEs read raw activations and W_dec rows stay
unit norm (latents and thresholds are divided by c, b_dec too).

TopK and BatchTopK steps are sparse: the encoder forward is one dense matmul, but the decoder
(F.embedding_bag over the selected latents) and the encoder's weight gradient (index_add over
the selected (token, latent) pairs) touch only the k active latents per token.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
import zlib
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from . import losses
from .atomic import atomic_dir
from .config import SaeConfig, TrainConfig
from .sae import Sae, SaeCfg, SaeError


class ActivationSource(Protocol):
    d_in: int
    n_tokens: int

    def batches(self, batch_size: int, seed: int) -> Iterator[torch.Tensor]: ...


class ArrayActivations:
    """An (N, d) .npy (memory-mapped, never unpickled) or .safetensors file as a source."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise SaeError(f"activation file {self.path} does not exist")
        if self.path.suffix == ".npy":
            try:
                self.data = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise SaeError(f"{self.path} is not a plain numeric .npy array ({e})") from None
        elif self.path.suffix == ".safetensors":
            t = load_file(str(self.path))
            self.data = (t.get("activations") if "activations" in t else next(iter(t.values()))).float().numpy()
        else:
            raise SaeError(f"{self.path.name}: activations must be a .npy or .safetensors file of shape (N, d)")
        if self.data.ndim != 2:
            raise SaeError(f"{self.path.name} has shape {self.data.shape}; expected (N, d)")
        self.n_tokens, self.d_in = map(int, self.data.shape)

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
        order = np.random.default_rng(seed).permutation(self.n_tokens)
        for s in range(0, self.n_tokens, batch_size):
            idx = np.sort(order[s : s + batch_size])
            yield torch.from_numpy(np.asarray(self.data[idx], dtype=np.float32))


class _SparseEncode(torch.autograd.Function):
    """vals[n] = pre[rows[n], cols[n]] where pre = (x - b_dec) @ W_enc + b_enc, with a sparse backward:
    dW_enc[:, j] = sum_{n: cols[n]=j} g_n (x[rows[n]] - b_dec) (a sparse-dense matmul), db_enc[j] = sum g_n.
    The gradient through b_dec in the encoder is dropped (b_dec is learned through the decoder), as in sparsify."""

    @staticmethod
    def forward(ctx, x_c, W_enc, b_enc, pre, rows, cols):
        ctx.save_for_backward(x_c, W_enc, rows, cols)
        return pre[rows, cols]

    @staticmethod
    def backward(ctx, g):
        x_c, W_enc, rows, cols = ctx.saved_tensors
        d_sae = W_enc.shape[1]
        G_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), g, (d_sae, len(x_c))).coalesce()
        gW_t = torch.sparse.mm(G_t, x_c)  # (d_sae, d_in): only the selected (latent, token) pairs
        gb = torch.zeros(W_enc.shape[1], dtype=g.dtype, device=g.device).index_add_(0, cols, g)
        return None, gW_t.T, gb, None, None, None


def _sparse_decode(rows, cols, vals, W_dec, n: int) -> torch.Tensor:
    """sum of vals * W_dec[cols] per row (rows sorted ascending) via embedding_bag: (n, d_in)."""
    counts = torch.bincount(rows, minlength=n)
    offsets = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=vals)


class Trainer:
    def __init__(self, cfg: SaeConfig, tcfg: TrainConfig, d_in: int, total_tokens: int, *, base=None,
                 hook_name: str = "", model_name: str = "", device: torch.device | None = None):
        self.cfg, self.tcfg, self.base = cfg, tcfg, base
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        arch = "jumprelu" if cfg.architecture == "jumprelu" else cfg.architecture
        meta = {"name": cfg.name, "matryoshka_widths": cfg.matryoshka_widths, "ortho_coef": cfg.ortho_coef,
                "term_tilt": cfg.term_tilt, "data": cfg.data, "l1_coef": cfg.l1_coef, "l0_coef": cfg.l0_coef}
        if cfg.boost_base:
            meta["boost_base"] = f"../{cfg.boost_base}"
        # Each SAE gets its own init (seed + a stable hash of its name), so that decoder matches
        # between SAEs of one workspace reflect training, not a shared initialization.
        self.sae = Sae(SaeCfg(d_in, cfg.d_sae, arch, cfg.k, hook_name, model_name, apply_b_dec=base is None, meta=meta),
                       seed=tcfg.seed + zlib.crc32(cfg.name.encode())).to(self.device)
        self.lr = tcfg.lr or 2e-4 / math.sqrt(cfg.d_sae / 2**14)
        self.opt = torch.optim.Adam([p for p in self.sae.parameters() if p.requires_grad], lr=self.lr, betas=(0.9, 0.999))
        self.total_steps = max(1, math.ceil(total_tokens / tcfg.batch_size))
        self.step, self.tokens = 0, 0
        self.scale = 1.0
        self.since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
        self.dead_after = min(tcfg.dead_tokens, max(total_tokens // 4, tcfg.batch_size))
        self.bt_threshold = -1.0  # running BatchTopK inference threshold (scaled units)
        self.k_aux = cfg.k_aux or d_in // 2
        self.gen = torch.Generator().manual_seed(tcfg.seed)

    # ---- one step ---------------------------------------------------------------------------
    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if self.base is not None:
            with torch.no_grad():
                x = x - self.base(x)
        return x * self.scale

    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss for a (scaled) batch x and the logged stats."""
        cfg, sae = self.cfg, self.sae
        N = len(x)
        var = losses.total_variance(x)
        x_c = x - sae.b_dec
        pre = x_c @ sae.W_enc + sae.b_enc  # (N, d_sae)
        terms: dict[str, torch.Tensor] = {}
        if cfg.architecture in ("topk", "batchtopk"):
            with torch.no_grad():
                act = torch.relu(pre)
                if cfg.architecture == "topk":
                    v, c = act.topk(cfg.k, dim=-1)
                    rows = torch.arange(N, device=x.device).repeat_interleave(cfg.k)
                    cols, keep = c.reshape(-1), v.reshape(-1) > 0
                else:
                    v, flat = act.reshape(-1).topk(cfg.k * N)
                    keep = v > 0
                    rows, cols = flat // cfg.d_sae, flat % cfg.d_sae
                    order = torch.argsort(rows, stable=True)
                    rows, cols, keep, v = rows[order], cols[order], keep[order], v[order]
                    if keep.any():
                        t = float(v[keep].min())
                        self.bt_threshold = t if self.bt_threshold < 0 else 0.99 * self.bt_threshold + 0.01 * t
                rows, cols = rows[keep], cols[keep]
            vals = _SparseEncode.apply(x_c.detach(), sae.W_enc, sae.b_enc, pre.detach(), rows, cols)
            recons = _sparse_decode(rows, cols, vals, sae.W_dec, N) + sae.b_dec
            fired = torch.zeros(cfg.d_sae, dtype=torch.bool).index_fill_(0, cols.cpu(), True)
            l0 = len(rows) / N
            if cfg.matryoshka_widths:
                prefix = [_sparse_decode(rows, cols, vals * (cols < w), sae.W_dec, N) + sae.b_dec
                          for w in cfg.matryoshka_widths]
                terms["matryoshka"] = losses.matryoshka(x, prefix, cfg.term_tilt)
            dead = self.since_fired >= self.dead_after
            if cfg.auxk_coef > 0 and dead.any():
                terms["auxk"] = cfg.auxk_coef * self._auxk(x, x_c, pre, recons, dead.to(x.device))
        else:
            if cfg.architecture == "relu":
                latents = torch.relu(pre)
                terms["l1"] = cfg.l1_coef * self._warm() * losses.l1(latents, sae.W_dec, x.shape[1])
            else:  # jumprelu
                latents = losses.jumprelu(pre, sae.threshold, cfg.jumprelu_bandwidth)
                terms["l0"] = cfg.l0_coef * self._warm() * losses.l0_ste(pre, sae.threshold, cfg.jumprelu_bandwidth)
            recons = latents @ sae.W_dec + sae.b_dec
            active = latents.detach() > 0
            fired = active.any(0).cpu()
            l0 = float(active.sum(-1).float().mean())
            if cfg.matryoshka_widths:
                terms["matryoshka"] = losses.matryoshka(
                    x, [latents[:, :w] @ sae.W_dec[:w] + sae.b_dec for w in cfg.matryoshka_widths], cfg.term_tilt)
        per_tok = losses.per_token_loss(x, recons, var)
        if not cfg.matryoshka_widths:
            terms["recons"] = losses.tilted(per_tok, cfg.term_tilt)
        if cfg.ortho_coef > 0:
            terms["ortho"] = cfg.ortho_coef * losses.orthogonality(sae.W_dec, cfg.ortho_chunk, self.gen)
        total = sum(terms.values())
        self.since_fired += N
        self.since_fired[fired] = 0
        stats = {"loss": float(total.detach()), "fvu": float(per_tok.detach().mean()), "l0": l0,
                 "dead": float((self.since_fired >= self.dead_after).float().mean())}
        return total, stats

    def _auxk(self, x, x_c, pre, recons, dead) -> torch.Tensor:
        """Reconstruct the residual x - recons from the top k_aux dead latents (sparse, like the main path)."""
        k = min(self.k_aux, int(dead.sum()))
        with torch.no_grad():
            v, c = torch.relu(pre.masked_fill(~dead, -torch.inf)).topk(k, dim=-1)
            rows = torch.arange(len(x), device=x.device).repeat_interleave(k)
            cols, keep = c.reshape(-1), v.reshape(-1) > 0
            rows, cols = rows[keep], cols[keep]
        if len(rows) == 0:
            return x.new_zeros(())
        vals = _SparseEncode.apply(x_c.detach(), self.sae.W_enc, self.sae.b_enc, pre.detach(), rows, cols)
        aux = _sparse_decode(rows, cols, vals, self.sae.W_dec, len(x))
        return losses.auxk((x - recons).detach(), aux)

    def _warm(self) -> float:
        """L1 / L0 coefficient ramp from 0 over the first l1_warmup_frac of training."""
        n = max(1, int(self.tcfg.l1_warmup_frac * self.total_steps))
        return min(1.0, (self.step + 1) / n)

    def train_step(self, x_raw: torch.Tensor) -> dict[str, float]:
        if not torch.isfinite(x_raw).all():
            raise FloatingPointError("non-finite activations in the input batch")
        if self.step == 0 and self.tokens == 0:
            self._init_from(x_raw)
        x = self._prepare(x_raw)
        for g in self.opt.param_groups:
            g["lr"] = self.lr * min(1.0, (self.step + 1) / max(1, self.tcfg.lr_warmup_steps))
        loss, stats = self.losses(x)
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError("the loss became non-finite")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        renorm = self.cfg.architecture != "relu"
        if renorm and self.sae.W_dec.grad is not None:
            with torch.no_grad():  # drop the gradient component parallel to each unit decoder row
                W, G = self.sae.W_dec, self.sae.W_dec.grad
                G -= (G * W).sum(1, keepdim=True) * W
        self.opt.step()
        with torch.no_grad():
            if renorm:
                self.sae.W_dec /= self.sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)
            if self.cfg.architecture == "jumprelu":
                self.sae.threshold.clamp_(min=1e-6)
        self.step += 1
        self.tokens += len(x_raw)
        return stats

    def _init_from(self, x_raw: torch.Tensor) -> None:
        """Input scale and b_dec from the first batch (b_dec = the batch mean, in scaled units)."""
        x = x_raw.to(self.device, torch.float32)
        if self.base is not None:
            with torch.no_grad():
                x = x - self.base(x)
        self.scale = float(math.sqrt(x.shape[1]) / x.norm(dim=1).mean().clamp_min(1e-8))
        if self.sae.cfg.apply_b_dec:
            with torch.no_grad():
                self.sae.b_dec.copy_(x.mean(0) * self.scale)
        if self.cfg.architecture == "jumprelu":
            # Thresholds start where each latent fires on k/d_sae of the first batch (L0 ~ k): the
            # straight-through estimator only moves thresholds slowly, so short runs need a good start.
            with torch.no_grad():
                pre = self.sae.pre_acts(x * self.scale)
                q = 1 - min(self.cfg.k / self.cfg.d_sae, 0.5)
                self.sae.threshold.copy_(torch.quantile(pre, q, dim=0).clamp_min(1e-3))

    @torch.no_grad()
    def calibrate_threshold(self, source: ActivationSource, n_batches: int = 8) -> None:
        """BatchTopK's inference threshold: the mean over batches of the (k*N)-th largest activation, so
        that the exported JumpReLU keeps k latents per token on average (the running value lags training)."""
        vals = []
        for i, x in enumerate(source.batches(self.tcfg.batch_size, self.tcfg.seed + 1)):
            if i >= n_batches:
                break
            act = torch.relu(self.sae.pre_acts(self._prepare(x)))
            vals.append(float(act.reshape(-1).topk(self.cfg.k * len(x)).values[-1]))
        if vals:
            self.bt_threshold = sum(vals) / len(vals)

    # ---- export / checkpoint ----------------------------------------------------------------
    def export(self) -> Sae:
        """A copy of the SAE on raw activations (scale folded in; batchtopk becomes jumprelu)."""
        c = self.scale
        arch = "jumprelu" if self.cfg.architecture == "batchtopk" else self.sae.cfg.architecture
        meta = dict(self.sae.cfg.meta, trained_as=self.cfg.architecture, input_scale=c)
        out = Sae(SaeCfg(self.sae.cfg.d_in, self.cfg.d_sae, arch, self.cfg.k, self.sae.cfg.hook_name,
                         self.sae.cfg.model_name, self.sae.cfg.apply_b_dec, meta))
        with torch.no_grad():
            out.W_enc.copy_(self.sae.W_enc)
            out.W_dec.copy_(self.sae.W_dec)
            out.b_enc.copy_(self.sae.b_enc / c)
            out.b_dec.copy_(self.sae.b_dec / c)
            theta = self.bt_threshold if self.cfg.architecture == "batchtopk" else None
            out.threshold.copy_(torch.full_like(out.threshold, theta) if theta is not None else self.sae.threshold)
            out.threshold.div_(c)
        return out.cpu().eval()

    def save_checkpoint(self, folder: Path) -> None:
        tensors = {f"p.{n}": p.detach().cpu().contiguous() for n, p in self.sae.named_parameters()}
        params = [p for p in self.sae.parameters() if p.requires_grad]
        adam_steps = []
        for i, p in enumerate(params):
            st = self.opt.state.get(p)
            adam_steps.append(float(st["step"]) if st else 0.0)
            if st:
                for key in ("exp_avg", "exp_avg_sq"):
                    tensors[f"o.{i}.{key}"] = st[key].cpu().contiguous()
        tensors["since_fired"] = self.since_fired.clone()
        scalars = {"step": self.step, "tokens": self.tokens, "scale": self.scale, "bt_threshold": self.bt_threshold,
                   "adam_steps": adam_steps}
        with atomic_dir(folder) as tmp:
            save_file(tensors, str(tmp / "state.safetensors"))
            (tmp / "state.json").write_text(json.dumps(scalars))

    def load_checkpoint(self, folder: Path) -> None:
        t = load_file(str(folder / "state.safetensors"))
        s = json.loads((folder / "state.json").read_text())
        with torch.no_grad():
            for n, p in self.sae.named_parameters():
                p.copy_(t[f"p.{n}"])
        params = [p for p in self.sae.parameters() if p.requires_grad]
        for i, p in enumerate(params):
            if f"o.{i}.exp_avg" in t:
                self.opt.state[p] = {"step": torch.tensor(s["adam_steps"][i]), "exp_avg": t[f"o.{i}.exp_avg"].to(p.device),
                                     "exp_avg_sq": t[f"o.{i}.exp_avg_sq"].to(p.device)}
        self.since_fired = t["since_fired"].long()
        self.step, self.tokens, self.scale, self.bt_threshold = s["step"], s["tokens"], s["scale"], s["bt_threshold"]


def train_sae(cfg: SaeConfig, tcfg: TrainConfig, source: ActivationSource, out_dir: str | Path, *, base=None,
              hook_name: str = "", model_name: str = "", progress: bool = True, resume: bool = True) -> Sae:
    """Train one SAE on ``source`` and save it (SAELens layout + metrics.json) to ``out_dir``."""
    out_dir = Path(out_dir)
    if base is not None and int(base.W_dec.shape[1]) != source.d_in:
        raise SaeError(f"base SAE expects d_in={int(base.W_dec.shape[1])} but the activations have d={source.d_in}")
    total = cfg.tokens or tcfg.tokens or source.n_tokens
    tr = Trainer(cfg, tcfg, source.d_in, total, base=base, hook_name=hook_name, model_name=model_name)
    ckpt = out_dir.with_name(f".{out_dir.name}.checkpoint")
    if resume and (ckpt / "state.json").exists():
        tr.load_checkpoint(ckpt)
    bar = tqdm(total=total, initial=min(tr.tokens, total), desc=f"train {cfg.name}", unit="tok",
               disable=not progress, dynamic_ncols=True)
    t0, stats, epoch = time.time(), {}, 0
    skip = tr.tokens  # on resume, skip the tokens already seen (same seeds -> same order)
    try:
        while tr.tokens < total:
            for x in source.batches(tcfg.batch_size, tcfg.seed + epoch):
                if skip > 0:
                    skip -= len(x)
                    continue
                if tr.tokens >= total:
                    break
                try:
                    stats = tr.train_step(x)
                except FloatingPointError as e:
                    if not (ckpt / "state.json").exists():
                        tr.save_checkpoint(ckpt)  # the state before this step is still finite
                    raise SaeError(f"training {cfg.name} stopped at step {tr.step}: {e}; the last good state is kept "
                                   f"in {ckpt} (fix the activations and train again to resume)") from None
                bar.update(len(x))
                if tr.step % 10 == 0:
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", fvu=f"{stats['fvu']:.3f}", l0=f"{stats['l0']:.1f}",
                                    dead=f"{stats['dead']:.2f}")
                if tcfg.checkpoint_every and tr.step % tcfg.checkpoint_every == 0:
                    tr.save_checkpoint(ckpt)
            epoch += 1
    finally:
        bar.close()
    secs = time.time() - t0
    if cfg.architecture == "batchtopk":
        tr.calibrate_threshold(source)
    sae = tr.export()
    sae.save(out_dir)
    metrics = {"train": {"tokens": tr.tokens, "steps": tr.step, "seconds": round(secs, 2),
                         "tokens_per_s": round(tr.tokens / max(secs, 1e-9), 1), "final_fvu": stats.get("fvu"),
                         "final_l0": stats.get("l0"), "dead_frac": stats.get("dead"), "lr": tr.lr}}
    write_metrics(out_dir, metrics)
    shutil.rmtree(ckpt, ignore_errors=True)
    return sae


def write_metrics(sae_dir: Path, new: dict) -> dict:
    """Merge ``new`` into sae_dir/metrics.json atomically."""
    p = Path(sae_dir) / "metrics.json"
    cur = json.loads(p.read_text()) if p.exists() else {}
    cur.update(new)
    tmp = p.with_name(".metrics.json.tmp")
    tmp.write_text(json.dumps(cur, indent=1))
    os.replace(tmp, p)
    return cur
