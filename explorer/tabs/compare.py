"""Compare tab: metrics side by side, Pareto plots, latents matched by decoder cosine, unmatched latents."""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr
import pandas as pd

from .. import render
from ..api import BAD_INPUT, json_endpoint
from .browse import Opener, row_pick

MATCH_COLUMNS = ["sae_a", "latent_a", "label_a", "sae_b", "latent_b", "label_b", "cosine"]
UNMATCHED_COLUMNS = ["sae", "latent", "label", "best_cosine", "vs"]
UI_ROWS = 500  # rows of each table shown in the tab (the API pages through all of them)
HEADERS = {
    "sae_a": "SAE A",
    "latent_a": "id A",
    "label_a": "explanation A",
    "sae_b": "SAE B",
    "latent_b": "id B",
    "label_b": "explanation B",
    "label": "explanation",
    "best_cosine": "best cos",
    "vs": "in SAE",
}


def metrics_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Metrics as rows and SAEs as columns (scalar metrics only, rounded)."""
    df = render.scalar_columns(metrics)
    names = df.pop("name") if "name" in df else pd.Series(df.index.astype(str))
    out = df.T.astype(object)
    out.columns = [str(n) for n in names]
    return out.reset_index(names="metric")


def run_compare(backend: Any, saes: list[str] | None, threshold: float = 0.7) -> tuple:
    """(metrics table, Pareto figure, matches, unmatched, status) for two or more SAEs."""
    empty = (
        pd.DataFrame(),
        None,
        pd.DataFrame(columns=MATCH_COLUMNS).rename(columns=HEADERS),
        pd.DataFrame(columns=UNMATCHED_COLUMNS).rename(columns=HEADERS),
    )
    if not isinstance(saes, list) or len(saes) < 2:
        gr.Warning("Pick at least two SAEs to compare.")
        return (*empty, render.message_html("Pick at least two SAEs to compare."))
    try:
        res = backend.compare(saes, threshold=threshold, limit=UI_ROWS)
    except BAD_INPUT as e:
        gr.Warning(str(e))
        return (*empty, render.message_html(str(e)))
    matches = render.tidy(res.matches.reindex(columns=MATCH_COLUMNS), {"cosine": 3})
    unmatched = render.tidy(res.unmatched.reindex(columns=UNMATCHED_COLUMNS), {"best_cosine": 3})
    shown = lambda n, total: f"{total:,}" if n >= total else f"{total:,} (the first {n:,} shown)"  # noqa: E731
    status = render.message_html(
        f"{shown(len(matches), res.n_matches)} matches of {saes[0]}'s latents with decoder cosine "
        f">= {float(threshold):.2f}; {shown(len(unmatched), res.n_unmatched)} without one. "
        "Select a match to see both dashboards.",
        "info",
    )
    return (
        metrics_table(res.metrics),
        render.pareto_figure(res.metrics),
        matches.rename(columns=HEADERS),
        unmatched.rename(columns=HEADERS),
        status,
    )


def show_match(backend: Any, evt: gr.SelectData) -> tuple[str, str]:
    """Both latents of a selected match row, as dashboard cards side by side."""
    row = dict(zip(MATCH_COLUMNS, evt.row_value or []))
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
            sae_names, value=sae_names[:3], label="SAEs (the first is matched against the others)", scale=3
        )
        threshold = gr.Slider(0.3, 0.99, value=0.7, step=0.01, label="match threshold (decoder cosine)", scale=2)
        go_btn = gr.Button("Compare", variant="primary", scale=0, min_width=120)
    status = gr.HTML()
    with gr.Row():
        with gr.Column(scale=2, min_width=400):  # narrower than ~1100 px: the plots get the whole width
            metrics = gr.Dataframe(interactive=False, show_label=False, max_height=340, elem_id="compare-metrics")
        with gr.Column(scale=3, min_width=560):
            pareto = gr.Plot(show_label=False, elem_id="compare-pareto")
    with gr.Row():  # side by side from ~1100 px; narrower, one above the other (each wide enough for its ids)
        with gr.Column(scale=3, min_width=560):
            gr.Markdown("#### Matched latents (best decoder cosine)")
            matches = gr.Dataframe(
                pd.DataFrame(columns=MATCH_COLUMNS).rename(columns=HEADERS),
                interactive=False,
                show_label=False,
                max_height=360,
                wrap=True,
                elem_id="compare-matches",
                column_widths=["12%", "7%", "25%", "12%", "7%", "25%", "12%"],
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
                column_widths=["16%", "11%", "44%", "12%", "17%"],
            )
    with gr.Row():
        card_a = gr.HTML(render.message_html("Select a match to compare its two latents.", "info"))
        card_b = gr.HTML()
    run = functools.partial(run_compare, backend)
    outputs = [metrics, pareto, matches, unmatched, status]
    gr.on(
        [go_btn.click, saes.input, threshold.release],
        run,
        [saes, threshold],
        outputs,
        trigger_mode="always_last",
        api_visibility="private",
    )

    def on_match(evt: gr.SelectData) -> tuple[str, str]:  # a def, not a partial: Gradio reads the SelectData hint
        return show_match(backend, evt)

    matches.select(on_match, None, [card_a, card_b], api_visibility="private")
    opener.wire(unmatched.select, _pick_unmatched, [])

    def compare_endpoint(saes: list[str], threshold: float = 0.7, limit: int = 100, offset: int = 0) -> dict:
        """Metrics of two or more SAEs; the latents of saes[0] with a decoder-cosine match >= threshold in the
        others, and those without one, a page (limit, offset) of each; a summary per SAE pair."""
        return compare_api(backend, saes, threshold, limit, offset)

    gr.api(compare_endpoint, api_name="compare")
    return run, [saes, threshold], outputs
