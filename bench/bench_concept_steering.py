"""Do concept labels steer? For a recommender workspace: the best-confidence latent of each genre is clamped on
held users' histories and the genre's share of the top-10 is compared before and after (issue 7's ablation,
measured over users rather than shown for one). Also: clamping a random latent without that genre label, as a control.

    .venv/bin/python bench/bench_concept_steering.py [--workspace workspaces/recsys] [--users 200] [--value 10]
"""

from __future__ import annotations

import argparse

import numpy as np

from backend.modalities.recsys import concept_steering_effect  # noqa: E402
from backend.serve.service import Backend  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default="workspaces/recsys")
    ap.add_argument("--sae", default="topk")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--value", type=float, default=10.0)
    ap.add_argument("--genres", type=int, default=8)
    a = ap.parse_args()
    b = Backend(a.workspace)
    adapter, sae, site = b.adapter(), b.sae(a.sae), b.ws.config.activations.site
    w = b.windows()
    hist = [list(t)[-20:] for t in w.groupby("doc_id")["token_ids"].last().iloc[: a.users]]
    best = b.index.df(
        "SELECT concept, latent, confidence FROM concepts WHERE sae = ? AND concept LIKE 'genre:%' "
        "QUALIFY row_number() OVER (PARTITION BY concept ORDER BY confidence DESC) = 1 "
        "ORDER BY confidence DESC",
        [a.sae],
    ).head(a.genres)
    labelled = set(
        b.index.df("SELECT DISTINCT latent FROM concepts WHERE sae = ? AND concept LIKE 'genre:%'", [a.sae])["latent"]
    )
    rng = np.random.default_rng(0)
    print(
        f"| genre | latent (confidence) | share before | after clamp {a.value:g} | users gained | control latent: after |"
    )
    print("|---|---|---|---|---|---|")
    for r in best.itertuples():
        g = r.concept.split(":", 1)[1]
        e = concept_steering_effect(adapter, sae, site, hist, r.latent, g, a.value)
        ctrl_latent = int(rng.choice([i for i in range(int(sae.W_dec.shape[0])) if i not in labelled]))
        c = concept_steering_effect(adapter, sae, site, hist, ctrl_latent, g, a.value)
        print(
            f"| {g} | {r.latent} ({r.confidence:.2f}) | {e['share_before']:.3f} | {e['share_after']:.3f} | "
            f"{e['users_gained']:.0%} | {c['share_after']:.3f} (latent {ctrl_latent}) |",
            flush=True,
        )
    b.close()


if __name__ == "__main__":
    main()
