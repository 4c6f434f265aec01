"""Search by meaning (issue 14): latents as MiniLM vectors of their explanation and top contexts."""

from __future__ import annotations

import numpy as np
import pytest

from backend.index.meaning import MeaningIndex, label_words, latent_vectors, meaning_path, snippet


def fake_embed(texts):
    """Deterministic unit vectors per distinct text (a stand-in for MiniLM in mechanics tests)."""
    out = []
    for t in texts:
        v = np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8)
        out.append(v / np.linalg.norm(v))
    return np.array(out, np.float32)


def test_label_words_drop_the_bookkeeping():
    assert label_words("' Paris', ' London' (bigram: ' in Paris'), mostly general (62%)") == "Paris London in Paris"
    assert label_words("(never fires on the index corpus)") == ""


def test_snippet_is_the_words_before_and_just_after_the_maximum():
    toks = [f"w{i} " for i in range(30)]
    assert snippet(toks, 15) == "".join(toks[7:19]).strip() and snippet(toks, 0) == "".join(toks[0:4]).strip()


def test_vectors_weight_the_label_and_the_contexts_by_activation():
    e = dict(zip(["a", "s1", "s2"], fake_embed(["a", "s1", "s2"])))
    v = latent_vectors(["a", "a", ""], [[], [("s1", 3.0), ("s2", 1.0)], [("s1", 2.0)]], fake_embed)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.allclose(v[0], e["a"], atol=1e-5)  # no contexts: the label alone
    want = 0.5 * e["a"] + 0.5 * (0.75 * e["s1"] + 0.25 * e["s2"])
    assert np.allclose(v[1], want / np.linalg.norm(want), atol=1e-5)
    assert np.allclose(v[2], e["s1"], atol=1e-5)  # no label words: the contexts alone


def test_the_index_finds_the_nearest_latent_overall_and_within_one_sae(tmp_path):
    rng = np.random.default_rng(0)
    for sae, n in (("a", 5), ("b", 7)):
        vec = rng.normal(size=(n, 8)).astype(np.float32)
        vec /= np.linalg.norm(vec, axis=1, keepdims=True)
        meaning_path(tmp_path, sae).parent.mkdir(exist_ok=True)
        np.savez(
            meaning_path(tmp_path, sae),
            latents=np.arange(n) + 100,
            vectors=vec.astype(np.float16),
            fingerprint=np.array("x"),
        )
    idx = MeaningIndex(tmp_path, ["a", "b", "c"])
    assert len(idx) == 12 and idx.missing == ["c"]
    q = np.load(meaning_path(tmp_path, "b"))["vectors"][3].astype(np.float32)
    best = idx.search(q, None, 3)
    assert best[0][:2] == ("b", 103) and best[0][2] == pytest.approx(1.0, abs=1e-2)
    only_a = idx.search(q, "a", 10)
    assert len(only_a) == 5 and {s for s, _, _ in only_a} == {"a"}
    assert [c for _, _, c in only_a] == sorted((c for _, _, c in only_a), reverse=True)
    assert idx.search(q, "c", 3) == []
