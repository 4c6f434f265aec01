"""The Coverage tab's words and tables (issue 15): the recall difference with its noise, and dark-matter latents."""

from __future__ import annotations

import numpy as np

from explorer import render_research as rr


def _cov(ref: list[bool], other: list[bool]) -> dict:
    def entry(caps):
        toks = [{"token": f"t{i}", "gen_freq": i, "count": 1, "captured": c} for i, c in enumerate(caps)]
        return {"tokens": toks, "token_recall": float(np.mean(caps))}

    return {"reference": "general", "saes": {"general": entry(ref), "ssae": entry(other)}}


def test_a_clear_gain_is_beyond_the_noise_and_a_tie_is_within_it():
    rng = np.random.default_rng(0)
    ref = list(rng.random(400) < 0.3)
    better = [r or (rng.random() < 0.5) for r in ref]  # +~35 points, paired
    rows = rr.recall_differences(_cov(ref, better))
    allt = next(r for r in rows if r["part"] == "all token types")
    assert allt["diff"] > 0.2 and allt["lo"] > 0 and allt["beyond"]
    assert allt["lo"] <= allt["diff"] <= allt["hi"] and allt["n"] == 400
    same = rr.recall_differences(_cov(ref, ref[1:] + ref[:1]))  # the same rate, other tokens
    assert not next(r for r in same if r["part"] == "all token types")["beyond"]
    text = rr.recall_statement(_cov(ref, better))
    assert "beyond the noise" in text and "ssae" in text and "95% interval" in text
    rare = next(r for r in rows if r["part"] == "rarer half")
    assert rare["n"] == 200  # the rarer half of the types by general-corpus frequency


def test_dark_matter_latents_come_first_when_the_file_has_them():
    cov = {
        "reference": "general",
        "saes": {
            "ssae": {
                "unique_latents": [{"latent": 1, "max_cos": 0.1, "log_ratio": -2.0}],
                "dark_matter": [{"latent": 7, "max_cos": 0.4, "log_ratio": 3.0, "confidence": 0.8}],
            },
            "old": {"unique_latents": [{"latent": 1, "max_cos": 0.1, "log_ratio": -2.0}]},
        },
    }
    assert rr.unique_latents(cov, "ssae")["latent"].tolist() == [7]
    assert rr.unique_latents(cov, "old")["latent"].tolist() == [1]  # a coverage file from before: unmatched ones


def test_the_tab_loads_the_tiny_workspace_coverage_with_a_statement(tb):
    from explorer.tabs.coverage import load_coverage

    out = load_coverage(tb, "biomedical")
    summary, table, msg, noise = out[0], out[5], out[6], out[7]
    assert "dark-matter latents" in summary.columns and "biomedical" in msg
    assert "Is the difference real?" in noise and "noise" in noise
    if len(table):  # the dark-matter rows carry their labels
        assert {"latent", "label", "confidence"} <= set(table.columns) and (table["log_ratio"] > 0).all()
