"""Steer tab for models that do not generate text: clamp, scale or ablate latents and compare the
model's output before and after (protein: the classifier's class probabilities, or masked resampling
towards a motif when the model has a masked-LM head; recommender: the top-k next items and their genre mix).
Its controls, help and labels come from ``backend.capabilities``."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import pandas as pd

from ..api import BAD_INPUT, json_endpoint
from ..render import message_html
from .steer import CONCURRENCY, add_latent_controls, edit_rows, edits_table


def outcome_html(r: dict) -> str:
    """Before/after view of a ``Backend.steer_outcome`` result."""
    kind = r.get("kind")
    if kind == "classifier":
        rows = "".join(
            f"<tr><td>{html.escape(str(c))}</td><td>{b:.3f}</td><td>{a:.3f}</td>"
            f'<td class="{"pos" if d >= 0 else "neg"}">{d:+.3f}</td></tr>'
            for c, b, a, d in zip(r["classes"], r["before"], r["after"], r["delta"])
        )
        return (
            '<table class="concepts"><caption>classifier probabilities</caption><tr><th>class</th>'
            f"<th>before</th><th>after</th><th>change</th></tr>{rows}</table>"
        )
    if kind == "recommendations":
        after_set, before_set = set(r["after_ids"]), set(r["before_ids"])

        def lst(titles: list[str], ids: list[int], other: set, mark: str) -> str:
            return (
                "<ol>"
                + "".join(
                    f'<li class="{"" if i in other else mark}">{html.escape(t)}</li>' for t, i in zip(titles, ids)
                )
                + "</ol>"
            )

        shift = ", ".join(f"{html.escape(g)} {v:+.0%}" for g, v in list(r["genre_shift"].items())[:6] if abs(v) > 1e-9)
        hist = r.get("history") or []
        seen = (
            f'<p class="muted">history ({len(hist)} items, latest last): {html.escape(" · ".join(hist[-8:]))}</p>'
            if hist
            else ""
        )
        return (
            f'{seen}<div class="outcome"><div><b>before</b> <span class="muted">(dropped items struck out)</span>'
            f"{lst(r['before'], r['before_ids'], after_set, 'gone')}</div>"
            f'<div><b>after</b> <span class="muted">(new items in bold)</span>'
            f"{lst(r['after'], r['after_ids'], before_set, 'new')}</div></div>"
            f"<p>{r['overlap']} of {len(r['before_ids'])} items kept · genre-mix change (total variation) "
            f"<b>{r['tv_distance']:.2f}</b>{' · ' + shift if shift else ''}</p>"
        )
    if kind == "resample":

        def run(name: str) -> str:
            x = r[name]
            hit = f"motif found at step {x['matched_at']}" if x["matched_at"] is not None else "motif not found"
            return f"<div><b>{name}</b> ({hit}, {x['changes']} resampled)<pre>{html.escape(x['final'])}</pre></div>"

        return f'<div class="outcome">{run("before")}{run("after")}</div>'
    return message_html(f"unexpected result kind {kind!r}")


def genre_frame(r: dict) -> pd.DataFrame:
    """Genre shares before/after (recommender results), largest change first."""
    if r.get("kind") != "recommendations":
        return pd.DataFrame(columns=["genre", "before", "after", "change"])
    g = list(r["genre_shift"])
    return pd.DataFrame(
        {
            "genre": g,
            "before": [round(r["genre_mix_before"].get(x, 0.0), 3) for x in g],
            "after": [round(r["genre_mix_after"].get(x, 0.0), 3) for x in g],
            "change": [round(r["genre_shift"][x], 3) for x in g],
        }
    )


def run_outcome(backend: Any, sae: str, inputs: str, edits: Any, k: float, motif: str, seed: float) -> tuple:
    """Handler: (result HTML, genre table). Any client can call it (fn_index), so the values go to the backend
    unconverted and are checked there exactly as for /steer_outcome; a bad one is a warning and a message."""
    try:
        r = backend.steer_outcome(sae, inputs, edit_rows(edits), k=k, motif=motif, seed=seed)
    except BAD_INPUT as e:
        gr.Warning(str(e))
        return message_html(str(e)), genre_frame({})
    notice = message_html(r["notice"], "info") if r.get("notice") else ""
    return notice + outcome_html(r), genre_frame(r)


@json_endpoint
def steer_outcome_api(
    backend: Any, sae: str, inputs: str, edits: list, k: int = 10, motif: str = "", seed: int = 0, n_iters: int = 50
) -> dict:
    return backend.steer_outcome(sae, inputs, edits, k=k, motif=motif, n_iters=n_iters, seed=seed)


def build(backend: Any, sae_names: list[str]) -> dict:
    """Lay out the tab; returns the components other tabs wire into (edits table, SAE picker)."""
    caps = backend.capabilities
    uses = caps["outcome_params"]  # which of the optional arguments (k, motif) this kind of model takes
    with gr.Row():
        sae = gr.Dropdown(sae_names, value=sae_names[0] if sae_names else None, label="SAE", scale=1)
        k = gr.Slider(5, 50, value=10, step=1, label="recommendations (k)", visible=uses["k"], scale=1)
        motif = gr.Textbox(  # only where the model can use it (the backend's capabilities say so)
            label="target motif (regex; masked-LM models only)",
            visible=bool(uses.get("motif")),
            scale=2,
            placeholder="e.g. C.{2,4}C.{12}H.{3,5}H",
        )
        seed = gr.Number(0, label="seed", precision=0, minimum=0, maximum=2**31 - 1, scale=0, min_width=80)
    edits = edits_table("clamp | scale | zero")
    add_latent_controls(backend, sae, edits)
    gr.Markdown(caps["outcome_help"], elem_classes=["muted"])
    inputs = gr.Textbox(backend.example_input(), label=caps["input_label"], lines=3)
    go_btn = gr.Button("Compare before / after", variant="primary")
    out = gr.HTML(elem_id="outcome")
    genres = gr.Dataframe(genre_frame({}), label="genre mix", interactive=False, visible=caps["outcome_genre_mix"])
    go_btn.click(
        lambda *a: run_outcome(backend, *a),
        [sae, inputs, edits, k, motif, seed],
        [out, genres],
        api_visibility="private",
        concurrency_limit=CONCURRENCY,
        concurrency_id="steer",
    )

    def steer_outcome(
        sae: str, inputs: str, edits: list, k: int = 10, motif: str = "", seed: int = 0, n_iters: int = 50
    ) -> dict:
        """The model's output before and after latent edits ([[latent, mode, value], ...]): protein class
        probabilities (or masked resampling towards ``motif``, ``n_iters`` steps), or the recommender's top-k
        items and genre mix. ``notice`` says what was cut, skipped or ignored."""
        return steer_outcome_api(backend, sae, inputs, edits, k, motif, seed, n_iters)

    gr.api(steer_outcome, api_name="steer_outcome", concurrency_limit=CONCURRENCY, concurrency_id="steer")
    return {"edits": edits, "sae": sae}
