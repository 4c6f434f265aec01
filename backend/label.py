"""Latent explanations and their detection scores. Pluggable: any ``Labeller`` may replace the default.

StatisticalLabeller, per latent l:
- top tokens by smoothed log-odds of firing on a token against the token's corpus frequency,
      lo(l, t) = log((c_lt + a) / (n_l + a)) - log((f_t + a) / (N + a)),
  among tokens with c_lt >= max(2, 2% of n_l) (c_lt: firings of l on token t, n_l: firings of l,
  f_t: occurrences of t, N: tokens; a = 0.5);
- the most common bigram (previous token, token) at its top-activating positions;
- the dominant corpus domain (share of firings, normalized by domain size).

Detection score: predict "l fires" on a held-out token iff the token is one of the label's tokens;
precision = TP / predicted, recall = TP / fired, F1 is the explanation's confidence. Computed from
held-out (latent, token) firing counts, never from the tokens the label was built on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import scipy.sparse as sp


@dataclass
class Explanation:
    label: str
    tokens: list[int]  # token ids the label names (used for detection)
    precision: float = 0.0
    recall: float = 0.0
    confidence: float = 0.0  # F1


@dataclass
class LatentEvidence:
    """Everything a labeller may use, for all latents of one SAE (train split)."""

    pair_counts: sp.csr_matrix  # (d_sae, vocab) firings of each latent on each token
    token_freq: np.ndarray  # (vocab,) token occurrences
    bigrams: list[list[tuple[int, int]]]  # per latent: (prev, token) at its top contexts
    domain_share: np.ndarray  # (d_sae, n_domains) firing rate per domain, row-normalized
    domains: list[str]
    token_str: Callable[[list[int]], list[str]]


class Labeller(Protocol):
    name: str

    def explain(self, ev: LatentEvidence) -> list[Explanation]: ...


class StatisticalLabeller:
    name = "statistical"

    def __init__(self, max_tokens: int = 4, alpha: float = 0.5):
        self.max_tokens, self.alpha = max_tokens, alpha

    def explain(self, ev: LatentEvidence) -> list[Explanation]:
        C = ev.pair_counts.tocsr()
        n_l = np.asarray(C.sum(1)).ravel()
        N = ev.token_freq.sum()
        a = self.alpha
        out = []
        for l in range(C.shape[0]):
            lo_i, hi_i = C.indptr[l], C.indptr[l + 1]
            toks, cnt = C.indices[lo_i:hi_i], C.data[lo_i:hi_i]
            if n_l[l] == 0 or len(toks) == 0:
                out.append(Explanation("(never fires on the index corpus)", []))
                continue
            ok = cnt >= max(2, 0.02 * n_l[l])
            if not ok.any():
                ok = cnt == cnt.max()
            t, c = toks[ok], cnt[ok]
            lo = np.log((c + a) / (n_l[l] + a)) - np.log((ev.token_freq[t] + a) / (N + a))
            best = t[np.argsort(-lo)[: self.max_tokens]].tolist()
            out.append(Explanation(self._text(ev, l, best), best))
        return out

    @staticmethod
    def _text(ev: LatentEvidence, l: int, best: list[int]) -> str:
        words = ", ".join(repr(s) for s in ev.token_str(best))
        parts = [words]
        if ev.bigrams[l]:
            pairs, counts = np.unique(np.array(ev.bigrams[l]), axis=0, return_counts=True)
            top = pairs[counts.argmax()]
            if counts.max() >= 2:
                parts.append("e.g. " + repr("".join(ev.token_str([int(top[0]), int(top[1])]))))
        share = ev.domain_share[l]
        if share.sum() > 0:
            d = int(share.argmax())
            parts.append(f"[{ev.domains[d]} {share[d]:.0%}]")
        return " · ".join(parts)


def detection_scores(expl: list[Explanation], heldout_pairs: sp.csr_matrix, heldout_freq: np.ndarray) -> None:
    """Fill precision / recall / confidence (F1) of each explanation on held-out tokens (in place)."""
    C = heldout_pairs.tocsr()
    fired = np.asarray(C.sum(1)).ravel()
    for l, e in enumerate(expl):
        if not e.tokens:
            continue
        t = np.array(e.tokens)
        tp = float(C[l, t].sum())
        predicted = float(heldout_freq[t].sum())
        p = tp / predicted if predicted else 0.0
        r = tp / fired[l] if fired[l] else 0.0
        e.precision, e.recall = p, r
        e.confidence = 2 * p * r / (p + r) if p + r else 0.0
