"""The explorer's plotly figures: activation histogram, domain rates, the latent map, the Pareto plot of SAE
variants and the best-match cosine histogram of Compare. Pure: plain values in, figures out."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.colors import PALETTE, act_color, palette

GL_POINTS = 8000  # above this many points the map draws with WebGL (SVG slows down past ~10k markers)


def _layout(fig: go.Figure, title: str, height: int = 260, **kw: Any) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, font=dict(size=13)),
        template="plotly_white",
        height=height,
        autosize=True,  # the width follows the column (no fixed width anywhere)
        margin=dict(l=45, r=15, t=40, b=40),
        showlegend=False,
        **kw,
    )
    return fig


def histogram_figure(edges: Sequence[float], counts: Sequence[int]) -> go.Figure:
    """Bars of the activation histogram over non-zero activations (log y-axis when it spans decades)."""
    edges, counts = list(edges), list(counts)
    mids = [(a + b) / 2 for a, b in zip(edges, edges[1:])] or [0.0]
    widths = [b - a for a, b in zip(edges, edges[1:])] or [1.0]
    vmax = edges[-1] if edges else 1.0
    fig = go.Figure(
        go.Bar(
            x=mids,
            y=counts[: len(mids)],
            width=widths,
            marker_color=[act_color(m, vmax) for m in mids],
            marker_line=dict(color="#c2410c", width=0.5),
            hovertemplate="act %{x:.2f}: %{y} tokens<extra></extra>",
        )
    )
    log = bool(counts) and max(counts) > 50 * max(min(c for c in counts if c > 0) if any(counts) else 1, 1)
    return _layout(
        fig,
        "activation histogram (firing tokens)",
        xaxis_title="activation",
        yaxis=dict(title="tokens", type="log", dtick=1) if log else dict(title="tokens"),
    )


def domain_figure(rates: dict[str, float]) -> go.Figure:
    """Firing rate per corpus domain, as horizontal bars."""
    items = sorted(rates.items(), key=lambda kv: kv[1])
    fig = go.Figure(
        go.Bar(
            x=[v * 100 for _, v in items],
            y=[k for k, _ in items],
            orientation="h",
            marker_color="#f76707",
            hovertemplate="%{y}: %{x:.3g}% of tokens<extra></extra>",
        )
    )
    return _layout(fig, "firing rate per domain", xaxis_title="% of tokens")


def map_figure(df: pd.DataFrame, color_by: str = "density") -> go.Figure:
    """The UMAP scatter of decoder directions; customdata carries (sae, latent) for picking."""
    fig = go.Figure()
    scatter = go.Scattergl if len(df) > GL_POINTS else go.Scatter
    hover = "<b>%{customdata[0]} · %{customdata[1]}</b><br>%{text}<br>density %{customdata[2]:.3%}<extra></extra>"
    if df.empty:
        return _layout(fig, "no map: the index has no UMAP layout", height=620)
    if color_by == "density":
        d = df["density"].clip(lower=1e-6)
        logs = np.log10(d.astype("float64"))
        ticks = list(range(int(np.floor(logs.min())), int(np.ceil(logs.max())) + 1)) if len(logs) else []
        fig.add_trace(
            scatter(
                x=df["x"],
                y=df["y"],
                mode="markers",
                text=df["label"],
                hovertemplate=hover,
                customdata=np.stack([df["sae"], df["latent"], df["density"]], axis=1),
                marker=dict(
                    size=5,
                    opacity=0.85,
                    color=logs,
                    colorscale="YlOrRd",
                    showscale=True,
                    line=dict(width=0),
                    # a log colour scale, labelled in percent of tokens like every other density in the app
                    colorbar=dict(
                        title="density",
                        thickness=12,
                        tickvals=ticks,
                        ticktext=[f"{10.0 ** (t + 2):g}%" for t in ticks],
                    ),
                ),
            )
        )
    else:
        key = {"domain": "top_domain", "concept": "concept"}.get(color_by, "sae")
        if key not in df:
            key = "sae"
        groups = df[key].fillna("").astype(str).replace("", "(never fires)")
        colours = palette(groups.nunique())
        for i, (name, g) in enumerate(df.groupby(groups, sort=True)):
            fig.add_trace(
                scatter(
                    x=g["x"],
                    y=g["y"],
                    mode="markers",
                    name=str(name),
                    text=g["label"],
                    hovertemplate=hover,
                    customdata=np.stack([g["sae"], g["latent"], g["density"]], axis=1),
                    marker=dict(size=5, opacity=0.85, color=colours[i], line=dict(width=0)),
                )
            )
    _layout(fig, "", height=620, dragmode="pan", xaxis=dict(visible=False), yaxis=dict(visible=False))
    fig.update_layout(showlegend=color_by != "density", legend=dict(orientation="h", y=-0.02), margin=dict(t=10, b=10))
    return fig


def pareto_front(x: Sequence[float], y: Sequence[float], higher: bool = False) -> list[int]:
    """Indices of the points that no other point beats on both axes (a lower x, and a lower y or, with ``higher``,
    a higher one), in order of x; points with a missing coordinate are never on the front."""
    pts = [
        (float(a), -float(b) if higher else float(b), i)
        for i, (a, b) in enumerate(zip(x, y))
        if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))
    ]
    front, best = [], math.inf
    for _, v, i in sorted(pts):
        if v < best:
            front.append(i)
            best = v
    return front


SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star", "hexagon"]  # with 8 colours: 56 markers


def sae_marker(i: int) -> dict[str, Any]:
    """The i-th SAE's marker (colour and symbol; no two of the first 56 alike), the same in every Compare plot."""
    return dict(color=PALETTE[i % len(PALETTE)], symbol=SYMBOLS[i % len(SYMBOLS)])


def _legend_below(fig: go.Figure, n: int, height: int) -> go.Figure:
    """A horizontal legend under the plot (its rows wrap), the figure taller by a row per ~4 entries."""
    fig.update_layout(
        showlegend=True,
        height=height + 22 * math.ceil(n / 4),
        legend=dict(orientation="h", x=0, xanchor="left", y=-0.2, yanchor="top", font=dict(size=11)),
        margin=dict(b=20),
    )
    return fig


def pareto_figure(metrics: pd.DataFrame) -> go.Figure:
    """L0 against FVU and against CE loss recovered (a classifier model: against the classifier's KL with the
    SAE spliced in), one marker per SAE named in the legend and on hover (labels on the points overlap once there
    are more than a few SAEs), the Pareto front dotted (down-left / up-left is better)."""
    down = "ce_recovered"
    if ("ce_recovered" not in metrics or metrics["ce_recovered"].isna().all()) and "classifier_kl" in metrics:
        down = "classifier_kl"
    # short titles: at 1024 px each subplot is ~230 px wide, and a longer centred title is cut at the edges
    title = "CE recovered (higher: better)" if down == "ce_recovered" else "classifier KL (lower: better)"
    fig = make_subplots(rows=1, cols=2, subplot_titles=("FVU (lower: better)", title), horizontal_spacing=0.16)
    names = [str(n) for n in (metrics["name"] if "name" in metrics else metrics.index)]
    in_legend: set[str] = set()
    for col, ycol in ((1, "fvu"), (2, down)):
        if ycol not in metrics or "l0" not in metrics:
            continue
        x = pd.to_numeric(metrics["l0"], errors="coerce").tolist()
        y = pd.to_numeric(metrics[ycol], errors="coerce").tolist()
        label = {"fvu": "FVU", "ce_recovered": "CE recovered"}.get(ycol, ycol)
        front = pareto_front(x, y, higher=ycol == "ce_recovered")
        if len(front) > 1:
            fig.add_trace(
                go.Scatter(
                    x=[x[i] for i in front],
                    y=[y[i] for i in front],
                    mode="lines",
                    line=dict(color="#868e96", dash="dot", width=1.5),
                    name="Pareto front",
                    legendgroup="front",
                    showlegend="front" not in in_legend,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
            in_legend.add("front")
        for i, name in enumerate(names):
            fig.add_trace(
                go.Scatter(
                    x=[x[i]],
                    y=[y[i]],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=name not in in_legend,
                    marker=dict(size=11, line=dict(color="white", width=1), **sae_marker(i)),
                    hovertemplate=f"<b>{html.escape(name)}</b><br>L0 %{{x:.1f}}<br>{label} %{{y:.3f}}<extra></extra>",
                    cliponaxis=False,
                ),
                row=1,
                col=col,
            )
            in_legend.add(name)
        fig.update_xaxes(title_text="L0 (latents per token)", range=_padded(metrics["l0"]), row=1, col=col)
        fig.update_yaxes(title_text=label, row=1, col=col)
    return _legend_below(_layout(fig, "", height=330), len(names) + 1, 330)


def match_cosine_figure(pairs: pd.DataFrame, threshold: float) -> go.Figure:
    """The distribution of best-match decoder cosines of the first SAE's latents in each other SAE (``pairs``
    of Backend.compare: one trace per pair, as a share of the first SAE's latents; bars for up to three pairs,
    steps beyond, where bars would be too thin to read), the match threshold as a dashed vertical line. The
    colour and marker of each SAE are those of the Pareto plot (the first SAE is the Pareto plot's first)."""
    fig = go.Figure()
    if pairs is None or pairs.empty:
        return _layout(fig, "no SAE pairs to compare")
    rows = pairs.to_dict("records")
    bars = len(rows) <= 3
    for i, p in enumerate(rows):
        counts = np.asarray(p["hist_counts"], dtype=float)
        mids = (np.arange(len(counts)) + 0.5) / max(len(counts), 1)
        share = 100 * counts / max(float(p["n_latents"]), 1.0)
        style = sae_marker(i + 1)
        common = dict(
            x=mids,
            y=share,
            customdata=counts.astype(int),
            name=f"{p['sae_b']}: {int(p['n_matched']):,} matched ({float(p['share_matched']):.1%})",
            hovertemplate=f"{html.escape(str(p['sae_b']))}: cosine %{{x:.3f}} ± {0.5 / max(len(counts), 1):.3f}: "
            "%{customdata:,} latents (%{y:.1f}%)<extra></extra>",
        )
        if bars:
            fig.add_trace(go.Bar(marker_color=style["color"], opacity=0.85, **common))
        else:
            fig.add_trace(go.Scatter(mode="lines", line=dict(color=style["color"], width=2, shape="hvh"), **common))
    first = html.escape(str(rows[0]["sae_a"]))
    fig.add_vline(
        x=float(threshold),
        line=dict(color="#c2255c", dash="dash", width=1.5),
        annotation_text=f"threshold {float(threshold):.2f}",
        annotation_position="top left" if threshold > 0.75 else "top right",
        annotation_font=dict(size=11, color="#c2255c"),
    )
    _layout(
        fig,
        f"best match of each {first} latent in the other SAEs",
        height=300,
        barmode="group",
        bargap=0.1,
        xaxis=dict(title="decoder cosine of the best match", range=[0, 1], dtick=0.1),
        yaxis=dict(title=f"% of {first}'s latents", rangemode="tozero"),
    )
    return _legend_below(fig, len(rows), 300)


def _padded(values: pd.Series, pad: float = 0.15) -> list[float] | None:
    """An axis range with room on both sides, so that the points' name labels stay inside the plot."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    if v.empty:
        return None
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo or max(abs(hi), 1.0)
    return [lo - pad * span, hi + pad * span]
