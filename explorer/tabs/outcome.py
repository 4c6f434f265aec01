"""Steer tab for models that do not generate text: clamp, scale or ablate latents and compare the
model's output before and after (protein: the classifier's class probabilities, or masked resampling
towards a motif when the model has a masked-LM head; recommender: the top-k next items and their genre mix).
Its controls, help and labels come from ``backend.capabilities``.

A model with a classifier head also gets "Find latents that move the classifier"
(``capabilities['classifier_movers']``): the backend ranks every latent by a gradient estimate of what a clamp at 2x
its max activation does to the predicted class's probability and clamps the best candidates for real; selecting a
row of the table adds that latent, at the clamp value measured, to the edits table."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr
import pandas as pd

from ..api import BAD_INPUT, json_endpoint
from ..render import message_html
from .steer import CONCURRENCY, add_edit, add_latent_controls, edit_rows, edits_table, latent_max_act

MOVER_COLUMNS = ["latent", "explanation", "clamp value", "estimated change", "measured change"]
VISIBLE = 0.05  # a measured change of the predicted class's probability at least this large is called visible


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


def movers_frame(r: dict) -> pd.DataFrame:
    """The rows of a ``Backend.classifier_movers`` result: latent, explanation, clamp value, estimated (first-order)
    and measured change of the predicted class's probability, largest measured first."""
    rows = [
        (int(x["latent"]), x.get("label", ""), x["value"], round(x["predicted"], 3), round(x["measured"], 3))
        for x in r.get("rows", [])
    ]
    return pd.DataFrame(rows, columns=MOVER_COLUMNS)


def movers_summary(r: dict) -> str:
    """One paragraph over the movers table: the prediction, the largest measured change and how often the
    gradient estimate had its sign; when no candidate reaches ``VISIBLE``, why a clamp may not reach the head."""
    rows = r.get("rows", [])
    if not rows:
        return message_html("No latent could be ranked (none fired in the index).", "info")
    p = dict(zip(r["classes"], r["before"]))[r["predicted"]]
    best = rows[0]
    agree, n = r["sign_agreement"]
    text = (
        f"Predicted: {r['predicted']} (p = {p:.3f}). Clamped each of {n} candidates at {r['factor']:g}x its max "
        f"activation on every residue: the largest measured change of p is {best['measured']:+.3f} (latent "
        f"{best['latent']}). The gradient estimate had the measured sign for {agree} of {n}."
    )
    if r["largest"] < VISIBLE:
        text += (
            f" No candidate moves p by {VISIBLE:g} or more on this sequence: the classifier reads only <cls> after "
            "the last block, so a clamp at the residues of the SAE's block reaches it only through the attention "
            "of the blocks after it."
        )
    else:
        text += " Select a row to add that latent, at its clamp value, to the edits table."
    notice = message_html(r["notice"], "info") if r.get("notice") else ""
    return notice + message_html(text, "info")


def find_movers(backend: Any, sae: str, inputs: str) -> tuple:
    """Handler of "Find latents that move the classifier": (table, summary HTML, the SAE it was found for). The
    values go to the backend unconverted (any client can call it); a bad one is a warning and a message."""
    try:
        r = backend.classifier_movers(sae, inputs)
    except BAD_INPUT as e:
        gr.Warning(str(e))
        return movers_frame({}), message_html(str(e)), None
    return movers_frame(r), movers_summary(r), sae


def add_mover(backend: Any, edits: pd.DataFrame | None, found_for: str | None, evt: gr.SelectData) -> tuple:
    """A selected row of the movers table added to the edits table at its clamp value (the SAE picker follows
    the SAE the table was found for): (edits, sae)."""
    row = list(evt.row_value or [])
    try:
        latent, value = int(row[0]), float(row[2])
    except (IndexError, *BAD_INPUT):
        raise gr.Error("That row has no latent to add.") from None
    max_act = latent_max_act(backend, found_for, latent) if found_for else None
    return add_edit(edits, latent, value=value, max_act=max_act), found_for or gr.skip()


@json_endpoint
def classifier_movers_api(backend: Any, sae: str, sequence: str, limit: int = 8) -> dict:
    return backend.classifier_movers(sae, sequence, limit)


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
    if caps.get("classifier_movers"):  # a classifier to move (not a recommender, not a masked LM)
        movers_panel(backend, sae, inputs, edits)

    def steer_outcome(
        sae: str, inputs: str, edits: list, k: int = 10, motif: str = "", seed: int = 0, n_iters: int = 50
    ) -> dict:
        """The model's output before and after latent edits ([[latent, mode, value], ...]): protein class
        probabilities (or masked resampling towards ``motif``, ``n_iters`` steps), or the recommender's top-k
        items and genre mix. ``notice`` says what was cut, skipped or ignored."""
        return steer_outcome_api(backend, sae, inputs, edits, k, motif, seed, n_iters)

    gr.api(steer_outcome, api_name="steer_outcome", concurrency_limit=CONCURRENCY, concurrency_id="steer")

    def classifier_movers(sae: str, sequence: str, limit: int = 8) -> dict:
        """The latents whose clamp at 2x their max activation (at the residues) moves the classifier most on the
        sequence: ranked by a gradient estimate, the ``limit`` (1..10) best clamped for real; rows with latent,
        label, value, predicted and measured change of the predicted class's probability (protein classifiers;
        elsewhere one error line)."""
        return classifier_movers_api(backend, sae, sequence, limit)

    gr.api(classifier_movers, api_name="classifier_movers", concurrency_limit=CONCURRENCY, concurrency_id="steer")
    return {"edits": edits, "sae": sae}


def movers_panel(backend: Any, sae: gr.Dropdown, inputs: gr.Textbox, edits: gr.Dataframe) -> None:
    """The "Find latents that move the classifier" button, its summary and its table (select a row: add it)."""
    gr.Markdown("#### Latents that move the classifier")
    find_btn = gr.Button("Find latents that move the classifier", elem_id="find-movers")
    summary = gr.HTML(elem_id="movers-summary")
    table = gr.Dataframe(
        movers_frame({}),
        interactive=False,
        wrap=True,
        column_widths=["10%", "48%", "14%", "14%", "14%"],
        elem_id="movers",
        show_label=False,
    )
    found_for = gr.State(None)  # the SAE the table's latents belong to
    find_btn.click(
        lambda s, i: find_movers(backend, s, i),
        [sae, inputs],
        [table, summary, found_for],
        api_visibility="private",
        concurrency_limit=CONCURRENCY,
        concurrency_id="steer",
    )

    def on_pick(edits_now: pd.DataFrame, found: str | None, evt: gr.SelectData) -> tuple:  # Gradio reads the hint
        return add_mover(backend, edits_now, found, evt)

    table.select(on_pick, [edits, found_for], [edits, sae], api_visibility="private")
