"""explorer/render.py: escaping, the colour scale, the focus outline, figures and JSON values."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from backend.serve.service import Context
from explorer import render
from tests.fake_backend import FakeBackend


class Spans(HTMLParser):
    """Collects the class and title of every token span, and the text inside them."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[dict] = []
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "span" and "tok" in (a.get("class") or "").split():
            self.tokens.append(
                {"class": a["class"], "title": a.get("title", ""), "style": a.get("style", ""), "text": ""}
            )
            self.depth = 1
        elif self.depth:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth and self.tokens:
            self.tokens[-1]["text"] += data


def parse(html_text: str) -> list[dict]:
    p = Spans()
    p.feed(html_text)
    return p.tokens


def luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def test_tokens_are_escaped_and_whitespace_is_visible():
    tokens = ["<script>", " &amp", "\n", '"q"', " Paris", "\t"]
    out = render.tokens_html(tokens, [1.0] * len(tokens), 2.0)
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert "&amp;amp" in out and "\n" not in out
    spans = parse(out)
    assert [s["text"] for s in spans] == ["<script>", "·&amp", "↵", '"q"', "·Paris", "→"]
    assert spans[2]["title"].startswith("'\\n'")  # the hover names the raw token


def test_hover_title_shows_the_value_and_survives_quotes():
    spans = parse(render.tokens_html(["a\"b'c<"], [1.23456], 2.0))
    assert len(spans) == 1
    assert "1.235" in spans[0]["title"] and 'a"b' in spans[0]["title"]


def test_colour_scale_is_white_to_red_and_monotone():
    assert render.act_color(0.0, 5.0) == "#ffffff"
    assert render.act_color(-3.0, 5.0) == "#ffffff"
    assert render.act_color(float("nan"), 5.0) == "#ffffff"
    assert render.act_color(1.0, 0.0) == "#ffffff"
    assert render.act_color(5.0, 5.0) == render.act_color(50.0, 5.0)
    r, g, b = render.act_rgb(5.0, 5.0)
    assert r > 150 and g < 30 and b < 60  # deep red
    lum = [luminance(render.act_rgb(v, 1.0)) for v in np.linspace(0, 1, 101)]
    assert all(a >= b for a, b in zip(lum, lum[1:])), "darker must always mean stronger"
    assert lum[0] - lum[-1] > 150


def test_max_token_is_outlined_once():
    spans = parse(render.tokens_html(["a", "b", "c", "d"], [0.1, 0.5, 3.0, 0.2], 3.0, focus=2))
    assert [("focus" in s["class"].split()) for s in spans] == [False, False, True, False]


def test_strong_tokens_get_light_text_and_silent_ones_the_themes_colours():
    spans = parse(render.tokens_html(["silent", "weak", "strong"], [0.0, 0.2, 1.0], 1.0))
    assert spans[0]["style"] == ""  # no fixed colour: the card's text colour, light or dark theme
    assert "color:#000" in spans[1]["style"] and "color:#fff" in spans[2]["style"]
    marked = parse(render.tokens_html(["a"], [0.0], 1.0, marks=["#e8590c"]))
    assert marked[0]["style"] == "box-shadow:inset 0 -4px 0 #e8590c"


def test_every_coloured_token_contrasts_with_its_cell():
    for v in np.linspace(0.01, 1, 200):
        bg = render.act_rgb(v, 1.0)
        style = parse(render.tokens_html(["x"], [v], 1.0))[0]["style"]
        fg = (255, 255, 255) if "color:#fff" in style else (0, 0, 0)
        hi, lo = sorted([render.luminance(bg), render.luminance(fg)], reverse=True)
        assert (hi + 0.05) / (lo + 0.05) >= 4.5, (v, bg, fg)  # WCAG AA for normal text


def test_context_card_escapes_source_and_domain():
    ctx = Context(["x"], [1.0], 0, "<doc & co>", "le<gal", 1.0)
    out = render.context_html(ctx, 1.0)
    assert "<doc" not in out and "&lt;doc &amp; co&gt;" in out and "le&lt;gal" in out


def test_quantile_bands_are_collapsible_and_the_top_one_open():
    fv = FakeBackend().feature("topk", 3)
    out = render.quantiles_html(fv.quantiles, fv.max_act)
    assert out.count("<details") == len(fv.quantiles) == 3
    assert out.count('<details class="band" open>') == 1
    assert out.rfind(" open>") > out.rfind('<details class="band">')  # the fake lists the top band last
    top_first = render.quantiles_html(list(reversed(fv.quantiles)), fv.max_act)  # the real index lists it first
    assert top_first.index(" open>") < top_first.index('<details class="band">')
    assert top_first.count(" open>") == 1 and "80-100% of max" in top_first.split('<details class="band">')[0]
    assert "No quantile samples" in render.quantiles_html([], 1.0)


def test_feature_header_handles_missing_scores_and_escapes_label():
    fv = FakeBackend().feature("topk", 1)
    fv.label, fv.confidence, fv.precision = "<b> & tags", float("nan"), float("nan")
    out = render.feature_header_html(fv)
    assert "&lt;b&gt; &amp; tags" in out and out.count("n/a") == 2
    card = render.feature_card_html(fv, n_contexts=2)
    assert card.count('class="ctx"') == 2 and "promoted" in card


def test_text_heatmap_hover_lists_top_latents():
    out = render.text_heatmap_html(["a", " b"], [0.0, 2.0], [[], [(7, 2.0), (3, 1.0)]], 7)
    spans = parse(out)
    assert "top latents: 7 (2.00), 3 (1.00)" in spans[1]["title"] and "focus" in spans[1]["class"]
    assert "No tokens" in render.text_heatmap_html([], [], [], 7)


def test_message_is_escaped():
    out = render.message_html("unknown SAE '<x>'")
    assert "&lt;x&gt;" in out and 'class="msg error"' in out


def test_histogram_and_domain_figures():
    fig = render.histogram_figure([0.0, 1.0, 2.0, 4.0], [100, 10, 1])
    assert isinstance(fig, go.Figure) and len(fig.data[0].x) == 3
    assert fig.layout.yaxis.type == "log"
    assert list(render.domain_figure({"code": 0.02, "legal": 0.01}).data[0].y) == ["legal", "code"]
    assert len(render.histogram_figure([], []).data) == 1


@pytest.mark.parametrize("color_by, n_traces", [("density", 1), ("domain", 3), ("SAE", 3)])
def test_map_figure_carries_sae_and_latent(color_by: str, n_traces: int):
    df = FakeBackend().feature_map(None)
    fig = render.map_figure(df, color_by)
    assert len(fig.data) == n_traces
    assert sum(len(t.x) for t in fig.data) == len(df)
    sae, latent = fig.data[0].customdata[0][:2]
    assert sae in {"topk", "relu", "boost"} and int(latent) >= 0
    assert "no map" in render.map_figure(df.iloc[:0]).layout.title.text


def test_large_maps_draw_with_webgl():
    df = FakeBackend().feature_map(None)
    big = pd.concat([df] * (render.GL_POINTS // len(df) + 1), ignore_index=True)
    assert isinstance(render.map_figure(big).data[0], go.Scattergl)
    assert isinstance(render.map_figure(df).data[0], go.Scatter)


def test_pareto_and_scalar_columns():
    metrics = FakeBackend().saes().assign(nested=[{"a": 1}] * 3)
    fig = render.pareto_figure(metrics)
    points = [t for t in fig.data if t.name != "Pareto front"]
    assert len(points) == 6 and [t.name for t in points if t.showlegend] == ["topk", "relu", "boost"]
    assert "nested" not in render.scalar_columns(metrics).columns


def test_to_json_gives_plain_values():
    fb = FakeBackend()
    value = render.to_json(fb.feature("relu", 2))
    assert value["top_contexts"][0]["tokens"] and isinstance(value["quantiles"][0], list)
    res = render.to_json(fb.search_text("topk", "a b c"))
    assert set(res["acts"]) == {"0", "1", "2"} and isinstance(res["top_latents"], list)
    odd = render.to_json({"x": np.float32(1.5), "n": float("nan"), "df": pd.DataFrame({"a": [1.0, math.nan]})})
    assert odd == {"x": 1.5, "n": None, "df": [{"a": 1.0}, {"a": None}]}
    json.dumps(value), json.dumps(res)


def test_public_helpers_match_the_brief():
    out = render.heatmap_html(["<script>", " a&b", "\n"], [0.0, 1.0, 2.0], focus=2)
    spans = parse(out)
    assert [s["text"] for s in spans] == ["<script>", "·a&b", "↵"] and "&lt;script&gt;" in out
    assert "focus" in spans[2]["class"] and spans[0]["style"] == ""  # silent: the theme's own colours
    ctx = Context(["x", " y"], [0.5, 1.0], 1, "wiki/Paris", "general", 1.0)
    card = render.context_card_html(ctx)
    assert "wiki/Paris" in card and "general" in card and len(parse(card)) == 2
    fv = FakeBackend().feature("relu", 2)
    assert "relu · latent 2" in render.dashboard_html(fv)


def test_contexts_past_the_first_few_are_collapsed():
    ctxs = [Context(["a"], [1.0], 0, f"doc{i}", "general", 1.0) for i in range(5)]
    out = render.contexts_html(ctxs, 1.0, show=2)
    assert out.count('class="ctx"') == 5 and "3 more contexts" in out
    assert out.index("<details") > out.index("doc1") and out.index("<details") < out.index("doc2")
    assert "<details" not in render.contexts_html(ctxs, 1.0)


def test_map_density_scale_is_labelled_in_percent():
    fig = render.map_figure(FakeBackend().feature_map(None), "density")
    bar = fig.data[0].marker.colorbar
    assert bar.title.text == "density" and all(t.endswith("%") for t in bar.ticktext)
    assert [10 ** (v + 2) for v in bar.tickvals] == pytest.approx([float(t[:-1]) for t in bar.ticktext])


def test_pareto_titles_are_short_and_names_stay_inside():
    metrics = FakeBackend().saes()
    fig = render.pareto_figure(metrics)
    assert all(len(a.text) <= 30 for a in fig.layout.annotations)  # fits a 230 px subplot at 1024 px
    lo, hi = fig.layout.xaxis.range
    assert lo < metrics["l0"].min() and hi > metrics["l0"].max() and fig.layout.autosize


def test_logit_lens_cells_hover_the_whole_token():
    out = render.logits_html([(" a very long item title", 1.0)], [("<x>", -1.0)])
    assert 'class="tokcell" title="&#x27; a very long item title&#x27;"' in out and "&lt;x&gt;" in out
    assert out.count('class="logit-side"') == 2


def test_the_joint_map_gives_every_sae_its_own_colour():
    """11 SAEs on the joint map: 11 traces with 11 different colours (the house palette has 8)."""
    names = [f"sae{i}" for i in range(11)]
    df = pd.DataFrame(
        {
            "sae": np.repeat(names, 3),
            "latent": np.tile([0, 1, 2], 11),
            "x": np.arange(33.0),
            "y": np.arange(33.0),
            "density": 0.01,
            "label": "x",
        }
    )
    fig = render.map_figure(df, "SAE")
    colours = [t.marker.color for t in fig.data]
    assert len(fig.data) == 11 and len(set(colours)) == 11
    assert render.palette(3) == render.PALETTE[:3]
