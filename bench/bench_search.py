"""Search by meaning against explanation word search (issue 14): hits@5 on a fixed query set.

    .venv/bin/python bench/bench_search.py [--workspace workspaces/demo] [--k 5]

Each query names a concept of one of the demo's domains (the domain its latents should have as their top domain).
A query is a hit at k when at least one of the first k latents returned has that top domain (the domain where the
latent fires most, by rate). ``/search_meaning`` gets the query as written; explanation word search
(``/search_features``) gets its words one at a time and keeps the first k latents over all of them (a person would
try words too). Domains the workspace lacks are skipped. The workspace needs meaning vectors
(``python -m backend meaning --workspace DIR``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

QUERIES: list[tuple[str, str]] = [  # (query, the domain it should hit)
    ("insulin and blood glucose", "biomedical"),
    ("abnormal heart rhythm", "biomedical"),
    ("inflammation of the skin", "biomedical"),
    ("muscle weakness", "biomedical"),
    ("seizures and epilepsy", "biomedical"),
    ("kidney failure", "biomedical"),
    ("abnormal shape of the skull", "biomedical"),
    ("delayed development in children", "biomedical"),
    ("contract termination", "legal"),
    ("warranty disclaimer", "legal"),
    ("permission to copy and redistribute software", "legal"),
    ("liability for damages", "legal"),
    ("license conditions and notices", "legal"),
    ("patent rights granted", "legal"),
    ("source code must be made available", "legal"),
    ("python exceptions and error handling", "code"),
    ("defining a class with methods", "code"),
    ("importing a module", "code"),
    ("function arguments and return values", "code"),
    ("loops over a list", "code"),
    ("string formatting", "code"),
    ("file paths and opening files", "code"),
    ("unit tests and assertions", "code"),
    ("film review praise", "general"),
    ("a boring movie", "general"),
    ("election campaign speech", "general"),
    ("the president and congress", "general"),
    ("football match result", "general"),
    ("history of a European city", "general"),
    ("music albums and bands", "general"),
    ("economy and taxes", "general"),
    ("actors and directors", "general"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default=str(ROOT / "workspaces" / "demo"))
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    from backend.errors import BackendError
    from backend.serve.service import Backend

    b = Backend(args.workspace)
    domains = set(b.domains())
    qs = [(q, d) for q, d in QUERIES if d in domains]
    print(f"workspace {args.workspace}: {len(b.sae_names)} SAEs, domains {sorted(domains)}; {len(qs)} queries")
    hits = {"meaning": 0, "words": 0, "meaning1": 0, "words1": 0}
    t_meaning = []
    for q, d in qs:
        t0 = time.perf_counter()
        m = b.search_meaning(q, limit=args.k)
        t_meaning.append(time.perf_counter() - t0)
        got = {}
        for w in q.split():
            if len(w) < 4:
                continue
            try:
                got.update(
                    {(r.sae, r.latent): r.top_domain for r in _with_domain(b, b.search_features(w, limit=args.k))}
                )
            except BackendError:
                pass
            if len(got) >= args.k:
                break
        words_domains = list(got.values())[: args.k]
        hit_m, hit_w = d in set(m["top_domain"]), d in set(words_domains)
        hits["meaning"] += hit_m
        hits["words"] += hit_w
        hits["meaning1"] += bool(len(m)) and m["top_domain"].iloc[0] == d
        hits["words1"] += bool(words_domains) and words_domains[0] == d
        print(
            f"{q!r:48} [{d:10}] meaning {'hit ' if hit_m else 'miss'} {list(m['top_domain'])}  words "
            f"{'hit ' if hit_w else 'miss'} {words_domains}"
        )
    n = max(len(qs), 1)
    print(
        f"\nhits@{args.k}: search by meaning {hits['meaning']}/{len(qs)} ({hits['meaning'] / n:.0%}), explanation words "
        f"{hits['words']}/{len(qs)} ({hits['words'] / n:.0%})"
    )
    lat = [b.latents(s, limit=10_000) for s in b.sae_names]
    import pandas as pd

    share = pd.concat(lat)["top_domain"].value_counts(normalize=True)
    chance = sum(1 - (1 - share.get(d, 0.0)) ** args.k for _, d in qs) / n
    chance1 = sum(share.get(d, 0.0) for _, d in qs) / n
    print(
        f"hits@1: search by meaning {hits['meaning1']}/{len(qs)}, explanation words {hits['words1']}/{len(qs)}; "
        f"chance {chance1:.0%}"
    )
    print(
        f"chance hits@{args.k} with latents drawn at random: {chance:.0%}; median /search_meaning latency "
        f"{sorted(t_meaning)[len(t_meaning) // 2] * 1000:.0f} ms (first query loads MiniLM: {t_meaning[0]:.1f} s)"
    )
    label_quality(lat, b.sae_names)
    b.close()


def label_quality(lat: list, names: list[str]) -> None:
    """Per SAE: the share of firing latents (density > 0) whose label reaches detection F1 >= 0.5 on held-out
    tokens (``confidence``: the score of the label, by its rule or by a model), and the median F1."""
    import pandas as pd

    print("\nlabel quality (firing latents; detection F1 of the label on held-out tokens)")
    allf = []
    for name, df in zip(names, lat):
        f = df[df["density"] > 0]
        allf.append(f)
        print(
            f"  {name:14} {len(f):>5} firing  F1>=0.5: {(f['confidence'] >= 0.5).mean():.1%}  "
            f"median F1 {f['confidence'].median():.3f}"
        )
    f = pd.concat(allf)
    print(f"  {'all':14} {len(f):>5} firing  F1>=0.5: {(f['confidence'] >= 0.5).mean():.1%}")


def _with_domain(b, df):
    """search_features rows with each latent's top domain."""
    import pandas as pd

    if df.empty:
        return []
    doms = []
    for s, g in df.groupby("sae"):
        lat = b.latents(s, limit=10_000).set_index("latent")["top_domain"]
        doms.append(g.assign(top_domain=g["latent"].map(lat)))
    return list(pd.concat(doms).sort_values("score", ascending=False).itertuples(index=False))


if __name__ == "__main__":
    main()
