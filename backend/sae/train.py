"""The SAE trainer: streams activations, sparse TopK/BatchTopK steps, Adam, checkpoints, progress.

Inputs are scaled by a fixed c = sqrt(d_in) / E||x|| (measured on the first batch) so that
coefficients and learning rates do not depend on the model's activation scale; the scale is
folded back into the weights when saving, so saved SAEs read raw activations and W_dec rows stay
unit norm (latents and thresholds are divided by c, b_dec too).

TopK and BatchTopK steps are sparse. The encoder forward is one dense matmul under no_grad, into a
reused buffer, that only *selects* the active (token, latent) pairs; everything with a gradient
touches only those pairs: the decoder is F.embedding_bag over W_dec rows and ``SelectedPre`` gives
the encoder a sparse backward (embedding_bag over x_c, one bag per latent, for dW_enc). W_enc is kept
in a column-major layout (W_enc.t() contiguous) so latent columns are contiguous rows for these
gathers and the weight gradient needs no transpose.

train.dtype = bfloat16 runs that selection matmul in bfloat16 (oneDNN's AVX512-BF16 GEMM is ~3.5x
the float32 one on this CPU). Weights, Adam state, values and gradients stay float32: each token's
top k + 8 bfloat16 candidates are re-scored exactly in float32 (topk.pair_dots) and the top k of
those exact values are kept, so the kept latents and their values match the float32 path (up to
float32 summation order). AuxK's dead-latent values are read from the bfloat16 buffer (an auxiliary
loss; its weight gradient does not depend on them).

Under torchrun every quantity over the batch goes through ``self.red`` (sae/parallel.py): each rank trains on its
slice of the same global batches, and the summed gradients are one process's (tests/sae/test_parallel.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
import zlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from backend.atomic import atomic_dir
from backend.config import SaeConfig, TrainConfig
from backend.sae import losses
from backend.sae.kernels import bucket_order, pair_dots
from backend.sae.model import Sae, SaeError, SaeSpec, twin_dir, write_metrics
from backend.sae.parallel import batch_reducer
from backend.sae.sources import ActivationSource, ArrayActivations
from backend.sae.sparse_grad import Pairs, SelectedPre, sparse_decode

TWIN_SEED_OFFSET = 1_000  # the stability twin's seed (init and data order) is the SAE's + this
__all__ = ["TWIN_SEED_OFFSET", "ActivationSource", "ArrayActivations", "Trainer", "train_sae", "twin_configs"]


class Trainer:
    def __init__(
        self,
        cfg: SaeConfig,
        tcfg: TrainConfig,
        d_in: int,
        total_tokens: int,
        *,
        base=None,
        hook_name: str = "",
        model_name: str = "",
        device: torch.device | None = None,
    ):
        self.cfg, self.tcfg, self.base = cfg, tcfg, base
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        keys = ("name", "matryoshka_widths", "ortho_coef", "term_tilt", "data", "l1_coef", "l0_coef")
        meta = {k: getattr(cfg, k) for k in keys}  # recorded in cfg.json
        if cfg.boost_base:
            meta["boost_base"] = f"../{cfg.boost_base}"
        # Each SAE gets its own init (seed + a stable hash of its name), so that decoder matches
        # between SAEs of one workspace reflect training, not a shared initialization.
        spec = SaeSpec(
            d_in, cfg.d_sae, cfg.architecture, cfg.k, hook_name, model_name, apply_b_dec=base is None, meta=meta
        )
        self.sae = Sae(spec, seed=tcfg.seed + zlib.crc32(cfg.name.encode())).to(self.device)
        with torch.no_grad():  # column-major W_enc: W_enc.t() is a contiguous (d_sae, d_in) view
            self.sae.W_enc = torch.nn.Parameter(self.sae.W_enc.detach().t().contiguous().t())
        self.lr = tcfg.lr or 2e-4 / math.sqrt(cfg.d_sae / 2**14)
        self.opt = torch.optim.Adam(
            [p for p in self.sae.parameters() if p.requires_grad],
            lr=self.lr,
            betas=(0.9, 0.999),
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.total_steps = max(1, math.ceil(total_tokens / tcfg.batch_size))
        self.step, self.tokens = 0, 0
        self.scale = 1.0
        self.since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
        self.dead_after = min(tcfg.dead_tokens, max(total_tokens // 4, tcfg.batch_size))
        self.bt_threshold = -1.0  # running BatchTopK inference threshold (scaled units)
        self.k_aux = cfg.k_aux or d_in // 2
        self.gen = torch.Generator().manual_seed(tcfg.seed)
        self.bf16 = tcfg.dtype == "bfloat16" and cfg.architecture in ("topk", "batchtopk")
        self.margin = 8  # extra bfloat16 candidates per token re-scored in float32
        self.sparsity_mult = 1.0  # the L1 / L0 coefficient's multiplier, steered towards cfg.target_l0
        self.sparsity_integral = 0.0  # its controller's integral term (log units)
        self._pre_buf: torch.Tensor | None = None
        self.red = batch_reducer()  # the batch's reductions: whole, or this rank's slice (sae/parallel.py)

    # ---- one step ---------------------------------------------------------------------------
    def _residual(self, x_raw: torch.Tensor) -> torch.Tensor:
        """x_raw as float32 on the device, minus the frozen base SAE's reconstruction when boosting (unscaled)."""
        x = x_raw.to(self.device, torch.float32)
        if self.base is not None:
            with torch.no_grad():
                x = x - self.base(x)
        return x

    def _prepare(self, x_raw: torch.Tensor) -> torch.Tensor:
        """The trained input: the residual of x_raw, scaled by c."""
        return self._residual(x_raw) * self.scale

    def loss_and_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss for a (scaled) batch x and the logged stats."""
        cfg, sae = self.cfg, self.sae
        N = self.red.rows(x)  # the global batch's rows (x holds this rank's slice under torchrun)
        var = self.red.variance(x)
        terms: dict[str, torch.Tensor] = {}
        if cfg.architecture in ("topk", "batchtopk"):
            x_c = (x - sae.b_dec).detach()  # (N, d_in); the encoder's b_dec gradient is dropped (see SelectedPre)
            with torch.no_grad():
                W_t = sae.W_enc.detach().t()  # (d_sae, d_in), contiguous
                pre = self._pre_acts(x_c, W_t)  # (N, d_sae) float32 or bfloat16, selection only
                pairs = self._select(pre, x_c, W_t)
            vals = SelectedPre.apply(x_c, sae.W_enc, sae.b_enc, pairs.vals, pairs)
            recons = sparse_decode(vals, sae.W_dec, pairs) + sae.b_dec
            fired = pairs.col_offsets < torch.cat([pairs.col_offsets[1:], pairs.col_offsets.new_tensor([len(vals)])])
            fired = self.red.any(fired.cpu())
            l0 = len(vals) / N
            if cfg.matryoshka_widths:
                prefix = [
                    sparse_decode(vals * (pairs.cols < w), sae.W_dec, pairs) + sae.b_dec for w in cfg.matryoshka_widths
                ]
                terms["matryoshka"] = losses.matryoshka(x, prefix, cfg.term_tilt, var, self.red.tilted)
            dead = (self.since_fired >= self.dead_after).nonzero().squeeze(1)
            if cfg.auxk_coef > 0 and len(dead):
                terms["auxk"] = cfg.auxk_coef * self._auxk(x, x_c, pre, recons, dead.to(x.device))
        else:
            x_c = x - sae.b_dec
            pre = torch.addmm(sae.b_enc, x_c, sae.W_enc)  # (N, d_sae)
            if cfg.architecture == "relu":
                latents = torch.relu(pre)
                terms["l1"] = cfg.l1_coef * self._sparsity() * losses.l1(latents, sae.W_dec, x.shape[1], self.red.mean)
            else:  # jumprelu
                latents = losses.jumprelu(pre, sae.threshold, cfg.jumprelu_bandwidth)
                l0_term = losses.l0_ste(pre, sae.threshold, cfg.jumprelu_bandwidth, self.red.mean)
                terms["l0"] = cfg.l0_coef * self._sparsity() * l0_term
            recons = latents @ sae.W_dec + sae.b_dec
            active = latents.detach() > 0
            fired = self.red.any(active.any(0).cpu())
            l0 = self.red.mean(active.sum(-1).float())
            if cfg.matryoshka_widths:
                prefix = [latents[:, :w] @ sae.W_dec[:w] + sae.b_dec for w in cfg.matryoshka_widths]
                terms["matryoshka"] = losses.matryoshka(x, prefix, cfg.term_tilt, var, self.red.tilted)
        per_tok = losses.per_token_loss(x, recons, var)
        if not cfg.matryoshka_widths:
            terms["recons"] = self.red.tilted(per_tok, cfg.term_tilt)
        if cfg.ortho_coef > 0:
            terms["ortho"] = self.red.once(cfg.ortho_coef * losses.orthogonality(sae.W_dec, cfg.ortho_chunk, self.gen))
        total = sum(terms.values())
        self.since_fired += N
        self.since_fired[fired] = 0
        dead = float((self.since_fired >= self.dead_after).float().mean())
        loss, fvu, l0 = self.red.total(total.detach(), self.red.mean(per_tok.detach()), l0)  # global values
        return total, {"loss": loss, "fvu": fvu, "l0": l0, "dead": dead}

    def _pre_acts(self, x_c: torch.Tensor, W_t: torch.Tensor) -> torch.Tensor:
        """x_c @ W_enc + b_enc for selection, in train.dtype, into a reused buffer (a fresh (N, d_sae)
        tensor costs as much in page faults as a fast matmul)."""
        N, dt = len(x_c), torch.bfloat16 if self.bf16 else torch.float32
        if self._pre_buf is None or self._pre_buf.dtype != dt or len(self._pre_buf) < N:
            self._pre_buf = torch.empty(N, self.cfg.d_sae, dtype=dt, device=x_c.device)
        out = self._pre_buf[:N]
        b = self.sae.b_enc.detach()
        return torch.addmm(b.to(dt), x_c.to(dt), W_t.to(dt).t(), out=out)

    def _select(self, pre: torch.Tensor, x_c: torch.Tensor, W_t: torch.Tensor):
        """The active pairs of a no-grad pre (N, d_sae) (rows ascending) with their exact float32 values > 0 as
        ``.vals``: the top k per row (topk) or k*N per batch (batchtopk)."""
        N, k, d_sae = pre.shape[0], self.cfg.k, pre.shape[1]
        b_enc = self.sae.b_enc.detach()
        arange = torch.arange(N, device=pre.device)
        if self.cfg.architecture == "topk":
            if self.bf16:  # bfloat16 ranks k + margin candidates; their exact values pick the k
                kc = min(k + self.margin, d_sae)
                cand = pre.topk(kc, dim=-1, sorted=False).indices  # (N, kc)
                ve = pair_dots(arange.repeat_interleave(kc), cand.reshape(-1), x_c, W_t, b_enc).view(N, kc)
                v, j = ve.topk(k, dim=-1, sorted=False)
                c = cand.gather(1, j)
            else:
                v, c = pre.topk(k, dim=-1, sorted=False)
            keep = v > 0
            if bool(keep.all()):  # the usual case: skip the masking
                P = Pairs(arange.repeat_interleave(k), c.reshape(-1), N, d_sae, per_row=k)
                P.vals = v.reshape(-1)
            else:
                P = Pairs(arange[:, None].expand_as(c)[keep], c[keep], N, d_sae)
                P.vals = v[keep]
            return P
        # batchtopk: the top k*N of the batch, in two stages (per-row top 4k, then global) unless a row overflows
        kk = min(4 * k, d_sae)
        cand, cand_c = pre.topk(kk, dim=-1, sorted=False)  # (N, kk)
        v, flat, thr = self.red.batch_topk(cand.reshape(-1), k * self.red.rows(pre))  # of the global batch
        if kk < d_sae and self.red.flag(bool((cand.min(1).values >= thr).any())):  # a row may hold more than kk
            v, flat, _ = self.red.batch_topk(pre.reshape(-1), k * self.red.rows(pre))  # the exact pass
            cand_c, kk = None, d_sae
        order, _ = bucket_order(flat // kk, N)  # rows ascend (a counting sort: torch's threaded argsort is slow)
        flat, v = flat[order], v[order]
        rows = flat // kk
        cols = flat % kk if cand_c is None else cand_c.reshape(-1)[flat]
        if self.bf16:
            v = pair_dots(rows, cols, x_c, W_t, b_enc)
        keep = v > 0
        rows, cols, v = rows[keep], cols[keep], v[keep]
        if (t := self.red.min(v)) is not None:  # running min kept value (the exported threshold, before calibration)
            self.bt_threshold = t if self.bt_threshold < 0 else 0.99 * self.bt_threshold + 0.01 * t
        P = Pairs(rows, cols, N, d_sae)
        P.vals = v
        return P

    def _auxk(self, x, x_c, pre, recons, dead: torch.Tensor) -> torch.Tensor:
        """AuxK: reconstruct the residual x - recons from the top k_aux dead latents of each token (sparse too,
        reusing the selection's pre-activations)."""
        with torch.no_grad():
            v, j = pre[:, dead].topk(min(self.k_aux, len(dead)), dim=-1, sorted=False)  # (N, k_aux) among dead only
            keep = v > 0
            rows = torch.arange(len(x), device=x.device)[:, None].expand_as(j)[keep]
            cols, v = dead[j[keep]], v[keep].float()
        if not self.red.flag(len(rows) > 0):  # no dead latent is positive anywhere in the (global) batch
            return x.new_zeros(())
        pairs = Pairs(rows, cols, len(x), self.cfg.d_sae)
        vals = SelectedPre.apply(x_c, self.sae.W_enc, self.sae.b_enc, v, pairs)
        aux = sparse_decode(vals, self.sae.W_dec, pairs)
        res = (x - recons).detach()
        return losses.auxk(res, aux, self.red.variance(res), self.red.mean)

    def _warm(self) -> float:
        """L1 / L0 coefficient ramp from 0 over the first l1_warmup_frac of training."""
        n = max(1, int(self.tcfg.l1_warmup_frac * self.total_steps))
        return min(1.0, (self.step + 1) / n)

    def _sparsity(self) -> float:
        """The L1 / L0 coefficient's factor this step: the warm-up ramp times the target-L0 multiplier."""
        return self._warm() * self.sparsity_mult

    def _steer_sparsity(self, l0: float) -> None:
        """A PI controller on the coefficient's log multiplier towards ``target_l0``: proportional to the batch L0's
        log relative error plus a slow integral of it, active after the warm-up ramp and until the learning rate
        decays (so training ends at a fixed coefficient). Thresholds and L1 shrinkage answer with a lag, so the
        integral gain is small (about e^8 of range over the steering steps) and the proportional term damps it."""
        target = self.cfg.target_l0
        if not target or self._warm() < 1.0 or self.lr_factor(self.step) < 1.0:
            return
        steer_steps = self.total_steps * (1 - self.tcfg.lr_decay_frac - self.tcfg.l1_warmup_frac)
        gain = min(0.05, max(0.001, 8 / max(steer_steps, 1)))
        err = max(-1.0, min(1.0, math.log(max(l0, 0.1) / target)))
        self.sparsity_integral = max(-10.0, min(10.0, self.sparsity_integral + gain * err))
        self.sparsity_mult = math.exp(self.sparsity_integral + err)

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over ``lr_warmup_steps``, then constant, then (``lr_decay_frac`` > 0) a linear decay to 0
        over the final fraction of ``total_steps``."""
        warm = min(1.0, (step + 1) / max(1, self.tcfg.lr_warmup_steps))
        decay_steps = int(self.tcfg.lr_decay_frac * self.total_steps)
        if decay_steps <= 0:
            return warm
        return min(warm, max(0.0, (self.total_steps - step) / decay_steps))

    def train_step(self, x_raw: torch.Tensor) -> dict[str, float]:
        if not math.isfinite(float(x_raw.sum(dtype=torch.float64))):  # one pass; NaN/inf anywhere makes it non-finite
            raise FloatingPointError("non-finite activations in the input batch")
        if self.step == 0 and self.tokens == 0:
            self._init_from(x_raw)  # the global batch (every rank has it)
        x = self._prepare(self.red.split(x_raw))
        for g in self.opt.param_groups:
            g["lr"] = self.lr * self.lr_factor(self.step)
        loss, stats = self.loss_and_stats(x)
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError("the loss became non-finite")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.red.reduce_grads(self.sae.parameters())  # under torchrun: the sum of the ranks' shares
        renorm = self.cfg.architecture != "relu"
        if renorm and self.sae.W_dec.grad is not None:
            with torch.no_grad():  # drop the gradient component parallel to each unit decoder row
                W, G = self.sae.W_dec, self.sae.W_dec.grad
                G -= (G * W).sum(1, keepdim=True) * W
        self.opt.step()
        self._steer_sparsity(stats["l0"])
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
        x = self._residual(x_raw)
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
        out = Sae(
            SaeSpec(
                self.sae.cfg.d_in,
                self.cfg.d_sae,
                arch,
                self.cfg.k,
                self.sae.cfg.hook_name,
                self.sae.cfg.model_name,
                self.sae.cfg.apply_b_dec,
                meta,
            )
        )
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
        if not self.red.leader:  # under torchrun every rank holds the same state; rank 0 writes it
            return
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
        scalars = {
            "step": self.step,
            "tokens": self.tokens,
            "scale": self.scale,
            "bt_threshold": self.bt_threshold,
            "adam_steps": adam_steps,
            "sparsity_mult": self.sparsity_mult,
            "sparsity_integral": self.sparsity_integral,
        }
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
                self.opt.state[p] = {
                    "step": torch.tensor(s["adam_steps"][i]),  # Adam state in the param's layout
                    "exp_avg": torch.empty_like(p).copy_(t[f"o.{i}.exp_avg"]),
                    "exp_avg_sq": torch.empty_like(p).copy_(t[f"o.{i}.exp_avg_sq"]),
                }
        self.since_fired = t["since_fired"].long()
        self.step, self.tokens, self.scale, self.bt_threshold = s["step"], s["tokens"], s["scale"], s["bt_threshold"]
        self.sparsity_mult = float(s.get("sparsity_mult", 1.0))
        self.sparsity_integral = float(s.get("sparsity_integral", 0.0))


def twin_configs(cfg: SaeConfig, tcfg: TrainConfig) -> tuple[SaeConfig, TrainConfig]:
    """The stability twin's configs: the same SAE named ``<name>@twin``, trained with seed + ``TWIN_SEED_OFFSET``."""
    return (
        dataclasses.replace(cfg, name=f"{cfg.name}@twin", stability_twin=False),
        dataclasses.replace(tcfg, seed=tcfg.seed + TWIN_SEED_OFFSET),
    )


def train_sae(
    cfg: SaeConfig,
    tcfg: TrainConfig,
    source: ActivationSource,
    out_dir: str | Path,
    *,
    base=None,
    hook_name: str = "",
    model_name: str = "",
    progress: bool = True,
    resume: bool = True,
    twin: bool = True,
) -> Sae:
    """Train one SAE on ``source`` and save it (SAELens layout + metrics.json) to ``out_dir``.

    With ``cfg.stability_twin`` (and ``twin``) a twin (same config and data, seed + ``TWIN_SEED_OFFSET``) is
    trained first into ``twin_dir(out_dir)``, so that an interrupted build that finds ``out_dir`` complete also
    finds its twin. The staged build passes ``twin=False`` and trains twins once every SAE is served."""
    out_dir = Path(out_dir)
    if twin and cfg.stability_twin and not (twin_dir(out_dir) / "cfg.json").exists():
        train_sae(
            *twin_configs(cfg, tcfg),
            source,
            twin_dir(out_dir),
            base=base,
            hook_name=hook_name,
            model_name=model_name,
            progress=progress,
            resume=resume,
        )
    if base is not None and int(base.W_dec.shape[1]) != source.d_in:
        raise SaeError(f"base SAE expects d_in={int(base.W_dec.shape[1])} but the activations have d={source.d_in}")
    total = cfg.tokens or tcfg.tokens or getattr(source, "n_normal", source.n_tokens)  # one pass over normal tokens
    tr = Trainer(cfg, tcfg, source.d_in, total, base=base, hook_name=hook_name, model_name=model_name)
    ckpt = out_dir.with_name(f".{out_dir.name}.checkpoint")
    if resume and (ckpt / "state.json").exists():
        tr.load_checkpoint(ckpt)
    bar = tqdm(
        total=total,
        initial=min(tr.tokens, total),
        desc=f"train {cfg.name}",
        unit="tok",
        disable=not (progress and tr.red.leader),
        dynamic_ncols=True,
    )
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
                    raise SaeError(
                        f"training {cfg.name} stopped at step {tr.step}: {e}; the last good state is kept "
                        f"in {ckpt} (fix the activations and train again to resume)"
                    ) from None
                bar.update(len(x))
                if tr.step % 10 == 0:
                    bar.set_postfix(
                        loss=f"{stats['loss']:.3f}",
                        fvu=f"{stats['fvu']:.3f}",
                        l0=f"{stats['l0']:.1f}",
                        dead=f"{stats['dead']:.2f}",
                    )
                if tcfg.checkpoint_every and tr.step % tcfg.checkpoint_every == 0:
                    tr.save_checkpoint(ckpt)
            epoch += 1
    finally:
        bar.close()
    secs = time.time() - t0
    if cfg.architecture == "batchtopk":
        tr.calibrate_threshold(source)
    sae = tr.export()
    metrics = {
        "train": {
            "tokens": tr.tokens,
            "steps": tr.step,
            "seconds": round(secs, 2),
            "tokens_per_s": round(tr.tokens / max(secs, 1e-9), 1),
            "final_fvu": stats.get("fvu"),
            "final_l0": stats.get("l0"),
            "dead_frac": stats.get("dead"),
            "lr": tr.lr,
        }
    }
    if cfg.architecture in ("relu", "jumprelu"):  # the sparsity coefficient it ended with (target_l0 steers it)
        coef = cfg.l1_coef if cfg.architecture == "relu" else cfg.l0_coef
        metrics["train"]["sparsity_coef"] = coef * tr.sparsity_mult
    if tr.red.leader:  # under torchrun rank 0 writes; the others wait until it has
        sae.save(out_dir)
        write_metrics(out_dir, metrics)
        shutil.rmtree(ckpt, ignore_errors=True)
    tr.red.barrier()
    return sae
