"""Steer tab: clamp, scale, ablate or add latents; baseline and steered text streamed side by side.

The edits table has a read-only 4th column, each latent's largest activation in the index ("max act"): a
latent added from Browse (or with "Add latent") starts clamped at ``CLAMP_MULTIPLE`` x that, a value on the
latent's own scale, instead of a fixed 10 that is nothing for one latent and everything for another.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator
from typing import Any

import gradio as gr
import pandas as pd

from ..api import BAD_INPUT, json_endpoint

EDIT_COLUMNS = ["latent", "mode", "value"]  # what the backend takes (parse_edits); the table adds MAX_ACT
MAX_ACT = "max act"
TABLE_COLUMNS = [*EDIT_COLUMNS, MAX_ACT]
DEFAULT_VALUE = 10.0  # the value of a row whose latent's max activation is unknown
CLAMP_MULTIPLE = 2.0  # a latent added from Browse starts clamped at this multiple of its max activation
EMPTY_EDITS = pd.DataFrame([[None, "clamp", DEFAULT_VALUE, None]], columns=TABLE_COLUMNS)
FIRING_COLUMNS = ["latent", "explanation", "max act", "tokens fired"]
HELP = (
    "**clamp** sets the latent to *value* at every position; **scale** multiplies it; **zero** ablates it "
    "(all three keep the SAE's error term, so untouched latents leave the output unchanged); **add** adds "
    "*value* x its decoder direction to the residual stream (Neuronpedia's simple additive mode). "
    f"A latent added from Browse or with **Add latent** starts clamped at {CLAMP_MULTIPLE:g}x its *max act*."
)
MAX_NEW_TOKENS = 128  # = backend.sae.steering.MAX_NEW_TOKENS (explorer never imports the backend; a test checks)
CONCURRENCY = 4  # steering requests (UI and API together) running at once; their token steps take turns


def _table(edits: Any) -> pd.DataFrame:
    """The edits as a 4-column table (a 3-column one, e.g. from an older page, gets an empty max act)."""
    if edits is None:
        return EMPTY_EDITS.iloc[:0].copy()
    df = pd.DataFrame(edits).copy()
    if list(df.columns) != TABLE_COLUMNS:
        df = df.iloc[:, : len(TABLE_COLUMNS)]
        df.columns = TABLE_COLUMNS[: df.shape[1]]
    return df.reindex(columns=TABLE_COLUMNS)


def default_value(max_act: float | None) -> float:
    """A clamp value on the latent's own scale: ``CLAMP_MULTIPLE`` x its max activation (``DEFAULT_VALUE`` when
    that is unknown or not positive)."""
    try:
        m = float(max_act)  # type: ignore[arg-type]
    except BAD_INPUT:
        return DEFAULT_VALUE
    return round(CLAMP_MULTIPLE * m, 2) if math.isfinite(m) and m > 0 else DEFAULT_VALUE


def latent_max_act(backend: Any, sae: str, latent: Any) -> float | None:
    """The latent's largest activation in the index (``backend.feature``), or None when it has none."""
    try:
        m = float(backend.feature(sae, latent).max_act)
    except (AttributeError, *BAD_INPUT):
        return None
    return round(m, 2) if math.isfinite(m) else None


def add_edit(
    edits: pd.DataFrame | None,
    latent: int | float | None,
    mode: str = "clamp",
    value: float | None = None,
    max_act: float | None = None,
) -> pd.DataFrame:
    """Append a latent to the edits table (used by the other tabs' "steer with this latent" buttons); the value
    defaults to ``default_value(max_act)``. Rows without a latent are dropped; no latent: a blank row."""
    df = _table(edits)
    df = df[df["latent"].notna() & (df["latent"].astype(str).str.strip() != "")]
    if latent is None or latent == "":
        return df.reset_index(drop=True) if len(df) else EMPTY_EDITS.copy()
    value = default_value(max_act) if value is None else float(value)
    row = pd.DataFrame([[int(latent), mode, value, max_act]], columns=TABLE_COLUMNS)
    keep = df[pd.to_numeric(df["latent"], errors="coerce") != int(latent)]
    return pd.concat([keep, row], ignore_index=True)


def add_row(backend: Any, edits: pd.DataFrame | None, sae: str, latent: str | float | None) -> pd.DataFrame:
    """The "Add latent" button: the typed latent at its default value, or (nothing typed) a blank row to fill in;
    a text that is not a latent id is a warning and leaves the table as it is."""
    text = "" if latent is None else str(latent).strip()
    if not text:
        return pd.concat([_table(edits), EMPTY_EDITS], ignore_index=True)
    try:
        value = float(text)
        if not value.is_integer() or value < 0:
            raise ValueError
    except (ValueError, OverflowError):
        gr.Warning(f"{text[:40]!r} is not a latent id: type a whole number such as 12, or nothing for a blank row.")
        return _table(edits)
    return add_edit(edits, int(value), max_act=latent_max_act(backend, sae, int(value)))


def refresh_max_act(backend: Any, edits: pd.DataFrame | None, sae: str) -> pd.DataFrame:
    """Another SAE picked: each row's max act column for that SAE (the values are left as they are)."""
    df = _table(edits)
    df[MAX_ACT] = [
        None if pd.isna(pd.to_numeric(lat, errors="coerce")) else latent_max_act(backend, sae, lat)
        for lat in df["latent"]
    ]
    return df


def edit_rows(edits: pd.DataFrame | None) -> list:
    """The edits table's rows as [latent, mode, value] lists (what Backend.steer*/parse_edits take; the
    read-only max act column stays here); anything that is not a table goes to the backend as is, which says
    what is wrong with it."""
    if edits is None:
        return []
    if isinstance(edits, pd.DataFrame):
        cols = EDIT_COLUMNS if set(EDIT_COLUMNS) <= set(edits.columns) else list(edits.columns[:3])
        return edits[cols].values.tolist()
    return edits


def edits_table(modes: str) -> gr.Dataframe:
    """The editable (latent, mode, value) table of a steer tab, with each latent's max activation read-only
    beside it; ``modes`` lists the accepted modes."""
    return gr.Dataframe(
        EMPTY_EDITS.copy(),
        headers=TABLE_COLUMNS,
        datatype=["number", "str", "number", "number"],
        column_count=(4, "fixed"),
        row_count=(1, "dynamic"),
        static_columns=[3],
        interactive=True,
        label=f"latent edits (mode: {modes}; max act: the latent's largest activation in the index, read-only)",
        elem_id="steer-edits",
    )


def add_latent_controls(backend: Any, sae: gr.Dropdown, edits: gr.Dataframe) -> None:
    """A latent id box and a visible "Add latent" button under the edits table; picking another SAE refreshes
    the max act column."""
    with gr.Row(elem_classes=["bar"]):
        new_latent = gr.Textbox(
            label="latent id to add",
            placeholder="e.g. 12 (empty: a blank row)",
            scale=0,
            min_width=240,
            elem_id="add-latent-id",
        )
        add_btn = gr.Button("Add latent", scale=0, min_width=130, elem_id="add-latent")
    add = functools.partial(add_row, backend)
    gr.on([add_btn.click, new_latent.submit], add, [edits, sae, new_latent], edits, api_visibility="private")
    sae.input(functools.partial(refresh_max_act, backend), [edits, sae], edits, api_visibility="private")


def ui_message(msg: str) -> str:
    """A backend edit error in the table's words: "edit 2: ..." names the table's row 2, and the API's
    "give [latent, 'clamp', number]" hint says what to type."""
    msg = re.sub(r"^edit (\d+)(:| )", r"row \1 of the edits table\2", msg)
    return re.sub(r": give \[latent, '?(\w+)'?, number\]", r": type a number in its value column", msg)


def firing_table(firing, labels: dict[int, str] | None = None) -> pd.DataFrame:
    """The latents firing on the steered text: id, explanation, max activation (2 decimals), tokens fired."""
    labels = labels or {}
    rows = [(int(a), labels.get(int(a), ""), round(float(b), 2), int(c)) for a, b, c in firing or []]
    return pd.DataFrame(rows, columns=FIRING_COLUMNS)


def firing_labels(backend: Any, sae: str, firing) -> dict[int, str]:
    """The explanation of each firing latent (empty where the index has none)."""
    out = {}
    for row in firing or []:
        try:
            out[int(row[0])] = str(backend.feature(sae, int(row[0])).label or "")
        except (AttributeError, *BAD_INPUT):
            out[int(row[0])] = ""
    return out


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
            done = firing_table(u.firing, firing_labels(backend, sae, u.firing)) if u.done else gr.skip()
            yield u.baseline, u.steered, notice, done
    except BAD_INPUT as e:
        # one clear warning under the buttons; the toast only points there (not the same text twice)
        gr.Warning("Nothing was generated: see the warning under the buttons.")
        yield "", "", f"⚠ {ui_message(str(e))}", firing_table([])
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
    add_latent_controls(backend, sae, edits)
    gr.Markdown(HELP, elem_classes=["muted"])
    prompt = gr.Textbox("Tell me about your favourite place.", label="prompt", lines=2)
    with gr.Row():
        max_new = gr.Slider(4, MAX_NEW_TOKENS, value=48, step=1, label="max new tokens")
        temp = gr.Slider(0, 2, value=0.7, step=0.05, label="temperature")
        seed = gr.Number(0, label="seed", precision=0, minimum=0, maximum=2**31 - 1)
        go_btn = gr.Button("Generate", variant="primary")
        stop_btn = gr.Button("Stop", variant="stop")
    notice = gr.Markdown(elem_id="steer-notice")
    with gr.Row(equal_height=True):
        base_out = gr.Textbox(label="baseline", lines=8, interactive=False)
        steer_out = gr.Textbox(label="steered", lines=8, interactive=False)
    firing = gr.Dataframe(
        firing_table([]),
        label="latents firing on the steered text",
        interactive=False,
        wrap=True,
        column_widths=["10%", "64%", "13%", "13%"],
        elem_id="steer-firing",
    )
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
