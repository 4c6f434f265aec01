"""The real app on the real tiny workspace: a headless Chromium clicks through every tab, and a
gradio_client calls every named endpoint, good input and bad.

Needs Debian's Chromium at /usr/bin/chromium (`make chromium`, i.e. `apt-get install -y chromium`);
never `playwright install`. The app runs as a subprocess, exactly as a user starts it.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STARTUP_LIMIT_S = 20
WAIT_MS = 90_000  # the first text search loads the model

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(workspace: Path | list[Path], log: Path, limit_s: float = 120):
    """`python app.py --workspace <workspace> [--workspace ...] --port <free>` until the block ends;
    yields (url, startup seconds)."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    t0 = time.time()
    folders = workspace if isinstance(workspace, list) else [workspace]
    args = [a for w in folders for a in ("--workspace", str(w))]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", *args, "--port", str(port)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() - t0 > limit_s:
                    raise RuntimeError(f"app.py did not serve within {limit_s} s:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield url, time.time() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch_browser(p):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (or `make chromium`)")
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def app_url(tiny_ws, tmp_path_factory):
    """The app on the tiny workspace until the module's tests are done."""
    try:
        with serve(tiny_ws.path, tmp_path_factory.mktemp("app") / "app.log") as (url, startup):
            assert startup < STARTUP_LIMIT_S, f"startup took {startup:.1f} s on an existing workspace"
            yield url
    except RuntimeError as e:
        pytest.fail(str(e))


@contextlib.contextmanager
def chromium_page():
    """A fresh headless Chromium page (1280 x 900, WAIT_MS timeout) until the block ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_browser(p)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(WAIT_MS)
        try:
            yield pg
        finally:
            browser.close()


@pytest.fixture(scope="module")
def page(app_url):
    with chromium_page() as pg:
        pg.goto(app_url, wait_until="domcontentloaded")
        pg.wait_for_selector("#top-contexts .ctx")  # the first latent of the list opens on load
        yield pg


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False, download_files=False)


def wait_latent(page, latent, where: str = "#feature-head", suffix: str = "") -> None:
    """Wait until ``where`` shows "LATENT <latent>" (not a longer id that starts with the same digits)."""
    page.wait_for_function(
        "([sel, pat]) => new RegExp(pat).test(document.querySelector(sel).innerText)",
        arg=[where, f"LATENT {latent}(?![0-9]){suffix}"],
    )


def open_latent(page, latent: int) -> None:
    box = page.locator("#latent-id input")
    box.fill(str(latent))
    box.press("Enter")


def test_browse_opens_a_latent_with_its_top_contexts(page):
    assert "SAE Explorer" in page.locator(".app-header").inner_text()
    open_latent(page, 7)
    wait_latent(page, 7)
    assert page.locator("#top-contexts .ctx").count() >= 1
    assert page.locator("#top-contexts .tok.focus").count() >= 1
    page.locator("#latent-list .body-cell").first.click()  # a row of the list opens too
    first = page.locator("#latent-list .body-cell").first.inner_text().strip()
    wait_latent(page, first)


def test_browse_bad_latent_shows_a_message_and_the_app_keeps_serving(page):
    open_latent(page, 999_999)
    page.wait_for_selector("#feature-head .msg.error")
    assert "out of range" in page.locator("#feature-head").inner_text()
    open_latent(page, 3)
    wait_latent(page, 3)


def test_steer_button_hands_the_latent_to_the_steer_tab(page):
    open_latent(page, 5)
    wait_latent(page, 5)
    page.get_by_role("button", name="Steer with this latent").click()
    page.wait_for_function("document.querySelector('[role=tab][aria-selected=true]').innerText.includes('Steer')")
    edits = page.locator(".block:has-text('latent edits') .body-cell").first
    edits.wait_for(state="visible")
    assert edits.inner_text().strip() == "5"
    page.get_by_role("tab", name="Browse").click()


def test_search_text_shows_latents_and_a_heatmap(page):
    page.get_by_role("tab", name="Search").click()
    page.locator("#search-text textarea").fill("def mean(xs):\n    return sum(xs) / len(xs) if xs else 0.0  # <&>")
    page.get_by_role("button", name="Find latents").click()
    page.wait_for_selector("#text-heatmap .tok")
    page.wait_for_selector("#text-latents .body-cell")
    assert "<&>" in page.locator("#text-heatmap").inner_text().replace("·", " ")
    second = page.locator("#text-latents .virtual-row").nth(1).locator(".body-cell").first
    latent = second.inner_text().strip()
    second.click()
    wait_latent(page, latent, "#text-heatmap", " ON")


def test_search_opens_the_chosen_latent_in_browse(page):
    page.get_by_role("tab", name="Search").click()
    latent = page.locator("#text-latents .body-cell").first.inner_text().strip()
    page.locator("#text-latents .body-cell").first.click()
    wait_latent(page, latent, "#text-heatmap", " ON")
    page.get_by_role("button", name="Open dashboard").first.click()
    wait_latent(page, latent)
    page.wait_for_selector("#top-contexts .ctx, #top-contexts .muted")  # a text may wake a latent the index never saw


def test_search_by_explanation_lists_latents(page):
    page.get_by_role("tab", name="Search").click()
    page.get_by_role("tab", name="By explanation").click()
    box = page.get_by_label("words in the explanation")
    box.fill("code")
    box.press("Enter")
    page.wait_for_selector("#feature-results .body-cell")
    assert "code" in page.locator("#feature-results").inner_text().lower()
    box.fill("")
    box.press("Enter")
    page.wait_for_function("document.body.innerText.includes('Type some words')")


def click_map_point(page, n: int) -> None:
    """Open the Map tab, click its n-th point and wait for the picked latent's card."""
    page.get_by_role("tab", name="Map").click()
    point = page.locator("#feature-map .scatterlayer .point").nth(n)
    point.wait_for(state="visible")
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("document.querySelector('#map-card').innerText.includes('LATENT')")


def test_map_draws_and_a_clicked_point_opens_its_dashboard(page):
    click_map_point(page, 10)
    picked = page.locator("#map-pick textarea, #map-pick input").first.input_value()
    sae, latent = picked.split(":")
    page.get_by_role("button", name="Open dashboard").click()
    wait_latent(page, latent)
    assert page.locator("#feature-head").is_visible() and sae.upper() in page.locator("#feature-head").inner_text()


def test_compare_tab_shows_metrics_and_matches(page):
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_selector("#compare-metrics .body-cell")
    assert "FVU" in page.locator("#compare-metrics").inner_text()
    # the tiny SAEs share no direction at cosine >= 0.7: every latent is listed as unmatched, with the count
    page.wait_for_selector("#compare-unmatched .body-cell")
    assert re.search(
        r"0 matches of topk's latents .* 2,304 \(the first 500 shown\) without one",
        page.locator("#tab-compare").inner_text(),
    )
    assert page.locator("#compare-pareto .js-plotly-plot").count() == 1


def test_coverage_tab_draws_and_a_unique_latent_opens_in_browse(page):
    page.get_by_role("tab", name="Coverage").click()
    panel = page.locator("#tab-coverage")
    panel.locator(".js-plotly-plot").first.wait_for(state="visible")
    page.get_by_label("dark-matter latents of").click()
    page.get_by_role("option", name="ssae_bio").click()  # hundreds of dark-matter latents on the tiny workspace
    rows = page.locator(".block:has-text('select a row to open its dashboard') .body-cell")
    rows.first.wait_for(state="visible")
    latent = rows.first.inner_text().strip()
    rows.first.click()
    wait_latent(page, latent)


def test_every_endpoint_answers(client, tiny_ws):
    saes = [s.name for s in tiny_ws.config.saes]
    lat = client.predict(saes[0], "density", 5, api_name="/latents")
    assert len(lat) == 5 and {"latent", "label", "density", "top_domain"} <= set(lat[0])
    assert lat[0]["density"] >= lat[-1]["density"] and lat[0]["label"]
    latent = lat[0]["latent"]
    fv = client.predict(saes[0], latent, api_name="/feature")
    assert fv["latent"] == latent and fv["label"] == lat[0]["label"]
    assert (
        fv["top_contexts"] and fv["top_contexts"][0]["tokens"] and len(fv["hist_counts"]) == len(fv["hist_edges"]) - 1
    )
    near = client.predict(saes[0], latent, 5, api_name="/nearest")
    assert len(near) == 5 and near[0]["sae"] == saes[0] and near[0]["latent"] != latent
    assert -1 <= near[-1]["cosine"] <= near[0]["cosine"] <= 1
    other = client.predict(saes[0], latent, 3, saes[1], api_name="/nearest")
    assert len(other) == 3 and {r["sae"] for r in other} == {saes[1]}
    res = client.predict(saes[0], "The capital of France is Paris.", 5, api_name="/search_text")
    assert res["tokens"] and res["top_latents"] and len(res["per_token"]) == len(res["tokens"])
    top = res["top_latents"][0]["latent"]
    assert len(res["acts"][str(top)]) == len(res["tokens"]) and max(res["acts"][str(top)]) > 0
    word = (re.findall(r"[a-z]{3,}", fv["label"].lower()) or ["code"])[0]
    found = client.predict(word, "", 20, api_name="/search_features")
    assert found and all(word.lower() in r["label"].lower() for r in found)
    points = client.predict("", api_name="/map")
    assert {"sae", "latent", "x", "y", "density", "label"} <= set(points[0])
    assert {p["sae"] for p in points} == set(saes)
    one = client.predict(saes[1], api_name="/map")
    assert one and {p["sae"] for p in one} == {saes[1]}
    cmp = client.predict(saes[:2], 0.0, 5, api_name="/compare")  # threshold 0: every latent has a match
    assert len(cmp["metrics"]) == 2 and len(cmp["matches"]) == 5 and "fvu" in cmp["metrics"][0]
    assert {"sae_a", "latent_a", "sae_b", "latent_b", "cosine"} <= set(cmp["matches"][0])
    assert cmp["n_matches"] == cmp["pairs"][0]["n_latents"] and cmp["n_unmatched"] == 0


@pytest.mark.parametrize(
    "args, api, message",
    [
        (("nope", 1), "/feature", "unknown SAE"),
        (("topk", 10**8), "/feature", "out of range"),
        (("topk", "", 10), "/search_text", "text"),
        (("topk", "x" * 100_000, 10), "/search_text", "limit"),
        (("topk", 1, 5, "nope"), "/nearest", "unknown SAE"),
        (("nope", "density", 5), "/latents", "unknown SAE"),
        (("", "", 10), "/search_features", "type a word"),
        (("nope",), "/map", "unknown SAE"),
        ((["topk"], 0.7), "/compare", "at least two"),
    ],
)
def test_bad_input_gets_a_message(client, args, api, message):
    out = client.predict(*args, api_name=api)
    assert message in out["error"] and out["error"].strip()


def test_sql_looking_search_is_just_text(client):
    assert client.predict("'; DROP TABLE latents; --", "", 10, api_name="/search_features") == []
    assert client.predict("topk", "density", 5, True, "", 0.0, "' OR 1=1 --", 0, api_name="/latents") == []
    assert client.predict("topk", 1, api_name="/feature")["latent"] == 1  # the index is intact


def take_screenshots(workspace: Path, out_dir: Path) -> list[Path]:
    """docs/screenshots/<tab>.png (1280x900, full page) of every tab on a workspace, each after a typical action."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    with serve(workspace, out_dir / "app.log") as (url, _), sync_playwright() as p:
        browser = launch_browser(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(WAIT_MS * 2)

        def shot(name: str) -> None:
            page.wait_for_timeout(800)  # let plotly finish its transitions
            shots.append(out_dir / f"{name}.png")
            page.screenshot(path=str(shots[-1]), full_page=True)

        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_selector("#top-contexts .ctx")
        page.locator("#latent-list .virtual-row").nth(2).locator(".body-cell").first.click()
        page.wait_for_timeout(1500)
        page.wait_for_selector("#top-contexts .ctx")
        shot("browse")
        page.get_by_role("tab", name="Search").click()
        page.get_by_role("button", name="Find latents").click()
        page.wait_for_selector("#text-heatmap .tok")
        shot("search")
        click_map_point(page, 40)
        shot("map")
        page.get_by_role("tab", name="Compare").click()
        page.wait_for_selector("#compare-unmatched .body-cell")
        if page.locator("#compare-matches .body-cell").count():  # the tiny SAEs share no direction at 0.7
            page.locator("#compare-matches .virtual-row").nth(1).locator(".body-cell").nth(2).click()
            page.wait_for_selector("#tab-compare .card .ctx")
        shot("compare")
        page.get_by_role("tab", name="Coverage").click()
        page.locator("#tab-coverage .js-plotly-plot").first.wait_for(state="visible")
        shot("coverage")
        page.get_by_role("tab", name="Browse").click()
        page.get_by_role("button", name="Steer with this latent").click()
        page.wait_for_selector("#tab-steer .body-cell")
        page.get_by_role("button", name="Generate").click()
        # the steered text (the last text box of the tab) is long enough
        page.wait_for_function("[...document.querySelectorAll('#tab-steer textarea')].at(-1)?.value.length > 40")
        page.wait_for_selector("#tab-steer .block:has-text('latents firing') .body-cell")  # generation finished
        shot("steer")
        browser.close()
    return shots


if __name__ == "__main__":  # python tests/test_browser.py [WORKSPACE]: refresh docs/screenshots
    ws = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "workspaces" / "tiny")
    for path in take_screenshots(ws, REPO / "docs" / "screenshots"):
        print(path)
