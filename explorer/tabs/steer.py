"""Steer tab: clamp, scale, ablate or add latents; baseline and steered text streamed side by side."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr
import pandas as pd

from ..api import BAD_INPUT, json_endpoint

EDIT_COLUMNS = ["latent", "mode", "value"]
EMPTY_EDITS = pd.DataFrame([[None, "clamp", 10.0]], columns=EDIT_COLUMNS)
HELP = (
    "**clamp** sets the latent to *value* at every position; **scale** multiplies it; **zero** ablates it "
    "(all three keep the SAE's error term, so untouched latents leave the output unchanged); **add** adds "
    "*value* x its decoder direction to the residual stream (Neuronpedia's simple additive mode)."
)
MAX_NEW_TOKENS = 128  # = backend.sae.steering.MAX_NEW_TOKENS (explorer never imports the backend; a test checks)
CONCURRENCY = 4  # steering requests (UI and API together) running at once; their token steps take turns


def add_edit(
    edits: pd.DataFrame | None, latent: int | float | None, mode: str = "clamp", value: float = 10.0
) -> pd.DataFrame:
    """Append a latent to the edits table (used by the other tabs' "steer with this latent" buttons)."""
    df = pd.DataFrame(edits, columns=EDIT_COLUMNS) if edits is not None else EMPTY_EDITS.iloc[:0]
    df = df[df["latent"].notna() & (df["latent"].astype(str) != "")]
    if latent is None or latent == "":
        return df if len(df) else EMPTY_EDITS.copy()
    row = pd.DataFrame([[int(latent), mode, float(value)]], columns=EDIT_COLUMNS)
    return pd.concat([df[df["latent"].astype(int) != int(latent)], row], ignore_index=True)


def edit_rows(edits: pd.DataFrame | None) -> list:
    """The edits table's rows as [latent, mode, value] lists (what Backend.steer*/parse_edits take); anything
    that is not a table goes to the backend as is, which says what is wrong with it."""
    if edits is None:
        return []
    return edits.values.tolist() if isinstance(edits, pd.DataFrame) else edits


def edits_table(modes: str) -> gr.Dataframe:
    """The editable (latent, mode, value) table of a steer tab; ``modes`` lists the accepted modes."""
    return gr.Dataframe(
        EMPTY_EDITS.copy(),
        headers=EDIT_COLUMNS,
        datatype=["number", "str", "number"],
        column_count=(3, "fixed"),
        row_count=(1, "dynamic"),
        interactive=True,
        label=f"latent edits (mode: {modes})",
    )


def firing_table(firing) -> pd.DataFrame:
    return pd.DataFrame(firing or [], columns=["latent", "max activation", "tokens fired"])


def run_steer(
    backend,
    sae: str,
    prompt: str,
    edits: pd.DataFrame,
    max_new_tokens: float,
    temperature: float,
    seed: float,
    chat: bool,
) -> Iterator[tuple]:
    """Streamed handler: (baseline, steered, notice, firing table). Any client can call it (fn_index), so the
    values go to the backend unconverted and are checked there exactly as for /steer."""
    stream = None
    try:
        stream = backend.steer_stream(
            sae, prompt, edit_rows(edits), max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, chat=chat
        )
        for u in stream:
            notice = f"⚠ {u.notice}" if u.notice else ""
            yield u.baseline, u.steered, notice, firing_table(u.firing) if u.done else gr.skip()
    except BAD_INPUT as e:
        gr.Warning(str(e))
        yield "", "", f"⚠ {e}", firing_table([])
    finally:
        if stream is not None and hasattr(stream, "close"):
            stream.close()  # Stop pressed: end the generation now (its hooks are removed in its finally)


@json_endpoint
def steer_api(
    backend, sae: str, prompt: str, edits: list, max_new_tokens: int = 48, temperature: float = 0.7, seed: int = 0
) -> dict:
    """JSON endpoint: edits as [[latent, mode, value], ...] or [{"latent":..,"mode":..,"value":..}]."""
    u = backend.steer(sae, prompt, edits, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return {
        "baseline": u.baseline,
        "steered": u.steered,
        "notice": u.notice,
        "firing": [{"latent": a, "max_act": b, "tokens": c} for a, b, c in (u.firing or [])],
    }


def build(backend, sae_names: list[str]) -> dict:
    """Lay out the tab; returns the components other tabs wire into (edits table, SAE picker)."""
    with gr.Row():
        sae = gr.Dropdown(sae_names, value=sae_names[0] if sae_names else None, label="SAE", scale=1)
        chat = gr.Checkbox(True, label="chat template (instruct model)", scale=1)
    edits = edits_table("clamp | scale | zero | add")
    gr.Markdown(HELP, elem_classes=["muted"])
    prompt = gr.Textbox("Tell me about your favourite place.", label="prompt", lines=2)
    with gr.Row():
        max_new = gr.Slider(4, MAX_NEW_TOKENS, value=48, step=1, label="max new tokens")
        temp = gr.Slider(0, 2, value=0.7, step=0.05, label="temperature")
        seed = gr.Number(0, label="seed", precision=0, minimum=0, maximum=2**31 - 1)
        go_btn = gr.Button("Generate", variant="primary")
        stop_btn = gr.Button("Stop", variant="stop")
    notice = gr.Markdown()
    with gr.Row(equal_height=True):
        base_out = gr.Textbox(label="baseline", lines=8, interactive=False)
        steer_out = gr.Textbox(label="steered", lines=8, interactive=False)
    firing = gr.Dataframe(firing_table([]), label="latents firing on the steered text", interactive=False)
    gen = go_btn.click(
        lambda *a: (yield from run_steer(backend, *a)),
        [sae, prompt, edits, max_new, temp, seed, chat],
        [base_out, steer_out, notice, firing],
        api_visibility="private",
        concurrency_limit=CONCURRENCY,
        concurrency_id="steer",
    )
    stop_btn.click(None, None, None, cancels=[gen], api_visibility="private")

    def steer(
        sae: str, prompt: str, edits: list, max_new_tokens: int = 48, temperature: float = 0.7, seed: int = 0
    ) -> dict:
        """Baseline and steered text; edits: [[latent, mode, value], ...] with mode clamp|scale|zero|add."""
        return steer_api(backend, sae, prompt, edits, max_new_tokens, temperature, seed)

    gr.api(steer, api_name="steer", concurrency_limit=CONCURRENCY, concurrency_id="steer")
    return {"edits": edits, "sae": sae}
