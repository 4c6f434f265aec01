"""Pure builders for the coverage and SHIFT views: tables and plotly figures from plain dicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

PALETTE = ["#64748b", "#e8590c", "#1c7ed6", "#2f9e44", "#ae3ec9", "#f59f00"]
FREQ_BINS = [(0, 0, "0"), (1, 9, "1-9"), (10, 99, "10-99"), (100, 999, "100-999"), (1000, math.inf, "1000+")]


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        height=340,
        margin=dict(l=50, r=20, t=50, b=45),
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def coverage_summary(cov: dict) -> pd.DataFrame:
    rows = []
    for name, e in cov["saes"].items():
        rows.append(
            {
                "SAE": name,
                "token types captured": round(e["token_recall"], 3),
                "subdomain tokens covered": round(e["token_share_covered"], 3),
                "latents without a match in " + cov["reference"]: e.get("n_unique", "-"),
                "dark-matter latents": e.get("n_dark_matter", "-"),
                "CE general": round(e["ce"]["general"], 3),
                "CE subdomain": round(e["ce"]["subdomain"], 3),
                "ppl general": round(e["ppl"]["general"], 1),
                "ppl subdomain": round(e["ppl"]["subdomain"], 1),
            }
        )
    clean = cov.get("clean_ce", {})
    if clean:
        rows.append(
            {
                "SAE": "(no SAE: clean model)",
                "CE general": round(clean["general"], 3),
                "CE subdomain": round(clean["subdomain"], 3),
                "ppl general": round(math.exp(clean["general"]), 1),
                "ppl subdomain": round(math.exp(clean["subdomain"]), 1),
            }
        )
    return pd.DataFrame(rows)


def recall_by_frequency(cov: dict) -> go.Figure:
    """Tail-concept recall: share of subdomain token types captured, by general-corpus frequency."""
    fig = go.Figure()
    for i, (name, e) in enumerate(cov["saes"].items()):
        toks = pd.DataFrame(e["tokens"])
        ys, labels, ns = [], [], []
        for lo, hi, lab in FREQ_BINS:
            sel = toks[(toks.gen_freq >= lo) & (toks.gen_freq <= hi)]
            if len(sel):
                ys.append(sel.captured.mean())
                labels.append(lab)
                ns.append(len(sel))
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=ys,
                mode="lines+markers",
                name=name,
                line=dict(color=PALETTE[i % 6], width=3),
                customdata=ns,
                hovertemplate="%{x}: %{y:.2f} of %{customdata} token types",
            )
        )
    fig.update_yaxes(range=[0, 1])
    return _layout(fig, "Tail-concept recall", "token frequency in the general corpus", "token types captured")


def cumulative_coverage(cov: dict) -> go.Figure:
    fig = go.Figure()
    for i, (name, e) in enumerate(cov["saes"].items()):
        y = e["cumulative"]
        x = [j / max(len(y) - 1, 1) for j in range(len(y))]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, line=dict(color=PALETTE[i % 6], width=3)))
    return _layout(
        fig,
        "Cumulative coverage of subdomain tokens",
        "token types, rare to common in general text (share)",
        "subdomain tokens covered",
    )


def log_ratio_histogram(cov: dict) -> go.Figure:
    fig = go.Figure()
    for i, (name, e) in enumerate(cov["saes"].items()):
        fig.add_trace(go.Histogram(x=e["log_ratio"], name=name, opacity=0.55, nbinsx=60, marker_color=PALETTE[i % 6]))
    fig.update_layout(barmode="overlay")
    return _layout(
        fig, "Per-latent firing log-ratio, subdomain vs general", "log(rate subdomain / rate general)", "latents"
    )


def unique_latents(cov: dict, sae: str) -> pd.DataFrame:
    """The SAE's dark-matter latents (no match in the reference, enriched on the subdomain, confidently labelled;
    by log-ratio) where the coverage file has them, else its latents without a match (by cosine)."""
    e = cov["saes"].get(sae, {})
    if "dark_matter" in e:
        return pd.DataFrame(e["dark_matter"], columns=["latent", "max_cos", "log_ratio", "confidence"]).drop(
            columns="confidence"  # the table adds the label's confidence with the label
        )
    return pd.DataFrame(e.get("unique_latents", []), columns=["latent", "max_cos", "log_ratio"])


def _rare_half(e: dict) -> np.ndarray:
    toks = sorted(e["tokens"], key=lambda t: (t["gen_freq"], t["token"]))
    return np.array([t["captured"] for t in toks[: max(1, len(toks) // 2)]], dtype=float)


def recall_differences(cov: dict, n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Each SAE's token-type recall against the reference's, overall and on the rarer half of the token types, with a
    95% paired bootstrap interval over token types (the same types are scored for every SAE): ``beyond`` says
    whether the interval excludes 0. This is the noise of the text sample, not of training (2 seeds:
    ``make bench-demo``)."""
    ref = cov["saes"][cov["reference"]]
    rng = np.random.default_rng(seed)
    out = []
    for name, e in cov["saes"].items():
        if name == cov["reference"]:
            continue
        for part, pick in (
            ("all token types", lambda x: np.array([t["captured"] for t in x["tokens"]], float)),
            ("rarer half", _rare_half),
        ):
            a, b = pick(ref), pick(e)
            if len(a) != len(b) or not len(a):
                continue
            d = b - a
            idx = rng.integers(0, len(d), (n_boot, len(d)))
            boots = d[idx].mean(1)
            lo, hi = np.quantile(boots, [0.025, 0.975])
            out.append(
                {
                    "sae": name,
                    "part": part,
                    "ref": float(a.mean()),
                    "value": float(b.mean()),
                    "diff": float(d.mean()),
                    "lo": float(lo),
                    "hi": float(hi),
                    "beyond": bool(lo > 0 or hi < 0),
                    "n": int(len(d)),
                }
            )
    return out


def recall_statement(cov: dict) -> str:
    """The recall differences in words (markdown): a reader never has to guess from overlapping lines."""
    lines = []
    for r in recall_differences(cov):
        verdict = "beyond" if r["beyond"] else "within"
        lines.append(
            f"- **{r['sae']}** ({r['part']}, {r['n']:,} types): {r['value']:.1%} captured vs {r['ref']:.1%} for "
            f"{cov['reference']}, {r['diff'] * 100:+.1f} points (95% interval {r['lo'] * 100:+.1f} to "
            f"{r['hi'] * 100:+.1f}): **{verdict} the noise** of this text sample."
        )
    if not lines:
        return ""
    return (
        "**Is the difference real?** Paired bootstrap over the held-out token types:\n"
        + "\n".join(lines)
        + "\n\nSeed-to-seed noise of training is measured by `make bench-demo` (bench/RESULTS.md)."
    )


def shift_table(report: dict | None) -> pd.DataFrame:
    cols = [
        "SAE",
        "latents ablated",
        "worst-group before",
        "worst-group after ablation",
        "worst-group after retrain",
        "overall before",
        "overall after retrain",
    ]
    if not report:
        return pd.DataFrame(columns=cols)
    rows = [
        [
            r["sae"],
            len(r["ablated"]),
            r["before"]["worst_group"],
            r["after_ablation"]["worst_group"],
            r["after_retrain"]["worst_group"],
            r["before"]["overall"],
            r["after_retrain"]["overall"],
        ]
        for r in report["reports"]
    ]
    return pd.DataFrame(rows, columns=cols).round(3)
