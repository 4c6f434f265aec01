"""SAE evaluation: metrics.json beside each SAE.

Reconstruction (on held-out windows: normal tokens of windows the activation cache, i.e. training, never saw; see
``heldout_tokens``): L0, FVU, explained variance = 1 - FVU, MSE, mean cosine of
x and recons; dead (never fires) and dense (fires on > 10% of tokens) latent fractions; the
distribution of each decoder row's max |cosine| to the others; FVU at each Matryoshka level.

Downstream (with the model): CE loss with the SAE spliced in at kept positions, against the
clean model and zero-ablation of the site; CE recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean);
KL(clean || spliced); perplexity per corpus domain.

Absorption (first-letter task in the spirit of SAEBench, sized for a CPU): on single-word tokens
starting with a letter, a logistic probe on model activations predicts the first letter. For each
letter the SAE's "main" latent is the one whose decoder row has the highest cosine with the
probe direction. Absorption rate = share of tokens the probe gets right on which the main latent
of their letter does not fire while another latent whose decoder row has cosine > 0.15 with the
probe direction does (that latent has absorbed the letter feature on those tokens).
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from backend.sae.model import write_metrics


@torch.inference_mode()
def reconstruction_metrics(sae, x: torch.Tensor, widths: list[int] | None = None, chunk: int = 4096) -> dict:
    """Reconstruction metrics of ``sae`` on x (N, d_in), encoded ``chunk`` tokens at a time (memory chunk x d_sae)."""
    x = x.float()
    var = float((x - x.mean(0)).pow(2).sum())
    err = cos = l0 = 0.0
    fires = torch.zeros(int(sae.W_dec.shape[0]))
    pref = {int(w): 0.0 for w in widths or []}
    for s in range(0, len(x), chunk):
        xc = x[s : s + chunk]
        z = sae.encode(xc)
        r = sae.decode(z)
        err += float((xc - r).pow(2).sum())
        cos += float(F.cosine_similarity(xc, r, dim=-1).sum())
        on = z > 0
        l0 += float(on.sum())
        fires += on.sum(0).float().cpu()
        for w in pref:
            pref[w] += float((xc - (z[:, :w] @ sae.W_dec[:w] + sae.b_dec)).pow(2).sum())
    n = len(x)
    out = {
        "l0": l0 / n,
        "fvu": err / var,
        "explained_variance": 1 - err / var,
        "mse": err / x.numel(),
        "cosine": cos / n,
        "dead_frac": float((fires == 0).float().mean()),
        "dense_frac": float((fires / n > 0.1).float().mean()),
        "n_tokens": n,
    }
    if pref:
        out["matryoshka_fvu"] = {w: e / var for w, e in pref.items()}
    return out


@torch.inference_mode()
def decoder_max_cos(W_dec: torch.Tensor, other: torch.Tensor | None = None, chunk: int = 2048) -> np.ndarray:
    """(d_sae,) each decoder row's max cosine to the rows of ``other`` (another SAE's W_dec), or, without
    ``other``, its max |cosine| to any other row of W_dec (itself excluded); memory chunk x len(other)."""
    W = F.normalize(W_dec.float(), dim=1)
    R = W if other is None else F.normalize(other.float(), dim=1)
    out = []
    for s in range(0, len(W), chunk):
        c = W[s : s + chunk] @ R.T
        if other is None:
            c = c.abs()
            c[torch.arange(len(c)), torch.arange(s, s + len(c))] = 0
        out.append(c.max(1).values)
    return torch.cat(out).numpy()


def cos_stats(W_dec: torch.Tensor) -> dict:
    mc = decoder_max_cos(W_dec)
    return {
        "mean": float(mc.mean()),
        "quantiles": {str(q): float(np.quantile(mc, q)) for q in (0.1, 0.5, 0.9, 0.99)},
        "hist": np.histogram(mc, bins=20, range=(0, 1))[0].tolist(),
    }


def _splice_fn(sae, keep: torch.Tensor, mode: str):
    def fn(x: torch.Tensor) -> torch.Tensor:
        new = (
            torch.zeros_like(x)
            if mode == "zero"
            else sae.forward(x.reshape(-1, x.shape[-1]).float()).reshape(x.shape).to(x.dtype)
        )
        return torch.where(keep.to(x.device)[..., None], new, x)

    return fn


@torch.inference_mode()
def reference_passes(adapter, site: str, windows: pd.DataFrame, batch_size: int = 8) -> list[dict]:
    """Per batch: the clean log-probs and the clean and zero-ablation per-token CE. They do not depend
    on the SAE, so evaluating many SAEs costs one spliced pass each (log-probs kept in bfloat16)."""
    out = []
    for i in range(0, len(windows), batch_size):
        rows = windows.iloc[i : i + batch_size]
        b = adapter.batch_from_ids(list(rows["token_ids"]))
        tgt = b.input_ids[:, 1:]
        clean = adapter.logits(b)[:, :-1]
        with adapter.intervene(site, _splice_fn(None, b.keep_mask, "zero")):
            zero = adapter.logits(b)[:, :-1]
        out.append(
            {
                "batch": b,
                "domains": list(rows["domain"]),
                "logp": F.log_softmax(clean, -1).to(torch.bfloat16),
                "ce_clean": F.cross_entropy(clean.transpose(1, 2), tgt.to(clean.device), reduction="none").cpu(),
                "ce_zero": F.cross_entropy(zero.transpose(1, 2), tgt.to(zero.device), reduction="none").cpu(),
            }
        )
    return out


@torch.inference_mode()
def ce_metrics(
    adapter, sae, site: str, windows: pd.DataFrame | None = None, batch_size: int = 8, refs: list[dict] | None = None
) -> dict:
    """CE (clean, spliced, zero-ablated), CE recovered, KL(clean || spliced), perplexity per domain."""
    refs = reference_passes(adapter, site, windows, batch_size) if refs is None else refs
    sums = {k: 0.0 for k in ("clean", "sae", "zero", "kl")}
    per_dom: dict[str, list[float]] = {}
    n = 0
    for r in refs:
        b = r["batch"]
        tgt, mask = b.input_ids[:, 1:], b.keep_mask[:, 1:]
        with adapter.intervene(site, _splice_fn(sae, b.keep_mask, "sae")):
            logits = adapter.logits(b)[:, :-1]
        ce_sae = F.cross_entropy(logits.transpose(1, 2), tgt.to(logits.device), reduction="none").cpu()
        lp_c = r["logp"].float()
        kl = (lp_c.exp() * (lp_c - F.log_softmax(logits, -1))).sum(-1).cpu()
        sums["clean"] += float(r["ce_clean"][mask].sum())
        sums["zero"] += float(r["ce_zero"][mask].sum())
        sums["sae"] += float(ce_sae[mask].sum())
        sums["kl"] += float(kl[mask].sum())
        n += int(mask.sum())
        for j, dom in enumerate(r["domains"]):
            m = mask[j]
            acc = per_dom.setdefault(dom, [0.0, 0.0, 0])
            acc[0] += float(r["ce_clean"][j][m].sum())
            acc[1] += float(ce_sae[j][m].sum())
            acc[2] += int(m.sum())
    avg = {k: v / max(n, 1) for k, v in sums.items()}
    denom = avg["zero"] - avg["clean"]
    return {
        "ce_clean": avg["clean"],
        "ce_sae": avg["sae"],
        "ce_zero": avg["zero"],
        "kl": avg["kl"],
        "ce_recovered": (avg["zero"] - avg["sae"]) / denom if abs(denom) > 1e-9 else float("nan"),
        "ppl_by_domain": {
            d: {"clean": math.exp(c / max(t, 1)), "sae": math.exp(s / max(t, 1))} for d, (c, s, t) in per_dom.items()
        },
        "ce_tokens": n,
    }


def absorption(adapter, sae, acts: torch.Tensor, token_ids: torch.Tensor, min_per_letter: int = 20) -> dict:
    """First-letter absorption rate (see module docstring)."""
    words = adapter.token_strings(token_ids.tolist())
    letters = [w.strip().lower()[:1] if w.startswith(" ") and w.strip().isalpha() else "" for w in words]
    keep = np.array([len(c) == 1 and c in string.ascii_lowercase for c in letters])
    lab = np.array([ord(c) - 97 if k else -1 for c, k in zip(letters, keep)])
    counts = np.bincount(lab[keep], minlength=26)
    use = [c for c in range(26) if counts[c] >= min_per_letter]
    sel = keep & np.isin(lab, use)
    if len(use) < 2:
        return {"absorption_rate": None, "note": "too few single-word tokens per letter"}
    X, y = acts[torch.from_numpy(sel)].float(), torch.from_numpy(lab[sel])
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Xn = (X - mu) / sd
    W = torch.zeros(X.shape[1], 26, requires_grad=True)
    opt = torch.optim.LBFGS([W], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(Xn @ W, y) + 1e-3 * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return _absorbed(sae, X, Xn, y, W.detach(), sd, use)


@torch.no_grad()
def _absorbed(sae, X, Xn, y, W, sd, use) -> dict:
    probe = (W / sd[:, None]).T  # (26, d) directions in activation space
    right = (Xn @ W).argmax(1) == y
    Wd = F.normalize(sae.W_dec.float(), dim=1)
    main = (F.normalize(probe, dim=1) @ Wd.T).argmax(1)  # (26,) main latent per letter
    z = sae.encode(X) > 0  # (n, d_sae)
    # (d_sae, 26): latents whose direction carries the letter (cosine with its probe above 0.15,
    # several standard deviations of the cosine between random directions in d = 576)
    aligned = (Wd @ F.normalize(probe, dim=1).T) > 0.15
    main_fires = z[torch.arange(len(y)), main[y]]
    other = (z.float() @ aligned.float())[torch.arange(len(y)), y] > 0
    absorbed = int((right & ~main_fires & other).sum())
    total = int(right.sum())
    return {
        "absorption_rate": absorbed / max(total, 1),
        "absorption_tokens": total,
        "letters": len(use),
        "probe_accuracy": float(right.float().mean()),
    }


@torch.inference_mode()
def classifier_metrics(adapter, sae, site: str, windows: pd.DataFrame, batch_size: int = 8) -> dict:
    """Protein classifier (reads <cls> after the last block): with the SAE spliced in at the residues,
    mean KL(clean || spliced) of the class distribution, mean |delta p| of the predicted class, and the
    share of sequences whose predicted class is unchanged."""
    kl = dp = same = 0.0
    n = 0
    for i in range(0, len(windows), batch_size):
        b = adapter.batch_from_ids(list(windows["token_ids"].iloc[i : i + batch_size]))
        p = adapter.class_probs(b).float()
        with adapter.intervene(site, _splice_fn(sae, b.keep_mask, "sae")):
            q = adapter.class_probs(b).float()
        kl += float((p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum())
        top = p.argmax(1)
        dp += float((q.gather(1, top[:, None]) - p.gather(1, top[:, None])).abs().sum())
        same += float((q.argmax(1) == top).sum())
        n += len(p)
    return {"classifier_kl": kl / max(n, 1), "classifier_abs_dp": dp / max(n, 1), "classifier_agree": same / max(n, 1)}


STABLE_COS = 0.7  # a latent is reproduced by a twin when the twin has a decoder row this close to it


def stability(W_dec: torch.Tensor, W_twin: torch.Tensor) -> dict:
    """Seed stability (Paulo & Belrose 2025): the share of latents whose best decoder match in a twin trained with
    another seed has cosine >= STABLE_COS, and the median best match."""
    best = decoder_max_cos(W_dec, other=W_twin)
    return {"stability": float((best >= STABLE_COS).mean()), "stability_median_cos": float(np.median(best))}


def exclusion_record(cache) -> dict:
    """What the reconstruction metrics left out: the attention-sink rule and how many cached tokens it excludes."""
    ex = cache.exclusion
    if ex is None:
        return {"n_excluded_tokens": 0}
    return {
        "n_excluded_tokens": ex.n_excluded,
        "n_cached_tokens": cache.n_tokens,
        "exclusion": {
            "first_positions": ex.first_positions,
            "norm_factor": ex.norm_factor,
            "median_norm": round(ex.median_norm, 3),
            "threshold": round(ex.threshold, 3),
        },
    }


HELDOUT_SEED = 1234  # which uncached windows the held-out evaluation tokens come from


def heldout_tokens(
    ws, n_tokens: int, site: str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(acts (n, d) float32, token ids (n,), window rows (n,)): up to ``n_tokens`` normal tokens (the cache's attention-sink rule) of
    windows that are not in the activation cache, shuffled with a fixed seed, so that reconstruction metrics are
    measured on text the SAEs never trained on. Captured once and kept beside the cache
    (``heldout_<n>.safetensors``, written atomically). None when every window is cached (small workspaces): the
    metrics then fall back to cached tokens and say so. ``site``: default activations.site."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from backend.atomic import atomic_write
    from backend.data.activations import stream_activations

    cache = ws.activation_source(site=site)
    path = Path(cache.path) / f"heldout_{n_tokens}.safetensors"
    if path.exists():
        t = load_file(str(path))
        return t["acts"].float(), t["token_ids"], t["window"]
    cached = set()
    for p in cache.shards:  # only the small window-id tensors
        with safe_open(str(p), "np") as f:
            cached.update(np.unique(f.get_tensor("window")).tolist())
    w = ws.windows()
    free = w[~w.index.isin(list(cached))]
    if free.empty:
        return None
    free = free.sample(frac=1.0, random_state=HELDOUT_SEED)
    lens = free["token_ids"].map(len).cumsum().to_numpy()
    free = free.iloc[: int(np.searchsorted(lens, 2 * n_tokens)) + 1]  # room for the sinks the rule drops
    acts, ids, wins = [], [], []
    ex = cache.exclusion
    for c in stream_activations(
        ws.adapter(verbose=False), free, cache.site, ws.config.activations.batch_size, progress=False
    ):
        keep = ex.normal(c.acts, c.pos) if ex is not None else torch.ones(len(c.acts), dtype=torch.bool)
        acts.append(c.acts[keep].half())
        ids.append(c.token_ids[keep])
        wins.append(c.window[keep].numpy())  # the windows table's row ids
        if sum(len(a) for a in acts) >= n_tokens:
            break
    x, tok = torch.cat(acts)[:n_tokens].contiguous(), torch.cat(ids)[:n_tokens].contiguous()
    win = torch.from_numpy(np.concatenate(wins)[:n_tokens].astype(np.int64))
    atomic_write(path, lambda tmp: save_file({"acts": x, "token_ids": tok, "window": win}, str(tmp)))
    return x.float(), tok, win


def evaluate_workspace(ws, force: bool = False, progress: bool = True) -> None:
    """metrics.json for every SAE of the workspace (skips SAEs already evaluated unless force)."""
    ce_windows, n_tokens = ws.config.eval.ce_windows, ws.config.eval.n_tokens
    from backend.sae.model import load_sae, twin_dir

    adapter, kind = ws.adapter(verbose=False), ws.kind  # kind: backend/modalities
    w = ws.windows()
    sample = w.groupby("domain").head(max(1, ce_windows // w["domain"].nunique()))
    refs: dict[str, Any] = {}  # per site: the reference passes of CE / KL
    tokens: dict[str, tuple] = {}  # per site: the evaluation tokens

    for s in ws.config.saes:
        d = ws.sae_dir(s.name)
        mp = d / "metrics.json"
        if mp.exists() and "fvu" in json.loads(mp.read_text()) and not force:
            continue
        site = ws.site_of(s.name)
        if site not in tokens:
            cache = ws.activation_source(site=site)
            held = heldout_tokens(ws, n_tokens, site)  # normal tokens of windows no SAE trained on
            x, tok = held[:2] if held is not None else cache.all_acts(n_tokens, with_ids=True)  # else cached tokens
            tokens[site] = (cache, x, tok, "held-out windows" if held is not None else "cached (training) tokens")
        cache, x, tok, measured_on = tokens[site]
        sae = load_sae(d)
        src = cache if s.data == "general" else ws.activation_source(s.data)
        xs = x if s.data == "general" else src.all_acts(n_tokens)
        m = reconstruction_metrics(sae, xs, s.matryoshka_widths or None)
        m["reconstruction_on"] = measured_on if s.data == "general" else f"cached {s.data} (training) tokens"
        m.update(exclusion_record(src))
        m["decoder_max_cos"] = cos_stats(sae.W_dec)
        twin = twin_dir(d)
        if s.stability_twin and (twin / "cfg.json").exists():
            m.update(stability(sae.W_dec.detach(), load_sae(twin).W_dec.detach()))
        if kind.eval_next_token_ce:  # next-token / next-item CE with the SAE spliced in
            refs[site] = refs.get(site) or reference_passes(adapter, site, sample)
            m.update(ce_metrics(adapter, sae, site, refs=refs[site]))
        elif kind.eval_classifier and getattr(adapter, "head", "") == "classifier":
            m.update(classifier_metrics(adapter, sae, site, sample))
        if kind.eval_absorption:  # the first-letter task needs words
            m.update(absorption(adapter, sae, x, tok))
        write_metrics(d, m)
        if progress:
            down = (
                f"CE recovered {m['ce_recovered']:.3f}"
                if "ce_recovered" in m
                else f"classifier KL {m['classifier_kl']:.4f}"
                if "classifier_kl" in m
                else ""
            )
            print(
                f"[eval] {s.name}: L0 {m['l0']:.1f}  FVU {m['fvu']:.3f}  {down}  absorption {m.get('absorption_rate')}",
                flush=True,
            )


def evaluate_folder(sae_dir: Path, acts: torch.Tensor) -> dict:
    """metrics.json for a standalone SAE folder on an activation array (no model needed)."""
    from backend.sae.model import load_sae

    sae = load_sae(sae_dir)
    m = reconstruction_metrics(sae, acts, (sae.cfg.meta or {}).get("matryoshka_widths") or None)
    m["decoder_max_cos"] = cos_stats(sae.W_dec)
    return write_metrics(sae_dir, m)
