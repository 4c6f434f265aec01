"""store.py: atomic build and swap, sorted per-latent reads, parameters only, read-only serving."""

from __future__ import annotations

import threading

import duckdb
import pandas as pd
import pyarrow as pa
import pytest

from backend.index.store import TABLES, IndexReader, IndexUnreadable, IndexWriter, LabelCache, rewrite_labels


def _latents(labels: list[str], sae: str = "s") -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame(
        {
            "sae": sae,
            "latent": range(n),
            "density": [0.1 * (i + 1) for i in range(n)],
            "mean_act": 1.0,
            "max_act": 3.0,
            "hist_edges": [[0.0, 1.5, 3.0]] * n,
            "hist_counts": [[2, 1]] * n,
            "label": labels,
            "confidence": 0.5,
            "precision": 0.5,
            "recall": 0.5,
            "top_domain": ["general", "legal"] * (n // 2) + ["general"] * (n % 2),
            "top_tokens": "[]",
            "top_token_scores": "[]",
            "logit_top": "[]",
            "logit_bottom": "[]",
            "domain_rates": "{}",
        }
    )


def _contexts(latent: int, n: int, sae: str = "s") -> pa.Table:
    # written deliberately out of order: the writer sorts by (sae, latent, kind, rank)
    ranks = list(range(n))[::-1]
    return pa.table(
        {
            "sae": [sae] * n,
            "latent": [latent] * n,
            "kind": ["top"] * n,
            "rank": ranks,
            "window_row": ranks,
            "win_offset": ranks,
            "tokens": [["a", "b"]] * n,
            "acts": [[0.0, float(10 - r)] for r in ranks],
            "focus": [1] * n,
            "source": ["doc"] * n,
            "domain": ["general"] * n,
            "max_act": [float(10 - r) for r in ranks],
        }
    )


def test_round_trip_sorted_contexts_and_atomic_swap(tmp_path):
    path = tmp_path / "index.duckdb"
    with IndexWriter(path) as w:
        w.add("latents", _latents(["x", "y", "z"]))
        for j in (2, 0, 1):
            w.add("contexts", _contexts(j, 4))
    r = IndexReader(path)
    ctx = r.contexts("s", 1)
    assert [c["rank"] for c in ctx] == [0, 1, 2, 3] and [c["max_act"] for c in ctx] == [10, 9, 8, 7]
    assert ctx[0]["tokens"] == ["a", "b"] and ctx[0]["acts"] == [0.0, 10.0]
    assert r.latent("s", 2)["label"] == "z" and r.latent("s", 9) is None
    assert r.domains() == ["general", "legal"]
    # rebuild while a reader holds the old file: the swap is atomic, the old reader keeps its snapshot
    with IndexWriter(path) as w:
        w.add("latents", _latents(["new"]))
    assert r.latent("s", 2)["label"] == "z"
    r.close()  # DuckDB shares one instance per path in a process: reopen only after closing the old reader
    r2 = IndexReader(path)
    assert r2.latent("s", 0)["label"] == "new" and r2.latent("s", 2) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.duckdb"]  # no staging files left


def test_interrupted_build_leaves_the_old_index(tmp_path):
    path = tmp_path / "index.duckdb"
    with IndexWriter(path) as w:
        w.add("latents", _latents(["kept"]))
    with pytest.raises(RuntimeError, match="interrupted"), IndexWriter(path) as w:
        w.add("latents", _latents(["half"]))
        raise RuntimeError("interrupted")
    assert IndexReader(path).latent("s", 0)["label"] == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.duckdb"]
    with pytest.raises(KeyError), IndexWriter(tmp_path / "other.duckdb") as w:  # a frame lacking columns
        w.add("latents", pd.DataFrame({"sae": ["s"]}))
    assert not (tmp_path / "other.duckdb").exists()


def test_sql_looking_values_are_data_and_serving_is_read_only(tmp_path):
    path = tmp_path / "index.duckdb"
    evil = "a'; DROP TABLE latents; --"
    with IndexWriter(path) as w:
        w.add("latents", _latents([evil, "100% sure_thing"]))
    r = IndexReader(path)
    assert r.latents("s", "density", True, "", 0.0, "'; DROP", 10, 0)["label"].tolist() == [evil]
    assert r.search_labels("100%", "", 10)["latent"].tolist() == [1]  # % and _ match literally
    assert r.search_labels("a%s", "", 10).empty and r.search_labels("sure_", "s", 10)["latent"].tolist() == [1]
    assert r.latents("s", "latent", False, "legal", 0.0, "", 10, 0)["latent"].tolist() == [1]
    with pytest.raises(duckdb.Error):
        r.con.execute("CREATE TABLE t (a INT)")


def test_a_cursor_per_thread(tmp_path):
    path = tmp_path / "index.duckdb"
    with IndexWriter(path) as w:
        w.add("latents", _latents([f"l{i}" for i in range(50)]))
    r = IndexReader(path)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(30):
                assert r.latent("s", (i + j) % 50)["label"] == f"l{(i + j) % 50}"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert set(TABLES) == {"saes", "latents", "contexts", "map", "concepts", "explanations"}


def _explanation(latent: int, label: str, method: str = "statistical", scorer: str = "rule", det: float = 0.5):
    return {"sae": "s", "latent": latent, "method": method, "model": "", "label": label, "scorer": scorer}, det


def _expl_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(
        [{**r, "detection": d, "precision": d, "recall": d, "fuzz": 0.5} for r, d in rows],
        columns=TABLES["explanations"],
    )


def test_relabelling_replaces_some_labels_and_their_explanations_atomically(tmp_path):
    path = tmp_path / "index.duckdb"
    with IndexWriter(path) as w:
        w.add("latents", _latents(["a", "b", "c"]))  # an index written before the method/fuzz columns
        w.add("contexts", _contexts(1, 3))
        w.add("explanations", _expl_frame([_explanation(i, x) for i, x in enumerate("abc")]))
    old = IndexReader(path)
    labels = pd.DataFrame(
        {
            "sae": ["s"],
            "latent": [1],
            "label": ["cats"],
            "confidence": [0.9],
            "precision": [0.8],
            "recall": [1.0],
            "fuzz": [0.75],
            "method": ["llm"],
            "scorer": ["llm:m"],
        }
    )
    expl = _expl_frame([_explanation(1, "b", scorer="llm:m", det=0.4), _explanation(1, "cats", "llm", "llm:m", 0.9)])
    rewrite_labels(path, labels, expl)
    r = IndexReader(path)
    row = r.latent("s", 1)
    assert (row["label"], row["confidence"], row["fuzz"], row["method"], row["scorer"]) == (
        "cats",
        0.9,
        0.75,
        "llm",
        "llm:m",
    )
    assert [r.latent("s", i)["label"] for i in (0, 2)] == ["a", "c"] and r.latent("s", 0)["method"] is None
    assert r.explanations("s", 1)["label"].tolist() == ["cats", "b"]  # best detection first; the old row replaced
    assert r.explanations("s", 0)["label"].tolist() == ["a"] and len(r.contexts("s", 1)) == 3
    assert old.latent("s", 1)["label"] == "b"  # a reader opened before keeps the old file


def test_a_domain_is_a_field_a_word_search_matches_not_words_of_the_label(tmp_path):
    path = tmp_path / "index.duckdb"
    lat = _latents(["' the'", "' the'", "legal notice", "' of'"]).assign(
        top_domain=["legal", "legal", "general", "code"],
        domain_share=[0.9, 0.3, 0.4, 0.8],
        top_corpus=["spdx", "spdx", "news", "python_stdlib"],
        corpus_share=[0.9, 0.3, 0.4, 0.7],
    )
    with IndexWriter(path) as w:
        w.add("latents", lat)
    r = IndexReader(path)
    assert sorted(r.search_labels("legal", "", 10)["latent"]) == [0, 2]  # specific to legal, or "legal" in the label
    assert sorted(r.search_labels("LEGAL", "s", 10)["latent"]) == [0, 2]
    assert r.search_labels("python_stdlib", "", 10)["latent"].tolist() == [3]  # a corpus too
    assert r.search_labels("the", "", 10)["latent"].tolist() == [1, 0]  # label words, most confident first


def test_the_label_cache_keeps_replies_by_sae_latent_prompt_and_model(tmp_path):
    c = LabelCache(tmp_path / "label_cache.duckdb")
    c.put("s", 3, "h1", "llm:m", "explain", "cats", 100, 5)
    c.put("s", 3, "h1", "llm:other", "explain", "dogs", 100, 5)
    c.put("s", 3, "h1", "llm:m", "explain", "cats!", 100, 6)  # the same key: replaced
    c.close()
    again = LabelCache(tmp_path / "label_cache.duckdb")
    assert again.get("s", "llm:m") == {(3, "h1"): "cats!"} and again.get("t", "llm:m") == {}
    again.close()
    (tmp_path / "bad.duckdb").write_text("not a database")
    with pytest.raises(IndexUnreadable, match=r"the label cache .*bad.duckdb cannot be used .*: delete it"):
        LabelCache(tmp_path / "bad.duckdb")
