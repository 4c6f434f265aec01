"""One app serving a text, a protein and a recommender workspace: the switcher links them, and a headless
Chromium drives each one's Browse and Steer tabs; a gradio_client calls the protein workspace's endpoints."""

from __future__ import annotations

import pytest

from backend.index.store import IndexReader
from tests.explorer.test_browser import chromium_page, open_latent, serve, wait_latent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tiny_ws, protein_ws, recsys_ws, tmp_path_factory):
    try:
        with serve(
            [tiny_ws.path, protein_ws.path, recsys_ws.path], tmp_path_factory.mktemp("app3") / "app.log", limit_s=180
        ) as (u, _):
            yield u
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def page(url):
    with chromium_page() as pg:
        yield pg


def best_concept_latent(ws) -> tuple[int, str]:
    r = IndexReader(ws.index_path)
    try:
        row = r.df("SELECT latent, concept FROM concepts WHERE sae = 'topk' ORDER BY confidence DESC LIMIT 1")
        return int(row["latent"][0]), str(row["concept"][0])
    finally:
        r.close()


def test_switcher_lists_all_three_and_opens_the_protein_workspace(page, url):
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#top-contexts .ctx")
    links = page.locator(".ws-switch a.ws-link")
    assert links.count() == 3
    text = page.locator(".ws-switch").inner_text()
    assert "tiny" in text and "protein LM" in text and "recommender" in text
    assert "current" in (links.first.get_attribute("class") or "")
    page.locator(".ws-switch a", has_text="protein_tiny").click()
    page.wait_for_url("**/protein_tiny/")
    page.wait_for_selector("#top-contexts .ctx")
    assert "protein LM model" in page.locator(".app-header").inner_text()
    tabs = page.get_by_role("tab").all_inner_texts()
    assert "Steer" in tabs and "Coverage" not in tabs  # no subdomain SAEs or SHIFT beyond text


def test_protein_feature_page_shows_concepts_and_annotation_spans(page, url, protein_ws):
    page.goto(url + "protein_tiny/", wait_until="domcontentloaded")
    page.wait_for_selector("#top-contexts .ctx")
    latent, concept = best_concept_latent(protein_ws)
    open_latent(page, latent)
    wait_latent(page, latent)
    head = page.locator("#feature-head").inner_text()
    assert "Concept matches" in head and concept in head
    page.wait_for_selector("#top-contexts .span-legend")
    assert concept in page.locator("#top-contexts").inner_text()


def steer_first_latent(page, url: str) -> None:
    """Open a workspace, hand its first latent to the Steer tab and compare before / after."""
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#top-contexts .ctx")
    page.get_by_role("button", name="Steer with this latent").click()
    page.get_by_role("button", name="Compare before / after").click()


def test_protein_steer_tab_shows_classifier_probabilities(page, url):
    steer_first_latent(page, url + "protein_tiny/")
    page.wait_for_function("document.querySelector('#outcome').innerText.includes('classifier probabilities')")
    assert page.locator("#outcome tr").count() >= 3  # header + one row per class


def test_protein_steer_tab_finds_latents_that_move_the_classifier(page, url):
    """The button fills the movers table (gradient-ranked, clamped for real); a selected row joins the edits."""
    page.goto(url + "protein_tiny/", wait_until="domcontentloaded")
    page.wait_for_selector("#top-contexts .ctx")
    page.get_by_role("tab", name="Steer").click()
    page.get_by_role("button", name="Find latents that move the classifier").click()
    page.wait_for_function(
        "document.querySelector('#movers-summary').innerText.includes('largest measured change')", timeout=60_000
    )
    cells = page.locator("#movers .body-cell")
    assert cells.count() == 8 * 5  # 8 candidates x (latent, explanation, clamp value, estimated, measured)
    latent = cells.first.inner_text().strip()
    assert latent.isdigit()
    cells.nth(1).click()
    page.wait_for_function(
        "id => [...document.querySelectorAll('#steer-edits .body-cell')].some(c => c.innerText.trim() === id)",
        arg=latent,
    )


def test_recsys_steer_tab_shows_lists_before_and_after(page, url):
    steer_first_latent(page, url + "recsys_tiny/")
    assert page.get_by_role("button", name="Find latents that move the classifier").count() == 0  # no classifier
    page.wait_for_selector("#outcome ol li")
    assert page.locator("#outcome ol").count() == 2 and page.locator("#outcome ol").first.locator("li").count() == 10
    assert "genre-mix change" in page.locator("#outcome").inner_text()


def test_protein_endpoints_answer_good_and_bad_input(url):
    from gradio_client import Client

    c = Client(url + "protein_tiny/", verbose=False, download_files=False)
    bad = c.predict("topk", "MKV1J", [], api_name="/steer_outcome")
    assert "amino-acid alphabet" in bad["error"]
    good = c.predict("topk", "MKVLAAGIVGKLLAQAK", [[0, "clamp", 20.0]], api_name="/steer_outcome")
    assert good["kind"] == "classifier" and len(good["before"]) == len(good["classes"])
    rows = c.predict("topk", "density", 5, api_name="/latents")
    assert len(rows) == 5


def test_a_permalink_opens_its_latent(page, url):
    page.goto(url + "protein_tiny/?sae=relu&latent=5", wait_until="domcontentloaded")
    page.wait_for_selector("#feature-head .fhead")
    wait_latent(page, 5)
    assert "RELU" in page.locator("#feature-head").inner_text().upper()
    href = page.locator("#feature-head a.permalink").get_attribute("href")
    assert href == "?sae=relu&latent=5"
    page.goto(url + "protein_tiny/?sae=nope&latent=x", wait_until="domcontentloaded")  # bad links fall back
    page.wait_for_selector("#top-contexts .ctx")
    assert "TOPK" in page.locator("#feature-head").inner_text().upper()
