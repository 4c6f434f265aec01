"""The SAE Explorer app: a header and one tab per module of explorer/tabs, wired together here.

``build_app(backend)`` takes any object with the Backend facade's methods (docs/service_api.md);
explorer/ never imports torch or the backend package. What differs between model kinds (text, protein,
recommender) comes from ``backend.capabilities``, plain values: the UI never compares kind names.
Theme and CSS are launch options in Gradio 6 (``demo.launch(**launch_options())``).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from .tabs import browse, compare, coverage, outcome, search, steer
from .tabs import map as feature_map

CSS = Path(__file__).resolve().parent.parent / "assets" / "style.css"
TITLE = "SAE Explorer"


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
        f'<span class="chip" title="{html.escape(str(r.get("architecture", "")), quote=True)}">'
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


def steer_with(edits: pd.DataFrame | None, latent: float | None, sae: str) -> tuple:
    """Add the Browse tab's latent to the Steer tab's edits and switch there."""
    if latent is None:
        raise gr.Error("Open a latent first, then steer with it.")
    return steer.add_edit(edits, int(latent)), sae, gr.Tabs(selected="steer")


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


def build_app(backend: Any, workspaces: list[tuple[str, str, str]] | None = None) -> gr.Blocks:
    """The whole UI for one open workspace; every action is also a named API endpoint (docs/api.md).
    ``workspaces``: (name, kind of model as shown, url path) of every workspace this app serves, for the switcher."""
    saes = backend.saes()
    names = [str(n) for n in saes["name"]]
    caps = backend.capabilities
    with gr.Blocks(title=f"{TITLE} · {backend.workspace_name}") as demo:
        gr.HTML(
            header_html(
                backend.workspace_name,
                saes,
                backend.domains(),
                str(getattr(backend, "model_name", "")),
                caps["display_name"],
                workspaces,
                getattr(backend, "problems", []),
            )
        )
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
        b["steer"].click(
            steer_with, [st["edits"], b["latent"], b["sae"]], [st["edits"], st["sae"], tabs], api_visibility="private"
        )
        demo.load(*b["load"], api_visibility="private")
    return demo


def launch_options() -> dict:
    """Theme and CSS for ``demo.launch`` (Gradio 6 takes them there, not in gr.Blocks)."""
    theme = gr.themes.Soft(
        primary_hue="orange", secondary_hue="amber", neutral_hue="slate", radius_size="sm", spacing_size="sm"
    )
    return {"theme": theme, "css_paths": [CSS]}
