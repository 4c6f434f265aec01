"""Coverage tab: where specialized and boosted SAEs capture what the general SAE misses; SHIFT."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from .. import render_research as rr

INTRO = (
    "A token type of the held-out subdomain text counts as **captured** by an SAE when one of its latents fires on it "
    "and that latent's label names the token with a detection F1 (on held-out text) at or above the workspace's "
    "threshold. Rare subdomain tokens, on the left of the recall plot, are the *dark matter* general SAEs miss."
)


def load_coverage(backend, subdomain: str | None):
    """(summary table, recall plot, cumulative plot, log-ratio plot, SAE choices, unique-latent table, message)."""
    try:
        cov = backend.coverage(subdomain or "")
    except ValueError as e:
        empty = pd.DataFrame()
        return empty, None, None, None, gr.update(choices=[], value=None), empty, f"⚠ {e}"
    others = [n for n in cov["saes"] if n != cov["reference"]]
    first = others[0] if others else None
    msg = (f"Subdomain **{cov['subdomain']}**: {cov['n_sub_tokens']:,} held-out subdomain tokens, "
           f"{cov['n_gen_tokens']:,} general tokens; reference SAE **{cov['reference']}**.")
    return (rr.coverage_summary(cov), rr.recall_by_frequency(cov), rr.cumulative_coverage(cov),
            rr.log_ratio_histogram(cov), gr.update(choices=others, value=first), unique_table(backend, cov, first), msg)


def unique_table(backend, cov: dict, sae: str | None) -> pd.DataFrame:
    """Latents only ``sae`` has (no decoder match in the reference SAE), with their labels."""
    df = rr.unique_latents(cov, sae or "")
    if sae and len(df):
        labels = backend.latents(sae, sort_by="latent", descending=False, limit=100_000)
        df = df.merge(labels[["latent", "label", "confidence", "density"]], on="latent", how="left").round(3)
    return df


def pick_unique(backend, subdomain: str, sae: str | None) -> pd.DataFrame:
    try:
        return unique_table(backend, backend.coverage(subdomain), sae)
    except ValueError as e:
        gr.Warning(str(e))
        return pd.DataFrame()


def run_shift(backend, saes: list[str]) -> tuple[pd.DataFrame, str]:
    if not saes:
        return rr.shift_table(backend.shift_report()), "⚠ pick at least one SAE"
    try:
        report = backend.run_shift(list(saes))
    except ValueError as e:
        return rr.shift_table(backend.shift_report()), f"⚠ {e}"
    return rr.shift_table(report), "Done: probe trained, group-tied latents ablated, accuracies on the balanced test set."


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
    ratio_plot = gr.Plot(label="log-ratio of firing rates")
    with gr.Row():
        uniq_sae = gr.Dropdown([], label="latents only this SAE has", scale=1)
    uniq = gr.Dataframe(label="select a row to open its dashboard in Browse", interactive=False)
    outs = [summary, recall_plot, cum_plot, ratio_plot, uniq_sae, uniq, msg]
    sub.change(lambda s: load_coverage(backend, s), sub, outs, api_visibility="private")
    uniq_sae.change(lambda s, u: pick_unique(backend, s, u), [sub, uniq_sae], uniq, api_visibility="private")

    with gr.Accordion("Spurious-correlation removal (SHIFT)", open=False):
        gr.Markdown(
            "Probe party from 2016 convention speeches and debate statements, where the register (speech vs debate) "
            "predicts the party in train but not in test; ablate the latents tied to the register; worst-group accuracy "
            "before and after. `python -m backend shift --csv FILE` runs it on your own text/label/group CSV.",
            elem_classes=["muted"],
        )
        with gr.Row():
            shift_saes = gr.CheckboxGroup(sae_names, value=sae_names[:2], label="SAEs")
            shift_btn = gr.Button("Run SHIFT (about a minute)")
        shift_msg = gr.Markdown()
        shift_out = gr.Dataframe(rr.shift_table(backend.shift_report()), interactive=False)
    shift_btn.click(lambda s: run_shift(backend, s), shift_saes, [shift_out, shift_msg], api_visibility="private")

    def coverage(subdomain: str) -> dict:
        """The coverage analysis of a subdomain: per SAE token recall, cumulative coverage, log-ratios, CE."""
        try:
            return backend.coverage(subdomain)
        except ValueError as e:
            return {"error": str(e)}

    gr.api(coverage, api_name="coverage")
    return {"subdomain": sub, "outputs": outs, "load": lambda s: load_coverage(backend, s), "unique": uniq,
            "unique_sae": uniq_sae}
