"""Issue 15's Compare tab in a headless Chromium against the real tiny workspace: the comparison runs on the Compare
button (ticking boxes only updates the hint, with no warning), the best-match cosine histogram is drawn, the best value
of a metric row is starred and bold in both themes, and a new comparison clears the old match cards. The app and the
browser are tests/explorer/conftest.py's (one of each per module); the page and text contrast test_browser_ui.py's.
"""

from __future__ import annotations

import pytest

from tests.explorer.test_browser_ui import CONTRAST_JS, opened

pytestmark = pytest.mark.slow


def headers(page) -> list[str]:
    """The metrics table's header (an SAE name may wrap after an underscore: a zero-width space there)."""
    texts = page.locator("#compare-metrics .header-cell span.text").all_inner_texts()
    return [t.replace("\u200b", "").strip() for t in texts]


def open_compare(page) -> None:
    """The Compare tab with its first comparison (the first three SAEs) drawn."""
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_selector("#compare-metrics .body-cell")
    page.wait_for_selector("#compare-cosines .main-svg")


def compare_with(page, saes: list[str]) -> None:
    """Tick exactly ``saes`` (in the boxes' order), click Compare and wait for the metrics of exactly those."""
    boxes = page.locator("#compare-saes")
    for label in boxes.locator("label").all_inner_texts():
        box = boxes.get_by_label(label.strip(), exact=True)
        box.set_checked(label.strip() in saes)
    page.locator("#compare-go").click()
    page.wait_for_function(
        "(want) => JSON.stringify([...document.querySelectorAll('#compare-metrics .header-cell span.text')]"
        ".map(e => e.innerText.replace(/\u200b/g, '').trim()).slice(1)) === JSON.stringify(want)",
        arg=saes,
    )


def test_ticking_boxes_updates_the_hint_and_only_compare_runs_the_comparison(browser, url):
    with opened(browser, url, 1280, 900) as page:
        open_compare(page)
        first, status = headers(page), page.locator("#compare-status").inner_text()
        assert first == ["metric", "topk", "relu", "ssae_bio"]
        assert page.locator("#compare-cosines .legend .traces").count() == 2  # one trace per pair
        boxes = page.locator("#compare-saes")
        boxes.get_by_label("boost_bio", exact=True).check()
        page.wait_for_function("document.querySelector('#compare-hint').innerText.includes('4 SAEs selected')")
        for name in ("relu", "ssae_bio", "boost_bio"):  # down to one SAE: a hint, never a warning
            boxes.get_by_label(name, exact=True).uncheck()
        page.wait_for_function("document.querySelector('#compare-hint').innerText.includes('1 SAE selected')")
        assert headers(page) == first and page.locator("#compare-status").inner_text() == status
        assert "at least two" not in " ".join(page.locator(".toast-body").all_inner_texts())
        compare_with(page, ["topk", "relu", "ssae_bio", "boost_bio"])
        assert page.locator("#compare-cosines .legend .traces").count() == 3
        line = page.locator("#compare-cosines").text_content()
        assert "threshold 0.70" in line and "boost_bio" in line


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_the_best_value_of_a_metric_row_is_starred_bold_and_readable(browser, url, theme):
    with opened(browser, url, 1440, 900, f"?__theme={theme}") as page:
        open_compare(page)
        rows = page.locator("#compare-metrics .virtual-row, #compare-metrics tbody tr")
        fvu = rows.filter(has_text="FVU").first
        cells = [c.strip() for c in fvu.locator(".body-cell").all_inner_texts()]
        assert cells[0].startswith("FVU") and sum(c.endswith("★") for c in cells) == 1
        values = [float(c.rstrip(" \u00a0★")) for c in cells[1:]]
        best = fvu.locator(".body-cell").nth(1 + values.index(min(values)))  # lower FVU is better
        assert best.inner_text().strip().endswith("★")
        weight = best.locator("span.text").evaluate("e => getComputedStyle(e).fontWeight")
        other = fvu.locator(".body-cell").nth(1 + values.index(max(values))).locator("span.text")
        assert int(weight) >= 700 > int(other.evaluate("e => getComputedStyle(e).fontWeight"))
        found = page.eval_on_selector_all("#compare-metrics .body-cell span.text", CONTRAST_JS)
        assert found and min(r["ratio"] for r in found) >= 4.5, min(found, key=lambda r: r["ratio"])


def test_a_new_comparison_clears_the_old_match_cards(browser, url):
    with opened(browser, url, 1280, 900) as page:
        open_compare(page)
        slider = page.locator("#compare-threshold input[type=number]")
        slider.fill("0.3")  # the tiny SAEs share directions only at low cosines
        slider.press("Enter")
        page.locator("#compare-go").click()
        page.wait_for_selector("#compare-matches .body-cell")
        page.locator("#compare-matches .virtual-row").first.locator(".body-cell").nth(2).click()
        page.wait_for_selector("#compare-card-a .card .ctx")
        page.wait_for_selector("#compare-card-b .card")
        compare_with(page, ["topk", "relu"])
        page.wait_for_selector("#compare-card-a .card", state="detached")
        assert "Select a match" in page.locator("#compare-card-a").inner_text()
        assert page.locator("#compare-card-b .card").count() == 0
