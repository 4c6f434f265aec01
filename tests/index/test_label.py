"""label.py on hand-made counts: log-odds ranking, the F1-best prefix, bigrams, domains, detection scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from backend.index.label import (
    NEVER_FIRES,
    LatentEvidence,
    StatisticalLabeller,
    bigrams_around,
    detection_scores,
)

# vocab t0..t3; train token frequencies
FREQ = np.array([100.0, 10.0, 5.0, 10.0])
# latent 0: 4 firings on rare t2, 4 on common t0; latent 1: 5 on t1 and 5 on t3; latent 2 never fires
PAIRS = sp.csr_matrix(np.array([[4, 0, 4, 0], [0, 5, 0, 5], [0, 0, 0, 0]], dtype=float))


def _explain():
    ev = LatentEvidence(
        PAIRS,
        FREQ,
        [[(1, 2), (1, 2), (0, 3)], [], []],
        np.array([[0.3, 0.1], [0.0, 0.2], [0.0, 0.0]]),
        ["general", "legal"],
        lambda ids: [f"t{i}" for i in ids],
    )
    return StatisticalLabeller().explain(ev)


def test_log_odds_ranking_and_label_text():
    ex = _explain()
    n, N, a = 8, FREQ.sum(), 0.5
    lo_t2 = math.log((4 + a) / (n + a)) - math.log((5 + a) / (N + a))
    # t2 ranks first; adding t0 (F1 2*8/(105+8) = 0.14) would be worse than t2 alone (2*4/(5+8) = 0.62)
    assert ex[0].tokens == [2] and ex[0].scores == [pytest.approx(lo_t2, abs=1e-3)]
    assert ex[0].label == "'t2' (bigram: 't1t2'), mostly general (75%)"
    # equal log-odds; both tokens together: F1 2*10/(20+10) = 0.67 beats one alone (2*5/(10+10) = 0.5)
    assert (
        sorted(ex[1].tokens) == [1, 3] and ex[1].label.endswith(", mostly legal (100%)") and "bigram" not in ex[1].label
    )
    assert ex[2].label == NEVER_FIRES and ex[2].tokens == []


def test_detection_scores_by_hand():
    ex = _explain()
    # held-out: latent 0 fires 3x on t2 (4 occurrences) and 3x on t0; latent 1 fires 2x on t1, 2x on t0
    held = sp.csr_matrix(np.array([[3, 0, 3, 0], [2, 2, 0, 0], [0, 0, 0, 0]], dtype=float))
    detection_scores(ex, held, np.array([50.0, 5.0, 4.0, 5.0]))
    assert (ex[0].precision, ex[0].recall, ex[0].confidence) == pytest.approx((3 / 4, 3 / 6, 2 * 0.75 * 0.5 / 1.25))
    p1, r1 = 2 / 10, 2 / 4  # predicted on t1 + t3 = 10 held-out tokens
    assert (ex[1].precision, ex[1].recall, ex[1].confidence) == pytest.approx((p1, r1, 2 * p1 * r1 / (p1 + r1)))
    assert (ex[2].precision, ex[2].recall, ex[2].confidence) == (0.0, 0.0, 0.0)


def test_bigrams_stay_inside_a_window():
    token = np.array([5, 6, 7, 8, 9, 10])
    window = np.array([0, 0, 0, 1, 1, 1])
    out = bigrams_around(np.array([0, 0, 1]), np.array([1, 3, 5]), token, window, d_sae=2)
    assert sorted(out[0]) == [(5, 6), (6, 7), (8, 9)]  # row 3 starts window 1: no (7, 8)
    assert out[1] == [(9, 10)]  # row 5 ends the corpus: no next token
