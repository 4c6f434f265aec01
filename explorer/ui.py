"""The SAE Explorer app: a header and one tab per module of explorer/tabs, wired together here.

``build_app(backend)`` takes any object with the Backend facade's methods (docs/service_api.md);
explorer/ never imports torch or the backend package. What differs between model kinds (text, protein,
recommender) comes from ``backend.capabilities``, plain values: the UI never compares kind names.
Theme and CSS are launch options in Gradio 6 (``demo.launch(**launch_options())``).

While the serving process is still building (app.py's staged start: ``backend.build_status()``), a status
line under the header says how far each workspace is, and a timer (every ``BUILD_POLL_S`` seconds, only
while something builds) adds each SAE to the header chips and to every SAE picker of every tab as soon as
it is ready, and the Coverage tab's subdomains when they appear; a page load does the same, so a reload
after the build shows everything without restarting the app.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from . import intro  # issue 15: the first-visit "Start here" block
from .tabs import browse, compare, coverage, outcome, search, steer
from .tabs import map as feature_map

CSS = Path(__file__).resolve().parent.parent / "assets" / "style.css"
TITLE = "SAE Explorer"
BUILD_POLL_S = 5.0
STATE_MARK = {
    "waiting": "·",
    "importing": "…",
    "training": "…",
    "evaluating": "…",
    "indexing": "…",
    "ready": "✓",
    "failed": "✗",
}
Workspaces = list[tuple[str, str, str]] | Callable[[], list[tuple[str, str, str]]] | None


def switcher_html(current: str, workspaces: list[tuple[str, str, str]] | None) -> str:
    """Links to the workspaces served by this app: (name, kind of model as shown, url path) triples."""
    if not workspaces or len(workspaces) < 2:
        return ""
    links = "".join(
        f'<a class="ws-link{" current" if name == current else ""}" href="{html.escape(path, quote=True)}">'
        f"{html.escape(name)} <small>{html.escape(kind)}</small></a>"
        for name, kind, path in workspaces
    )
    return f'<nav class="ws-switch" aria-label="workspaces"><span class="muted">workspaces</span>{links}</nav>'


def header_html(
    workspace: str,
    saes: pd.DataFrame,
    domains: list[str],
    model: str = "",
    kind: str = "text",
    workspaces: list[tuple[str, str, str]] | None = None,
    problems: list[str] | None = None,
) -> str:
    """The title bar: workspace name, model and its kind (as shown: 'text', 'protein LM', ...), its SAEs (with
    width and architecture), corpus domains, and the switcher to the other workspaces this app serves."""
    chips = "".join(
        f'<span class="chip" title="{html.escape(_chip_title(r), quote=True)}">'
        f"{html.escape(str(r['name']))} <small>{html.escape(str(r.get('architecture', '')))}"
        f" · {int(r['d_sae']):,}</small></span>"
        for r in saes.to_dict("records")
    )
    kind = html.escape(kind)
    return (
        f'<div class="app-header"><div><h1>{TITLE}</h1><div class="sub">workspace <b>{html.escape(workspace)}</b>'
        f"{f' · {kind} model <b>{html.escape(model)}</b>' if model else ''}"
        f" · {len(saes)} SAE{'s' if len(saes) != 1 else ''} · {len(domains)} domain{'s' if len(domains) != 1 else ''}: "
        f"{html.escape(', '.join(domains))}</div>{switcher_html(workspace, workspaces)}"
        + "".join(
            f'<div class="sub" style="color:#b45309">⚠ not served: {html.escape(p)}</div>' for p in problems or []
        )
        + "</div>"
        f'<div class="chips">{chips}</div></div>'
    )


def _chip_title(r: dict) -> str:
    """An SAE chip's tooltip: its architecture, site and where it came from."""
    return " · ".join(str(r[k]) for k in ("architecture", "site", "source") if r.get(k))


def status_html(status: dict) -> str:
    """The build status under the header: this workspace's line and each SAE's state (failed ones with their
    one-line error), then the other workspaces this process builds; "" when nothing is or was built here."""
    rows = []
    if status.get("line"):
        chips = "".join(
            f'<span class="chip build-{html.escape(s["state"])}" title="{html.escape(s["detail"], quote=True)}">'
            f"{STATE_MARK.get(s['state'], '')} {html.escape(s['name'])} <small>{html.escape(s['state'])}"
            f"{': ' + html.escape(s['detail']) if s['detail'] and s['state'] == 'failed' else ''}</small></span>"
            for s in status.get("saes", [])
        )
        rows.append(f'<div class="sub"><b>{html.escape(status["line"])}</b></div><div class="chips">{chips}</div>')
    rows += [
        f'<div class="sub">workspace <b>{html.escape(o["workspace"])}</b>: {html.escape(o["line"])}</div>'
        for o in status.get("others", [])
        if o.get("line")
    ]
    return f'<div class="build-status muted">{"".join(rows)}</div>' if rows else ""


def building(status: dict) -> bool:
    """Whether this workspace or another one of the serving process is still being built."""
    return bool(status.get("active")) or any(o.get("active") for o in status.get("others", []))


def sae_pickers(demo: gr.Blocks, names: list[str]) -> list[tuple[Any, list, list]]:
    """Every dropdown / checkbox group of the app whose choices hold the SAE names (in order, as the tabs built
    them from ``names``), with the choices before and after them (e.g. "all SAEs", the joint map), so that new
    SAEs can be put in their place: (component, before, after)."""
    found = []
    n = len(names)
    for block in demo.blocks.values():
        if not isinstance(block, (gr.Dropdown, gr.CheckboxGroup)) or not n:
            continue
        values = [c[1] if isinstance(c, (tuple, list)) else c for c in block.choices or []]
        for i in range(len(values) - n + 1):
            if values[i : i + n] == names:
                found.append((block, values[:i], values[i + n :]))
                break
    return found


def follow_build(backend: Any, pickers: list, subdomain: Any, workspaces: Workspaces, shown: dict) -> tuple:
    """One tick of the build timer (and the page load): (shown, header, status, each picker, the Coverage
    subdomain, the timer). Only what changed since this page last showed it is sent."""
    status = backend.build_status()
    saes = backend.saes()
    names = [str(n) for n in saes["name"]]
    links = workspaces() if callable(workspaces) else workspaces
    head = header_html(
        backend.workspace_name,
        saes,
        backend.domains(),
        str(getattr(backend, "model_name", "")),
        backend.capabilities["display_name"],
        links,
        getattr(backend, "problems", []),
    )
    subs = backend.subdomains() if subdomain is not None else []
    new = {"names": names, "header": head, "subs": subs}
    picks = [
        gr.update(choices=before + names + after) if names != shown.get("names") else gr.skip()
        for _, before, after in pickers
    ]
    if subdomain is not None:
        sub = gr.update(choices=subs, value=subs[0] if subs else None) if subs != shown.get("subs") else gr.skip()
        picks.append(sub)
    return (
        new,
        head if head != shown.get("header") else gr.skip(),
        status_html(status),
        *picks,
        gr.Timer(active=building(status)),
    )


def steer_with(edits: pd.DataFrame | None, latent: float | None, sae: str, backend: Any = None) -> tuple:
    """Add the Browse tab's latent to the Steer tab's edits and switch there; with the backend, its value starts
    at a multiple of the latent's max activation (steer.default_value), shown beside it."""
    if latent is None:
        raise gr.Error("Open a latent first, then steer with it.")
    max_act = steer.latent_max_act(backend, sae, int(latent)) if backend is not None else None
    return steer.add_edit(edits, int(latent), max_act=max_act), sae, gr.Tabs(selected="steer")


def pick_unique(sae: str, evt: gr.SelectData) -> tuple:
    """A row of the Coverage tab's unique-latents table, opened in Browse."""
    return browse.Opener.target(*browse.row_pick(evt, sae))


def on_first_select(tab: gr.Tab, load: tuple[Callable, list, list]) -> None:
    """Run a tab's initial load the first time the tab is opened, not on every page load."""
    fn, inputs, outputs = load
    done = gr.State(False)

    def first(already: bool, *args: Any) -> tuple:
        return (True, *([gr.skip()] * len(outputs) if already else fn(*args)))

    tab.select(first, [done, *inputs], [done, *outputs], api_visibility="private")


def build_app(backend: Any, workspaces: Workspaces = None) -> gr.Blocks:
    """The whole UI for one open workspace; every action is also a named API endpoint (docs/api.md).
    ``workspaces``: (name, kind of model as shown, url path) of every workspace this app serves, for the switcher
    (or a function returning them, when workspaces are mounted while the app runs)."""
    saes = backend.saes()
    names = [str(n) for n in saes["name"]]
    caps = backend.capabilities
    status = backend.build_status()
    with gr.Blocks(title=f"{TITLE} · {backend.workspace_name}") as demo:
        header = gr.HTML(
            header_html(
                backend.workspace_name,
                saes,
                backend.domains(),
                str(getattr(backend, "model_name", "")),
                caps["display_name"],
                workspaces() if callable(workspaces) else workspaces,
                getattr(backend, "problems", []),
            )
        )
        build_line = gr.HTML(status_html(status), elem_id="build-status")
        timer = gr.Timer(BUILD_POLL_S, active=building(status))
        intro.build(backend, names)  # issue 15: "Start here" (open on a first visit, collapsed afterwards)
        with gr.Tabs() as tabs:
            with gr.Tab("Browse", id="browse", elem_id="tab-browse"):
                opener, b = browse.build(backend, names, tabs)
            with gr.Tab("Search", id="search", elem_id="tab-search"):
                search.build(backend, names, opener)
            with gr.Tab("Map", id="map", elem_id="tab-map") as map_tab:
                on_first_select(map_tab, feature_map.build(backend, names, opener))
            with gr.Tab("Compare", id="compare", elem_id="tab-compare") as compare_tab:
                on_first_select(compare_tab, compare.build(backend, names, opener))
            # Coverage (subdomain SAEs) and its SHIFT panel are about text; other workspaces have neither
            cov = None
            if caps["has_coverage"]:
                with gr.Tab("Coverage", id="coverage", elem_id="tab-coverage") as cov_tab:
                    cov = coverage.build(backend, names)
            with gr.Tab("Steer", id="steer", elem_id="tab-steer"):  # generation, or the output before / after
                st = steer.build(backend, names) if caps["generates_text"] else outcome.build(backend, names)
        if cov is not None:
            if backend.subdomains():  # nothing to load in a workspace without subdomain SAEs
                on_first_select(cov_tab, (cov["load"], [cov["subdomain"]], cov["outputs"]))
            opener.wire(cov["unique"].select, pick_unique, [cov["unique_sae"]])
        b["steer"].click(  # issue 15: the value starts at a multiple of the latent's max activation
            functools.partial(steer_with, backend=backend),
            [st["edits"], b["latent"], b["sae"]],
            [st["edits"], st["sae"], tabs],
            api_visibility="private",
        )
        demo.load(*b["load"], api_visibility="private")
        # the staged build: new SAEs (and subdomains) join the header and every picker as they become ready
        pickers = sae_pickers(demo, names)
        sub = cov["subdomain"] if cov is not None else None
        shown = gr.State({"names": names, "header": None, "subs": backend.subdomains() if sub is not None else []})
        outs = [shown, header, build_line, *(c for c, _, _ in pickers), *([sub] if sub is not None else []), timer]

        def follow(seen: dict) -> tuple:
            return follow_build(backend, pickers, sub, workspaces, seen)

        timer.tick(follow, shown, outs, api_visibility="private", show_progress="hidden")
        demo.load(follow, shown, outs, api_visibility="private", show_progress="hidden")
    return demo


def launch_options() -> dict:
    """Theme and CSS for ``demo.launch`` (Gradio 6 takes them there, not in gr.Blocks)."""
    theme = gr.themes.Soft(
        primary_hue="orange", secondary_hue="amber", neutral_hue="slate", radius_size="sm", spacing_size="sm"
    )
    return {"theme": theme, "css_paths": [CSS]}
