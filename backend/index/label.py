"""Latent explanations and their detection scores. Pluggable: any ``Labeller`` may replace the default
(an LLM explainer would take the same ``LatentEvidence`` and return the same ``Explanation`` list).

StatisticalLabeller, per latent l (train split of the index corpus only):
- candidate tokens t with c_lt >= max(2, 2% of n_l) (else the most frequent one), ranked by the
  smoothed log-odds of t among l's firings against t's corpus frequency,
      lo(l, t) = log((c_lt + a) / (n_l + a)) - log((f_t + a) / (N + a)),      a = 0.5
  (c_lt: firings of l on token t, n_l: firings of l, f_t: occurrences of t, N: tokens);
- the label names the prefix of that ranking (1..max_tokens tokens) whose rule "fires iff the token
  is one of these" has the best F1 on the train split (adding a frequent token buys recall at the
  cost of precision; the prefix length is where F1 peaks);
- the most common bigram around the max token of l's top contexts (previous+max or max+next);
- the dominant domain: the argmax of the per-domain firing rates (rates, so big corpora don't win).
Text: "' Paris', ' London' (bigram: ' in Paris'), mostly general (62%)" (tokens quoted by repr, so spaces
show; the domain is a plain word, so searching explanations for "legal" or "code" finds it).

Detection score (``detection_scores``): on HELD-OUT tokens (windows never used to build labels),
predict "l fires" iff the token is one of the label's tokens: precision = TP / predicted,
recall = TP / fired, confidence = F1. Hazard: a latent that never fires on held-out text scores 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import scipy.sparse as sp

NEVER_FIRES = "(never fires on the index corpus)"


@dataclass
class Explanation:
    label: str
    tokens: list[int]  # token ids the label names (the detection rule)
    scores: list[float] = field(default_factory=list)  # log-odds of each token
    precision: float = 0.0
    recall: float = 0.0
    confidence: float = 0.0  # detection F1 on held-out tokens


@dataclass
class LatentEvidence:
    """Everything a labeller may use, for all latents of one SAE (train split)."""

    pair_counts: sp.csr_matrix  # (d_sae, vocab) firings of each latent on each token
    token_freq: np.ndarray  # (vocab,) token occurrences
    bigrams: list[list[tuple[int, int]]]  # per latent: token-id bigrams around the max token of its top contexts
    domain_rates: np.ndarray  # (d_sae, n_domains) firing rate per domain
    domains: list[str]
    token_str: Callable[[list[int]], list[str]]


class Labeller(Protocol):
    name: str

    def explain(self, ev: LatentEvidence) -> list[Explanation]:
        """One explanation per latent, in latent order (detection scores are filled in later)."""
        ...


class StatisticalLabeller:
    name = "statistical"

    def __init__(self, max_tokens: int = 4, alpha: float = 0.5, min_share: float = 0.02):
        self.max_tokens, self.alpha, self.min_share = max_tokens, alpha, min_share

    def explain(self, ev: LatentEvidence) -> list[Explanation]:
        C = ev.pair_counts.tocsr()
        n_l = np.asarray(C.sum(1)).ravel()
        N, a = float(ev.token_freq.sum()), self.alpha
        out = []
        for l in range(C.shape[0]):
            toks, cnt = C.indices[C.indptr[l] : C.indptr[l + 1]], C.data[C.indptr[l] : C.indptr[l + 1]]
            if n_l[l] == 0 or len(toks) == 0:
                out.append(Explanation(NEVER_FIRES, []))
                continue
            ok = cnt >= max(2.0, self.min_share * n_l[l])
            if not ok.any():
                ok = cnt == cnt.max()
            t, c = toks[ok], cnt[ok]
            lo = np.log((c + a) / (n_l[l] + a)) - np.log((ev.token_freq[t] + a) / (N + a))
            order = np.argsort(-lo, kind="stable")[: self.max_tokens]
            tp, pred = np.cumsum(c[order]), np.cumsum(ev.token_freq[t[order]])
            f1 = 2 * tp / (pred + n_l[l])  # F1 = 2TP / (predicted + fired)
            m = int(f1.argmax()) + 1
            best = [int(x) for x in t[order[:m]]]
            out.append(Explanation(self._text(ev, l, best), best, [round(float(x), 3) for x in lo[order[:m]]]))
        return out

    @staticmethod
    def _text(ev: LatentEvidence, l: int, best: list[int]) -> str:
        text = ", ".join(repr(s) for s in ev.token_str(best))  # repr shows leading spaces and newlines
        if ev.bigrams[l]:
            pairs, counts = np.unique(np.array(ev.bigrams[l]), axis=0, return_counts=True)
            if counts.max() >= 2:
                top = pairs[counts.argmax()]
                text += f" (bigram: {''.join(ev.token_str([int(top[0]), int(top[1])]))!r})"
        rates = ev.domain_rates[l]
        if rates.sum() > 0:
            d = int(rates.argmax())
            text += f", mostly {ev.domains[d]} ({rates[d] / rates.sum():.0%})"
        return text


def bigrams_around(
    latent: np.ndarray, row: np.ndarray, token: np.ndarray, window: np.ndarray, d_sae: int
) -> list[list[tuple[int, int]]]:
    """Per latent, the token-id bigrams (previous, max) and (max, next) around each of its top rows,
    keeping only pairs inside one window. latent/row: the top-k (latent, row) pairs; token/window: per row."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(d_sae)]
    n = len(token)
    for lo in (row - 1, row):  # bigram (token[lo], token[lo + 1])
        ok = (lo >= 0) & (lo + 1 < n)
        ok[ok] &= window[lo[ok]] == window[lo[ok] + 1]
        for l, a, b in zip(latent[ok].tolist(), token[lo[ok]].tolist(), token[lo[ok] + 1].tolist()):
            out[l].append((a, b))
    return out


def detection_scores(expl: list[Explanation], heldout_pairs: sp.csr_matrix, heldout_freq: np.ndarray) -> None:
    """Fill precision / recall / confidence (F1) of each explanation on held-out tokens, in place.

    heldout_pairs (d_sae, vocab): held-out firings of each latent on each token; heldout_freq (vocab,):
    held-out occurrences of each token. TP_l = sum over the label's tokens of heldout_pairs[l, t].
    """
    C = heldout_pairs.tocsr()
    rows = np.repeat(np.arange(len(expl)), [len(e.tokens) for e in expl])
    cols = np.array([t for e in expl for t in e.tokens], dtype=np.int64)
    P = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=C.shape)  # the label rules as a matrix
    tp = np.asarray(C.multiply(P).sum(1)).ravel()
    predicted = P @ np.asarray(heldout_freq, dtype=np.float64)
    fired = np.asarray(C.sum(1)).ravel()
    p = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    r = np.divide(tp, fired, out=np.zeros_like(tp), where=fired > 0)
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=p + r > 0)
    for e, pi, ri, fi in zip(expl, p, r, f1):
        e.precision, e.recall, e.confidence = float(pi), float(ri), float(fi)
