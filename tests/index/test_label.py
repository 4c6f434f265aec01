"""label.py on hand-made firings: token, "after" and bigram atoms, the readable label text, n-grams at the maximum,
detection scores on held-out rows."""

from __future__ import annotations

import numpy as np
import pytest

from backend.index.label import (
    NEVER_FIRES,
    Explanation,
    LatentEvidence,
    SplitStats,
    StatisticalLabeller,
    detection_scores,
    ngrams_around,
    previous_tokens,
    show_token,
)

V = 8  # tokens t0..t7


def _split(seed: int, n: int = 2000):
    """Random rows in windows of 20; latent 0 fires on t2, latent 1 on the token after t3, latent 2 on t4 only
    after t1, latent 3 never."""
    tok = np.random.default_rng(seed).integers(0, V, n)
    window = np.arange(n) // 20
    prev = previous_tokens(tok, window, V)
    rules = [tok == 2, prev == 3, (tok == 4) & (prev == 1), np.zeros(n, bool)]
    pos = np.concatenate([np.nonzero(r)[0] for r in rules])
    lat = np.concatenate([np.full(r.sum(), l) for l, r in enumerate(rules)])
    return tok, window, prev, SplitStats(prev, tok, [(pos, lat)], len(rules), V)


def _names(ids):
    return [f"t{i}" for i in ids]


def _explain():
    tok, window, prev, S = _split(0)
    tops = [np.nonzero(tok == 2)[0][:5], np.nonzero(prev == 3)[0][:5]]  # latent 0's and 1's max rows
    rows = np.concatenate(tops)
    ev = LatentEvidence(S, ngrams_around(np.repeat([0, 1], 5), rows, tok, window, 4), _names)
    return StatisticalLabeller().explain(ev)


def test_the_rule_names_the_token_the_pattern_before_it_or_the_bigram():
    ex = _explain()
    assert ex[0].tokens == [2] and ex[0].after == [] and ex[0].label.startswith("'t2'")
    assert ex[1].tokens == [] and ex[1].after == [3] and ex[1].label.startswith("after 't3'")
    assert ex[2].bigrams == [(1, 4)] and ex[2].label == "'t1t4'"  # neither t4 nor "after t1" alone
    assert ex[3].label == NEVER_FIRES and ex[3].tokens == []


def test_the_label_has_no_domain_and_the_n_gram_at_the_max():
    ex = _explain()
    assert "mostly" not in ex[0].label and "%" not in ex[0].label
    assert "(at max: '" in ex[1].label  # 5 top rows after t3: their trigrams/bigrams repeat around the max


def test_detection_scores_on_held_out_rows():
    ex = _explain()
    _, _, _, held = _split(1)
    detection_scores(ex, held)
    for e in ex[:3]:  # the planted rules generalize exactly
        assert (e.precision, e.recall, e.confidence) == pytest.approx((1.0, 1.0, 1.0))
    assert (ex[3].precision, ex[3].recall, ex[3].confidence) == (0.0, 0.0, 0.0)
    # a rule too broad: t2 or t5 predicts twice the rows latent 0 fires on
    broad = [Explanation("x", [2, 5]), *ex[1:]]
    detection_scores(broad, held)
    n2, n5 = held.tok_freq[2], held.tok_freq[5]
    p = n2 / (n2 + n5)
    assert (broad[0].precision, broad[0].recall) == pytest.approx((p, 1.0))
    assert broad[0].confidence == pytest.approx(2 * p / (p + 1))


@pytest.mark.parametrize(
    "raw, shown",
    [(" Paris", " Paris"), ("\xa0", "⍽"), ("a\nb", "a↵b"), ("\t", "⇥"), ("\x07", "␇"), ("", "∅"), ("\u2003x", "␣x")],
)
def test_tokens_are_shown_without_escapes(raw, shown):
    assert show_token(raw) == shown and "\\" not in show_token(raw)


def test_labels_of_whitespace_tokens_have_no_escapes():
    tok = np.array([0, 1, 0, 1, 0, 1, 2, 2])
    window = np.zeros(len(tok), int)
    prev = previous_tokens(tok, window, 3)
    S = SplitStats(prev, tok, [(np.array([1, 3, 5]), np.zeros(3, int))], 1, 3)
    ev = LatentEvidence(S, [[]], lambda ids: [["x", "\xa0", "\n"][i] for i in ids])
    (e,) = StatisticalLabeller().explain(ev)
    assert e.label == "'⍽'" and "\\x" not in e.label


def test_n_grams_stay_inside_a_window():
    token = np.array([5, 6, 7, 8, 9, 10])
    window = np.array([0, 0, 0, 1, 1, 1])
    out = ngrams_around(np.array([0, 0, 1]), np.array([1, 3, 5]), token, window, d_sae=2)
    assert sorted(out[0]) == [(5, 6), (5, 6, 7), (6, 7), (8, 9)]  # row 3 starts window 1: nothing before it
    assert out[1] == [(9, 10)]  # row 5 ends the corpus: no next token
