"""Pure rendering: token heatmaps and feature cards as HTML, JSON-friendly values; the colours are
explorer/colors.py and the plotly figures explorer/figures.py (both re-exported here, the tabs' one import).

Everything here takes plain values (the Backend's dataclasses and DataFrames) and returns strings,
figures or dicts; nothing reads files or calls the backend. Token text is always passed through
``html.escape`` (tokens contain '<', '&', quotes, newlines and leading spaces).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import numpy as np
import pandas as pd

from explorer.colors import PALETTE, STOPS, act_color, act_rgb, luminance, palette, text_on
from explorer.figures import (
    GL_POINTS,
    SYMBOLS,
    domain_figure,
    histogram_figure,
    map_figure,
    match_cosine_figure,
    pareto_figure,
    pareto_front,
    sae_marker,
)

__all__ = [
    "GL_POINTS",
    "PALETTE",
    "STOPS",
    "SYMBOLS",
    "act_color",
    "act_rgb",
    "domain_figure",
    "histogram_figure",
    "luminance",
    "map_figure",
    "match_cosine_figure",
    "palette",
    "pareto_figure",
    "pareto_front",
    "sae_marker",
    "text_on",
]

VISIBLE = {" ": "·", "\n": "↵", "\t": "→", "\r": "␍"}


def visible_token(token: str) -> str:
    """HTML for a token with whitespace made visible (spaces as faint dots, newlines as ↵)."""
    out = []
    for ch in token:
        out.append(f'<span class="ws">{VISIBLE[ch]}</span>' if ch in VISIBLE else html.escape(ch))
    return "".join(out) or '<span class="ws">∅</span>'


def token_span(
    token: str, act: float, vmax: float, focus: bool = False, extra_title: str = "", mark: str | None = None
) -> str:
    """One token coloured by its activation; the hover title shows the exact value. ``mark``: the colour
    of an annotation span drawn under the token."""
    r, g, b = act_rgb(act, vmax)
    title = html.escape(f"{token!r}  act {act:.3f}{extra_title}", quote=True)
    cls = "tok focus" if focus else "tok"
    if (r, g, b) == (255, 255, 255):  # not firing: no colour of its own, the card's text colour (either theme)
        style = ""
    else:  # a coloured cell: black or white text, whichever contrasts more with it (>= 4.6:1 on the whole scale)
        style = f"background:#{r:02x}{g:02x}{b:02x};color:{text_on((r, g, b))}"
    if mark:
        style += f"{';' if style else ''}box-shadow:inset 0 -4px 0 {mark}"
    style_attr = f' style="{style}"' if style else ""
    return f'<span class="{cls}"{style_attr} title="{title}">{visible_token(token)}</span>'


def tokens_html(
    tokens: Sequence[str],
    acts: Sequence[float],
    vmax: float,
    focus: int | None = None,
    titles: Sequence[str] | None = None,
    marks: Sequence[str | None] | None = None,
) -> str:
    spans = [
        token_span(t, float(a), vmax, i == focus, titles[i] if titles else "", marks[i] if marks else None)
        for i, (t, a) in enumerate(zip(tokens, acts))
    ]
    return f'<div class="toks">{"".join(spans)}</div>'


def span_marks(n: int, spans: Sequence[tuple[int, int, str]]) -> tuple[list[str | None], list[str], str]:
    """Per-token underline colours, per-token hover notes and a legend for annotation spans
    (start, end, concept) over n tokens; one colour per concept, the first span wins where they overlap."""
    colour = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(dict.fromkeys(c for _, _, c in spans))}
    marks: list[str | None] = [None] * n
    notes = [""] * n
    for a, b, c in spans:
        for i in range(max(a, 0), min(b, n)):
            marks[i] = marks[i] or colour[c]
            notes[i] += f"\n{c}"
    legend = "".join(
        f'<span class="span-key"><i style="background:{col}"></i>{html.escape(c)}</span>' for c, col in colour.items()
    )
    return marks, notes, legend


def context_html(ctx: Any, vmax: float) -> str:
    """A compact card: the window's tokens as a heatmap, the max token outlined, and where it came from;
    annotation spans (protein workspaces) are drawn under their tokens with a legend."""
    source = html.escape(str(ctx.source), quote=True)
    meta = (
        f'<span class="pill">{html.escape(str(ctx.domain))}</span>'
        f'<span class="src" title="{source}">{source}</span>'
        f'<span class="val">max {ctx.max_act:.2f}</span>'
    )
    spans = list(getattr(ctx, "spans", None) or [])
    marks, notes, legend = span_marks(len(ctx.tokens), spans) if spans else (None, None, "")
    toks = tokens_html(ctx.tokens, ctx.acts, vmax, ctx.focus, notes, marks)
    legend = f'<div class="span-legend">{legend}</div>' if legend else ""
    return f'<div class="ctx">{toks}{legend}<div class="meta">{meta}</div></div>'


def contexts_html(
    contexts: Sequence[Any], vmax: float, empty: str = "No activating contexts were indexed.", show: int | None = None
) -> str:
    """Context cards; past the first ``show`` of them, the rest sit in a collapsed "more" block."""
    if not contexts:
        return f'<p class="muted">{html.escape(empty)}</p>'
    contexts = list(contexts)
    head, rest = (contexts, []) if show is None else (contexts[:show], contexts[show:])
    out = "".join(context_html(c, vmax) for c in head)
    if rest:
        out += (
            f'<details class="band more"><summary>{len(rest)} more contexts</summary>'
            f"{''.join(context_html(c, vmax) for c in rest)}</details>"
        )
    return out


def quantiles_html(bands: Sequence[tuple[str, Sequence[Any]]], vmax: float) -> str:
    """One collapsible block per activation band; the top band (the one with the strongest samples, whatever
    the order of ``bands``) starts open."""
    if not bands:
        return '<p class="muted">No quantile samples were indexed.</p>'

    def strongest(ctxs: Sequence[Any]) -> float:
        return max((float(getattr(c, "max_act", -math.inf)) for c in ctxs), default=-math.inf)

    top = max(range(len(bands)), key=lambda i: (strongest(bands[i][1]), i))
    parts = []
    for i, (band, ctxs) in enumerate(bands):
        opened = " open" if i == top else ""
        parts.append(
            f'<details class="band"{opened}><summary>{html.escape(band)} <span class="muted">'
            f"({len(ctxs)})</span></summary>{contexts_html(ctxs, vmax, 'No samples in this band.')}</details>"
        )
    return "".join(parts)


def _fmt(x: float | None, spec: str = ".2f") -> str:
    """A number for display; missing or NaN values read "n/a"."""
    return "n/a" if x is None or x != x else format(x, spec)


def feature_header_html(fv: Any) -> str:
    """The explanation, its detection score, and the activation statistics of one latent."""
    tops = " ".join(
        f'<code title="log-odds {v:.2f}">{visible_token(t)}</code>' if v else f"<code>{visible_token(t)}</code>"
        for t, v in list(fv.top_tokens)[:8]
    )
    stats = "".join(
        f'<div class="stat"><b>{v}</b><span>{k}</span></div>'
        for k, v in [
            ("density", _fmt(fv.density * 100, ".3g") + "%"),
            ("mean act", _fmt(fv.mean_act)),
            ("max act", _fmt(fv.max_act)),
            ("detection F1", _fmt(fv.confidence)),
            ("precision", _fmt(fv.precision)),
            ("recall", _fmt(fv.recall)),
        ]
        + ([("fuzzing", _fmt(fv.fuzz))] if getattr(fv, "fuzz", None) is not None else [])
    )
    link = html.escape(f"?{urlencode({'sae': fv.sae, 'latent': fv.latent})}", quote=True)
    return (
        f'<div class="fhead"><div class="fid">{html.escape(fv.sae)} · latent {fv.latent}'
        f' <a class="permalink" href="{link}" title="a link that opens this latent">link</a></div>'
        f'<div class="flabel">{html.escape(fv.label or "(no explanation)")}</div>'
        + explanation_meta_html(fv)
        + f'<div class="stats">{stats}</div>'
        + (f'<div class="toptoks"><span class="muted">top tokens</span> {tops}</div>' if tops else "")
        + explanations_html(getattr(fv, "explanations", None) or [])
        + concepts_html(getattr(fv, "concepts", None) or [])
        + "</div>"
    )


SCORERS = {"rule": "its rule on held-out tokens", "concept": "held-out concept confidence"}


def _scorer(name: Any) -> str:
    name = str(name or "rule")
    return SCORERS.get(name, name.replace("llm:", "LLM ").replace("local:", "local model "))


def _method(method: Any, model: Any = "") -> str:
    return f"{method or 'statistical'}" + (f" ({model})" if model else "")


def explanation_meta_html(fv: Any) -> str:
    """Who wrote the label and who scored it (detection F1 and fuzzing are in the stats), and the domain and corpus
    the latent prefers: fields of their own, not words of the label."""
    model = next((e.get("model") for e in getattr(fv, "explanations", None) or [] if e.get("label") == fv.label), "")
    parts = [
        f"explained by <b>{html.escape(_method(getattr(fv, 'method', ''), model))}</b>",
        f"scored by {html.escape(_scorer(getattr(fv, 'scorer', '')))}",
    ]
    for what, name, share in (
        ("domain", getattr(fv, "top_domain", ""), getattr(fv, "domain_share", 0.0)),
        ("corpus", getattr(fv, "top_corpus", ""), getattr(fv, "corpus_share", 0.0)),
    ):
        if name:
            parts.append(
                f"{what} <b>{html.escape(str(name))}</b> ({_fmt((share or 0.0) * 100, '.0f')}% of its firing rate)"
            )
    return f'<div class="fmeta muted">{" · ".join(parts)}</div>'


def explanations_html(expl: Sequence[dict[str, Any]]) -> str:
    """Every explanation of a latent with its method and scores (shown when there is more than one)."""
    if len(expl) < 2:
        return ""
    rows = "".join(
        f"<tr><td>{html.escape(str(e.get('label') or ''))}</td><td>{html.escape(_method(e.get('method'), e.get('model')))}</td>"
        f"<td>{html.escape(_scorer(e.get('scorer')))}</td><td><b>{_fmt(e.get('detection'))}</b></td>"
        f"<td>{_fmt(e.get('fuzz'))}</td></tr>"
        for e in expl
    )
    return (
        '<div class="concepts-wrap"><table class="concepts explanations"><caption>Explanations (the best-scoring '
        "one under the latest scorer is the label)</caption><tr><th>explanation</th><th>written by</th>"
        f"<th>scored by</th><th>detection F1</th><th>fuzzing</th></tr>{rows}</table></div>"
    )


CONCEPT_METHODS = {"f1": "best-threshold F1", "top": "top-activation enrichment"}


def concepts_html(concepts: Sequence[dict[str, Any]], show: int = 6) -> str:
    """Concept matches of a latent (protein and recommender workspaces): held-out confidence first."""
    shown = [c for c in concepts if (c.get("confidence") or 0) > 0][:show]
    if not shown:
        return ""
    hidden = len(concepts) - len(shown)
    rows = "".join(
        f"<tr><td><code>{html.escape(str(c['concept']))}</code></td>"
        f"<td>{html.escape(CONCEPT_METHODS.get(str(c.get('method')), str(c.get('method'))))}</td>"
        f"<td><b>{_fmt(c.get('confidence'))}</b></td><td>{_fmt(c.get('conf_precision'))}</td>"
        f"<td>{_fmt(c.get('conf_recall'))}</td><td>{_fmt(c.get('f1'))}</td><td>{_fmt(c.get('lift'), '.1f')}</td>"
        f"<td>{'&lt;1e-300' if c.get('q_value') == 0 else _fmt(c.get('q_value'), '.1e')}</td></tr>"
        for c in shown
    )
    more = f" · {hidden} more without held-out support" if hidden > 0 else ""
    return (
        '<div class="concepts-wrap"><table class="concepts"><caption>Concept matches (held-out: P(fires | concept), '
        f"P(concept | fires) and their F1 = confidence){more}</caption><tr><th>concept</th><th>found by</th>"
        "<th>confidence</th><th>P(fires|c)</th><th>P(c|fires)</th><th>train F1</th><th>lift</th><th>q</th></tr>"
        f"{rows}</table></div>"
    )


def logits_html(top: Sequence[tuple[str, float]], bottom: Sequence[tuple[str, float]]) -> str:
    """Logit-lens tables: the output tokens this direction promotes and suppresses."""
    if not top and not bottom:
        return '<p class="muted">No logit lens: this model has no output embedding (e.g. a classifier head).</p>'

    def table(rows: Sequence[tuple[str, float]], title: str, cls: str) -> str:
        body = "".join(
            f'<tr><td class="tokcell" title="{html.escape(repr(t), quote=True)}"><code>{visible_token(t)}</code></td>'
            f'<td class="{cls}">{v:+.2f}</td></tr>'
            for t, v in rows
        )
        return f'<div class="logit-side"><table class="logits"><caption>{title}</caption>{body}</table></div>'

    return f'<div class="logit-pair">{table(top, "promoted", "pos")}{table(bottom, "suppressed", "neg")}</div>'


def feature_card_html(fv: Any, n_contexts: int = 4) -> str:
    """A self-contained dashboard card (header, top contexts, logit lens) for side-by-side views."""
    return (
        f'<div class="card">{feature_header_html(fv)}<h4>Top contexts</h4>'
        f"{contexts_html(list(fv.top_contexts)[:n_contexts], fv.max_act)}"
        f"{logits_html(list(fv.logits_top)[:5], list(fv.logits_bottom)[:5])}</div>"
    )


def heatmap_html(
    tokens: Sequence[str], acts: Sequence[float], focus: int | None = None, max_act: float | None = None
) -> str:
    """Tokens coloured by activation (``max_act`` defaults to the largest of ``acts``), ``focus`` outlined."""
    vmax = max_act if max_act is not None else max((float(a) for a in acts), default=0.0)
    return tokens_html(tokens, acts, vmax, focus)


def context_card_html(ctx: Any) -> str:
    """One context on its own scale (its own max activation), with its source and domain."""
    return context_html(ctx, ctx.max_act)


def dashboard_html(fv: Any, n_contexts: int = 4) -> str:
    """A compact, self-contained dashboard of one latent (the Compare tab shows two side by side)."""
    return feature_card_html(fv, n_contexts)


def text_heatmap_html(
    tokens: Sequence[str], acts: Sequence[float], per_token: Sequence[Sequence[tuple[int, float]]], latent: int
) -> str:
    """A searched text coloured by one latent; each token's hover also lists its strongest latents."""
    if not tokens:
        return '<p class="muted">No tokens.</p>'
    titles = [
        "\ntop latents: " + ", ".join(f"{k} ({a:.2f})" for k, a in list(pt)[:5]) if pt else "" for pt in per_token
    ]
    vmax = max((float(a) for a in acts), default=0.0)
    focus = int(np.argmax(acts)) if vmax > 0 else None
    return (
        f'<div class="card"><div class="fid">latent {latent} on your text · max {vmax:.2f}</div>'
        f"{tokens_html(tokens, acts, vmax, focus, titles)}</div>"
    )


def message_html(text: str, kind: str = "error") -> str:
    """A visible panel for errors and hints (kind: error | info)."""
    icon = "⚠" if kind == "error" else "ℹ"
    return f'<div class="msg {kind}">{icon} {html.escape(text)}</div>'


def tidy(df: pd.DataFrame, digits: dict[str, int]) -> pd.DataFrame:
    """Round the named columns for display (float32 is widened first, so 0.134 does not show as 0.1340000033)."""
    out = df.copy()
    for col, d in digits.items():
        if col in out and pd.api.types.is_numeric_dtype(out[col]):
            out[col] = out[col].astype("float64").round(d)
    return out


def scalar_columns(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Only the columns that hold numbers or short strings, numbers rounded (drops nested metrics)."""
    scalar = (int, float, str, np.number)
    keep = [c for c in df.columns if df[c].map(lambda v: v is None or isinstance(v, scalar)).all()]
    out = df[keep].copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].map(lambda v: float(f"{v:.{digits}g}") if pd.notna(v) else v)
    return out


def to_json(obj: Any) -> Any:
    """Plain JSON values from dataclasses, DataFrames (as records), tuples and numpy scalars; NaN -> None."""
    if isinstance(obj, pd.DataFrame):
        return json.loads(obj.to_json(orient="records"))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return to_json(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
