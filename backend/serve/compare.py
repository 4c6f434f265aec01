"""Decoder-geometry views of the Backend facade (mixed into backend.serve.service.Backend): nearest directions of a
latent, the feature maps, and Compare: the best decoder match of every latent of one SAE in others (faiss over unit
decoder rows, computed once per pair), paged matched and unmatched latents, the cosine histogram per pair and
Matryoshka levels.

Uses the facade's ``_directions`` (faiss index per SAE), ``index``, ``_kind``, ``_check_sae``, ``_check_latent``,
``_metrics``, ``_arch``, ``_d_sae``, ``ws`` and its caches (``_label_cache``, ``_match_cache`` under ``_lock``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from backend import errors as check
from backend.errors import BackendError
from backend.serve.limits import MAX_NEAREST, MAX_OFFSET, MAX_RESULTS

COSINE_BINS = 20  # histogram of best-match cosines over [0, 1] in /compare's pairs
LEVEL_COLUMNS = ["sae", "level", "start", "end", "fvu", "share_matched"]  # /compare's Matryoshka levels


@dataclass
class CompareResult:
    metrics: pd.DataFrame
    matches: pd.DataFrame  # one page of pairs with cosine >= threshold, best first
    unmatched: pd.DataFrame  # one page of latents of saes[0] below threshold, most distinct first
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)  # per SAE pair: counts, median, cosine histogram
    n_matches: int = 0  # all pairs at or above the threshold (over every page)
    n_unmatched: int = 0
    levels: pd.DataFrame = field(default_factory=pd.DataFrame)  # Matryoshka SAEs: one row per level (see compare)


def flat_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """metrics.json as one row of scalars: decoder_max_cos -> decoder_max_cos_mean, matryoshka_fvu {width: fvu} ->
    matryoshka_fvu_<width>; the other nested values (histograms, quantiles, per-domain perplexity, the training
    record) are left out."""
    row = {k: v for k, v in m.items() if not isinstance(v, (dict, list))}
    if isinstance(m.get("decoder_max_cos"), dict):
        row["decoder_max_cos_mean"] = m["decoder_max_cos"].get("mean")
    for w, v in sorted((m.get("matryoshka_fvu") or {}).items(), key=lambda kv: int(kv[0])):
        row[f"matryoshka_fvu_{int(w)}"] = v
    return row


class CompareViews:
    def nearest(self, sae: str, latent: int, k: int = 10, other_sae: str | None = None) -> pd.DataFrame:
        i = self._check_latent(sae, latent)
        target = self._check_sae(other_sae) if other_sae else sae
        k = check.whole("k", k, 1, MAX_NEAREST)
        query = self._directions(sae).reconstruct(i)[None, :]
        cos, idx = self._directions(target).search(query, k + 1)
        hits = [(int(j), float(c)) for j, c in zip(idx[0], cos[0]) if j >= 0 and not (target == sae and j == i)][:k]
        labels = self.index.labels(target).set_index("latent")["label"]
        return pd.DataFrame(
            {
                "sae": target,
                "latent": [j for j, _ in hits],
                "cosine": [round(c, 4) for _, c in hits],
                "label": [labels.get(j, "") for j, _ in hits],
            }
        )

    def feature_map(self, sae: str | None = None) -> pd.DataFrame:
        if sae:
            self._check_sae(sae)
        df = self.index.feature_map(sae or "")
        if not sae:
            df["x"], df["y"] = df["jx"], df["jy"]
        if self._kind.token_concepts is not None:
            # the concept a latent is labelled with (its 7 most common; the rest grouped)
            lc = self.index.label_concepts(sae or "")
            df = df.merge(lc, on=["sae", "latent"], how="left")
            top = df["concept"].value_counts().index[:7]
            df["concept"] = df["concept"].where(
                df["concept"].isin(top), np.where(df["concept"].isna(), "(token label)", "other concept")
            )
        return df.drop(columns=["jx", "jy"])

    def _labels(self, sae: str) -> pd.Series:
        """latent -> label of one SAE (cached: the index does not change while it is served)."""
        with self._lock:
            if sae not in self._label_cache:
                self._label_cache[sae] = self.index.labels(sae).set_index("latent")["label"]
            return self._label_cache[sae]

    def best_matches(self, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        """(cosine, latent of b) of the best decoder match in ``b`` of every latent of ``a``; computed once
        per pair and kept (d_sae x 12 bytes a pair)."""
        key = (self._check_sae(a), self._check_sae(b))
        if key not in self._match_cache:
            Wa = self._directions(a).reconstruct_n(0, self._d_sae[a])
            cos, idx = self._directions(b).search(Wa, 1)
            with self._lock:
                self._match_cache[key] = (cos[:, 0].astype(np.float32), idx[:, 0].astype(np.int64))
        return self._match_cache[key]

    def compare(self, saes: list[str], threshold: float = 0.7, limit: int = 100, offset: int = 0) -> CompareResult:
        """Best decoder match (max cosine) of every latent of saes[0] in each other SAE.

        ``matches`` holds the pairs at or above ``threshold`` (best first) and ``unmatched`` the latents below
        it (most distinct first), each paged by ``limit``/``offset``; ``pairs`` summarises every SAE pair with
        the histogram of best-match cosines. ``metrics`` has one row per SAE: name, architecture, d_sae and its
        metrics.json flattened (``flat_metrics``). ``levels`` has one row per level of each Matryoshka SAE: level
        (1 = the coarsest), its latents [start, end), fvu (reconstructing with latents [0, end) only) and, for
        saes[0], share_matched (the share of the level's latents with a match >= threshold in another SAE).
        Duplicate names are dropped, so a request costs at most one comparison per SAE of the workspace, and each
        pair's matches are computed once per process."""
        saes = check.names("SAEs", saes, self.sae_names, at_least=0)
        if len(saes) < 2:
            raise BackendError("pick at least two SAEs to compare")
        threshold = check.number("threshold", threshold, 0.0, 1.0)
        limit = check.whole("limit", limit, 1, MAX_RESULTS)
        offset = check.whole("offset", offset, 0, MAX_OFFSET)
        raw = {s: self._metrics(s) for s in saes}
        metrics = pd.DataFrame(
            [{"name": s, "architecture": self._arch[s], "d_sae": self._d_sae[s], **flat_metrics(raw[s])} for s in saes]
        )
        a = saes[0]
        pairs, hit, miss = [], [], []
        matched_a = np.zeros(self._d_sae[a], dtype=bool)  # latents of a with a match in at least one other SAE
        for b in saes[1:]:
            cos, arg = self.best_matches(a, b)
            ok = cos >= threshold
            matched_a |= ok
            counts, _ = np.histogram(np.clip(cos, 0.0, 1.0), bins=COSINE_BINS, range=(0.0, 1.0))
            pairs.append(
                {
                    "sae_a": a,
                    "sae_b": b,
                    "n_latents": len(cos),
                    "n_matched": int(ok.sum()),
                    "share_matched": round(float(ok.mean()), 4),
                    "median_cosine": round(float(np.median(cos)), 4),
                    "hist_counts": counts.tolist(),
                }
            )
            lat = np.arange(len(cos))
            hit.append(pd.DataFrame({"latent_a": lat[ok], "sae_b": b, "latent_b": arg[ok], "cosine": cos[ok]}))
            miss.append(pd.DataFrame({"latent": lat[~ok], "best_cosine": cos[~ok], "vs": b}))
        hits = pd.concat(hit, ignore_index=True).sort_values(
            ["cosine", "latent_a"], ascending=[False, True], kind="stable"
        )
        misses = pd.concat(miss, ignore_index=True).sort_values(["best_cosine", "latent"], kind="stable")
        hits, misses = hits.iloc[offset : offset + limit], misses.iloc[offset : offset + limit]
        la = self._labels(a)
        matches = pd.DataFrame(
            {
                "sae_a": a,
                "latent_a": hits["latent_a"].to_numpy(),
                "label_a": [la.get(int(i), "") for i in hits["latent_a"]],
                "sae_b": hits["sae_b"].to_numpy(),
                "latent_b": hits["latent_b"].to_numpy(),
                "label_b": [self._labels(b).get(int(j), "") for b, j in zip(hits["sae_b"], hits["latent_b"])],
                "cosine": hits["cosine"].astype(np.float64).round(4).to_numpy(),
            }
        )
        unmatched = pd.DataFrame(
            {
                "sae": a,
                "latent": misses["latent"].to_numpy(),
                "label": [la.get(int(i), "") for i in misses["latent"]],
                "best_cosine": misses["best_cosine"].astype(np.float64).round(4).to_numpy(),
                "vs": misses["vs"].to_numpy(),
            }
        )
        total_hit = sum(p["n_matched"] for p in pairs)
        levels = []
        for s in saes:
            fvu = {int(w): v for w, v in (raw[s].get("matryoshka_fvu") or {}).items()}
            ends = self._matryoshka_widths(s) or sorted(fvu)
            for i, (start, end) in enumerate(zip([0, *ends], ends)):
                share = round(float(matched_a[start:end].mean()), 4) if s == a and end > start else None
                levels.append((s, i + 1, start, end, fvu.get(end), share))
        return CompareResult(
            metrics,
            matches,
            unmatched,
            pd.DataFrame(pairs),
            total_hit,
            sum(p["n_latents"] for p in pairs) - total_hit,
            pd.DataFrame(levels, columns=LEVEL_COLUMNS),
        )

    def _matryoshka_widths(self, name: str) -> list[int]:
        """The prefix widths of a Matryoshka SAE (cfg.json's saex.matryoshka_widths, the last one d_sae), or []."""
        p = self.ws.sae_dir(name) / "cfg.json"
        widths = json.loads(p.read_text()).get("saex", {}).get("matryoshka_widths") if p.exists() else None
        return sorted(int(w) for w in widths or [] if 0 < int(w) <= self._d_sae[name])
