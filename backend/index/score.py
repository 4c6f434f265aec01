"""Scoring explanations like delphi (Paulo et al. 2024, "Automatically interpreting millions of features"):
one scorer for every explanation method, so that a statistical, an LLM and a local-model explanation of the same
latent get comparable numbers.

The examples are HELD-OUT contexts (windows never used to write explanations; the index stores them per latent
as kinds ``hpos``, contexts centred on a firing spread over activation bands, and ``hneg``, centred on a token
where the latent does not fire): an ``Example`` is its tokens and the latent's activation on each.

- Detection: from the explanation alone, classify each context as "the latent fires in it" or not. The truth
  is max(acts) > 0. Score: F1 of the "fires" class (with its precision and recall).
- Fuzzing: each firing context is shown with some tokens marked: half of them with the tokens that fire
  (correct), half with as many tokens that do not fire (wrong); from the explanation, say whether the marks
  are right. Score: balanced accuracy = (P(yes | correct) + P(no | wrong)) / 2; 0.5 is chance.

Who classifies: an LLM (``detect_prompt`` / ``fuzz_prompt``, answers parsed by ``parse_bits``), or, without an
LLM, the RULE a statistical explanation implies (backend/index/label.py: a token fires iff the rule covers its
bigram): detection then is label.detection_scores on every held-out token and fuzzing ``rule_fuzz`` here.
Hazard: an answer that cannot be parsed counts as "no" for each of its examples (a broken scorer scores 0,
never by luck).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from backend.index.label import Explanation, rule_covers, show_token

MARK_OPEN, MARK_CLOSE = "<<", ">>"


@dataclass
class Example:
    tokens: list[str]
    acts: list[float]
    ids: list[int] | None = None  # token ids (at build time, for the rule scorer)
    prev0: int = -1  # the id of the token before tokens[0] (V when the context starts its window)

    @property
    def fires(self) -> bool:
        return max(self.acts, default=0.0) > 0


@dataclass
class FuzzItem:
    example: Example
    marked: list[int]  # positions shown between << >>
    correct: bool  # the marked tokens are the ones that fire


def marked_text(tokens: list[str], marked: list[int] | set[int]) -> str:
    """The context as one line, each run of consecutive marked tokens between << and >>."""
    m, out = set(marked), []
    for i, t in enumerate(tokens):
        s = show_token(t).replace(MARK_OPEN, "< <").replace(MARK_CLOSE, "> >")
        if i in m and i - 1 not in m:
            s = s[: len(s) - len(s.lstrip())] + MARK_OPEN + s.lstrip()  # the mark after the token's leading space
        if i in m and i + 1 not in m:
            s += MARK_CLOSE
        out.append(s)
    return "".join(out).strip()


def fuzz_items(positives: list[Example], seed: int) -> list[FuzzItem]:
    """Alternately correct and wrong markings of the firing contexts: a wrong one marks as many tokens that do
    not fire (a context with none is left out)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, ex in enumerate(positives):
        acts = np.asarray(ex.acts)
        on, off = np.nonzero(acts > 0)[0], np.nonzero(acts <= 0)[0]
        if len(on) == 0:
            continue
        if i % 2 == 0 or len(off) == 0:
            out.append(FuzzItem(ex, on.tolist(), True))
        else:
            out.append(FuzzItem(ex, sorted(rng.choice(off, min(len(on), len(off)), replace=False).tolist()), False))
    return out


def detection_items(positives: list[Example], negatives: list[Example], seed: int) -> list[Example]:
    """The firing and non-firing contexts in one seeded order (batches mix both)."""
    items = positives + negatives
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


def detection_metrics(pred: list[int], truth: list[bool]) -> tuple[float, float, float]:
    """(precision, recall, F1) of the "fires" class."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = float((p & t).sum())
    prec = tp / p.sum() if p.sum() else 0.0
    rec = tp / t.sum() if t.sum() else 0.0
    return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec else 0.0)


def balanced_accuracy(pred: list[int], truth: list[bool]) -> float:
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    rates = [float((p[t] == 1).mean()) if t.any() else None, float((p[~t] == 0).mean()) if (~t).any() else None]
    rates = [r for r in rates if r is not None]
    return sum(rates) / len(rates) if rates else 0.0


def rule_fuzz(e: Explanation, items: list[FuzzItem], V: int) -> float:
    """Fuzzing by the rule of a statistical explanation: the marks are judged right iff the rule covers at least
    half of the marked tokens (items need token ids)."""
    if not items or not (e.tokens or e.after or e.bigrams):
        return 0.0
    pred = []
    for it in items:
        ids = np.asarray(it.example.ids, np.int64)
        prev = np.r_[it.example.prev0, ids[:-1]]
        pred.append(int(rule_covers(e, prev[it.marked], ids[it.marked], V).mean() >= 0.5))
    return balanced_accuracy(pred, [it.correct for it in items])


# ---- the LLM scorer's prompts ----------------------------------------------------------------------------
DETECT_SYSTEM = (
    "You are a meticulous linguist. A feature of a language model has an explanation, such as 'male pronouns' or "
    "'text with negative sentiment'. You will see numbered text examples. For each example, decide whether the "
    "feature is present anywhere in it: 1 if the example contains what the explanation describes, 0 if not. "
    "Reply with a Python list of 0s and 1s, one per example, and nothing else."
)
FUZZ_SYSTEM = (
    "You are a meticulous linguist. A feature of a language model has an explanation. You will see numbered text "
    f"examples in which some words are marked like {MARK_OPEN}this{MARK_CLOSE}. For each example, decide whether the "
    "marked words are what the explanation describes: 1 if they are, 0 if they are not. "
    "Reply with a Python list of 0s and 1s, one per example, and nothing else."
)


def _user(explanation: str, lines: list[str]) -> str:
    body = "\n".join(f"Example {i + 1}: {s}" for i, s in enumerate(lines))
    return f"Explanation: {explanation}\n\n{body}\n\nAnswer with a list of {len(lines)} numbers (0 or 1)."


# one worked example before the real question (delphi shows a few): small models copy the answer's form
DEMO_EXPLANATION = 'the word "not" after an auxiliary or modal verb'
DETECT_DEMO = [
    {
        "role": "user",
        "content": _user(DEMO_EXPLANATION, ["You may not use it", "The cat sat on the mat", "We could not go"]),
    },
    {"role": "assistant", "content": "[1, 0, 1]"},
]
FUZZ_DEMO = [
    {"role": "user", "content": _user(DEMO_EXPLANATION, ["You may <<not>> use it", "The <<cat>> sat on the mat"])},
    {"role": "assistant", "content": "[1, 0]"},
]


def detect_prompt(explanation: str, examples: list[Example]) -> list[dict[str, str]]:
    lines = [marked_text(ex.tokens, []) for ex in examples]
    user = {"role": "user", "content": _user(explanation, lines)}
    return [{"role": "system", "content": DETECT_SYSTEM}, *DETECT_DEMO, user]


def fuzz_prompt(explanation: str, items: list[FuzzItem]) -> list[dict[str, str]]:
    lines = [marked_text(it.example.tokens, it.marked) for it in items]
    return [
        {"role": "system", "content": FUZZ_SYSTEM},
        *FUZZ_DEMO,
        {"role": "user", "content": _user(explanation, lines)},
    ]


def parse_bits(text: str, n: int) -> list[int]:
    """n answers 0/1 from a reply: the first [...] list holding 0s and 1s, else the first 0s and 1s standing alone;
    missing answers count as 0."""
    bits: list[int] = []
    for lst in re.findall(r"\[([^\[\]]*)\]", text or ""):
        bits = [int(b) for b in re.findall(r"(?<![\d.])[01](?![\d.])", lst)]
        if bits:
            break
    if not bits:
        bits = [int(b) for b in re.findall(r"(?<![\d.])[01](?![\d.])", text or "")]
    return (bits + [0] * n)[:n]


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]
