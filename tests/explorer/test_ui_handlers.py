"""The tabs' handlers against a fake backend: results, and one clear message for every bad input."""

from __future__ import annotations

import html
import subprocess
import sys
from types import SimpleNamespace

import gradio as gr
import pandas as pd
import pytest

from explorer import intro, ui
from explorer.tabs import browse, compare, outcome, search, steer
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
    view = compare.compare_view(fb, ["topk", "relu", "boost"], 0.7)
    metrics, matches, unmatched = view["metrics"].data, view["matches"], view["unmatched"]
    assert list(metrics.columns) == ["metric", "topk", "relu", "boost"]
    assert "FVU (held-out, normal tokens)" in set(metrics["metric"])
    assert len(view["cosines"].data) == 2 and matches["cosine"].is_monotonic_decreasing
    assert (unmatched["best cos"] < 0.7).all() and "without one" in view["status"]
    a, b = compare.show_match(fb, select(matches.iloc[0].tolist()))
    assert "topk · latent" in a and "relu · latent" in b
    with pytest.warns(UserWarning, match="at least two"):
        out = compare.compare_view(fb, ["topk"], 0.7)
    assert out["pareto"] is None and "at least two" in out["status"]
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


# ---- issue 15: a researcher's first session ---------------------------------------------------------------------


class NamedFake(FakeBackend):
    """The fake with the facade's ``sae_names`` (what a link is checked against)."""

    sae_names = ["topk", "relu", "boost"]


def link(**params) -> SimpleNamespace:
    return SimpleNamespace(query_params=params)


def test_density_is_a_percentage_in_browse_and_search(fb):
    table, _ = browse.list_latents(fb, "topk", "density (high first)", None, 2.5, "", 1)  # min density in %
    frac = fb.latents("topk", limit=1000).set_index("latent")["density"]
    assert len(table) and (table["dens. %"] >= 2.5).all()
    assert len(table) == (frac >= 0.025).sum()
    found, _ = search.search_features(fb, "licence", search.ALL_SAES, 50)
    assert "density %" in found.columns and "density" not in found.columns
    row = found.iloc[0]
    raw = fb.latents(row["sae"], limit=1000).set_index("latent").loc[int(row["latent"]), "density"]
    assert row["density %"] == pytest.approx(raw * 100, rel=1e-2)


def test_a_link_to_an_unknown_sae_or_latent_says_what_is_shown():
    nb = NamedFake()
    args = ("topk", "latent id", None, 0, "", 1)
    with pytest.warns(UserWarning, match="does not have"):
        sae, _, _, latent, head, *_ = browse.open_from_url(nb, *args, request=link(sae="nope", latent="3"))
    head = html.unescape(head)
    assert sae == "topk" and latent == 3 and "'nope'" in head and "showing SAE 'topk'" in head
    assert "topk · latent 3" in head  # the dashboard is still there, under the message
    with pytest.warns(UserWarning, match="not a latent id"):
        _, _, _, latent, head, *_ = browse.open_from_url(nb, *args, request=link(sae="relu", latent="x"))
    assert latent == 0 and "relu · latent 0" in head
    sae, _, _, latent, head, *_ = browse.open_from_url(nb, *args, request=link(sae="relu", latent="5"))
    assert (sae, latent) == ("relu", 5) and "msg" not in head  # a good link: no message


def test_back_and_forward_open_the_latent_of_the_address():
    sae, latent, tabs = browse.from_history(gr.EventData(None, {"sae": "relu", "latent": "9"}))
    assert (sae, latent, tabs.selected) == ("relu", 9, "browse")
    with pytest.raises(gr.Error):
        browse.from_history(gr.EventData(None, {"sae": "relu"}))
    assert "history.pushState" in browse.URL_SYNC_JS and "popstate" in browse.URL_SYNC_JS


class OneDomain(FakeBackend):
    def domains(self) -> list[str]:
        return ["ml-100k"]

    def feature(self, sae: str, latent: int):
        fv = super().feature(sae, latent)
        fv.domain_rates = {"ml-100k": 0.01}
        return fv


def test_a_one_domain_workspace_draws_no_domain_plot(fb):
    assert browse.show_feature(OneDomain(), "topk", 3)[2] is None
    assert browse.show_feature(fb, "topk", 3)[2] is not None
    with gr.Blocks() as demo:
        with gr.Tabs() as tabs, gr.Tab("Browse"):
            browse.build(OneDomain(), ["topk"], tabs)
    plots = {b.elem_id: b.visible for b in demo.blocks.values() if isinstance(b, gr.Plot)}
    assert plots == {"act-hist": True, "domain-rates": False}


def test_steer_from_browse_starts_at_twice_the_max_activation(fb):
    edits, sae, _ = ui.steer_with(None, 5, "relu", backend=fb)
    max_act = round(float(fb.feature("relu", 5).max_act), 2)
    assert list(edits.columns) == steer.TABLE_COLUMNS
    assert edits.iloc[0].tolist() == [5, "clamp", round(2 * max_act, 2), max_act]
    assert steer.edit_rows(edits) == [[5, "clamp", round(2 * max_act, 2)]]  # the max act stays in the UI
    assert steer.default_value(None) == steer.DEFAULT_VALUE == steer.default_value(float("nan"))
    more = steer.add_row(fb, edits, "relu", 7)
    assert list(more["latent"]) == [5, 7] and more.iloc[1]["value"] == round(2 * more.iloc[1]["max act"], 2)
    blank = steer.add_row(fb, more, "relu", " ")
    assert len(blank) == 3 and pd.isna(blank.iloc[2]["latent"]) and blank.iloc[2]["mode"] == "clamp"
    assert list(steer.add_row(fb, edits, "relu", "7")["latent"]) == [5, 7]
    for bad in ("abc", "1.5", "-2"):
        with pytest.warns(UserWarning, match="is not a latent id"):
            assert steer.add_row(fb, edits, "relu", bad).equals(steer._table(edits))
    other = steer.refresh_max_act(fb, blank, "topk")
    assert other.iloc[0]["max act"] == round(float(fb.feature("topk", 5).max_act), 2)
    assert other.iloc[0]["value"] == edits.iloc[0]["value"] and pd.isna(other.iloc[2]["max act"])


def test_steer_messages_read_for_a_person(fb):
    blank = steer.EMPTY_EDITS.copy()
    with pytest.warns(UserWarning) as toast:
        out = list(steer.run_steer(fb, "topk", "a cat sat", blank, 8, 0.7, 0, True))
    assert len(out) == 1 and out[0][2] == "⚠ no latent is set: put a latent id in the edits table"
    assert len(toast) == 1 and str(toast[0].message) not in out[0][2]  # not the same text twice
    abc = pd.DataFrame([[3, "clamp", "abc", 4.0]], columns=steer.TABLE_COLUMNS)
    with pytest.warns(UserWarning):
        out = list(steer.run_steer(fb, "topk", "a cat sat", abc, 8, 0.7, 0, True))
    assert out[0][2] == "⚠ row 1 of the edits table: value must be a number, got 'abc'"
    novalue = steer.ui_message("edit 2: mode clamp needs a value: give [latent, 'clamp', number]")
    assert novalue == "row 2 of the edits table: mode clamp needs a value: type a number in its value column"


def test_steer_firing_table_is_rounded_and_labelled(fb):
    edits = pd.DataFrame([[3, "clamp", 9.0, 4.0]], columns=steer.TABLE_COLUMNS)
    *_, last = list(steer.run_steer(fb, "topk", "a cat sat", edits, 8, 0.7, 0, True))
    assert list(last[3].columns) == steer.FIRING_COLUMNS
    assert last[3].iloc[0]["explanation"] == fb.feature("topk", 3).label
    table = steer.firing_table([(1, 40.06678009033203, 3)], {1: "cats"})
    assert table.iloc[0].tolist() == [1, "cats", 40.07, 3]


@pytest.mark.parametrize("motif", [False, True])
def test_the_motif_field_shows_only_where_the_model_can_use_it(motif):
    class Outcome(FakeBackend):
        capabilities = {
            **FakeBackend.capabilities,
            "generates_text": False,
            "outcome_params": {"k": False, "motif": motif},
            "outcome_help": "",
            "outcome_genre_mix": False,
        }

    with gr.Blocks() as demo:
        outcome.build(Outcome(), ["topk"])
    boxes = [b for b in demo.blocks.values() if isinstance(b, gr.Textbox) and "motif" in str(b.label)]
    assert len(boxes) == 1 and boxes[0].visible is motif


def test_intro_says_what_to_do_first():
    text = intro.intro_html("w<s>", "smol<lm>", FakeBackend.capabilities, 3)
    assert "w&lt;s&gt;" in text and "smol&lt;lm&gt;" in text and "holds sparse autoencoders (SAEs)" in text
    assert all(t in text for t in ("Browse", "Search", "Compare", "Steer with this latent"))
    assert '<details class="intro" open>' in text and "localStorage" in intro.INTRO_JS
    rec = {**FakeBackend.capabilities, "input_label": "a user's history: item ids", "generates_text": False}
    assert "paste a user's history to see" in html.unescape(intro.intro_html("r", "", rec, 1))


def test_search_by_meaning_handler_and_endpoint(fb):
    label = fb.latents("relu", sort_by="latent", descending=False, limit=1)["label"].iloc[0]
    word = label.split()[0]
    table, msg = search.search_meaning(fb, word, "relu", 5)
    assert list(table.columns) == ["sae", "latent", "explanation", "score", "top domain"] and len(table) == 5
    assert set(table["sae"]) == {"relu"} and "by meaning" in msg
    with pytest.warns(UserWarning, match="Describe what you are looking for"):
        empty, msg = search.search_meaning(fb, "  ", search.ALL_SAES, 5)
    assert empty.empty and "Describe" in msg
    with pytest.warns(UserWarning):
        _, msg = search.search_meaning(fb, "x", "nope", 5)
    assert "nope" in msg
    rows = search.search_meaning_api(fb, word, "", 3)
    assert len(rows) == 3 and set(rows[0]) == {"sae", "latent", "label", "score", "top_domain"}
