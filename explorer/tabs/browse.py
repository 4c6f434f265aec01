"""Browse tab: the latent list (filter, sort, page) and one latent's full dashboard.

Handlers are module-level functions of (backend, plain values) so that tests call them directly;
``build`` lays out the tab and returns an ``Opener`` that the other tabs use to show a latent here.
The address bar follows the dashboard (``?sae=<name>&latent=<id>``, ``URL_SYNC_JS``): each latent opened is a
browser history entry, so Back returns to the previous latent and the address is a link to the one shown.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from .. import render
from ..api import BAD_INPUT, json_endpoint

SORTS: dict[str, tuple[str, bool]] = {
    "density (high first)": ("density", True),
    "density (low first)": ("density", False),
    "confidence (high first)": ("confidence", True),
    "max activation (high first)": ("max_act", True),
    "latent id": ("latent", False),
}
ALL_DOMAINS = "all domains"
PAGE_SIZE = 200
TOP_SHOWN = 8  # top contexts shown open; the rest behind "N more contexts"
LIST_COLUMNS = ["latent", "explanation", "conf.", "dens. %", "domain"]
NEAREST_COLUMNS = ["sae", "latent", "cosine", "label"]
NEAREST_HEADERS = {"cosine": "cos", "label": "explanation"}
# Runs once when the bridge renders. The dashboard header carries a permalink (?sae=..&latent=..): when it
# changes, the address bar follows (the first latent of a page load replaces the entry, later ones push one);
# Back / Forward (popstate) send the address's latent to the server, which opens it (``from_history``); until
# the dashboard changes, the one still shown is not written back (that would cut the forward history).
URL_SYNC_JS = """
const KEYS = ['sae', 'latent'];
let first = true;
let stale = null;
const sync = () => {
  const a = document.querySelector('#feature-head a.permalink');
  if (!a) return;
  const href = a.getAttribute('href');
  if (stale !== null) { if (href === stale) return; stale = null; }
  const want = new URLSearchParams(href);
  const now = new URLSearchParams(location.search);
  if (KEYS.every((k) => now.get(k) === want.get(k))) { first = false; return; }
  KEYS.forEach((k) => now.set(k, want.get(k)));
  const url = location.pathname + '?' + now.toString() + location.hash;
  const state = {sae: want.get('sae'), latent: want.get('latent')};
  if (first) history.replaceState(state, '', url); else history.pushState(state, '', url);
  first = false;
};
new MutationObserver(sync).observe(document.body, {childList: true, subtree: true, characterData: true});
window.addEventListener('popstate', () => {
  const q = new URLSearchParams(location.search);
  if (!q.get('sae') || q.get('latent') === null) return;
  const a = document.querySelector('#feature-head a.permalink');
  stale = a ? a.getAttribute('href') : null;
  trigger('click', {sae: q.get('sae'), latent: q.get('latent')});
});
sync();
"""


def _warn(e: Exception) -> str:
    gr.Warning(str(e))
    return render.message_html(str(e))


def list_latents(
    backend: Any, sae: str, sort: str, domain: str | None, min_density: float | None, query: str, page: float | None = 1
) -> tuple[pd.DataFrame, str]:
    """(the page of latents as a display table, a status line) for the filters; ``min_density`` in percent of
    tokens, the list's unit (the backend takes a fraction)."""
    sort_by, descending = SORTS.get(sort, ("density", True))
    try:
        page_i = max(int(page or 1), 1)
        df = backend.latents(
            sae,
            sort_by=sort_by,
            descending=descending,
            domain=None if domain in (None, "", ALL_DOMAINS) else domain,
            min_density=float(min_density or 0.0) / 100,
            query=(query or "").strip(),
            limit=PAGE_SIZE,
            offset=(page_i - 1) * PAGE_SIZE,
        )
    except BAD_INPUT as e:
        return pd.DataFrame(columns=LIST_COLUMNS), _warn(e)
    table = render.tidy(
        pd.DataFrame(
            {
                "latent": df["latent"].astype(int),
                "explanation": df["label"].fillna(""),
                "conf.": df["confidence"],
                "dens. %": (df["density"].astype("float64") * 100).map(lambda v: float(f"{v:.3g}")),
                "domain": df["top_domain"].fillna(""),
            }
        ),
        {"conf.": 2},
    )
    first = (page_i - 1) * PAGE_SIZE
    status = (
        f"latents {first + 1}-{first + len(df)} of SAE **{sae}** (page {page_i}); select a row to open it"
        if len(df)
        else f"no latents of SAE **{sae}** match these filters (page {page_i})"
    )
    return table, status + about_sae(backend, sae)


def about_sae(backend: Any, sae: str) -> str:
    """A second status line: the SAE's architecture, width, site and where it came from (trained here, or a
    pretrained SAE's format, origin and own metadata)."""
    rows = backend.saes()
    row = rows[rows["name"] == sae].to_dict("records")
    if not row:
        return ""
    r = row[0]
    site = f" at `{r['site']}`" if r.get("site") else ""
    source = f" · {_plain_md(str(r['source']))}" if r.get("source") else ""
    return f"  \n{_plain_md(str(r.get('architecture', '')))}, {int(r['d_sae']):,} latents{site}{source}"


def _plain_md(text: str) -> str:
    """Text shown literally in Markdown (paths and config keys hold _ and *)."""
    return re.sub(r"([\\`*_{}\[\]<>#|])", r"\\\1", text)


def show_feature(backend: Any, sae: str, latent: float | None) -> tuple:
    """The dashboard outputs: header, histogram, domain rates, top contexts, quantiles, logit lens, nearest."""
    empty = pd.DataFrame(columns=NEAREST_COLUMNS).rename(columns=NEAREST_HEADERS)
    if latent is None or latent == "":
        msg = render.message_html("Type a latent id, or select a row of the list.", "info")
        return msg, None, None, "", "", "", empty
    try:
        fv = backend.feature(sae, latent)
    except BAD_INPUT as e:
        return _warn(e), None, None, "", "", "", empty
    try:
        near = render.tidy(backend.nearest(sae, fv.latent, k=10)[NEAREST_COLUMNS], {"cosine": 3})
        near = near.rename(columns=NEAREST_HEADERS)
    except BAD_INPUT:
        near = empty
    return (
        render.feature_header_html(fv),
        render.histogram_figure(fv.hist_edges, fv.hist_counts),
        render.domain_figure(fv.domain_rates) if len(fv.domain_rates or {}) > 1 else None,  # one bar tells nothing
        render.contexts_html(fv.top_contexts, fv.max_act, show=TOP_SHOWN),
        render.quantiles_html(fv.quantiles, fv.max_act),
        render.logits_html(fv.logits_top, fv.logits_bottom),
        near,
    )


def open_sae(
    backend: Any,
    sae: str,
    sort: str,
    domain: str | None,
    min_density: float | None,
    query: str,
    page: float | None = 1,
    latent: int | None = None,
) -> tuple:
    """The list for the filters and the dashboard of ``latent`` (default: the list's first row):
    (table, status, latent, *dashboard)."""
    table, status = list_latents(backend, sae, sort, domain, min_density, query, page)
    if latent is None:
        latent = int(table["latent"].iloc[0]) if len(table) else None
    return (table, status, latent, *show_feature(backend, sae, latent))


def open_from_url(
    backend: Any,
    sae: str,
    sort: str,
    domain: str | None,
    min_density: float | None,
    query: str,
    page: float | None = 1,
    request: gr.Request | None = None,
) -> tuple:
    """Page load: ``open_sae``, or the latent a link names (``?sae=<name>&latent=<id>``, the dashboard's permalink).
    A link to an SAE this workspace lacks, or with a latent that is not a number, opens the default and says so
    above the dashboard."""
    params = dict(request.query_params) if request is not None and request.query_params else {}
    names = list(getattr(backend, "sae_names", []) or [])
    notes = []
    if params.get("sae") in names:
        sae = params["sae"]
    elif "sae" in params:
        notes.append(
            f"The link names SAE {params['sae'][:80]!r}, which this workspace does not have: showing SAE {sae!r}."
        )
    try:
        wanted = int(params["latent"]) if "latent" in params else None
    except BAD_INPUT:
        wanted = None
        notes.append(
            f"The link's latent {params['latent'][:40]!r} is not a latent id: showing the list's first latent."
        )
    out = list(open_sae(backend, sae, sort, domain, min_density, query, page, wanted))
    if notes:
        note = " ".join(notes)
        gr.Warning(note)
        out[3] = render.message_html(note, "info") + out[3]  # above the dashboard's header
    return (sae, *out)


def from_history(evt: gr.EventData) -> tuple:
    """Back / Forward in the browser: the (sae, latent) of the address bar, opened in the dashboard."""
    try:
        return Opener.target(str(evt.sae)[:200], int(evt.latent))
    except (AttributeError, *BAD_INPUT):
        raise gr.Error("That address names no latent: open one from the list.") from None


def row_pick(
    evt: gr.SelectData, default_sae: str | None = None, sae_col: int | None = None, latent_col: int = 0
) -> tuple[str | None, int]:
    """(sae, latent) from a selected table row; raises gr.Error when the row has no latent."""
    row = evt.row_value or []
    try:
        latent = int(row[latent_col])
    except (IndexError, *BAD_INPUT):
        raise gr.Error("That row has no latent to open.") from None
    return (str(row[sae_col]) if sae_col is not None else default_sae), latent


@json_endpoint
def latents_api(
    backend: Any,
    sae: str,
    sort_by: str = "density",
    limit: int = 200,
    descending: bool = True,
    domain: str = "",
    min_density: float = 0.0,
    query: str = "",
    offset: int = 0,
) -> list | dict:
    """The latent records, or {"error": message}."""
    return render.to_json(
        backend.latents(
            sae,
            sort_by=sort_by,
            descending=descending,
            domain=domain or None,
            min_density=min_density,
            query=query,
            limit=limit,
            offset=offset,
        )
    )


@json_endpoint
def feature_api(backend: Any, sae: str, latent: int) -> dict:
    return render.to_json(backend.feature(sae, latent))


@dataclass
class Opener:
    """Shows a latent in the Browse dashboard (and switches to it) from any tab's event."""

    backend: Any
    sae: gr.Dropdown
    latent: gr.Number
    tabs: gr.Tabs
    outputs: list

    def wire(self, trigger: Callable, fn: Callable, inputs: list) -> None:
        """``trigger(fn, inputs)`` where fn returns ``Opener.target(sae, latent)``; then load the dashboard."""
        trigger(fn, inputs, [self.sae, self.latent, self.tabs], api_visibility="private").success(
            functools.partial(show_feature, self.backend),
            [self.sae, self.latent],
            self.outputs,
            api_visibility="private",
        )

    @staticmethod
    def target(sae: str | None, latent: int) -> tuple:
        return sae, latent, gr.Tabs(selected="browse")


def build(backend: Any, sae_names: list[str], tabs: gr.Tabs) -> tuple[Opener, dict]:
    """Lay out the tab; returns its Opener and the components ui.py wires to other tabs."""
    first = sae_names[0] if sae_names else None
    with gr.Row(equal_height=True):
        sae = gr.Dropdown(sae_names, value=first, label="SAE", scale=1, min_width=120)
        sort = gr.Dropdown(list(SORTS), value=next(iter(SORTS)), label="sort by", scale=1, min_width=200)
        domain = gr.Dropdown(
            [ALL_DOMAINS, *backend.domains()], value=ALL_DOMAINS, label="top domain", scale=1, min_width=160
        )
        min_density = gr.Number(0.0, label="min density (%)", minimum=0, maximum=100, step=0.01, scale=1, min_width=120)
        query = gr.Textbox(label="explanation contains", placeholder="e.g. licence", scale=2, min_width=160)
        page = gr.Number(1, label=f"page ({PAGE_SIZE} per page)", precision=0, minimum=1, scale=1, min_width=100)
    with gr.Row():
        with gr.Column(scale=2, min_width=410):  # at 1024 px: whole numbers and domain names, beside the dashboard
            status = gr.Markdown(elem_classes=["muted"])
            table = gr.Dataframe(
                pd.DataFrame(columns=LIST_COLUMNS),
                interactive=False,
                max_height=760,
                wrap=True,
                column_widths=["13%", "42%", "11%", "13%", "21%"],
                elem_id="latent-list",
                show_label=False,
            )
        with gr.Column(scale=3, min_width=520):
            with gr.Row(elem_classes=["bar"]):
                latent = gr.Number(None, label="latent id", precision=0, minimum=0, scale=1, elem_id="latent-id")
                open_btn = gr.Button("Open", variant="primary", scale=0, min_width=90)
                steer_btn = gr.Button("Steer with this latent", scale=0, min_width=180)
            head = gr.HTML(elem_id="feature-head")
            with gr.Row():
                hist = gr.Plot(show_label=False, elem_id="act-hist")
                # a workspace with one corpus domain: its one bar says nothing, so there is no plot
                dom = gr.Plot(show_label=False, elem_id="domain-rates", visible=len(backend.domains()) > 1)
            gr.Markdown("#### Top activating contexts")
            contexts = gr.HTML(elem_id="top-contexts")
            with gr.Accordion("Samples across activation quantiles", open=True, elem_id="quantiles"):
                quant = gr.HTML()  # the top band starts open (render.quantiles_html)
            with gr.Row():
                with gr.Column(scale=1, min_width=300, elem_id="logit-col"):
                    gr.Markdown("#### Logit lens")
                    logits = gr.HTML(elem_id="logit-lens")
                with gr.Column(scale=1, min_width=340):
                    gr.Markdown("#### Nearest decoder directions")
                    nearest = gr.Dataframe(
                        pd.DataFrame(columns=NEAREST_COLUMNS).rename(columns=NEAREST_HEADERS),
                        interactive=False,
                        show_label=False,
                        max_height=320,
                        wrap=True,
                        column_widths=["20%", "15%", "15%", "50%"],
                        elem_id="nearest-list",
                    )
    dashboard = [head, hist, dom, contexts, quant, logits, nearest]
    filters = [sae, sort, domain, min_density, query, page]
    show = functools.partial(show_feature, backend)
    relist = functools.partial(list_latents, backend)

    gr.on(
        [sort.input, domain.input, min_density.input, query.input, page.input],
        relist,
        filters,
        [table, status],
        trigger_mode="always_last",
        api_visibility="private",
    )
    sae.input(
        functools.partial(open_sae, backend), filters, [table, status, latent, *dashboard], api_visibility="private"
    )
    gr.on([latent.submit, open_btn.click], show, [sae, latent], dashboard, api_visibility="private")
    opener = Opener(backend, sae, latent, tabs, dashboard)

    def pick_listed(sae_name: str, evt: gr.SelectData) -> tuple:
        return Opener.target(*row_pick(evt, sae_name))

    def pick_nearest(evt: gr.SelectData) -> tuple:
        return Opener.target(*row_pick(evt, sae_col=0, latent_col=1))

    opener.wire(table.select, pick_listed, [sae])
    opener.wire(nearest.select, pick_nearest, [])
    url_bridge = gr.HTML("", js_on_load=URL_SYNC_JS, elem_id="url-sync")  # the address bar follows the dashboard
    opener.wire(url_bridge.click, from_history, [])

    def latents_endpoint(
        sae: str,
        sort_by: str = "density",
        limit: int = 200,
        descending: bool = True,
        domain: str = "",
        min_density: float = 0.0,
        query: str = "",
        offset: int = 0,
    ) -> list | dict:
        """Latents of an SAE as records, filtered by top domain, minimum density and words in the explanation.

        sort_by: density | confidence | max_act | latent."""
        return latents_api(backend, sae, sort_by, limit, descending, domain, min_density, query, offset)

    def feature_endpoint(sae: str, latent: int) -> dict:
        """One latent's dashboard: explanation, scores, statistics, contexts, quantiles, histogram, logit lens."""
        return feature_api(backend, sae, latent)

    gr.api(latents_endpoint, api_name="latents")
    gr.api(feature_endpoint, api_name="feature")

    def load_page(
        sae_name: str, sort_by: str, dom: str | None, min_d: float | None, q: str, pg: float | None, request: gr.Request
    ) -> tuple:  # a plain function: gradio injects the request by annotation
        return open_from_url(backend, sae_name, sort_by, dom, min_d, q, pg, request)

    load = (load_page, filters, [sae, table, status, latent, *dashboard])
    return opener, {"sae": sae, "latent": latent, "load": load, "steer": steer_btn}
