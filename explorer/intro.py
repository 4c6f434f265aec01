"""The "Start here" intro above the tabs: what the workspace is and what to do first, in a few lines.

It is a plain ``<details>`` block: open on a browser's first visit, collapsed on later visits (the browser's
localStorage remembers the first), and one click on its summary opens or closes it at any time.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

SEEN_KEY = "sae-explorer-intro-seen"
# Runs once when the block renders: a browser that has seen the intro gets it collapsed.
INTRO_JS = f"""
const d = element.querySelector('details.intro');
if (d) {{
  let seen = false;
  try {{ seen = localStorage.getItem('{SEEN_KEY}') === '1'; localStorage.setItem('{SEEN_KEY}', '1'); }} catch (e) {{}}
  if (seen) d.open = false;
}}
"""


def intro_html(workspace: str, model: str, caps: dict[str, Any], n_saes: int) -> str:
    """The intro's HTML: one sentence on the workspace, then the first things to try (tab by tab)."""
    e = html.escape
    what = str(caps.get("input_label") or "text").split(" (")[0].split(":")[0].strip()
    what = what if what.startswith(("a ", "an ")) else f"a {what}"
    steer = (
        "clamp it and compare the generated text with and without it"
        if caps.get("generates_text")
        else "clamp it and compare the model's output before and after"
    )
    on = f" of <b>{e(model)}</b>" if model else ""
    return (
        '<details class="intro" open><summary>Start here: what this is, and what to try first</summary>'
        # no count here: the page is built once, while a staged build keeps adding SAEs (the header counts them)
        f"<p>Workspace <b>{e(workspace)}</b> holds sparse autoencoders (SAEs) "
        f"trained on the activations{on}: each <i>latent</i> is a direction an SAE learned, shown with an "
        "explanation and the contexts where it fires.</p><ol>"
        "<li><b>Browse</b>: select a latent in the list (or type its id) to open its dashboard.</li>"
        f"<li><b>Search</b>: paste {e(what)} to see which latents fire on it, token by token.</li>"
        "<li><b>Compare</b> the SAEs side by side; then, on a latent, <b>Steer with this latent</b> to "
        f"{steer}.</li></ol></details>"
    )


def build(backend: Any, sae_names: list[str]) -> gr.HTML:
    """The intro block (call it where it should appear, inside the app's Blocks)."""
    return gr.HTML(
        intro_html(
            str(backend.workspace_name),
            str(getattr(backend, "model_name", "")),
            backend.capabilities,
            len(sae_names),
        ),
        js_on_load=INTRO_JS,
        elem_id="intro",
    )
