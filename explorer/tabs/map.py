"""Map tab: a UMAP scatter of decoder directions (one SAE or all jointly); click a point to see its card.

gr.Plot has no click event in Gradio 6, so a small gr.HTML bridge listens to plotly's own
``plotly_click`` on the figure and triggers a Gradio event with the point's (sae, latent); the
latent box under the map (``sae:latent`` or a bare id) does the same by hand.
"""

from __future__ import annotations

import functools
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from .. import render
from ..api import BAD_INPUT, json_endpoint
from .browse import Opener

JOINT = "joint map (all SAEs)"
COLOR_BY = ["density", "domain", "SAE"]
# Runs once when the bridge renders: attach a plotly_click listener to every (re)drawn map figure.
CLICK_BRIDGE_JS = """
const attach = () => {
  const gd = document.querySelector('#feature-map .js-plotly-plot');
  if (!gd || !gd.on || gd.__saeBridge) return;
  gd.__saeBridge = true;
  gd.on('plotly_click', (ev) => {
    const p = ev && ev.points && ev.points[0];
    if (p && p.customdata) trigger('click', {sae: String(p.customdata[0]), latent: Number(p.customdata[1])});
  });
};
new MutationObserver(attach).observe(document.body, {childList: true, subtree: true});
attach();
"""


def draw_map(backend: Any, choice: str, color_by: str) -> tuple[go.Figure | None, str]:
    """(the scatter, a status line) for one SAE or the joint map."""
    sae = None if choice in (None, "", JOINT) else choice
    try:
        df = backend.feature_map(sae)
    except BAD_INPUT as e:
        gr.Warning(str(e))
        return None, render.message_html(str(e))
    what = f"SAE {sae}" if sae else f"{df['sae'].nunique()} SAEs in one layout"
    return render.map_figure(df, color_by), render.message_html(
        f"{len(df):,} latents of {what}; hover for the explanation, click a point to see it here.", "info"
    )


def parse_pick(text: str, choice: str | None) -> tuple[str, int]:
    """``sae:latent`` or a bare latent id (then the map's SAE); ValueError with a hint otherwise."""
    text = (text if isinstance(text, str) else "").strip()[:200]
    sae, _, latent = text.rpartition(":")
    sae = sae.strip() or (None if choice in (None, "", JOINT) else choice)
    if not text:
        raise ValueError("Click a point of the map, or type a latent id.")
    if sae is None:
        raise ValueError("On the joint map, type the latent as sae:latent (e.g. general:12).")
    try:
        return sae, int(latent.strip())
    except BAD_INPUT:
        raise ValueError(f"{text!r} is not a latent: type an id like 12, or sae:12 on the joint map.") from None


def show_card(backend: Any, text: str, choice: str | None) -> str:
    """The compact dashboard card of the picked latent (or a message saying what was wrong)."""
    try:
        sae, latent = parse_pick(text, choice)
        return render.feature_card_html(backend.feature(sae, latent), n_contexts=3)
    except BAD_INPUT as e:
        gr.Warning(str(e))
        return render.message_html(str(e))


def clicked(backend: Any, choice: str | None, evt: gr.EventData) -> tuple[str, str]:
    """The bridge's click: (the pick box text, the card)."""
    try:
        text = f"{str(evt.sae)[:100]}:{int(evt.latent)}"
    except (AttributeError, *BAD_INPUT):
        return "", render.message_html("That click carried no latent: click a point of the map.")
    return text, show_card(backend, text, choice)


def open_pick(text: str, choice: str | None) -> tuple:
    try:
        return Opener.target(*parse_pick(text, choice))
    except ValueError as e:
        raise gr.Error(str(e)) from None


@json_endpoint
def map_api(backend: Any, sae: str = "") -> list | dict:
    return render.to_json(backend.feature_map(sae or None))


def build(backend: Any, sae_names: list[str], opener: Opener) -> tuple:
    """Lay out the tab; returns its first draw (fn, inputs, outputs), which ui runs when the tab is first opened.

    The first SAE's map is the default: the joint map of a large workspace is tens of thousands of points.
    """
    with gr.Row(equal_height=True):
        choice = gr.Dropdown([*sae_names, JOINT], value=sae_names[0] if sae_names else JOINT, label="map", scale=2)
        colours = [*COLOR_BY, "concept"] if backend.capabilities["map_concepts"] else COLOR_BY
        color_by = gr.Dropdown(colours, value="density", label="colour by", scale=1)
    status = gr.HTML()
    with gr.Row():
        with gr.Column(scale=3, min_width=520):
            plot = gr.Plot(show_label=False, elem_id="feature-map")
            bridge = gr.HTML("", js_on_load=CLICK_BRIDGE_JS, elem_id="map-bridge")
        with gr.Column(scale=2, min_width=340):
            with gr.Row(elem_classes=["bar"]):
                pick = gr.Textbox(
                    label="latent (click a point, or type sae:latent)",
                    placeholder=f"{sae_names[0]}:12" if sae_names else "sae:12",
                    scale=1,
                    elem_id="map-pick",
                )
                open_btn = gr.Button("Open dashboard", scale=0, min_width=180)
            card = gr.HTML(
                render.message_html("Click a point of the map to see its latent here.", "info"), elem_id="map-card"
            )
    draw = functools.partial(draw_map, backend)
    gr.on([choice.input, color_by.input], draw, [choice, color_by], [plot, status], api_visibility="private")

    def on_click(map_choice: str, evt: gr.EventData) -> tuple[str, str]:  # a def: Gradio reads the EventData hint
        return clicked(backend, map_choice, evt)

    bridge.click(on_click, [choice], [pick, card], api_visibility="private")
    pick.submit(functools.partial(show_card, backend), [pick, choice], card, api_visibility="private")
    opener.wire(open_btn.click, open_pick, [pick, choice])

    def map_endpoint(sae: str = "") -> list | dict:
        """Map coordinates of every latent (sae empty: the joint map of all SAEs) with density, domain, label."""
        return map_api(backend, sae)

    gr.api(map_endpoint, api_name="map")
    return (draw, [choice, color_by], [plot, status])
