"""Search tab: latents firing on a text (token by token), latents by meaning (explanation and contexts), words in
explanations, nearest decoder directions."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from .. import render
from ..api import BAD_INPUT, json_endpoint
from .browse import Opener, row_pick

EXAMPLES = Path(__file__).resolve().parents[2] / "assets" / "examples.txt"
ALL_SAES = "all SAEs"
SAME_SAE = "same SAE"
TEXT_COLUMNS = ["latent", "label", "max_act", "mean_act", "n_tokens_fired"]
FEATURE_COLUMNS = ["sae", "latent", "label", "confidence", "density", "score"]
NEAREST_COLUMNS = ["sae", "latent", "cosine", "label"]
MEANING_COLUMNS = ["sae", "latent", "label", "score", "top_domain"]
HEADERS = {
    "label": "explanation",
    "max_act": "max",
    "mean_act": "mean",
    "n_tokens_fired": "tokens fired",
    "density": "density %",  # shown as a percentage of tokens, as in Browse
    "top_domain": "top domain",
}


def display(df: pd.DataFrame, columns: list[str], rounding: dict[str, int]) -> pd.DataFrame:
    """The contract's columns in order, rounded, with readable headers."""
    return render.tidy(df.reindex(columns=columns), rounding).rename(columns=HEADERS)


def percent_density(df: pd.DataFrame) -> pd.DataFrame:
    """The density column (a fraction of tokens) as a percentage to 3 significant digits, Browse's unit."""
    if "density" not in df:
        return df
    pct = pd.to_numeric(df["density"], errors="coerce").astype("float64") * 100
    return df.assign(density=pct.map(lambda v: float(f"{v:.3g}") if pd.notna(v) else v))


def examples() -> list[str]:
    """Example texts from assets/examples.txt, one per line (``\\n`` inside a line is a newline)."""
    if not EXAMPLES.exists():
        return []
    return [ln.replace("\\n", "\n") for ln in EXAMPLES.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _fail(e: Exception | str, columns: list[str]) -> tuple[pd.DataFrame, str]:
    gr.Warning(str(e))
    return display(pd.DataFrame(columns=columns), columns, {}), render.message_html(str(e))


def search_text(backend: Any, sae: str, text: str, top_n: float = 10) -> tuple[pd.DataFrame, str, dict, int | None]:
    """(top latents table, heatmap of the first latent, state for re-colouring, chosen latent)."""
    if not (text or "").strip():
        return (*_fail("Type or paste a text to see which latents fire on it.", TEXT_COLUMNS), {}, None)
    try:
        res = backend.search_text(sae, text, top_n=top_n)
    except BAD_INPUT as e:
        return (*_fail(e, TEXT_COLUMNS), {}, None)
    table = display(res.top_latents, TEXT_COLUMNS, {"max_act": 1, "mean_act": 2})
    state = {
        "sae": sae,
        "tokens": list(res.tokens),
        "per_token": [list(map(list, pt)) for pt in res.per_token],
        "acts": {int(k): list(map(float, v)) for k, v in res.acts.items()},
    }
    notice = getattr(res, "notice", "")
    if notice:
        gr.Warning(notice)
    note = render.message_html(notice, "info") if notice else ""
    state["notice"] = note
    if table.empty:
        return table, note + render.message_html("No latent fires on this text.", "info"), state, None
    latent = int(table["latent"].iloc[0])
    return table, heatmap(state, latent), state, latent


def heatmap(state: dict, latent: float | None) -> str:
    """The searched text coloured by one of its top latents."""
    if not isinstance(state, dict) or not state.get("acts") or latent is None:
        return render.message_html("Search a text first, then pick one of its latents.", "info")
    try:
        acts = state["acts"].get(int(latent))
    except BAD_INPUT:
        acts = None
    if acts is None:
        return render.message_html(f"Latent {int(latent)} is not among this text's top latents.", "info")
    return state.get("notice", "") + render.text_heatmap_html(state["tokens"], acts, state["per_token"], int(latent))


def open_chosen(state: dict, latent: float | None) -> tuple:
    """Open the latent the text is coloured by in the Browse dashboard."""
    if not state or latent is None:
        raise gr.Error("Search a text and pick one of its latents first.")
    return Opener.target(state["sae"], int(latent))


def search_features(backend: Any, query: str, sae: str | None, limit: float = 50) -> tuple[pd.DataFrame, str]:
    """(matching latents, status) for words in the explanations."""
    if not (query or "").strip():
        return _fail("Type some words to look for in the explanations.", FEATURE_COLUMNS)
    try:
        df = backend.search_features(query.strip(), sae=None if sae in (None, "", ALL_SAES) else sae, limit=limit)
    except BAD_INPUT as e:
        return _fail(e, FEATURE_COLUMNS)
    df = display(percent_density(df), FEATURE_COLUMNS, {"confidence": 2, "score": 3})
    if df.empty:
        return df, render.message_html(f"No explanation matches {query.strip()!r}.", "info")
    return df, render.message_html(f"{len(df)} latents; select one to open its dashboard.", "info")


def search_meaning(backend: Any, query: str, sae: str | None, limit: float = 20) -> tuple[pd.DataFrame, str]:
    """(latents closest in meaning, status): MiniLM cosine between the query and each latent's explanation and
    activation-weighted top contexts."""
    if not (query or "").strip():
        return _fail("Describe what you are looking for, e.g. 'insulin and blood sugar'.", MEANING_COLUMNS)
    try:
        df = backend.search_meaning(query.strip(), sae="" if sae in (None, "", ALL_SAES) else sae, limit=limit)
    except BAD_INPUT as e:
        return _fail(e, MEANING_COLUMNS)
    notice = df.attrs.get("notice", "")
    df = display(df, MEANING_COLUMNS, {"score": 3})
    note = render.message_html(notice, "info") if notice else ""
    return df, note + render.message_html(
        f"{len(df)} latents by meaning (cosine of the query with each latent's explanation and top contexts); "
        "select one to open its dashboard.",
        "info",
    )


def nearest(
    backend: Any, sae: str, latent: float | None, k: float = 10, other_sae: str | None = None
) -> tuple[pd.DataFrame, str]:
    """(nearest decoder directions, status) of one latent, in its own SAE or another."""
    if latent is None:
        return _fail("Type the id of a latent.", NEAREST_COLUMNS)
    other = None if other_sae in (None, "", SAME_SAE) else other_sae
    try:
        df = backend.nearest(sae, latent, k=k, other_sae=other)
    except BAD_INPUT as e:
        return _fail(e, NEAREST_COLUMNS)
    df = display(df, NEAREST_COLUMNS, {"cosine": 3})
    return df, render.message_html(f"decoder directions nearest to {sae} · {int(latent)} in {other or sae}", "info")


@json_endpoint
def search_text_api(backend: Any, sae: str, text: str, top_n: int = 10) -> dict:
    return render.to_json(backend.search_text(sae, text or "", top_n=top_n))


@json_endpoint
def search_features_api(backend: Any, query: str, sae: str = "", limit: int = 50) -> list | dict:
    return render.to_json(backend.search_features(query, sae=sae or None, limit=limit))


@json_endpoint
def search_meaning_api(backend: Any, query: str, sae: str = "", limit: int = 20) -> list | dict:
    return render.to_json(backend.search_meaning(query, sae=sae or "", limit=limit))


@json_endpoint
def nearest_api(backend: Any, sae: str, latent: int, k: int = 10, other_sae: str = "") -> list | dict:
    return render.to_json(backend.nearest(sae, latent, k=k, other_sae=other_sae or None))


def _table(columns: list[str], elem_id: str, widths: list[str]) -> gr.Dataframe:
    return gr.Dataframe(
        display(pd.DataFrame(columns=columns), columns, {}),
        interactive=False,
        wrap=True,
        max_height=520,
        show_label=False,
        elem_id=elem_id,
        column_widths=widths,
    )


def build(backend: Any, sae_names: list[str], opener: Opener) -> None:
    first = sae_names[0] if sae_names else None
    with gr.Tabs():
        with gr.Tab("By text"):
            with gr.Row(elem_classes=["bar"]):
                t_sae = gr.Dropdown(sae_names, value=first, label="SAE", scale=1)
                top_n = gr.Slider(1, 50, value=10, step=1, label="top latents", scale=2)
                t_btn = gr.Button("Find latents", variant="primary", scale=0, min_width=140)
            caps = backend.capabilities
            ex = examples() if caps["prompt_examples"] else [backend.example_input()]
            text = gr.Textbox(
                ex[0] if ex else "", label=caps["input_label"], lines=4, max_lines=12, elem_id="search-text"
            )
            if ex:
                gr.Examples([[e] for e in ex], inputs=text, label="examples")
            state = gr.State({})
            with gr.Row():
                with gr.Column(scale=2, min_width=360):
                    gr.Markdown(
                        "Select a latent to colour the text by it; **Open** shows its dashboard.",
                        elem_classes=["muted"],
                    )
                    t_table = _table(TEXT_COLUMNS, "text-latents", ["14%", "44%", "13%", "13%", "16%"])
                with gr.Column(scale=3, min_width=420):
                    with gr.Row(elem_classes=["bar"]):
                        chosen = gr.Number(None, label="latent shown", precision=0, scale=1)
                        t_open = gr.Button("Open dashboard", scale=0, min_width=170)
                    t_heat = gr.HTML(elem_id="text-heatmap")
        if backend.capabilities.get("search_meaning"):
            with gr.Tab("By meaning"):
                with gr.Row(elem_classes=["bar"]):
                    m_query = gr.Textbox(
                        label="what are you looking for?",
                        placeholder="e.g. insulin and blood sugar, contract termination, python exceptions",
                        scale=3,
                        elem_id="meaning-query",
                    )
                    m_sae = gr.Dropdown([ALL_SAES, *sae_names], value=ALL_SAES, label="SAE", scale=1)
                    m_limit = gr.Slider(5, 200, value=20, step=5, label="max results", scale=1)
                    m_btn = gr.Button("Search", variant="primary", scale=0, min_width=110)
                m_msg = gr.HTML()
                m_table = _table(MEANING_COLUMNS, "meaning-results", ["12%", "8%", "56%", "10%", "14%"])
            gr.on(
                [m_btn.click, m_query.submit],
                functools.partial(search_meaning, backend),
                [m_query, m_sae, m_limit],
                [m_table, m_msg],
                api_visibility="private",
            )
        with gr.Tab("By explanation"):
            with gr.Row(elem_classes=["bar"]):
                query = gr.Textbox(label="words in the explanation", placeholder="e.g. code, legal, names", scale=3)
                f_sae = gr.Dropdown([ALL_SAES, *sae_names], value=ALL_SAES, label="SAE", scale=1)
                limit = gr.Slider(5, 200, value=50, step=5, label="max results", scale=1)
                f_btn = gr.Button("Search", variant="primary", scale=0, min_width=110)
            f_msg = gr.HTML()
            f_table = _table(FEATURE_COLUMNS, "feature-results", ["11%", "8%", "51%", "10%", "10%", "10%"])
        with gr.Tab("Nearest directions"):
            with gr.Row(elem_classes=["bar"]):
                n_sae = gr.Dropdown(sae_names, value=first, label="SAE", scale=1)
                n_latent = gr.Number(0, label="latent id", precision=0, minimum=0, scale=1)
                n_other = gr.Dropdown([SAME_SAE, *sae_names], value=SAME_SAE, label="look in", scale=1)
                k = gr.Slider(1, 50, value=10, step=1, label="k", scale=1)
                n_btn = gr.Button("Find nearest", variant="primary", scale=0, min_width=130)
            n_msg = gr.HTML()
            n_table = _table(NEAREST_COLUMNS, "nearest-results", ["12%", "9%", "9%", "70%"])

    gr.on(
        [t_btn.click, text.submit],
        functools.partial(search_text, backend),
        [t_sae, text, top_n],
        [t_table, t_heat, state, chosen],
        api_visibility="private",
    )
    gr.on([chosen.submit], heatmap, [state, chosen], t_heat, api_visibility="private")

    def choose(st: dict, evt: gr.SelectData) -> tuple[int, str]:
        latent = row_pick(evt)[1]
        return latent, heatmap(st, latent)

    t_table.select(choose, state, [chosen, t_heat], api_visibility="private")
    opener.wire(t_open.click, open_chosen, [state, chosen])
    gr.on(
        [f_btn.click, query.submit],
        functools.partial(search_features, backend),
        [query, f_sae, limit],
        [f_table, f_msg],
        api_visibility="private",
    )
    gr.on(
        [n_btn.click, n_latent.submit],
        functools.partial(nearest, backend),
        [n_sae, n_latent, k, n_other],
        [n_table, n_msg],
        api_visibility="private",
    )

    def pick(evt: gr.SelectData) -> tuple:
        return Opener.target(*row_pick(evt, sae_col=0, latent_col=1))

    opener.wire(f_table.select, pick, [])
    opener.wire(n_table.select, pick, [])
    if backend.capabilities.get("search_meaning"):
        opener.wire(m_table.select, pick, [])

    def search_text_endpoint(sae: str, text: str, top_n: int = 10) -> dict:
        """Which latents fire on a text: tokens, top latents, per-token top latents, activations of the top latents."""
        return search_text_api(backend, sae, text, top_n)

    def search_features_endpoint(query: str, sae: str = "", limit: int = 50) -> list | dict:
        """Latents whose explanation contains the query words (sae empty: all SAEs)."""
        return search_features_api(backend, query, sae, limit)

    def nearest_endpoint(sae: str, latent: int, k: int = 10, other_sae: str = "") -> list | dict:
        """The k decoder directions nearest (cosine) to a latent's, in its own SAE or in other_sae."""
        return nearest_api(backend, sae, latent, k, other_sae)

    gr.api(search_text_endpoint, api_name="search_text")
    gr.api(search_features_endpoint, api_name="search_features")
    gr.api(nearest_endpoint, api_name="nearest")

    def search_meaning_endpoint(query: str, sae: str = "", limit: int = 20) -> list | dict:
        """Latents closest in meaning to the query (their explanation and top contexts; sae empty: all SAEs):
        [{sae, latent, label, score, top_domain}], best first."""
        return search_meaning_api(backend, query, sae, limit)

    if backend.capabilities.get("search_meaning"):  # text workspaces (protein and item ids have no words to embed)
        gr.api(search_meaning_endpoint, api_name="search_meaning")
