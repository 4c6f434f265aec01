"""The Compare tab's builders without a browser (issue 15): the metrics table (readable names, the best value of each
row starred and bold), the note on what is measured on what, the best-match cosine histogram, the Pareto plot with
many SAEs, Matryoshka levels, and the wiring (ticking boxes updates a hint; only Compare runs the comparison)."""

from __future__ import annotations

import math
import warnings

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from explorer import render, ui
from explorer.tabs import compare
from tests.fake_backend import FakeBackend


@pytest.fixture
def fb() -> FakeBackend:
    return FakeBackend()


def metrics_frame() -> pd.DataFrame:
    """A compare metrics frame as Backend.compare builds it (metrics.json flattened)."""
    return pd.DataFrame(
        {
            "name": ["general", "ortsae", "matryoshka"],
            "architecture": ["topk", "batchtopk", "batchtopk"],
            "d_sae": [1152, 1152, 1152],
            "l0": [32.0, 31.5, 32.0],
            "fvu": [0.2, 0.25, 0.21],
            "ce_recovered": [0.9, 0.95, 0.92],
            "kl": [0.4, 0.3, 0.5],
            "dead_frac": [0.01, 0.0, 0.02],
            "decoder_max_cos_mean": [0.3, 0.12, 0.28],
            "absorption_rate": [0.2, 0.25, 0.1],
            "stability": [0.8, None, None],
            "matryoshka_fvu_72": [None, None, 0.6],
            "matryoshka_fvu_1152": [None, None, 0.21],
            "reconstruction_on": ["held-out windows"] * 3,
            "n_tokens": [8000, 8000, 8000],
        }
    )


def rows_of(styler) -> dict[str, list[str]]:
    table = styler.data
    return {r["metric"]: [r[c] for c in table.columns[1:]] for r in table.to_dict("records")}


def test_metrics_rows_have_readable_names_and_the_best_of_each_row_is_starred():
    styler = compare.metrics_table(metrics_frame())
    rows = rows_of(styler)
    assert list(styler.data.columns) == ["metric", "general", "ortsae", "matryoshka"]
    assert rows["FVU (held-out, normal tokens)"] == ["0.2\u00a0★", "0.25", "0.21"]  # lower is better
    assert rows["CE loss recovered"] == ["0.9", "0.95\u00a0★", "0.92"]  # higher is better
    assert rows["KL to the clean model"][1].endswith("★")
    assert rows["mean max decoder cosine"] == ["0.3", "0.12\u00a0★", "0.28"]  # OrtSAE's headline metric
    assert rows["absorption (first letter)"][2].endswith("★")
    assert rows["dead latents %"] == ["1%", "0%\u00a0★", "2%"]
    assert rows["seed stability (twin)"] == ["0.8", "–", "–"]  # one value: nothing to choose between
    assert rows["per-level FVU: latents 0..71 only"] == ["–", "–", "0.6"]
    assert rows["L0 (active latents per token)"] == ["32", "31.5", "32"]  # a budget, not better or worse: no star
    assert rows["architecture"] == ["topk", "batchtopk", "batchtopk"] and rows["latents (width)"][0] == "1,152"
    names = list(rows)
    assert names.index("FVU (held-out, normal tokens)") < names.index("per-level FVU: latents 0..71 only")
    assert names.index("per-level FVU: latents 0..1,151 only") < names.index("CE loss recovered")
    assert "n_tokens" not in names and "reconstruction_on" not in names  # bookkeeping and text stay out


def test_the_best_cells_are_bold_and_only_they():
    styler = compare.metrics_table(metrics_frame())
    styles = gr.Dataframe(styler, interactive=False).value["metadata"]["styling"]  # what the browser gets
    cells = styler.data.to_numpy()
    for row_css, row_cells in zip(styles, cells):
        for css, cell in zip(row_css, row_cells):
            assert (compare.BEST_CSS in css) == str(cell).endswith(compare.STAR), (css, cell)
    assert sum(compare.BEST_CSS in css for row in styles for css in row) >= 6


def test_best_of_ties_all_equal_and_missing_values():
    assert compare.best_of(pd.Series([0.2, 0.1, 0.1]), -1).tolist() == [False, True, True]
    assert compare.best_of(pd.Series([0.2, math.nan, 0.3]), 1).tolist() == [False, False, True]
    assert not compare.best_of(pd.Series([0.0, 0.0, 0.0]), -1).any()  # all equal: no star
    assert not compare.best_of(pd.Series([0.5, None, None]), 1).any()
    assert not compare.best_of(pd.Series([1.0, 2.0]), 0).any()


def test_the_note_says_what_each_metric_is_measured_on():
    m = metrics_frame()
    m.loc[2, "reconstruction_on"] = "cached biomedical (training) tokens"
    note = compare.metrics_note(m)
    assert "held-out windows (general, ortsae)" in note and "cached biomedical (training) tokens (matryoshka)" in note
    assert compare._rows(m)[3][1] == "FVU (normal tokens)"  # not every FVU is on held-out tokens
    assert "not recorded (general" in compare.metrics_note(m.drop(columns=["reconstruction_on"]))


def test_cosine_histogram_one_trace_per_pair_and_the_threshold_line(fb):
    res = fb.compare(["topk", "relu", "boost"], threshold=0.6)
    fig = render.match_cosine_figure(res.pairs, 0.6)
    assert [type(t) for t in fig.data] == [go.Bar, go.Bar]
    assert fig.data[0].name.startswith("relu: ") and fig.data[1].name.startswith("boost: ")
    assert sum(fig.data[0].y) == pytest.approx(100.0)  # a share of topk's latents
    assert sum(fig.data[0].customdata) == fb.D_SAE
    line = fig.layout.shapes[0]
    assert line.x0 == line.x1 == 0.6 and line.line.dash == "dash"
    assert "threshold 0.60" in fig.layout.annotations[0].text
    many = pd.concat([res.pairs] * 3, ignore_index=True)  # six pairs: steps, bars would be too thin
    assert all(isinstance(t, go.Scatter) and t.line.shape == "hvh" for t in render.match_cosine_figure(many, 0.7).data)
    assert not render.match_cosine_figure(pd.DataFrame(), 0.7).data


def test_pareto_front():
    assert render.pareto_front([8, 32, 16, 32], [0.3, 0.1, 0.2, 0.15]) == [0, 2, 1]
    assert render.pareto_front([8, 32, 16], [0.7, 0.9, 0.6], higher=True) == [0, 1]
    assert render.pareto_front([8, math.nan, 16], [0.3, 0.1, None]) == [0]


def test_pareto_with_eleven_saes_names_them_in_the_legend_not_on_the_points():
    names = [f"sae_{i}" for i in range(11)]
    metrics = pd.DataFrame(
        {"name": names, "l0": [32.0] * 10 + [8.0], "fvu": [*np.linspace(0.3, 0.2, 10), 0.35], "ce_recovered": 0.9}
    )
    fig = render.pareto_figure(metrics)
    points = [t for t in fig.data if t.name in names]
    assert all(t.mode == "markers" and not t.text for t in points)  # no labels to overlap
    assert [t.name for t in points if t.showlegend] == names  # each SAE once in the legend
    assert len({(t.marker.color, t.marker.symbol) for t in points}) == 11  # no two markers alike
    assert fig.layout.showlegend and fig.layout.legend.orientation == "h"
    assert all("sae_" in t.hovertemplate for t in points)
    front = [t for t in fig.data if t.name == "Pareto front"]
    assert list(front[0].x) == [8.0, 32.0] and front[0].y[-1] == pytest.approx(0.2)


def test_levels_table_and_the_level_of_each_latent(fb):
    res = fb.compare(["boost", "topk"], threshold=0.7)
    table = compare.levels_table(res.levels)
    assert table["latent ids"].tolist() == ["0–9", "10–19", "20–39"] and table["FVU up to it"].tolist()[0] == "0.6"
    assert table["matched"].tolist()[0] == "100.0%"
    assert compare.level_of(res.levels, pd.Series(["boost", "boost", "topk"]), pd.Series([9, 10, 3])) == [1, 2, ""]
    later = compare.levels_table(fb.compare(["topk", "boost"]).levels)  # boost is not the first: no matched share
    assert "matched" not in later.columns and len(later) == 3
    assert compare.levels_table(fb.compare(["topk", "relu"]).levels).empty


def test_compare_view_lists_matches_at_or_above_the_threshold_with_their_level(fb):
    view = compare.compare_view(fb, ["boost", "topk", "relu"], 0.7)
    matches = view["matches"]
    assert list(matches.columns[:4]) == ["SAE A", "id A", "level A", "explanation A"]
    assert (matches["cosine"] >= 0.7).all() and matches["cosine"].is_monotonic_decreasing
    assert matches["level A"].tolist()[0] == 1 and set(matches["level B"]) == {""}
    assert "27 matches of boost&#x27;s latents" in view["status"]
    assert list(view["unmatched"].columns[:3]) == ["sae", "latent", "level"]
    plain = compare.compare_view(fb, ["topk", "relu"], 0.7)
    assert "level A" not in plain["matches"].columns and plain["levels"].empty


def test_run_compare_clears_the_match_cards_and_shows_levels_only_when_present(fb):
    out = compare.run_compare(fb, ["topk", "relu", "boost"], 0.7)
    metrics, note, pareto, cosines, levels, matches, unmatched, status, card_a, card_b = out
    assert compare.NO_CARD in card_a and card_b == ""
    assert levels.visible and len(matches.column_widths) == len(compare.MATCH_LEVEL_COLUMNS)
    assert "★" in str(metrics.value["metadata"]["display_value"]) and "FVU" in note and len(cosines.data) == 2
    assert metrics.column_widths == compare.metrics_widths(3) and compare.metrics_widths(3)[0] == "40%"
    assert sum(float(w[:-1]) for w in compare.metrics_widths(6)) == pytest.approx(100.0)
    assert compare.metrics_widths(11) == ["190px"] + ["92px"] * 11  # 1,202 px: fits the tab at 1440 px
    plain = compare.run_compare(fb, ["topk", "relu"], 0.7)
    assert not plain[4].visible and len(plain[5].column_widths) == len(compare.MATCH_COLUMNS)
    with pytest.warns(UserWarning, match="at least two"):  # clicking Compare with one SAE says why nothing ran
        lone = compare.run_compare(fb, ["topk"], 0.7)
    assert lone[2] is None and "at least two" in lone[7]


def test_a_match_row_with_level_columns_opens_both_latents(fb):
    view = compare.compare_view(fb, ["boost", "topk"], 0.7)
    row = view["matches"].iloc[3].tolist()
    a, b = compare.show_match(fb, gr.SelectData(None, {"index": [3, 0], "value": row[0], "row_value": row}))
    assert f"boost · latent {row[1]}" in a and f"topk · latent {row[5]}" in b


def test_ticking_boxes_only_updates_the_hint_and_compare_runs_the_comparison(fb):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "pick at least two" warning while a person is ticking boxes
        assert "1 SAE selected" in compare.selection_hint(["topk"])
        assert "3 SAEs selected" in compare.selection_hint(["topk", "relu", "boost"])
    demo = ui.build_app(fb)
    ids = {b.elem_id: i for i, b in demo.blocks.items() if getattr(b, "elem_id", None)}
    runs = [f for f in demo.fns.values() if any(o._id == ids["compare-metrics"] for o in f.outputs)]
    triggers = {(t[0], t[1]) for f in runs for t in f.targets}
    boxes = ids["compare-saes"]
    assert (ids["compare-go"], "click") in triggers and not any(b == boxes for b, _ in triggers)
    hint = [f for f in demo.fns.values() if (boxes, "change") in f.targets]
    assert len(hint) == 1 and [o._id for o in hint[0].outputs] == [ids["compare-hint"]]
    clear = [f for f in runs if (ids["compare-go"], "click") in f.targets][0]
    assert {ids["compare-card-a"], ids["compare-card-b"]} <= {o._id for o in clear.outputs}
