"""Issue 15 ("a researcher's first session"), checked in a headless Chromium against the real tiny workspaces:
dark-mode contrast, no overlap and no broken numbers at 1440 and 1024 px, the address bar following the dashboard,
the intro, the open top quantile band, the sort dropdown, the Steer tab's defaults and messages, and a one-domain
workspace without its empty plot. Helpers come from test_browser.py (Debian's Chromium, the app as a subprocess).
"""

from __future__ import annotations

import contextlib
import re
from urllib.parse import parse_qs, urlparse

import pytest

from tests.explorer.test_browser import WAIT_MS, launch_browser, open_latent, serve, wait_latent

pytestmark = pytest.mark.slow

# WCAG contrast of each element's text with what is behind it: the element's background, or its first ancestor's
# that has one, semi-transparent layers composited over the opaque one below them.
CONTRAST_JS = r"""
(els) => {
  const parse = (c) => {
    let m = c.match(/rgba?\(([^)]+)\)/);
    if (m) { const p = m[1].split(/[\s,\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; }
    m = c.match(/color\(srgb ([^)]+)\)/);
    if (m) { const p = m[1].split(/[\s\/]+/).filter(Boolean).map(Number);
             return [p[0] * 255, p[1] * 255, p[2] * 255, p.length > 3 ? p[3] : 1]; }
    return [0, 0, 0, 0];
  };
  const over = (top, below) => [0, 1, 2].map((i) => top[i] * top[3] + below[i] * (1 - top[3])).concat([1]);
  const lum = (c) => {
    const l = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2];
  };
  const behind = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let acc = [255, 255, 255, 1];
    for (const c of layers.reverse()) acc = over(c, acc);
    return acc;
  };
  return els.filter((e) => e.getClientRects().length && e.innerText.trim()).map((e) => {
    const bg = behind(e);
    const fg = over(parse(getComputedStyle(e).color), bg);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    return {text: e.innerText.trim().slice(0, 30), ratio: (a + 0.05) / (b + 0.05), fg, bg};
  });
}
"""
# Table cells holding one word or number: each on one line, not cut by its column (the cell clips what overflows).
BROKEN_CELLS_JS = r"""
(root) => {
  const bad = [];
  let n = 0;
  for (const sp of root.querySelectorAll('.table-wrap .body-cell span.text, .table-wrap .header-cell span.text')) {
    const t = sp.innerText.trim();
    if (!t || /\s/.test(t) || !sp.getClientRects().length) continue;
    n++;
    const r = document.createRange(); r.selectNodeContents(sp);
    const lines = new Set([...r.getClientRects()].filter((x) => x.width > 0).map((x) => Math.round(x.top))).size;
    const cell = sp.closest('.cell-wrap').getBoundingClientRect();
    if (lines > 1 || r.getBoundingClientRect().right > cell.right + 0.5) bad.push(t);
  }
  return {checked: n, bad};
}
"""


@contextlib.contextmanager
def opened(browser, url: str, width: int = 1280, height: int = 900, query: str = ""):
    """A fresh page (its own storage) of ``width`` x ``height`` on ``url`` + ``query``, the first latent open."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(WAIT_MS)
    try:
        page.goto(url + query, wait_until="domcontentloaded")
        page.wait_for_selector("#top-contexts .ctx")
        yield page
    finally:
        page.close()


def address(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_key_text_contrasts_with_its_background_in_both_themes(browser, url, theme):
    with opened(browser, url, 1440, 900, f"?__theme={theme}") as page:
        assert page.evaluate("document.body.classList.contains('dark')") is (theme == "dark")
        open_latent(page, 7)
        wait_latent(page, 7)
        page.wait_for_timeout(300)
        checks = {
            "latent title": "#feature-head .flabel",
            "latent id": "#feature-head .fid",
            "statistics": "#feature-head .stat b",
            "app title": ".app-header h1",
            "workspace and model names": ".app-header .sub b",
            "token chips": "#top-contexts .tok",
            "logit-lens tokens": "#logit-lens code",
            "logit-lens values": "#logit-lens td.pos, #logit-lens td.neg",
            "intro": "#intro summary, #intro li",
            "muted notes": "#tab-browse .muted p, #feature-head .stat span, #top-contexts .src, #feature-head .permalink",
        }
        for what, selector in checks.items():
            found = page.eval_on_selector_all(selector, CONTRAST_JS)
            assert found, f"{what}: nothing matched {selector}"
            worst = min(found, key=lambda r: r["ratio"])
            limit = 3.0 if what == "logit-lens values" else 4.5  # green/red numbers: WCAG's large-text bar
            assert worst["ratio"] >= limit, f"{theme}: {what} {worst}"


def test_logit_lens_never_overlaps_the_nearest_directions_at_1440(browser, url):
    with opened(browser, url, 1440, 900) as page:
        for latent in (7, 3):
            open_latent(page, latent)
            wait_latent(page, latent)
            page.wait_for_selector("#nearest-list .body-cell")
            column = page.locator("#logit-col").bounding_box()
            nearest = page.locator("#nearest-list").bounding_box()
            tables = [t.bounding_box() for t in page.locator("#logit-lens table.logits").all()]
            assert len(tables) == 2  # promoted and suppressed
            for box in tables:
                assert box["x"] >= column["x"] - 0.5 and box["x"] + box["width"] <= column["x"] + column["width"] + 0.5
                assert box["x"] + box["width"] <= nearest["x"], (box, nearest)
            cells = page.eval_on_selector_all(
                "#logit-lens td",
                "els => els.map(e => { const t = e.closest('table').getBoundingClientRect(), r = e.getBoundingClientRect();"
                " return r.right - t.right; })",
            )
            assert cells and max(cells) <= 0.5  # no cell sticks out of its table


def test_at_1024_numbers_and_words_never_break_and_plots_fit(browser, url):
    with opened(browser, url, 1024, 768) as page:
        page.wait_for_selector("#nearest-list .body-cell")
        result = page.locator("#tab-browse").evaluate(BROKEN_CELLS_JS)
        assert result["checked"] > 50 and result["bad"] == [], result
        page.get_by_role("tab", name="Compare").click()
        page.wait_for_selector("#compare-unmatched .body-cell")
        page.wait_for_selector("#compare-pareto .main-svg")
        page.wait_for_timeout(500)
        result = page.locator("#tab-compare").evaluate(BROKEN_CELLS_JS)
        assert result["checked"] > 50 and result["bad"] == [], result
        plot = page.locator("#compare-pareto").bounding_box()
        svg = page.locator("#compare-pareto .main-svg").first.bounding_box()
        assert svg["width"] <= plot["width"] + 0.5
        texts = page.eval_on_selector_all(
            "#compare-pareto .main-svg text",
            "els => els.filter(e => e.textContent.trim()).map(e => { const r = e.getBoundingClientRect();"
            " return [e.textContent, r.left, r.right]; })",
        )
        assert texts and all(
            left >= plot["x"] - 0.5 and right <= plot["x"] + plot["width"] + 0.5 for _, left, right in texts
        )
        page.get_by_role("tab", name="Search").click()
        page.get_by_role("button", name="Find latents").click()
        page.wait_for_selector("#text-latents .body-cell")
        result = page.locator("#tab-search").evaluate(BROKEN_CELLS_JS)
        assert result["checked"] > 20 and result["bad"] == [], result


def test_the_address_follows_the_opened_latent_and_back_returns(browser, url):
    with opened(browser, url, 1280, 900) as page:
        first = page.locator("#latent-id input").input_value()
        page.wait_for_function(f"new URLSearchParams(location.search).get('latent') === '{first}'")
        assert address(page)["sae"] == "topk"
        for latent in (7, 3):
            open_latent(page, latent)
            wait_latent(page, latent)
            page.wait_for_function(f"new URLSearchParams(location.search).get('latent') === '{latent}'")
        assert address(page) == {"sae": "topk", "latent": "3"}
        page.go_back()
        wait_latent(page, 7)
        assert address(page)["latent"] == "7" and page.locator("#latent-id input").input_value() == "7"
        page.go_forward()
        wait_latent(page, 3)
        copied = page.url  # what a researcher copies from the address bar opens the same latent
    with opened(browser, copied, 1280, 900) as page:
        wait_latent(page, 3)


def test_a_link_to_an_unknown_sae_says_which_sae_is_shown(browser, url):
    with opened(browser, url, 1280, 900, "?sae=nope&latent=5") as page:
        wait_latent(page, 5)
        head = page.locator("#feature-head").inner_text()
        assert "'nope'" in head and "does not have" in head and "showing SAE 'topk'" in head
        page.wait_for_function("new URLSearchParams(location.search).get('sae') === 'topk'")


def test_the_top_quantile_band_is_open(browser, url):
    with opened(browser, url, 1280, 900) as page:
        opened_bands = page.locator("#quantiles details.band[open]")
        assert opened_bands.count() == 1
        summaries = page.locator("#quantiles details.band > summary").all_inner_texts()
        top = max(summaries, key=lambda s: int(re.match(r"\s*(\d+)", s).group(1)))
        assert opened_bands.locator("summary").inner_text() == top
        assert opened_bands.locator(".ctx").first.is_visible()


def test_the_sort_dropdowns_arrow_leaves_its_text_clear(browser, url):
    with opened(browser, url, 1024, 768) as page:
        box = page.locator("input[aria-label='sort by']")
        gap = box.evaluate(
            "e => { const i = e.parentElement.querySelector('.icon-wrap').getBoundingClientRect();"
            " const r = e.getBoundingClientRect(); return i.left - (r.right - parseFloat(getComputedStyle(e).paddingRight)); }"
        )
        assert gap >= 0


def test_the_intro_is_open_on_a_first_visit_and_collapsed_afterwards(browser, url):
    with opened(browser, url, 1280, 900) as page:
        intro = page.locator("#intro details.intro")
        assert intro.evaluate("d => d.open") and "Browse" in intro.inner_text()
        page.reload(wait_until="domcontentloaded")
        page.wait_for_selector("#top-contexts .ctx")
        assert not intro.evaluate("d => d.open")
        intro.locator("summary").click()
        assert intro.evaluate("d => d.open")


def edit_cells(page) -> list[str]:
    return [c.strip() for c in page.locator("#steer-edits .body-cell").all_inner_texts()]


def test_steer_defaults_to_twice_the_max_activation_and_says_what_is_wrong(browser, url):
    with opened(browser, url, 1280, 900) as page:
        page.get_by_role("tab", name="Steer").click()
        page.get_by_role("button", name="Generate").click()  # the default row has no latent
        page.wait_for_function("document.querySelector('#steer-notice').innerText.includes('no latent is set')")
        assert page.locator("#steer-notice").inner_text().count("no latent is set") == 1
        toasts = " ".join(page.locator(".toast-body").all_inner_texts())
        assert "no latent is set" not in toasts  # the toast points to the warning, it does not repeat it
        page.get_by_role("tab", name="Browse").click()
        open_latent(page, 7)
        wait_latent(page, 7)
        max_act = float(page.locator("#feature-head .stat b").nth(2).inner_text())
        page.get_by_role("button", name="Steer with this latent").click()
        page.wait_for_function(  # the row itself, not the table's label (which names the modes too)
            "[...document.querySelectorAll('#steer-edits .body-cell')].map(c => c.innerText.trim())[0] === '7'"
        )
        latent, mode, value, shown = edit_cells(page)[:4]
        assert (latent, mode) == ("7", "clamp") and float(shown) == max_act
        assert float(value) == pytest.approx(2 * max_act, abs=0.011)
        page.locator("#add-latent-id textarea, #add-latent-id input").first.fill("12")
        page.get_by_role("button", name="Add latent").click()
        page.wait_for_function("document.querySelectorAll('#steer-edits .body-cell').length >= 8")
        assert edit_cells(page)[4:6] == ["12", "clamp"]
        cell = page.locator("#steer-edits .body-cell").nth(2)  # row 1's value
        cell.dblclick()
        page.keyboard.press("Control+A")
        page.keyboard.type("abc")
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Generate").click()
        page.wait_for_function("document.querySelector('#steer-notice').innerText.includes('abc')")
        assert "row 1 of the edits table: value must be a number" in page.locator("#steer-notice").inner_text()


def test_steer_firing_table_is_rounded_and_explained(browser, url):
    with opened(browser, url, 1280, 900) as page:
        page.get_by_role("button", name="Steer with this latent").click()
        page.wait_for_function(  # the latent has landed in the edits row (the label names the modes too)
            "/^\\d+$/.test([...document.querySelectorAll('#steer-edits .body-cell')].map(c => c.innerText.trim())[0])"
        )
        page.get_by_role("button", name="Generate").click()
        page.wait_for_selector("#steer-firing .body-cell")
        rows = page.locator("#steer-firing .virtual-row")
        cells = [c.strip() for c in rows.first.locator(".body-cell").all_inner_texts()]
        assert re.fullmatch(r"\d+", cells[0]) and cells[1] and re.fullmatch(r"\d+(\.\d{1,2})?", cells[2])


def test_a_one_domain_workspace_shows_no_domain_plot(browser, recsys_ws, tmp_path_factory):
    with serve(recsys_ws.path, tmp_path_factory.mktemp("app_rec") / "app.log") as (rec_url, _):
        with opened(browser, rec_url, 1280, 900) as page:
            page.wait_for_selector("#act-hist .js-plotly-plot")
            assert page.locator("#domain-rates").count() == 0 or not page.locator("#domain-rates").is_visible()


def take_theme_screenshots(workspace, out_dir) -> list:
    """docs/screenshots/browse_<light|dark>_<1440|1024>.png: the Browse tab (full page) in both themes at both
    widths, after selecting the list's third row (as test_browser.take_screenshots does)."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    with serve(workspace, out_dir / "app.log") as (app, _), sync_playwright() as p:
        b = launch_browser(p)
        for theme in ("light", "dark"):
            for width, height in ((1440, 900), (1024, 768)):
                with opened(b, app, width, height, f"?__theme={theme}") as page:
                    page.locator("#latent-list .virtual-row").nth(2).locator(".body-cell").first.click()
                    page.wait_for_timeout(1500)
                    page.wait_for_selector("#top-contexts .ctx")
                    page.wait_for_timeout(800)  # let plotly finish its transitions
                    shots.append(out_dir / f"browse_{theme}_{width}.png")
                    page.screenshot(path=str(shots[-1]), full_page=True)
        b.close()
    return shots


if __name__ == "__main__":  # python -m tests.explorer.test_browser_ui [WORKSPACE]: the Browse tab in both themes
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    ws = Path(sys.argv[1] if len(sys.argv) > 1 else repo / "workspaces" / "tiny")
    for path in take_theme_screenshots(ws, repo / "docs" / "screenshots"):
        print(path)
