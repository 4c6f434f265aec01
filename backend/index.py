"""Build the feature index of a workspace: contexts, stats, labels, logit lens and maps -> DuckDB.

Model activations over the indexing windows are computed once and encoded by every SAE. Per SAE,
three cheap encode passes over the cached activations:
1. firing counts, sums, max, per-domain counts, (latent, token) firing pairs, and the top-k
   activating tokens by a streaming threshold-filtered merge (backend/topk.py);
2. a histogram per latent over (0, max] and uniform samples from ``n_quantiles`` activation bands
   (the same merge, on random keys);
3. per-token activations of the latent over each chosen context (+- context_radius tokens).
Every 5th window is held out of all of that and used only to score the labels.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from .activations import stream_activations
from .feature_map import joint_layout, layout
from .label import LatentEvidence, StatisticalLabeller, detection_scores
from .sae import load_sae
from .store import IndexWriter
from .topk import StreamingTopK

CHUNK = 4096
N_BINS = 20


@dataclass
class IndexActs:
    """Kept-token activations of the indexing windows, in window order."""

    acts: torch.Tensor  # (n, d) float16
    token: np.ndarray  # (n,)
    window: np.ndarray  # (n,) row of the windows table
    pos: np.ndarray  # (n,)
    domain: np.ndarray  # (n,) domain index
    heldout: np.ndarray  # (n,) bool
    domains: list[str]
    tokstr: np.ndarray  # (vocab,) object: rendered token strings (only ids that occur are filled)
    source: np.ndarray  # (n_windows,) object

    def window_span(self) -> tuple[np.ndarray, np.ndarray]:
        """(start row, end row) of the window each row belongs to."""
        change = np.r_[True, self.window[1:] != self.window[:-1]]
        starts = np.nonzero(change)[0]
        ends = np.r_[starts[1:], len(self.window)]
        seg = np.cumsum(change) - 1
        return starts[seg], ends[seg]


def index_windows(windows: pd.DataFrame, max_tokens: int, seed: int = 0) -> pd.DataFrame:
    """A deterministic subset of windows spread evenly across corpora, ~max_tokens tokens in all."""
    shuffled = windows.sample(frac=1.0, random_state=seed)
    rank = shuffled.groupby("corpus").cumcount()
    ordered = shuffled.assign(_r=rank.to_numpy()).sort_values(["_r"], kind="stable")
    keep = ordered["token_ids"].map(len).cumsum() <= max_tokens
    return ordered[keep.to_numpy()].drop(columns="_r").sort_index()


def collect(ws, progress: bool) -> IndexActs:
    adapter, site = ws.adapter(verbose=progress), ws.config.activations.site
    w = index_windows(ws.windows(), ws.config.index.max_tokens, ws.config.train.seed)
    chunks = list(stream_activations(adapter, w, site, ws.config.activations.batch_size, progress=progress, desc="index acts"))
    token = torch.cat([c.token_ids for c in chunks]).numpy()
    window = torch.cat([c.window for c in chunks]).numpy()
    domains = sorted(w["domain"].unique())
    dom_of = {d: i for i, d in enumerate(domains)}
    wdom = ws.windows()["domain"].map(dom_of).to_numpy()
    order_in = {wid: i for i, wid in enumerate(w.index)}
    held = np.array([order_in[int(x)] % 5 == 4 for x in window]) if len(window) else np.zeros(0, bool)
    uniq = np.unique(token)
    tokstr = np.empty(int(uniq.max()) + 1 if len(uniq) else 1, dtype=object)
    tokstr[uniq] = adapter.token_strings(uniq.tolist())
    return IndexActs(torch.cat([c.acts for c in chunks]).half(), token, window, torch.cat([c.pos for c in chunks]).numpy(),
                     wdom[window], held, domains, tokstr, ws.windows()["source"].to_numpy())


def _encode_chunks(sae, acts: torch.Tensor, rows: np.ndarray):
    """Yield (row ids, rows, cols, vals) of nonzero latents, chunk by chunk, for the given rows."""
    with torch.inference_mode():
        for s in range(0, len(rows), CHUNK):
            r = rows[s : s + CHUNK]
            lat = sae.encode(acts[torch.from_numpy(r)].float())
            rr, cc = torch.nonzero(lat > 0, as_tuple=True)
            yield r, r[rr.numpy()], cc.numpy(), lat[rr, cc].numpy()


def index_sae(name: str, sae, ia: IndexActs, cfg, adapter, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    d_sae = int(sae.W_dec.shape[0])
    train = np.nonzero(~ia.heldout)[0]
    held = np.nonzero(ia.heldout)[0]
    n_dom = len(ia.domains)
    V = len(ia.tokstr)
    fires = np.zeros(d_sae)
    sums = np.zeros(d_sae)
    mx = np.zeros(d_sae)
    dom_fires = np.zeros((d_sae, n_dom))
    dom_tokens = np.bincount(ia.domain[train], minlength=n_dom).astype(float)
    top = StreamingTopK(d_sae, cfg.top_k)
    pairs: list[np.ndarray] = []
    for _, r, c, v in _encode_chunks(sae, ia.acts, train):  # pass 1
        np.add.at(fires, c, 1)
        np.add.at(sums, c, v)
        np.maximum.at(mx, c, v)
        np.add.at(dom_fires, (c, ia.domain[r]), 1)
        pairs.append(c.astype(np.int64) * V + ia.token[r])
        top.update(c, v.astype(np.float64), r)
    n_bands = cfg.n_quantiles
    hist = np.zeros((d_sae, N_BINS), dtype=np.int64)
    samples = StreamingTopK(d_sae * n_bands, cfg.per_quantile)
    for _, r, c, v in _encode_chunks(sae, ia.acts, train):  # pass 2
        frac = v / np.maximum(mx[c], 1e-12)
        np.add.at(hist, (c, np.minimum((frac * N_BINS).astype(int), N_BINS - 1)), 1)
        band = np.minimum((frac * n_bands).astype(int), n_bands - 1)
        samples.update(c * n_bands + band, rng.random(len(c)), r)
    held_pairs = [c.astype(np.int64) * V + ia.token[r] for _, r, c, _ in _encode_chunks(sae, ia.acts, held)]
    # contexts: top-k and quantile samples -> rows -> per-token activations of that latent
    g, rank, _, row = top.items()
    qg, qrank, _, qrow = samples.items()
    ctx = pd.DataFrame({"latent": np.r_[g, qg // n_bands], "kind": ["top"] * len(g) + [f"q{b}" for b in qg % n_bands],
                        "rank": np.r_[rank, qrank], "row": np.r_[row, qrow]})
    contexts = _context_frames(name, sae, ctx, ia, cfg.context_radius)
    expl = _labels(sae, ia, pairs, held_pairs, dom_fires / np.maximum(dom_tokens, 1), top, V)
    logits = _logit_lens(sae, adapter)
    n = max(len(train), 1)
    rates = dom_fires / np.maximum(dom_tokens, 1)
    lat = pd.DataFrame({
        "sae": name, "latent": np.arange(d_sae), "density": fires / n, "mean_act": sums / np.maximum(fires, 1),
        "max_act": mx, "hist_edges": [np.linspace(0, m, N_BINS + 1).round(4).tolist() for m in mx],
        "hist_counts": hist.tolist(), "label": [e.label for e in expl], "confidence": [e.confidence for e in expl],
        "precision": [e.precision for e in expl], "recall": [e.recall for e in expl],
        "top_domain": [ia.domains[int(i)] if rates[j].sum() > 0 else "" for j, i in enumerate(rates.argmax(1))],
        "top_tokens": [json.dumps(ia.tokstr[e.tokens].tolist()) for e in expl],
        "logit_top": logits[0], "logit_bottom": logits[1],
        "domain_rates": [json.dumps(dict(zip(ia.domains, r.round(6).tolist()))) for r in rates],
    })
    arch = getattr(sae.cfg, "architecture", "")
    saes = pd.DataFrame([{"sae": name, "architecture": arch, "d_in": int(sae.W_dec.shape[1]), "d_sae": d_sae,
                          "n_tokens": len(train), "n_heldout": len(held)}])
    return {"latents": lat, "contexts": contexts, "saes": saes}


def _context_frames(name: str, sae, ctx: pd.DataFrame, ia: IndexActs, radius: int) -> pd.DataFrame:
    start, end = ia.window_span()
    center = ctx["row"].to_numpy()
    offs = np.arange(-radius, radius + 1)
    rows = center[:, None] + offs[None, :]  # (n_ctx, 2r+1)
    valid = (rows >= start[center][:, None]) & (rows < end[center][:, None])
    rows = np.where(valid, rows, 0)
    latent = ctx["latent"].to_numpy()
    # activations of each context's latent on its rows: encode each needed row once
    need_rows, need_lat = rows[valid], np.broadcast_to(latent[:, None], rows.shape)[valid]
    vals = np.zeros(len(need_rows), dtype=np.float32)
    order = np.argsort(need_rows, kind="stable")
    sr = need_rows[order]
    uniq = np.unique(sr)
    with torch.inference_mode():
        for s in range(0, len(uniq), CHUNK):
            u = uniq[s : s + CHUNK]
            lat = sae.encode(ia.acts[torch.from_numpy(u)].float())
            lo, hi = np.searchsorted(sr, u[0]), np.searchsorted(sr, u[-1], side="right")
            sel = order[lo:hi]
            vals[sel] = lat[torch.from_numpy(np.searchsorted(u, need_rows[sel])), torch.from_numpy(need_lat[sel])].numpy()
    acts = np.zeros(rows.shape, dtype=np.float32)
    acts[valid] = vals
    toks = ia.tokstr[ia.token[rows]]
    out_tokens, out_acts, focus = [], [], []
    for i in range(len(ctx)):
        m = valid[i]
        out_tokens.append(toks[i][m].tolist())
        out_acts.append(acts[i][m].round(4).tolist())
        focus.append(int(radius - (~m[:radius]).sum()))
    win = ia.window[center]
    return pd.DataFrame({"sae": name, "latent": latent, "kind": ctx["kind"].to_numpy(), "rank": ctx["rank"].to_numpy(),
                         "tokens": out_tokens, "acts": out_acts, "focus": focus, "source": ia.source[win],
                         "domain": [ia.domains[d] for d in ia.domain[center]], "max_act": acts[:, radius]})


def _labels(sae, ia: IndexActs, pairs, held_pairs, rates, top: StreamingTopK, V: int):
    d_sae = int(sae.W_dec.shape[0])

    def to_csr(keys: list[np.ndarray]) -> sp.csr_matrix:
        k = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        u, c = np.unique(k, return_counts=True)
        return sp.csr_matrix((c.astype(np.float64), (u // V, u % V)), shape=(d_sae, V))

    train = ~ia.heldout
    freq = np.bincount(ia.token[train], minlength=V).astype(float)
    g, _, _, row = top.items()
    prev_ok = (row > 0) & (ia.window[np.maximum(row - 1, 0)] == ia.window[row])
    bigrams: list[list[tuple[int, int]]] = [[] for _ in range(d_sae)]
    for gi, r, ok in zip(g, row, prev_ok):
        if ok:
            bigrams[gi].append((int(ia.token[r - 1]), int(ia.token[r])))
    shares = rates / np.maximum(rates.sum(1, keepdims=True), 1e-12)
    ev = LatentEvidence(to_csr(pairs), freq, bigrams, shares, ia.domains, lambda ids: ia.tokstr[ids].tolist())
    expl = StatisticalLabeller().explain(ev)
    detection_scores(expl, to_csr(held_pairs), np.bincount(ia.token[~train], minlength=V).astype(float))
    return expl


def _logit_lens(sae, adapter, n: int = 10, chunk: int = 512) -> tuple[list[str], list[str]]:
    U = adapter.unembed()
    d_sae = int(sae.W_dec.shape[0])
    if U is None:
        return ["[]"] * d_sae, ["[]"] * d_sae
    tops, bots = [], []
    with torch.inference_mode():
        for s in range(0, d_sae, chunk):
            scores = sae.W_dec[s : s + chunk].float() @ U.T.to(sae.W_dec.device)  # (chunk, vocab)
            for sign, out in ((1, tops), (-1, bots)):
                v, i = (sign * scores).topk(n, dim=1)
                for vr, ir in zip(v.tolist(), i.tolist()):
                    out.append(json.dumps([[t, round(sign * x, 3)] for t, x in zip(adapter.token_strings(ir), vr)]))
    return tops, bots


def build_index(ws, progress: bool = True) -> None:
    """Index every SAE of the workspace into ws.index_path (built aside, swapped in atomically)."""
    t0 = time.time()
    ia = collect(ws, progress)
    adapter, cfg = ws.adapter(verbose=False), ws.config.index
    rng = np.random.default_rng(ws.config.train.seed)
    mats: dict[str, np.ndarray] = {}
    with IndexWriter(ws.index_path) as writer:
        for s in tqdm(ws.config.saes, desc="index SAEs", disable=not progress):
            sae = load_sae(ws.sae_dir(s.name))
            for table, df in index_sae(s.name, sae, ia, cfg, adapter, rng).items():
                writer.add(table, df)
            mats[s.name] = sae.W_dec.detach().float().numpy()
        method = "umap" if cfg.umap else "pca"
        joint = joint_layout(mats, method=method)
        for name, W in mats.items():
            xy = layout(W, method=method)
            jxy = joint[name]
            writer.add("map", pd.DataFrame({"sae": name, "latent": np.arange(len(W)), "x": xy[:, 0], "y": xy[:, 1],
                                            "jx": jxy[:, 0], "jy": jxy[:, 1]}))
    if progress:
        print(f"[index] {len(mats)} SAEs over {len(ia.token):,} tokens in {time.time() - t0:.0f} s -> {ws.index_path}",
              flush=True)
