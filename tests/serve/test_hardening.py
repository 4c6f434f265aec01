"""Regression tests of the hostile-input audit (issue 11) for the browse, search, compare and coverage views:
each bad value gives one line naming what was wrong, nothing is read from a path a request names, and
requests cost what they look like (repeated SAEs are dropped, pages are capped, pair matches are cached)."""

from __future__ import annotations

import json
import math

import pytest

from backend import errors as check
from backend.errors import BackendError
from backend.serve.service import MAX_RESULTS, MAX_ROWS, Backend
from explorer.api import INTERNAL, json_endpoint
from explorer.tabs import browse, compare, coverage, search

pytest_plugins = ("tests._index_fixtures",)


@pytest.fixture(scope="module")
def synth(synth_ws):
    return Backend(synth_ws)


@pytest.mark.parametrize("value,lo,hi,expected", [(3, 0, 5, 3), (3.0, 0, 5, 3), ("4", 0, 5, 4), (0, 0, 0, 0)])
def test_whole_accepts_whole_numbers(value, lo, hi, expected):
    assert check.whole("n", value, lo, hi) == expected


@pytest.mark.parametrize("value", [1.7, math.nan, math.inf, -math.inf, 10**30, True, None, "abc", "1.5", [1], {}])
def test_whole_refuses_everything_else_in_one_line(value):
    with pytest.raises(BackendError) as e:
        check.whole("limit", value, 1, 100)
    assert str(e.value).startswith("limit must be") and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda b: b.latents("a", offset=10**30), "offset must be between 0 and 10,000,000"),
        (lambda b: b.latents("a", limit=0), "limit must be between 1 and 10,000"),
        (lambda b: b.latents("a", limit=math.inf), "limit must be a whole number"),
        (lambda b: b.latents("a", min_density=math.nan), "min_density must be a number between 0 and 1"),
        (lambda b: b.latents("a", min_density=2), "min_density must be a number between 0 and 1"),
        (lambda b: b.latents("a", domain="../../etc"), "unknown domain '../../etc'"),
        (lambda b: b.latents("a", query="x" * 201), "query has 201 characters; the limit is 200"),
        (lambda b: b.latents("a", descending="yes"), "descending must be true or false"),
        (lambda b: b.search_text("a", "hello", top_n=-1), "top_n must be between 1 and 1,000"),
        (lambda b: b.search_features("x", limit=10**9), "limit must be between 1 and 1,000"),
        (lambda b: b.search_features(["x"]), "query must be a string"),
        (lambda b: b.nearest("a", 1, k=0), "k must be between 1 and 200"),
        (lambda b: b.nearest("a", 1, other_sae="../b"), "unknown SAE '../b'"),
        (lambda b: b.feature("a", 1.7), "latent must be a whole number between 0 and 23, got 1.7"),
        (lambda b: b.feature("a", math.inf), "latent must be a whole number"),
        (lambda b: b.compare("a"), "SAEs must be a list of names"),
        (lambda b: b.compare(["a", "b"], threshold=math.nan), "threshold must be a number between 0 and 1"),
        (lambda b: b.compare(["a", "b"], limit=MAX_RESULTS + 1), "limit must be between 1 and 1,000"),
        (lambda b: b.compare(["a"] * 400), "pick at least two SAEs"),
        (lambda b: b.compare(["a", "b"] * 600), "SAEs has 1,200 entries; the limit is 1,000"),
        (lambda b: b.compare(["a", "../saes/a"]), "unknown SAE '../saes/a'"),
    ],
)
def test_bad_values_give_one_line(synth, call, message):
    with pytest.raises(BackendError) as e:
        call(synth)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_compare_drops_repeats_pages_and_caches_pairs(synth):
    one = synth.compare(["a", "b"], threshold=0.0)
    many = synth.compare(["a", "b"] * 300, threshold=0.0)  # 600 names: one comparison
    assert len(many.pairs) == 1 and many.matches.equals(one.matches)
    assert ("a", "b") in synth._match_cache
    cached = synth._match_cache[("a", "b")][0]
    assert synth.best_matches("a", "b")[0] is cached  # computed once, kept
    assert len(synth.compare(["a", "b"], threshold=0.0, limit=3).matches) == 3
    assert len(synth.compare(["a", "b"], threshold=0.0, offset=10**6).matches) == 0


def test_latents_page_is_capped(synth):
    assert len(synth.latents("a", limit=MAX_ROWS)) == 24


def test_coverage_reads_only_the_workspaces_own_subdomains(synth, tmp_path):
    outside = tmp_path / "x.json"
    outside.write_text(json.dumps({"secret": 1}))
    cov_dir = synth.ws.path / "coverage"
    rel = "../" * 12 + str(outside.with_suffix(""))
    for name in [rel, "../saes/a/cfg", "x" * 300, "", None, ["bio"], 5]:
        with pytest.raises(BackendError) as e:
            synth.coverage(name)
        assert str(e.value).startswith("no coverage for subdomain") and "secret" not in str(e.value)
        assert len(str(e.value)) < 200
    assert not cov_dir.exists() or all(p.parent == cov_dir for p in cov_dir.glob("*.json"))


def test_coverage_endpoint_on_the_real_workspace(tiny_ws):
    b = Backend(tiny_ws.path)
    try:
        subs = b.subdomains()
        assert subs and b.coverage(subs[0])["subdomain"] == subs[0]
        assert "error" in json_endpoint(b.coverage)("../saes/topk/cfg")
        assert "error" in json_endpoint(b.coverage)("../../../../tmp/x")
    finally:
        b.close()


def test_json_endpoint_hides_server_faults():
    def broken():
        raise RuntimeError("IO Error: /work/secret/index.duckdb SELECT * FROM latents")

    def refused():
        raise BackendError("latent must be a whole number\nsecond line")

    assert json_endpoint(broken)() == {"error": INTERNAL}
    assert json_endpoint(refused)() == {"error": "latent must be a whole number"}


def test_api_functions_pass_raw_values_to_the_checks(synth):
    assert "offset must be" in browse.latents_api(synth, "a", offset=10**30)["error"]
    assert "limit must be" in browse.latents_api(synth, "a", limit=math.inf)["error"]
    assert "latent must be" in browse.feature_api(synth, "a", math.inf)["error"]
    assert "top_n must be" in search.search_text_api(synth, "a", "hi", -1)["error"]
    assert "k must be" in search.nearest_api(synth, "a", 1, 10**9)["error"]
    assert "SAEs must be a list" in compare.compare_api(synth, "a")["error"]
    assert "threshold must be" in compare.compare_api(synth, ["a", "b"], math.nan)["error"]


def test_ui_handlers_turn_bad_values_into_warnings(synth):
    with pytest.warns(UserWarning, match="offset must be|page"):
        table, status = browse.list_latents(synth, "a", "latent id", None, 0, "", 10**30)
    assert table.empty
    with pytest.warns(UserWarning, match="min_density"):
        browse.list_latents(synth, "a", "latent id", None, math.nan, "", 1)
    with pytest.warns(UserWarning, match="latent must be"):
        browse.show_feature(synth, "a", math.inf)
    with pytest.warns(UserWarning, match="threshold"):
        compare.run_compare(synth, ["a", "b"], math.nan)
    assert coverage.pick_unique(synth, "../../x", "a").empty
