"""Statistical latent explanations, context-aware, and their rule-based detection scores.

The explainer interface: ``Labeller.explain(LatentEvidence) -> list[Explanation]`` (one per latent). The LLM and
in-process explainers (backend/index/explain.py) write text from a latent's contexts instead; every method's
explanations are scored the same way (backend/index/score.py), so their scores compare.

StatisticalLabeller, per latent l (train split of the index corpus only). A token row r has a bigram
(prev_r, tok_r): its token and the token before it in its window (``prev = V``, "none", at a window's start).
A RULE is a union of ATOMS, each naming rows:
- a token t: the rows whose token is t (the activating token);
- "after p": the rows whose previous token is p (the pattern before the token that predicts firing);
- a bigram (p, t): the rows of that bigram.
Candidates are ranked by the smoothed log-odds of the atom among l's firings against its corpus frequency,
      lo(l, x) = log((c_lx + a) / (n_l + a)) - log((f_x + a) / (N + a)),      a = 0.5
(c_lx: firings of l on rows of atom x, n_l: firings of l, f_x: rows of x, N: rows), kept when c_lx >= max(2,
2% of n_l); the rule grows greedily, one atom at a time, while its train F1 = 2 TP / (predicted + fired) rises
(at most ``max_atoms``). The label names the atoms, then the most common n-gram around the maximum activation of
l's top contexts: "' Paris', ' London'; after ' in' (at max: ' in Paris')".

Tokens are shown readably (``show_token``): a leading space stays inside the quotes, whitespace and control
characters become visible symbols (newline ↵, tab ⇥, no-break space ⍽), never an escape such as '\\xa0'.
The domain and the corpus a latent prefers are NOT in the label: they are separate columns of the index
(``top_domain``, ``domain_share``, ``top_corpus``, ``corpus_share``), so a word search of the explanations
matches explanations, not a "mostly legal" suffix.

Detection score (``detection_scores``): on HELD-OUT rows (windows never used to build labels), predict "l
fires" iff the row is covered by the rule: precision = TP / predicted, recall = TP / fired, confidence = F1.
Hazard: a latent that never fires on held-out text scores 0.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import scipy.sparse as sp

NEVER_FIRES = "(never fires on the index corpus)"
_SHOWN = {"\n": "↵", "\r": "␍", "\t": "⇥", "\xa0": "⍽", "\u200b": "∅"}


def show_token(s: str) -> str:
    """A token's text for a label: whitespace and control characters as visible symbols, no escapes."""
    out = []
    for ch in s:
        if ch in _SHOWN:
            out.append(_SHOWN[ch])
        elif ch == " ":
            out.append(ch)
        elif ord(ch) < 32:
            out.append(chr(0x2400 + ord(ch)))  # the Unicode control pictures ␀..␟
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cs", "Cn"):
            out.append("␣" if unicodedata.category(ch).startswith("Z") else "�")
        else:
            out.append(ch)
    return "".join(out) or "∅"


def quoted(s: str) -> str:
    return f"'{show_token(s)}'"


@dataclass
class Explanation:
    label: str
    tokens: list[int]  # token atoms of the rule (token ids)
    scores: list[float] = field(default_factory=list)  # log-odds of each token atom
    after: list[int] = field(default_factory=list)  # "after p" atoms: previous-token ids
    bigrams: list[tuple[int, int]] = field(default_factory=list)  # (previous, token) atoms
    method: str = "statistical"  # statistical | concept | llm | local
    model: str = ""  # the model that wrote it (LLM methods)
    scorer: str = "rule"  # what scored it: rule (held-out tokens) | llm:<model> | local:<model> | concept
    precision: float = 0.0
    recall: float = 0.0
    confidence: float = 0.0  # detection F1
    fuzz: float = 0.0  # fuzzing balanced accuracy (score.py)


class BigramTable:
    """The rows of one split counted by bigram (prev, tok): key(p, t) = p * V + t, sorted distinct ``keys`` and their
    row counts ``freq``; per token and per previous token the row counts (``tok_freq``, ``prev_freq``)."""

    def __init__(self, keys: np.ndarray, freq: np.ndarray, V: int):
        self.V, self.keys, self.freq = V, np.asarray(keys, np.int64), np.asarray(freq, np.float64)  # (n_bg,)
        self.tok_freq = np.bincount(self.keys % V, weights=self.freq, minlength=V)
        self.prev_freq = np.bincount(self.keys // V, weights=self.freq, minlength=V + 1)
        self.n = float(self.freq.sum())

    @classmethod
    def of_rows(cls, prev: np.ndarray, tok: np.ndarray, V: int) -> BigramTable:
        keys, freq = np.unique(prev.astype(np.int64) * V + tok, return_counts=True)
        return cls(keys, freq, V)

    def pair(self, key: int) -> float:
        """Rows of the bigram ``key`` (0 when it does not occur)."""
        i = int(np.searchsorted(self.keys, key))
        return float(self.freq[i]) if i < len(self.keys) and self.keys[i] == key else 0.0


class SplitStats:
    """Counts over the rows of one split (train or held-out): every row's bigram (prev, tok), and each latent's
    firings per bigram. ``prev`` is V for a row that starts its window.

    key(p, t) = p * V + t identifies a bigram; ``fires`` is (n_latents, n_bigrams) over the split's distinct
    bigrams. The index builds one per block of latents (``from_counts``, sharing one ``BigramTable``): latent
    l of the block is row l of ``fires``."""

    def __init__(
        self,
        prev: np.ndarray,
        tok: np.ndarray,
        firings: Iterable[tuple[np.ndarray, np.ndarray]],
        d_sae: int,
        V: int,
    ):
        """prev, tok: (n,) of the split's rows; firings: (positions among those rows, latents) slices."""
        table = BigramTable.of_rows(prev, tok, V)
        inv = np.searchsorted(table.keys, prev.astype(np.int64) * V + tok)
        fires = sp.csr_matrix((d_sae, len(table.keys)), dtype=np.float64)
        for pos, lat in firings:  # slices keep the temporaries bounded
            fires = fires + sp.csr_matrix((np.ones(len(pos), np.float64), (lat, inv[pos])), shape=fires.shape)
        self._set(table, fires)

    @classmethod
    def from_counts(
        cls, table: BigramTable, latent: np.ndarray, key: np.ndarray, count: np.ndarray, n_latents: int
    ) -> SplitStats:
        """From firings already counted per (latent, bigram key): latent (m,) in [0, n_latents), key (m,) among
        ``table.keys``, count (m,)."""
        col = np.searchsorted(table.keys, key)
        fires = sp.csr_matrix(
            (np.asarray(count, np.float64), (latent, col)), shape=(n_latents, len(table.keys)), dtype=np.float64
        )
        out = cls.__new__(cls)
        out._set(table, fires)
        return out

    def _set(self, table: BigramTable, fires: sp.csr_matrix) -> None:
        self.table, self.V = table, table.V
        self.keys, self.freq, self.n = table.keys, table.freq, table.n
        self.tok_freq, self.prev_freq = table.tok_freq, table.prev_freq
        self.fires = fires
        self.n_fired = np.asarray(self.fires.sum(1)).ravel()

    def latent(self, l: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(keys, prev, tok, counts) of the bigrams latent l fires on."""
        s = slice(self.fires.indptr[l], self.fires.indptr[l + 1])
        k = self.keys[self.fires.indices[s]]
        return k, k // self.V, k % self.V, self.fires.data[s]

    def predicted(self, T: list[int], P: list[int], B: list[int]) -> float:
        """Rows covered by the rule: token in T, or previous token in P, or bigram key in B (inclusion-exclusion)."""
        n = self.tok_freq[T].sum() + self.prev_freq[P].sum()
        n -= sum(self.table.pair(p * self.V + t) for p in P for t in T)
        n += sum(self.table.pair(b) for b in B if b % self.V not in T and b // self.V not in P)
        return float(n)

    def true_pos(self, l: int, T: list[int], P: list[int], B: list[int], fired=None) -> float:
        """Firings of latent l on rows the rule covers (``fired``: ``latent(l)``, when already at hand)."""
        k, p, t, c = fired if fired is not None else self.latent(l)
        return float(c[member(t, T) | member(p, P) | member(k, B)].sum())


@dataclass
class LatentEvidence:
    """Everything a labeller may use, for all latents of one SAE (train split)."""

    train: SplitStats
    ngrams: list[list[tuple[int, ...]]]  # per latent: token-id n-grams around the max token of its top contexts
    token_str: Callable[[list[int]], list[str]]


class Labeller(Protocol):
    name: str

    def explain(self, ev: LatentEvidence) -> list[Explanation]:
        """One explanation per latent of ``ev``, in order (detection scores are filled in later). The index passes
        one block of latents at a time: latent l of the block is row l of ``ev.train`` and ``ev.ngrams[l]``."""
        ...


def member(a: np.ndarray, values: list[int]) -> np.ndarray:
    """np.isin(a, values) for the few values of a rule (a chain of == is ~10x faster than isin there)."""
    if len(values) > 8:
        return np.isin(a, values)
    out = np.zeros(a.shape, bool)
    for v in values:
        out |= a == v
    return out


def _log_odds(c: np.ndarray, n: float, f: np.ndarray, N: float, a: float) -> np.ndarray:
    return np.log((c + a) / (n + a)) - np.log((f + a) / (N + a))


class StatisticalLabeller:
    name = "statistical"

    def __init__(self, max_atoms: int = 4, alpha: float = 0.5, min_share: float = 0.02, per_kind: int = 5):
        self.max_atoms, self.alpha, self.min_share, self.per_kind = max_atoms, alpha, min_share, per_kind

    def _candidates(self, S: SplitStats, fired: tuple) -> list[tuple[str, int, float]]:
        """(kind, id, log-odds) of the strongest atoms of each kind: 't' token, 'p' previous token, 'b' bigram.
        ``fired``: ``S.latent(l)``."""
        a = self.alpha
        k, p, t, c = fired
        n = float(c.sum())
        out = []
        for kind, ids, freq in (("t", t, S.tok_freq), ("p", p, S.prev_freq), ("b", k, None)):
            u, inv = np.unique(ids, return_inverse=True)
            cu = np.bincount(inv.ravel(), weights=c)
            if kind != "t":
                cu[(u if kind == "p" else u // S.V) == S.V] = 0  # "after the window start" is no pattern
            ok = cu >= max(2.0, self.min_share * n)
            if kind == "t" and not ok.any():
                ok = cu == cu.max()  # a rare latent still names its most frequent token
            fu = S.freq[np.searchsorted(S.keys, u)] if freq is None else freq[u]
            lo = _log_odds(cu, n, fu, S.n, a)
            lo[~ok] = -np.inf
            for j in np.argsort(-lo, kind="stable")[: self.per_kind]:
                if np.isfinite(lo[j]):
                    out.append((kind, int(u[j]), float(lo[j])))
        return out

    def explain(self, ev: LatentEvidence) -> list[Explanation]:
        S = ev.train
        out = []
        for l in range(len(S.n_fired)):
            n = S.n_fired[l]
            fired = S.latent(l)
            cand = self._candidates(S, fired) if n > 0 else []
            if not cand:
                out.append(Explanation(NEVER_FIRES, []))
                continue
            rule: dict[str, list[int]] = {"t": [], "p": [], "b": []}
            chosen: list[tuple[str, int, float]] = []
            best = 0.0
            for _ in range(self.max_atoms):  # greedy: add the atom that raises train F1 most
                step = None
                for kind, i, lo in cand:
                    if (kind, i, lo) in chosen:
                        continue
                    r = {**rule, kind: rule[kind] + [i]}
                    tp = S.true_pos(l, r["t"], r["p"], r["b"], fired)
                    f1 = 2 * tp / (S.predicted(r["t"], r["p"], r["b"]) + n)
                    if f1 > best + 1e-9:
                        best, step = f1, (kind, i, lo)
                if step is None:
                    break
                chosen.append(step)
                rule[step[0]].append(step[1])
            V = S.V
            e = Explanation(
                "",
                rule["t"],
                [round(lo, 3) for kind, _, lo in chosen if kind == "t"],
                after=rule["p"],
                bigrams=[(b // V, b % V) for b in rule["b"]],
            )
            e.label = self._text(ev, l, e)
            out.append(e)
        return out

    @staticmethod
    def _text(ev: LatentEvidence, l: int, e: Explanation) -> str:
        s = ev.token_str
        parts = []
        if e.tokens:
            parts.append(", ".join(quoted(x) for x in s(e.tokens)))
        if e.after:
            parts.append("after " + ", ".join(quoted(x) for x in s(e.after)))
        if e.bigrams:
            parts.append(", ".join(quoted("".join(s([p, t]))) for p, t in e.bigrams))
        text = "; ".join(parts)
        if ev.ngrams[l]:
            grams, counts = np.unique(
                np.array([g + (-1,) * (3 - len(g)) for g in ev.ngrams[l]]), axis=0, return_counts=True
            )
            longest = np.array([(g >= 0).sum() for g in grams])
            j = int(np.lexsort((-longest, -counts))[0])  # most common, then longest
            if counts[j] >= 2:
                gram = "".join(s([int(x) for x in grams[j] if x >= 0]))
                if quoted(gram) not in text:
                    text += f" (at max: {quoted(gram)})"
        return text or NEVER_FIRES


def previous_tokens(token: np.ndarray, window: np.ndarray, none: int) -> np.ndarray:
    """(n,) the token before each row in its window (``none`` at a window's first row)."""
    prev = np.full(len(token), none, dtype=np.int64)
    same = window[1:] == window[:-1]
    prev[1:][same] = token[:-1][same]
    return prev


def ngrams_around(
    latent: np.ndarray, row: np.ndarray, token: np.ndarray, window: np.ndarray, d_sae: int
) -> list[list[tuple[int, ...]]]:
    """Per latent, the token-id n-grams around each of its top rows that stay inside one window: the bigrams
    (previous, max) and (max, next) and the trigram (previous, max, next). latent/row: the top-k (latent, row)
    pairs; token/window: per row."""
    out: list[list[tuple[int, ...]]] = [[] for _ in range(d_sae)]
    n = len(token)
    for lo, hi in ((-1, 0), (0, 1), (-1, 1)):
        a, b = row + lo, row + hi
        ok = (a >= 0) & (b < n)
        ok[ok] &= window[a[ok]] == window[b[ok]]
        cols = [token[row[ok] + d] for d in range(lo, hi + 1)]
        for l, *g in zip(latent[ok].tolist(), *(c.tolist() for c in cols)):
            out[l].append(tuple(g))
    return out


def detection_scores(expl: list[Explanation], held: SplitStats) -> None:
    """Fill precision / recall / confidence (F1) of each explanation's rule on the held-out rows, in place.
    TP_l = held-out firings of l on rows the rule covers; predicted = held-out rows it covers."""
    V = held.V
    for l, e in enumerate(expl):
        B = [p * V + t for p, t in e.bigrams]
        tp = held.true_pos(l, e.tokens, e.after, B) if held.n_fired[l] else 0.0
        pred, fired = held.predicted(e.tokens, e.after, B), held.n_fired[l]
        p = tp / pred if pred > 0 else 0.0
        r = tp / fired if fired > 0 else 0.0
        e.precision, e.recall, e.confidence = float(p), float(r), float(2 * p * r / (p + r)) if p + r > 0 else 0.0


def rule_covers(e: Explanation, prev: np.ndarray, tok: np.ndarray, V: int) -> np.ndarray:
    """(n,) bool: the rows (bigrams prev, tok) that an explanation's rule covers."""
    B = [p * V + t for p, t in e.bigrams]
    return member(tok, e.tokens) | member(prev, e.after) | member(prev.astype(np.int64) * V + tok, B)
