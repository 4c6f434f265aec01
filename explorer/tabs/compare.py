"""Compare tab: which SAE variant is better, and how do they differ.

Metrics side by side (readable names, the best of each row starred, a note on what each is measured on), Pareto
plots, the distribution of best-match decoder cosines between the first SAE and each other one, Matryoshka levels,
the latents matched at or above the threshold and those without a match. The comparison runs when the Compare
button is clicked (or the threshold slider released), never while boxes are being ticked: ticking only updates the
hint under the boxes.
"""

from __future__ import annotations

import functools
import html
import math
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from .. import render
from ..api import BAD_INPUT, json_endpoint
from .browse import Opener, row_pick

MATCH_COLUMNS = ["sae_a", "latent_a", "label_a", "sae_b", "latent_b", "label_b", "cosine"]
MATCH_LEVEL_COLUMNS = ["sae_a", "latent_a", "level_a", "label_a", "sae_b", "latent_b", "level_b", "label_b", "cosine"]
UNMATCHED_COLUMNS = ["sae", "latent", "label", "best_cosine", "vs"]
UNMATCHED_LEVEL_COLUMNS = ["sae", "latent", "level", "label", "best_cosine", "vs"]
MATCH_WIDTHS = ["12%", "7%", "25%", "12%", "7%", "25%", "12%"]
MATCH_LEVEL_WIDTHS = ["11%", "7%", "7%", "20%", "11%", "7%", "7%", "20%", "10%"]
UNMATCHED_WIDTHS = ["16%", "11%", "44%", "12%", "17%"]
UNMATCHED_LEVEL_WIDTHS = ["15%", "12%", "9%", "34%", "13%", "17%"]
UI_ROWS = 500  # rows of each table shown in the tab (the API pages through all of them)
HEADERS = {
    "sae_a": "SAE A",
    "latent_a": "id A",
    "level_a": "level A",
    "label_a": "explanation A",
    "sae_b": "SAE B",
    "latent_b": "id B",
    "level_b": "level B",
    "label_b": "explanation B",
    "label": "explanation",
    "best_cosine": "best cos",
    "vs": "in SAE",
}
LEVEL_HEADERS = ["SAE", "level", "latent ids", "FVU up to it", "matched"]
NO_CARD = "Select a match to compare its two latents."
STAR = "★"
BEST_CSS = "font-weight: 700"

# (column of Backend.compare's metrics, row name, which value is best: -1 the lowest, 1 the highest, 0 neither);
# the FVU row's name says what it was measured on, and the per-level FVU rows of Matryoshka SAEs follow it
METRIC_ROWS = [
    ("architecture", "architecture", 0),
    ("d_sae", "latents (width)", 0),
    ("l0", "L0 (active latents per token)", 0),
    ("fvu", "FVU", -1),
    ("ce_recovered", "CE loss recovered", 1),
    ("kl", "KL to the clean model", -1),
    ("classifier_kl", "classifier KL to the clean model", -1),
    ("classifier_abs_dp", "classifier |Δp| to the clean model", -1),
    ("classifier_agree", "classifier agrees with the clean model", 1),
    ("cosine", "cosine of input and reconstruction", 1),
    ("mse", "MSE per element", -1),
    ("dead_frac", "dead latents %", -1),
    ("dense_frac", "dense latents % (fire on > 10% of tokens)", -1),
    ("decoder_max_cos_mean", "mean max decoder cosine", -1),
    ("absorption_rate", "absorption (first letter)", -1),
    ("stability", "seed stability (twin)", 1),
    ("stability_median_cos", "seed stability: median best cosine", 1),
    ("n_excluded_tokens", "tokens excluded (attention sinks)", 0),
]
PERCENT = {"dead_frac", "dense_frac"}
LEVEL_FVU = "matryoshka_fvu_"


def _rows(metrics: pd.DataFrame) -> list[tuple[str, str, int]]:
    """METRIC_ROWS present in ``metrics`` (some SAE has a value), the per-level FVU rows after the FVU row."""
    on = {str(v) for v in metrics.get("reconstruction_on", pd.Series(dtype=object)).dropna()}
    fvu_name = "FVU (held-out, normal tokens)" if on == {"held-out windows"} else "FVU (normal tokens)"
    levels = sorted((c for c in metrics.columns if c.startswith(LEVEL_FVU)), key=lambda c: int(c[len(LEVEL_FVU) :]))
    rows = []
    for key, name, better in METRIC_ROWS:
        if key in metrics and metrics[key].notna().any():
            rows.append((key, fvu_name if key == "fvu" else name, better))
        if key == "fvu":
            rows += [(c, f"per-level FVU: latents 0..{int(c[len(LEVEL_FVU) :]) - 1:,} only", -1) for c in levels]
    return rows


def _cell(value: Any, key: str) -> str:
    """A metric for the table: 4 significant digits, whole numbers with separators, fractions of latents in %."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, str):
        return value
    v = float(value)
    if key in PERCENT:
        return f"{100 * v:.3g}%"
    return f"{int(v):,}" if v.is_integer() and abs(v) >= 1 else f"{v:.4g}"


def best_of(values: pd.Series, better: int) -> np.ndarray:
    """Which values are the best of their row (all of them where several tie); none when fewer than two SAEs
    have a value or all values are equal (nothing to choose)."""
    num = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
    ok = np.isfinite(num)
    if not better or ok.sum() < 2 or np.ptp(num[ok]) == 0:
        return np.zeros(len(num), dtype=bool)
    best = num[ok].min() if better < 0 else num[ok].max()
    return ok & np.isclose(num, best, rtol=1e-9, atol=0.0)


def metrics_table(metrics: pd.DataFrame) -> Any:
    """Metrics as rows with readable names and SAEs as columns; the best value of each row bold and starred
    (lower is better for FVU, KL, MSE, dead and dense latents, decoder cosine and absorption, higher for CE loss
    recovered, cosine and stability). A pandas Styler (gr.Dataframe shows its bold cells in either theme)."""
    names = [str(n) for n in metrics["name"]] if "name" in metrics else [str(i) for i in metrics.index]
    cells, bold = [], []
    for key, name, better in _rows(metrics):
        marks = best_of(metrics[key], better)
        cells.append([name] + [_cell(v, key) + (f"\u00a0{STAR}" if m else "") for v, m in zip(metrics[key], marks)])
        bold.append([False, *marks])
    # an SAE's name may wrap after an underscore (a zero-width space there), so that 11 columns fit at 1024 px
    table = pd.DataFrame(cells, columns=["metric", *(n.replace("_", "_\u200b") for n in names)])
    css = pd.DataFrame(np.where(np.array(bold, dtype=bool).reshape(table.shape), BEST_CSS, ""), columns=table.columns)
    return table.style.apply(lambda _: css, axis=None)


def metrics_widths(n_saes: int) -> list[str]:
    """Column widths of the metrics table. Up to six SAEs share the width (the metric names' column narrower as SAEs
    are added); more get fixed widths, so that eleven fit side by side at 1440 px, and a narrower window scrolls
    them sideways under the pinned names rather than clipping a name or a value."""
    if n_saes > 6:
        return ["190px"] + ["92px"] * n_saes
    first = min(100 - 12 * n_saes, 40)
    return [f"{first}%"] + [f"{(100 - first) / max(n_saes, 1):.2f}%"] * n_saes


def metrics_note(metrics: pd.DataFrame) -> str:
    """What the metrics are measured on (metrics.json's reconstruction_on, per SAE) and what the star means."""
    on = metrics.get("reconstruction_on", pd.Series([None] * len(metrics)))
    groups: dict[str, list[str]] = {}
    for name, where in zip(metrics.get("name", metrics.index), on):
        groups.setdefault(str(where) if isinstance(where, str) and where else "not recorded", []).append(str(name))
    where = "; ".join(f"{w} ({', '.join(n)})" for w, n in groups.items())
    return (
        f'<div class="muted compare-note">{STAR} the best of its row (lower is better for FVU, KL, MSE, dead and dense '
        "latents, decoder cosine and absorption; higher for CE loss recovered, cosine and stability). "
        f"FVU, L0, MSE, cosine and dead latents are measured on normal tokens (attention sinks excluded): "
        f"{html.escape(where)}. CE loss recovered and KL: next-token loss with the SAE spliced in, on a sample "
        "of windows of every domain. Absorption: the first-letter task. Mean max decoder cosine: each latent's "
        "largest |cosine| with another latent of the same SAE (what OrtSAE lowers). Seed stability: the share of "
        "latents with a decoder match of cosine >= 0.7 in a twin trained with another seed.</div>"
    )


def level_of(levels: pd.DataFrame, sae: pd.Series, latent: pd.Series) -> list[Any]:
    """The Matryoshka level (1 = the coarsest) of each (sae, latent), "" where the SAE has no levels."""
    out: list[Any] = []
    spans = {s: g[["start", "end", "level"]].to_numpy() for s, g in levels.groupby("sae")} if len(levels) else {}
    for s, i in zip(sae, latent):
        hit = [int(lv) for a, b, lv in spans.get(s, []) if a <= int(i) < b]
        out.append(hit[0] if hit else "")
    return out


def levels_table(levels: pd.DataFrame) -> pd.DataFrame:
    """One row per Matryoshka level: its latent ids, the FVU reconstructing with levels 1..n only (the prefix of
    width ``end``), and when the first SAE has levels, the share of each of its levels' latents with a match at
    or above the threshold in another SAE (the column is left out otherwise)."""
    if levels is None or levels.empty:
        return pd.DataFrame(columns=LEVEL_HEADERS)
    pct = lambda v: "–" if v is None or v != v else f"{100 * float(v):.1f}%"  # noqa: E731
    table = pd.DataFrame(
        {
            LEVEL_HEADERS[0]: levels["sae"].astype(str),
            LEVEL_HEADERS[1]: levels["level"].astype(int),
            LEVEL_HEADERS[2]: [f"{int(a):,}–{int(b) - 1:,}" for a, b in zip(levels["start"], levels["end"])],
            LEVEL_HEADERS[3]: [_cell(v, "fvu") for v in levels["fvu"]],
            LEVEL_HEADERS[4]: [pct(v) for v in levels["share_matched"]],
        }
    )
    return table if levels["share_matched"].notna().any() else table.drop(columns=LEVEL_HEADERS[4])


def selection_hint(saes: list[str] | None) -> str:
    """The line under the boxes: how many SAEs are ticked and what Compare will do (no warning while ticking)."""
    saes = [str(s) for s in saes or []]
    if len(saes) < 2:
        return render.message_html(f"{len(saes)} SAE selected: tick at least two, then click Compare.", "info")
    return render.message_html(
        f"{len(saes)} SAEs selected: {saes[0]}'s latents are matched against {', '.join(saes[1:])}. "
        "Click Compare to update.",
        "info",
    )


def compare_view(backend: Any, saes: list[str] | None, threshold: float = 0.7) -> dict[str, Any]:
    """Everything the tab shows for one comparison: metrics (a Styler), note, pareto and cosines (figures), levels,
    matches and unmatched (tables, a level column for Matryoshka SAEs), status; an empty view with the reason in
    status (and a warning) for fewer than two SAEs or a refused request."""
    view: dict[str, Any] = {
        "metrics": pd.DataFrame(),
        "note": "",
        "pareto": None,
        "cosines": None,
        "levels": levels_table(pd.DataFrame()),
        "matches": pd.DataFrame(columns=MATCH_COLUMNS).rename(columns=HEADERS),
        "unmatched": pd.DataFrame(columns=UNMATCHED_COLUMNS).rename(columns=HEADERS),
    }
    if not isinstance(saes, list) or len(saes) < 2:
        gr.Warning("Pick at least two SAEs to compare.")
        return {**view, "status": render.message_html("Pick at least two SAEs to compare.")}
    try:
        res = backend.compare(saes, threshold=threshold, limit=UI_ROWS)
    except BAD_INPUT as e:
        gr.Warning(str(e))
        return {**view, "status": render.message_html(str(e))}
    levels = res.levels if res.levels is not None else pd.DataFrame()
    matches = render.tidy(res.matches.reindex(columns=MATCH_COLUMNS), {"cosine": 3})
    unmatched = render.tidy(res.unmatched.reindex(columns=UNMATCHED_COLUMNS), {"best_cosine": 3})
    if len(levels):  # which Matryoshka level each latent belongs to
        matches["level_a"] = level_of(levels, matches["sae_a"], matches["latent_a"])
        matches["level_b"] = level_of(levels, matches["sae_b"], matches["latent_b"])
        unmatched["level"] = level_of(levels, unmatched["sae"], unmatched["latent"])
        matches, unmatched = matches[MATCH_LEVEL_COLUMNS], unmatched[UNMATCHED_LEVEL_COLUMNS]
    shown = lambda n, total: f"{total:,}" if n >= total else f"{total:,} (the first {n:,} shown)"  # noqa: E731
    status = render.message_html(
        f"{shown(len(matches), res.n_matches)} matches of {saes[0]}'s latents with decoder cosine "
        f">= {float(threshold):.2f}; {shown(len(unmatched), res.n_unmatched)} without one. "
        "Select a match to see both dashboards.",
        "info",
    )
    return {
        "metrics": metrics_table(res.metrics),
        "note": metrics_note(res.metrics),
        "pareto": render.pareto_figure(res.metrics),
        "cosines": render.match_cosine_figure(res.pairs, float(threshold)),
        "levels": levels_table(levels),
        "matches": matches.rename(columns=HEADERS),
        "unmatched": unmatched.rename(columns=HEADERS),
        "status": status,
    }


def run_compare(backend: Any, saes: list[str] | None, threshold: float = 0.7) -> tuple:
    """The tab's outputs for one comparison (compare_view), the match cards of the last one cleared."""
    v = compare_view(backend, saes, threshold)
    levels = len(v["matches"].columns) == len(MATCH_LEVEL_COLUMNS)
    metrics = v["metrics"]  # a Styler, or an empty frame when nothing was compared
    if not isinstance(metrics, pd.DataFrame):
        metrics = gr.Dataframe(metrics, column_widths=metrics_widths(len(metrics.data.columns) - 1))
    return (
        metrics,
        v["note"],
        v["pareto"],
        v["cosines"],
        gr.Dataframe(v["levels"], visible=len(v["levels"]) > 0),
        gr.Dataframe(v["matches"], column_widths=MATCH_LEVEL_WIDTHS if levels else MATCH_WIDTHS),
        gr.Dataframe(v["unmatched"], column_widths=UNMATCHED_LEVEL_WIDTHS if levels else UNMATCHED_WIDTHS),
        v["status"],
        render.message_html(NO_CARD, "info"),
        "",
    )


def show_match(backend: Any, evt: gr.SelectData) -> tuple[str, str]:
    """Both latents of a selected match row, as dashboard cards side by side."""
    values = list(evt.row_value or [])
    row = dict(zip(MATCH_LEVEL_COLUMNS if len(values) == len(MATCH_LEVEL_COLUMNS) else MATCH_COLUMNS, values))
    cards = []
    for side in ("a", "b"):
        try:
            fv = backend.feature(str(row[f"sae_{side}"]), int(row[f"latent_{side}"]))
            cards.append(render.feature_card_html(fv, n_contexts=4))
        except (KeyError, *BAD_INPUT) as e:
            cards.append(render.message_html(f"cannot open this side of the match: {e}"))
    return cards[0], cards[1]


@json_endpoint
def compare_api(backend: Any, saes: list[str], threshold: float = 0.7, limit: int = 100, offset: int = 0) -> dict:
    return render.to_json(backend.compare(saes, threshold=threshold, limit=limit, offset=offset))


def _pick_unmatched(evt: gr.SelectData) -> tuple:
    return Opener.target(*row_pick(evt, sae_col=0, latent_col=1))


def build(backend: Any, sae_names: list[str], opener: Opener) -> tuple:
    """Lay out the tab; returns its first comparison (fn, inputs, outputs), run when the tab is first opened."""
    with gr.Row(elem_classes=["bar"]):
        saes = gr.CheckboxGroup(
            sae_names,
            value=sae_names[:3],
            label="SAEs (the first is matched against the others)",
            scale=3,
            elem_id="compare-saes",
        )
        threshold = gr.Slider(
            0.3,
            0.99,
            value=0.7,
            step=0.01,
            label="match threshold (decoder cosine)",
            scale=2,
            elem_id="compare-threshold",
        )
        go_btn = gr.Button("Compare", variant="primary", scale=0, min_width=120, elem_id="compare-go")
    hint = gr.HTML(selection_hint(sae_names[:3]), elem_id="compare-hint")
    status = gr.HTML(elem_id="compare-status")
    metrics = gr.Dataframe(  # every row in view; many SAEs scroll sideways under the pinned metric names
        interactive=False, show_label=False, max_height=720, pinned_columns=1, wrap=True, elem_id="compare-metrics"
    )
    note = gr.HTML(elem_id="compare-note")
    with gr.Row():  # side by side from ~1100 px; narrower, one above the other
        with gr.Column(scale=3, min_width=600):
            pareto = gr.Plot(show_label=False, elem_id="compare-pareto")
        with gr.Column(scale=2, min_width=440):
            cosines = gr.Plot(show_label=False, elem_id="compare-cosines")
            levels = gr.Dataframe(
                levels_table(pd.DataFrame()),
                interactive=False,
                label="Matryoshka levels (FVU up to it: reconstructed with levels 1..n only)",
                visible=False,
                elem_id="compare-levels",
            )
    with gr.Row():  # side by side from ~1100 px; narrower, one above the other (each wide enough for its ids)
        with gr.Column(scale=3, min_width=560):
            gr.Markdown("#### Matched latents (best decoder cosine at or above the threshold)")
            matches = gr.Dataframe(
                pd.DataFrame(columns=MATCH_COLUMNS).rename(columns=HEADERS),
                interactive=False,
                show_label=False,
                max_height=360,
                wrap=True,
                elem_id="compare-matches",
                column_widths=MATCH_WIDTHS,
            )
        with gr.Column(scale=2, min_width=420):
            gr.Markdown("#### Unmatched latents (select to open)")
            unmatched = gr.Dataframe(
                pd.DataFrame(columns=UNMATCHED_COLUMNS).rename(columns=HEADERS),
                interactive=False,
                show_label=False,
                max_height=360,
                wrap=True,
                elem_id="compare-unmatched",
                column_widths=UNMATCHED_WIDTHS,
            )
    with gr.Row():
        card_a = gr.HTML(render.message_html(NO_CARD, "info"), elem_id="compare-card-a")
        card_b = gr.HTML(elem_id="compare-card-b")
    run = functools.partial(run_compare, backend)
    outputs = [metrics, note, pareto, cosines, levels, matches, unmatched, status, card_a, card_b]
    gr.on(
        [go_btn.click, threshold.release],
        run,
        [saes, threshold],
        outputs,
        trigger_mode="always_last",
        api_visibility="private",
    )
    saes.change(selection_hint, saes, hint, api_visibility="private", show_progress="hidden")

    def on_match(evt: gr.SelectData) -> tuple[str, str]:  # a def, not a partial: Gradio reads the SelectData hint
        return show_match(backend, evt)

    matches.select(on_match, None, [card_a, card_b], api_visibility="private")
    opener.wire(unmatched.select, _pick_unmatched, [])

    def compare_endpoint(saes: list[str], threshold: float = 0.7, limit: int = 100, offset: int = 0) -> dict:
        """Metrics of two or more SAEs; the latents of saes[0] with a decoder-cosine match >= threshold in the
        others, and those without one, a page (limit, offset) of each; a summary per SAE pair; Matryoshka levels."""
        return compare_api(backend, saes, threshold, limit, offset)

    gr.api(compare_endpoint, api_name="compare")
    return run, [saes, threshold], outputs
