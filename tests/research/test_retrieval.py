"""Dense (MiniLM + faiss) and BM25 retrieval on real corpora."""

from __future__ import annotations

import numpy as np
import pytest

from backend.config import CorpusConfig
from backend.data.corpora import load_docs
from backend.research import retrieval


@pytest.fixture(scope="module")
def pool():
    gen = []
    for n in ("news", "movie_reviews", "spdx"):
        gen += load_docs(CorpusConfig(n, max_docs=60))
    hpo = load_docs(CorpusConfig("hpo", max_docs=80))
    return [d.text[:400] for d in hpo[:8]], gen + hpo[8:]


@pytest.mark.parametrize("method,min_precision", [("dense", 0.9), ("bm25", 0.6)])
def test_retrieval_finds_the_subdomain(pool, method, min_precision):
    seeds, docs = pool
    sel = retrieval.select(seeds, [d.text[:400] for d in docs], 40, method)
    picked = [docs[i].domain for i in sel.indices]
    assert np.mean([d == "biomedical" for d in picked]) >= min_precision
    assert (np.diff(sel.scores) <= 1e-6).all()  # best first


def test_bm25_prefers_exact_term_matches():
    s = retrieval.bm25_scores(["kidney cyst"], ["a kidney cyst was found", "the cat sat", "kidney beans"])
    assert s[0] > s[2] > s[1] == 0


def test_bad_seeds():
    with pytest.raises(retrieval.RetrievalError, match="seed set is empty"):
        retrieval.select(["  "], ["text"], 3)
    with pytest.raises(retrieval.RetrievalError, match="no document of the pool matches"):
        retrieval.select(["zyxwv qqqq"], ["the cat sat on the mat"], 3, "bm25")
