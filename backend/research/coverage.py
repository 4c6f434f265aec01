"""General versus subdomain feature coverage: where specialized SAEs capture the "dark matter".

For a subdomain and a set of SAEs, over held-out subdomain text (windows of the seed corpus that
no SAE trained on) and general text (the general activation cache):

- tail-concept recall: a token type t of the subdomain text is *captured* by an SAE when some
  latent fires on it whose label (backend/index/label.py) names t and whose label detection F1 on
  held-out text is at least ``eval.coverage_f1``. Plotted against the token's frequency in
  the general corpus;
- cumulative coverage: token types sorted from rare to common in the general corpus, the running
  share of subdomain token occurrences whose type is captured;
- per-latent log-ratio of firing rates, subdomain against general:
  log((fires_sub + 1) / (N_sub + 1)) - log((fires_gen + 1) / (N_gen + 1));
- latents only a specialized SAE has: max decoder cosine to the reference SAE < ``cos_threshold``; among them the
  "dark matter" latents are also enriched on the subdomain (log-ratio > 0) and confidently labelled (detection F1 >=
  ``eval.coverage_f1``), ranked by log-ratio;
- CE loss and perplexity with each SAE spliced in, on general and on subdomain text
  (evaluate.ce_metrics: the SAE replaces the activations at kept positions only).

All of it is computed once at build time and stored as ``<ws>/coverage/<subdomain>.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from backend.data.activations import stream_activations
from backend.index.collect import encode_sparse
from backend.index.store import IndexReader
from backend.sae.evaluate import ce_metrics, decoder_max_cos, reference_passes
from backend.workspace import Workspace, atomic_write_text


def _fires(sae, acts: torch.Tensor) -> sp.csr_matrix:
    """(N, d_sae) sparse matrix, 1 where a latent is > 0."""
    rows, cols = [], []
    for r, c, _, _ in encode_sparse(sae, acts, np.arange(len(acts))):
        rows.append(r)
        cols.append(c)
    r, c = (np.concatenate(rows), np.concatenate(cols)) if rows else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(acts), int(sae.W_dec.shape[0])))


def token_capture(
    sub_tok: np.ndarray, f_sub: sp.csr_matrix, tok_str: list[str], labels: pd.DataFrame, min_confidence: float
) -> pd.DataFrame:
    """Per subdomain token type: captured when a latent whose label names the token (with detection
    confidence >= min_confidence) fires on at least one of its occurrences in the subdomain text."""
    types, inv, counts = np.unique(sub_tok, return_inverse=True, return_counts=True)
    onehot = sp.csr_matrix((np.ones(len(inv), np.float32), (inv, np.arange(len(inv)))), shape=(len(types), len(inv)))
    C = (onehot @ f_sub).tocsr()  # (types, d_sae): occurrences of each type on which each latent fires
    naming: dict[str, list[tuple[int, float]]] = {}
    for latent, conf, toks in labels[["latent", "confidence", "top_tokens"]].itertuples(index=False):
        if conf >= min_confidence:
            for t in json.loads(toks):
                naming.setdefault(t, []).append((int(latent), float(conf)))
    captured = np.zeros(len(types), bool)
    by = np.full(len(types), -1)
    conf_of = np.zeros(len(types))
    for i, s in enumerate(tok_str):
        for latent, conf in sorted(naming.get(s, []), key=lambda lc: -lc[1]):
            if C[i, latent] > 0:
                captured[i], by[i], conf_of[i] = True, latent, conf
                break
    return pd.DataFrame(
        {"token_id": types, "count": counts, "best_f1": conf_of, "best_latent": by, "captured": captured}
    )


def compute_coverage(ws: Workspace, subdomain: str, saes: dict, *, reference: str, max_tokens: int = 30_000) -> dict:
    """Coverage of ``subdomain`` by each SAE in ``saes`` (name -> loaded SAE); see the module doc."""
    sd = next(d for d in ws.config.subdomains if d.name == subdomain)
    ec = ws.config.eval
    f1_threshold, cos_threshold, ce_windows = ec.coverage_f1, ec.coverage_cos, ec.ce_windows
    adapter, site = ws.adapter(verbose=False), ws.config.activations.site
    w = ws.windows()
    used = set(pd.read_parquet(ws.path / "subdomains" / f"{subdomain}.parquet")["window"])
    held = w[(w["corpus"] == sd.seed_corpus) & ~w.index.isin(list(used))]
    general = w[w["domain"] == "general"]
    sub_chunks = list(
        stream_activations(adapter, held, site, ws.config.activations.batch_size, max_tokens, progress=False)
    )
    sub_acts = torch.cat([c.acts for c in sub_chunks])
    sub_tok = torch.cat([c.token_ids for c in sub_chunks]).numpy()
    gen = ws.activation_source()
    gen_acts, gen_ids = gen.all_acts(max_tokens, with_ids=True)  # normal tokens, ids aligned row for row
    gen_tok = gen_ids.numpy()
    gen_freq = pd.Series(gen_tok).value_counts()
    tok_str = adapter.token_strings
    index = IndexReader(ws.index_path)
    out: dict = {
        "subdomain": subdomain,
        "reference": reference,
        "f1_threshold": f1_threshold,
        "cos_threshold": cos_threshold,
        "n_sub_tokens": int(len(sub_tok)),
        "n_gen_tokens": int(len(gen_tok)),
        "saes": {},
    }
    texts = {
        "general": general.sample(min(ce_windows, len(general)), random_state=0),
        "subdomain": held.head(ce_windows),
    }
    refs = {k: reference_passes(adapter, site, df) for k, df in texts.items()}
    clean_ce: dict[str, float] = {}
    out["clean_ce"] = clean_ce
    for name, sae in saes.items():
        f_sub, f_gen = _fires(sae, sub_acts), _fires(sae, gen_acts)
        types = np.unique(sub_tok)
        cap = token_capture(sub_tok, f_sub, tok_str(types.tolist()), index.labels(name), f1_threshold)
        cap["gen_freq"] = cap["token_id"].map(gen_freq).fillna(0).astype(int)
        cap = cap.sort_values(["gen_freq", "count"], ascending=[True, False])
        cum = (cap["count"] * cap["captured"]).cumsum() / cap["count"].sum()
        fs, fg = np.asarray(f_sub.sum(0)).ravel(), np.asarray(f_gen.sum(0)).ravel()
        log_ratio = np.log((fs + 1) / (len(sub_tok) + 1)) - np.log((fg + 1) / (len(gen_tok) + 1))
        ce = {}
        for k in texts:
            m = ce_metrics(adapter, sae, site, refs=refs[k])
            ce[k], clean_ce[k] = m["ce_sae"], m["ce_clean"]
        entry = {
            "token_recall": float(cap["captured"].mean()),
            "token_share_covered": float(cum.iloc[-1]),
            "tokens": [
                {
                    "token": tok_str([int(t)])[0],
                    "gen_freq": int(g),
                    "count": int(c),
                    "best_f1": round(float(f), 3),
                    "latent": int(j),
                    "captured": bool(k),
                }
                for t, g, c, f, j, k in cap[
                    ["token_id", "gen_freq", "count", "best_f1", "best_latent", "captured"]
                ].itertuples(index=False)
            ],
            "cumulative": [round(float(v), 4) for v in cum.to_numpy()],
            "log_ratio": [round(float(v), 3) for v in log_ratio],
            "ce": ce,
            "ppl": {k: math.exp(v) for k, v in ce.items()},
        }
        if name != reference:
            mc = decoder_max_cos(sae.W_dec.detach(), saes[reference].W_dec.detach())
            unique = np.argsort(mc)[: int((mc < cos_threshold).sum())]
            entry["unique_latents"] = [
                {"latent": int(i), "max_cos": round(float(mc[i]), 3), "log_ratio": round(float(log_ratio[i]), 3)}
                for i in unique[:200]
            ]
            entry["n_unique"] = int((mc < cos_threshold).sum())
            # the "dark matter": no match in the reference, enriched on the subdomain, and confidently labelled
            conf = index.labels(name).set_index("latent")["confidence"].reindex(range(len(mc))).fillna(0.0)
            dark = np.nonzero((mc < cos_threshold) & (log_ratio > 0) & (conf.to_numpy() >= f1_threshold))[0]
            dark = dark[np.argsort(-log_ratio[dark])]
            entry["dark_matter"] = [
                {
                    "latent": int(i),
                    "max_cos": round(float(mc[i]), 3),
                    "log_ratio": round(float(log_ratio[i]), 3),
                    "confidence": round(float(conf.iat[i]), 3),
                }
                for i in dark
            ]
            entry["n_dark_matter"] = int(len(dark))
        out["saes"][name] = entry
    return out


def build_coverage(ws: Workspace, force: bool = False, verbose: bool = True) -> list[Path]:
    """Coverage JSON for every subdomain, over the general SAE, general-data TERM SAEs and the SAEs trained for it."""
    from backend.sae.model import load_sae

    written = []
    # SAEs trained here at the workspace's site (coverage captures activations there)
    general = [s.name for s in ws.config.saes if s.data == "general" and not s.boost_base and not _elsewhere(s)]
    for sd in ws.config.subdomains:
        path = ws.path / "coverage" / f"{sd.name}.json"
        if path.exists() and not force:
            continue
        # the reference, any general-data SAE trained with a TERM tilt (its claim is tail recall), the subdomain's own
        tilted = [s.name for s in ws.config.saes if s.data == "general" and s.term_tilt > 0 and not s.boost_base]
        tilted = [n for n in tilted if n in general]
        names = general[:1] + [n for n in tilted if n not in general[:1]]
        names += [s.name for s in ws.config.saes if s.data == sd.name]
        if len(names) < 2:
            continue
        saes = {n: load_sae(ws.sae_dir(n)) for n in names}
        res = compute_coverage(ws, sd.name, saes, reference=names[0])
        atomic_write_text(path, json.dumps(res))
        if verbose:
            summary = ", ".join(f"{n} {v['token_recall']:.2f}" for n, v in res["saes"].items())
            print(f"[coverage] {sd.name}: token recall {summary}", flush=True)
        written.append(path)
    return written


def _elsewhere(s) -> bool:
    """A pretrained SAE, or one at its own site: not a reference for coverage at activations.site."""
    return s.pretrained or bool(s.site)
