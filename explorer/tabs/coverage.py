"""Coverage tab: where specialized and boosted SAEs capture what the general SAE misses; SHIFT."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from .. import render_research as rr
from ..api import json_endpoint

INTRO = (
    "A token type of the held-out subdomain text counts as **captured** by an SAE when one of its latents fires on it "
    "and that latent's label names the token with a detection F1 (on held-out text) at or above the workspace's "
    "threshold. Rare subdomain tokens, on the left of the recall plot, are the *dark matter* general SAEs miss."
)


def load_coverage(backend, subdomain: str | None):
    """(summary table, recall plot, cumulative plot, log-ratio plot, SAE choices, unique-latent table, message,
    the recall differences in words)."""
    try:
        cov = backend.coverage(subdomain or "")
    except (ValueError, TypeError) as e:
        empty = pd.DataFrame()
        return empty, None, None, None, gr.update(choices=[], value=None), empty, f"⚠ {e}", ""
    others = [n for n in cov["saes"] if n != cov["reference"]]
    first = others[0] if others else None
    msg = (
        f"Subdomain **{cov['subdomain']}**: {cov['n_sub_tokens']:,} held-out subdomain tokens, "
        f"{cov['n_gen_tokens']:,} general tokens; reference SAE **{cov['reference']}**."
    )
    return (
        rr.coverage_summary(cov),
        rr.recall_by_frequency(cov),
        rr.cumulative_coverage(cov),
        rr.log_ratio_histogram(cov),
        gr.update(choices=others, value=first),
        unique_table(backend, cov, first),
        msg,
        rr.recall_statement(cov),
    )


LABEL_PAGE = 10_000  # rows per /latents page (the backend's cap)


def unique_table(backend, cov: dict, sae: str | None) -> pd.DataFrame:
    """Latents only ``sae`` has (no decoder match in the reference SAE), with their labels."""
    df = rr.unique_latents(cov, sae if sae in cov["saes"] else "")
    if sae and len(df):
        pages, offset = [], 0
        while True:  # every latent's label, a page at a time
            page = backend.latents(sae, sort_by="latent", descending=False, limit=LABEL_PAGE, offset=offset)
            pages.append(
                page[["latent", "label", "confidence"]].assign(**{"density %": page["density"].astype("float64") * 100})
            )
            offset += LABEL_PAGE
            if len(page) < LABEL_PAGE:
                break
        df = df.merge(pd.concat(pages), on="latent", how="left").round(3)
    return df


def pick_unique(backend, subdomain: str, sae: str | None) -> pd.DataFrame:
    try:
        return unique_table(backend, backend.coverage(subdomain), sae)
    except (ValueError, TypeError) as e:
        gr.Warning(str(e))
        return pd.DataFrame()


def build(backend, sae_names: list[str]) -> dict:
    subs = backend.subdomains()
    gr.Markdown(INTRO, elem_classes=["muted"])
    with gr.Row():
        sub = gr.Dropdown(subs, value=subs[0] if subs else None, label="subdomain", scale=1)
        msg = gr.Markdown()
    summary = gr.Dataframe(label="coverage and CE loss with each SAE spliced in", interactive=False)
    with gr.Row():
        recall_plot = gr.Plot(label="tail-concept recall")
        cum_plot = gr.Plot(label="cumulative coverage")
    noise = gr.Markdown(elem_id="coverage-noise")
    ratio_plot = gr.Plot(label="log-ratio of firing rates")
    with gr.Row():
        uniq_sae = gr.Dropdown([], label="dark-matter latents of", scale=1)
    gr.Markdown(
        "**Dark-matter latents**: no decoder match (cosine below the workspace's threshold) in the reference SAE, "
        "firing more on the subdomain than on general text (log-ratio > 0), and confidently labelled (detection F1 at "
        "or above the threshold); the most subdomain-enriched first.",
        elem_classes=["muted"],
    )
    uniq = gr.Dataframe(label="select a row to open its dashboard in Browse", interactive=False)
    outs = [summary, recall_plot, cum_plot, ratio_plot, uniq_sae, uniq, msg, noise]
    sub.change(lambda s: load_coverage(backend, s), sub, outs, api_visibility="private")
    uniq_sae.change(lambda s, u: pick_unique(backend, s, u), [sub, uniq_sae], uniq, api_visibility="private")

    with gr.Accordion("Spurious-correlation removal (SHIFT)", open=False):
        gr.Markdown(
            "Probe party from 2016 convention speeches and debate statements, where the register (speech vs debate) "
            "predicts the party in train but not in test; ablate the latents tied to the register; worst-group accuracy "
            "before and after. The report below is the last one stored in the workspace; run it (about a minute per "
            "SAE) with `python -m backend shift --workspace DIR [--saes a,b] [--csv FILE]`, on your own "
            "text/label/group CSV if you like. The web app only reads workspaces: no request writes into one.",
            elem_classes=["muted"],
        )
        gr.Dataframe(rr.shift_table(backend.shift_report()), interactive=False)

    @json_endpoint
    def coverage(subdomain: str) -> dict:
        """The coverage analysis of a subdomain: per SAE token recall, cumulative coverage, log-ratios, CE."""
        return backend.coverage(subdomain)

    gr.api(coverage, api_name="coverage")
    return {
        "subdomain": sub,
        "outputs": outs,
        "load": lambda s: load_coverage(backend, s),
        "unique": uniq,
        "unique_sae": uniq_sae,
    }
