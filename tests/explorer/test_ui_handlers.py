"""The tabs' handlers against a fake backend: results, and one clear message for every bad input."""

from __future__ import annotations

import subprocess
import sys

import gradio as gr
import pandas as pd
import pytest

from explorer import ui
from explorer.tabs import browse, compare, search
from explorer.tabs import map as feature_map
from tests.fake_backend import FakeBackend

SQLISH = "'; DROP TABLE latents; -- OR 1=1"


@pytest.fixture(scope="module")
def fb() -> FakeBackend:
    return FakeBackend()


def select(row: list) -> gr.SelectData:
    return gr.SelectData(None, {"index": [0, 0], "value": row[0] if row else None, "row_value": row})


def test_latent_list_sorts_filters_and_pages(fb):
    table, status = browse.list_latents(fb, "topk", "density (high first)", browse.ALL_DOMAINS, 0, "", 1)
    assert list(table.columns) == browse.LIST_COLUMNS and len(table) == fb.D_SAE
    assert table["dens. %"].is_monotonic_decreasing and "latents 1-40" in status
    code, _ = browse.list_latents(fb, "topk", "latent id", "code", 0.0, "", 1)
    assert set(code["domain"]) == {"code"} and code["latent"].is_monotonic_increasing
    words, _ = browse.list_latents(fb, "topk", "confidence (high first)", None, None, " licence ", 1)
    assert len(words) and words["explanation"].str.contains("licence").all()
    empty, status = browse.list_latents(fb, "topk", "density (high first)", None, 0.0, "", 9)
    assert empty.empty and "no latents" in status


def test_latent_list_unknown_sae_says_so(fb):
    with pytest.warns(UserWarning, match="unknown SAE"):
        table, status = browse.list_latents(fb, "nope", "latent id", None, 0, "", 1)
    assert table.empty and "unknown SAE" in status and "msg error" in status


def test_feature_dashboard_and_its_errors(fb):
    head, hist, dom, ctx, quant, logits, near = browse.show_feature(fb, "topk", 5)
    assert "latent 5" in head and ctx.count('class="ctx"') == 4 and "<details" in quant and "promoted" in logits
    assert hist is not None and dom is not None and len(near) == 10
    info = browse.show_feature(fb, "topk", None)[0]
    assert "Type a latent id" in info
    for latent, sae in [(999, "topk"), (-1, "topk"), (3, "ghost"), (float("inf"), "topk")]:
        with pytest.warns(UserWarning):
            out = browse.show_feature(fb, sae, latent)
        assert "msg error" in out[0] and out[1] is None and out[3] == ""


def test_open_sae_opens_the_first_row(fb):
    table, status, latent, head, *_ = browse.open_sae(fb, "relu", "latent id", None, 0, "", 1)
    assert latent == 0 and "relu · latent 0" in head


def test_row_pick_and_target(fb):
    assert browse.row_pick(select([7, "x"]), "topk") == ("topk", 7)
    assert browse.row_pick(select(["relu", 3, 0.9, "l"]), sae_col=0, latent_col=1) == ("relu", 3)
    with pytest.raises(gr.Error):
        browse.row_pick(select([]))
    sae, latent, tabs = browse.Opener.target("relu", 3)
    assert (sae, latent) == ("relu", 3) and tabs.selected == "browse"


def test_json_endpoints_return_values_or_an_error(fb):
    lat = browse.latents_api(fb, "topk", "max_act", 3)
    assert len(lat) == 3 and lat[0].keys() >= {"latent", "label", "density"}
    assert lat[0]["max_act"] >= lat[1]["max_act"] >= lat[2]["max_act"]
    assert "unknown SAE" in browse.latents_api(fb, "zzz")["error"]
    assert browse.feature_api(fb, "topk", 1)["latent"] == 1
    assert "out of range" in browse.feature_api(fb, "topk", 10**9)["error"]
    assert search.search_text_api(fb, "topk", "one two")["tokens"] == ["one", " two"]
    assert "limit" in search.search_text_api(fb, "topk", "x" * 100_000)["error"]
    assert search.search_features_api(fb, SQLISH) == []
    assert "empty" in search.search_features_api(fb, "")["error"]
    assert len(search.nearest_api(fb, "topk", 1, k=3, other_sae="relu")) == 3
    assert "out of range" in search.nearest_api(fb, "topk", -1)["error"]
    assert "error" in browse.feature_api(fb, "topk", None)
    assert len(feature_map.map_api(fb)) == 3 * fb.D_SAE and len(feature_map.map_api(fb, "relu")) == fb.D_SAE
    assert "unknown SAE" in feature_map.map_api(fb, "zz")["error"]
    assert compare.compare_api(fb, ["topk", "relu"])["matches"]
    assert "at least two" in compare.compare_api(fb, ["topk"])["error"]
    assert "at least two" in compare.compare_api(fb, None)["error"]


def test_search_text_colours_by_a_chosen_latent(fb):
    table, heat, state, latent = search.search_text(fb, "relu", "the cat < sat & ran", 5)
    assert list(table.columns) == ["latent", "explanation", "max", "mean", "tokens fired"]
    assert latent == 0 and "latent 0 on your text" in heat and "&lt;" in heat
    assert "latent 2" in search.heatmap(state, 2)
    assert "not among" in search.heatmap(state, 33)
    assert "Search a text first" in search.heatmap({}, 1)
    assert search.open_chosen(state, 2)[:2] == ("relu", 2)
    with pytest.raises(gr.Error):
        search.open_chosen({}, None)


@pytest.mark.parametrize(
    "text, message", [("", "Type or paste"), ("   \n", "Type or paste"), ("x" * 100_000, "limit is 20,000")]
)
def test_search_text_bad_input(fb, text, message):
    with pytest.warns(UserWarning, match=message):
        table, heat, state, latent = search.search_text(fb, "topk", text, 10)
    assert table.empty and message in heat and state == {} and latent is None


def test_search_features_and_nearest(fb):
    df, msg = search.search_features(fb, "licence", search.ALL_SAES, 50)
    assert len(df) and set(df["sae"]) == {"topk", "relu", "boost"} and "select one" in msg
    only, _ = search.search_features(fb, "licence", "relu", 50)
    assert set(only["sae"]) == {"relu"}
    none, msg = search.search_features(fb, SQLISH, None, 50)
    assert none.empty and "No explanation matches" in msg
    with pytest.warns(UserWarning, match="Type some words"):
        search.search_features(fb, "  ", None, 50)
    near, msg = search.nearest(fb, "topk", 4, 5, "relu")
    assert len(near) == 5 and set(near["sae"]) == {"relu"} and "in relu" in msg
    with pytest.warns(UserWarning, match="unknown SAE"):
        assert search.nearest(fb, "topk", 4, 5, "ghost")[0].empty
    with pytest.warns(UserWarning, match="Type the id"):
        search.nearest(fb, "topk", None)


def test_map_draw_pick_and_card(fb):
    fig, status = feature_map.draw_map(fb, feature_map.JOINT, "domain")
    assert len(fig.data) == 3 and "120 latents of 3 SAEs" in status
    fig, _ = feature_map.draw_map(fb, "relu", "density")
    assert len(fig.data[0].x) == fb.D_SAE
    with pytest.warns(UserWarning):
        assert feature_map.draw_map(fb, "ghost", "density")[0] is None
    assert feature_map.parse_pick("relu:4", feature_map.JOINT) == ("relu", 4)
    assert feature_map.parse_pick(" 4 ", "topk") == ("topk", 4)
    for text, choice, msg in [
        ("4", feature_map.JOINT, "sae:latent"),
        ("", "topk", "Click a point"),
        ("topk:abc", None, "not a latent"),
    ]:
        with pytest.raises(ValueError, match=msg):
            feature_map.parse_pick(text, choice)
    assert "boost · latent 2" in feature_map.show_card(fb, "boost:2", None)
    with pytest.warns(UserWarning, match="out of range"):
        assert "msg error" in feature_map.show_card(fb, "topk:4000", None)
    text, card = feature_map.clicked(fb, feature_map.JOINT, gr.EventData(None, {"sae": "relu", "latent": 9}))
    assert text == "relu:9" and "relu · latent 9" in card
    assert feature_map.open_pick("relu:9", None)[:2] == ("relu", 9)
    with pytest.raises(gr.Error, match="sae:latent"):
        feature_map.open_pick("9", feature_map.JOINT)


def test_compare_tables_and_match_cards(fb):
    metrics, fig, matches, unmatched, status = compare.run_compare(fb, ["topk", "relu", "boost"], 0.7)
    assert list(metrics.columns) == ["metric", "topk", "relu", "boost"] and "fvu" in set(metrics["metric"])
    assert len(fig.data) == 2 and matches["cosine"].is_monotonic_decreasing
    assert (unmatched["best cos"] < 0.7).all() and "without one" in status
    a, b = compare.show_match(fb, select(matches.iloc[0].tolist()))
    assert "topk · latent" in a and "relu · latent" in b
    with pytest.warns(UserWarning, match="at least two"):
        out = compare.run_compare(fb, ["topk"], 0.7)
    assert out[1] is None and "at least two" in out[-1]
    with pytest.warns(UserWarning, match="unknown SAE"):
        compare.run_compare(fb, ["topk", "ghost"], 0.7)
    bad_a, _ = compare.show_match(fb, select(["ghost", 1, "", "relu", 1, "", 0.9]))
    assert "cannot open" in bad_a


def test_app_builds_with_every_endpoint_and_tabs_in_order(fb):
    demo = ui.build_app(fb)
    names = {f.api_name for f in demo.fns.values() if f.api_visibility == "public"}
    assert {
        "feature",
        "search_text",
        "search_features",
        "map",
        "compare",
        "latents",
        "nearest",
        "steer",
        "coverage",
    } <= names
    tabs = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab) and b.id]
    assert tabs == ["Browse", "Search", "Map", "Compare", "Coverage", "Steer"]
    assert ui.launch_options()["css_paths"][0].exists()


def test_long_text_is_cut_with_a_notice(fb):
    with pytest.warns(UserWarning, match="cut to its first"):
        table, heat, state, latent = search.search_text(fb, "topk", "word " * 500, 5)
    assert len(state["tokens"]) == fb.MAX_TOKENS and "cut to its first" in heat
    assert "cut to its first" in search.heatmap(state, latent)  # re-colouring keeps the notice
    assert search.search_text_api(fb, "topk", "word " * 500)["notice"]


def test_coverage_row_opens_browse(fb):
    sae, latent, tabs = ui.pick_unique("relu", select([17, 0.2, 1.5, "label"]))
    assert (sae, latent, tabs.selected) == ("relu", 17, "browse")


def test_header_and_steer_handoff(fb):
    out = ui.header_html("w<s>", fb.saes(), ["code"], "smol<lm>")
    assert "w&lt;s&gt;" in out and "3 SAEs" in out and "relu" in out and "model <b>smol&lt;lm&gt;</b>" in out
    edits, sae, tabs = ui.steer_with(None, 12, "relu")
    assert list(edits["latent"]) == [12] and sae == "relu" and tabs.selected == "steer"
    edits2, _, _ = ui.steer_with(pd.DataFrame(edits), 13, "relu")
    assert list(edits2["latent"]) == [12, 13]
    with pytest.raises(gr.Error):
        ui.steer_with(None, None, "relu")


def test_explorer_never_imports_torch():
    code = "import sys, explorer.ui; assert 'torch' not in sys.modules, 'explorer imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ui.CSS.parent.parent)
