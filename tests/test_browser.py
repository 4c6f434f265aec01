"""The real app on the real tiny workspace: a headless Chromium clicks through every tab, and a
gradio_client calls every named endpoint, good input and bad.

Needs Debian's Chromium at /usr/bin/chromium (`make chromium`, i.e. `apt-get install -y chromium`);
never `playwright install`. The app runs as a subprocess, exactly as a user starts it.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
STARTUP_LIMIT_S = 20
WAIT_MS = 90_000  # the first text search loads the model

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tiny_ws, tmp_path_factory):
    """`python app.py --workspace <tiny> --port <free>` until the module's tests are done."""
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--workspace", str(tiny_ws.path), "--port", str(port)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() - t0 > 120:
                    pytest.fail(f"app.py did not serve within 120 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        startup = time.time() - t0
        assert startup < STARTUP_LIMIT_S, f"startup took {startup:.1f} s on an existing workspace"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(app_url):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (or `make chromium`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 900})
        pg.set_default_timeout(WAIT_MS)
        pg.goto(app_url, wait_until="domcontentloaded")
        pg.wait_for_selector("#top-contexts .ctx")  # the first latent of the list opens on load
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False, download_files=False)


def open_latent(page, latent: int) -> None:
    box = page.locator("#latent-id input")
    box.fill(str(latent))
    box.press("Enter")


def test_browse_opens_a_latent_with_its_top_contexts(page):
    assert "SAE Explorer" in page.locator(".app-header").inner_text()
    open_latent(page, 7)
    page.wait_for_function("document.querySelector('#feature-head').innerText.includes('LATENT 7')")
    assert page.locator("#top-contexts .ctx").count() >= 1
    assert page.locator("#top-contexts .tok.focus").count() >= 1
    page.locator("#latent-list .body-cell").first.click()  # a row of the list opens too
    first = page.locator("#latent-list .body-cell").first.inner_text().strip()
    page.wait_for_function(f"document.querySelector('#feature-head').innerText.includes('LATENT {first}')")


def test_browse_bad_latent_shows_a_message_and_the_app_keeps_serving(page):
    open_latent(page, 999_999)
    page.wait_for_selector("#feature-head .msg.error")
    assert "out of range" in page.locator("#feature-head").inner_text()
    open_latent(page, 3)
    page.wait_for_function("document.querySelector('#feature-head').innerText.includes('LATENT 3')")


def test_steer_button_hands_the_latent_to_the_steer_tab(page):
    open_latent(page, 5)
    page.wait_for_function("document.querySelector('#feature-head').innerText.includes('LATENT 5')")
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
    page.wait_for_function(f"document.querySelector('#text-heatmap').innerText.includes('LATENT {latent} ON')")


def test_map_draws_and_a_clicked_point_opens_its_dashboard(page):
    page.get_by_role("tab", name="Map").click()
    point = page.locator("#feature-map .scatterlayer .point").nth(10)
    point.wait_for(state="visible")
    box = point.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("document.querySelector('#map-card').innerText.includes('LATENT')")
    picked = page.locator("#map-pick textarea, #map-pick input").first.input_value()
    sae, latent = picked.split(":")
    page.get_by_role("button", name="Open dashboard").click()
    page.wait_for_function(f"document.querySelector('#feature-head').innerText.includes('LATENT {latent}')")
    assert page.locator("#feature-head").is_visible() and sae.upper() in page.locator("#feature-head").inner_text()


def test_compare_tab_shows_metrics_and_matches(page):
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_selector("#compare-metrics .body-cell")
    assert "fvu" in page.locator("#compare-metrics").inner_text()
    page.wait_for_selector("#compare-matches .body-cell")


def test_every_endpoint_answers(client, tiny_ws):
    saes = [s.name for s in tiny_ws.config.saes]
    lat = client.predict(saes[0], "density", True, "", 0.0, "", 5, 0, api_name="/latents")
    assert len(lat["latents"]) == 5 and {"latent", "label", "density"} <= set(lat["latents"][0])
    latent = lat["latents"][0]["latent"]
    fv = client.predict(saes[0], latent, api_name="/feature")
    assert fv["latent"] == latent and fv["top_contexts"] and len(fv["hist_counts"]) == len(fv["hist_edges"]) - 1
    near = client.predict(saes[0], latent, 5, saes[1], api_name="/nearest")
    assert len(near["results"]) == 5 and near["results"][0]["sae"] == saes[1]
    res = client.predict(saes[0], "The capital of France is Paris.", 5, api_name="/search_text")
    assert res["tokens"] and res["top_latents"] and len(res["per_token"]) == len(res["tokens"])
    word = fv["label"].split("'")[1] if "'" in fv["label"] else fv["label"].split()[0]
    found = client.predict(word, "", 20, api_name="/search_features")
    assert isinstance(found["results"], list)
    points = client.predict("", api_name="/map")["points"]
    assert {"sae", "latent", "x", "y"} <= set(points[0])
    cmp = client.predict(saes[:2], 0.7, api_name="/compare")
    assert len(cmp["metrics"]) == 2 and cmp["matches"]


@pytest.mark.parametrize("args, api, message", [
    (("nope", 1), "/feature", "unknown SAE"),
    (("topk", 10**8), "/feature", "out of range"),
    (("topk", "", 10), "/search_text", "text"),
    (("topk", "x" * 100_000, 10), "/search_text", "limit"),
    (("topk", 1, 5, "nope"), "/nearest", "unknown SAE"),
    (("nope",), "/map", "unknown SAE"),
    ((["topk"], 0.7), "/compare", "at least two"),
])
def test_bad_input_gets_a_message(client, args, api, message):
    out = client.predict(*args, api_name=api)
    assert message in out["error"]


def test_sql_looking_search_is_just_text(client):
    out = client.predict("'; DROP TABLE latents; --", "", 10, api_name="/search_features")
    assert out["results"] == []
    assert client.predict("topk", "density", True, "", 0.0, "' OR 1=1 --", 5, 0, api_name="/latents")["latents"] == []
    assert client.predict("topk", 1, api_name="/feature")["latent"] == 1  # the index is intact
