"""Protein and recommender workspaces through the shared pipeline: windows, activations, SAEs, evaluation,
the index with concept matches, the Backend facade (feature pages, search, compare) and outcome steering."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from backend.config import ConfigError, CorpusConfig, WorkspaceConfig
from backend.data.corpora import CorpusError
from backend.serve.service import Backend, BackendError


def _best_concept_latent(b: Backend, sae: str) -> tuple[int, dict]:
    rows = b.index.df(
        "SELECT latent, concept, confidence FROM concepts WHERE sae = ? ORDER BY confidence DESC LIMIT 1", [sae]
    )
    assert len(rows), f"no concept matches for {sae}"
    return int(rows["latent"][0]), rows.iloc[0].to_dict()


# ---- protein ---------------------------------------------------------------------------------
def test_protein_windows_keep_residue_offsets_and_annotations(protein_ws):
    w = protein_ws.windows()
    assert set(w["corpus"]) == {"pfam", "sumo"} and protein_ws.modality == "protein"
    ann = pd.read_parquet(protein_ws.path / "corpora" / "annotations.parquet")
    assert {"pfam:", "sumo:"} <= {c[:5] for c in ann["concept"]}
    # a window's residues are its protein's residues from `start` on
    from backend.modalities.protein import read_sumo

    docs = {d.doc_id: d.text for d in read_sumo(60)[0]}
    adapter = protein_ws.adapter(verbose=False)
    row = w[w["corpus"] == "sumo"].iloc[0]
    seq = "".join(adapter.token_strings(list(row["token_ids"])))
    assert docs[row["doc_id"]][row["start"] : row["start"] + len(seq)] == seq


def test_protein_metrics_use_the_classifier_not_next_token_ce(protein_ws):
    m = json.loads((protein_ws.sae_dir("topk") / "metrics.json").read_text())
    assert m["fvu"] < 0.6 and 0 <= m["classifier_kl"] < 0.1 and 0.5 <= m["classifier_agree"] <= 1
    assert "ce_recovered" not in m and "absorption_rate" not in m


def test_protein_concepts_are_indexed_and_checked_on_held_out_residues(pb):
    c = pb.index.df("SELECT * FROM concepts WHERE sae = 'topk'")
    assert set(c["method"]) <= {"f1", "top"} and (c["q_value"] <= 0.05).all()
    assert ((c["confidence"] >= 0) & (c["confidence"] <= 1)).all()
    latent, best = _best_concept_latent(pb, "topk")
    assert best["confidence"] > 0.2  # a latent that predicts a Pfam domain / SUMO site on held-out residues
    fv = pb.feature("topk", latent)
    assert fv.concepts and fv.concepts[0]["concept"] == best["concept"]
    assert fv.label == best["concept"]  # the concept beat the token label on held-out data
    # the top contexts carry the annotation spans of their residues, inside the context
    spans = [s for ctx in fv.top_contexts for s in ctx.spans]
    assert any(s[2] == best["concept"] for s in spans)
    assert all(0 <= a < b <= len(ctx.tokens) for ctx in fv.top_contexts for a, b, _ in ctx.spans)


def test_protein_search_and_compare_work_unchanged(pb):
    seq = pb.example_input()
    assert set(seq) <= set("ACDEFGHIKLMNPQRSTVWYXBZUO") and len(seq) > 20
    r = pb.search_text("topk", seq)
    assert len(r.tokens) == len(seq) and len(r.top_latents) > 0
    cmp = pb.compare(["topk", "relu"])
    assert len(cmp.metrics) == 2


def test_protein_steering_changes_the_classifier_and_rejects_bad_letters(pb):
    seq = pb.example_input()
    r0 = pb.steer_outcome("topk", seq, [[0, "scale", 1.0]])  # a no-op edit: no change
    assert r0["kind"] == "classifier" and r0["before"] == pytest.approx(r0["after"], abs=1e-5)
    assert sum(r0["before"]) == pytest.approx(1.0, abs=1e-5)
    latent = int(pb.latents("topk", sort_by="density", limit=1)["latent"][0])
    r = pb.steer_outcome("topk", seq, [[latent, "clamp", 50.0]])
    assert sum(r["after"]) == pytest.approx(1.0, abs=1e-5) and max(abs(d) for d in r["delta"]) > 1e-4
    with pytest.raises(BackendError, match="amino-acid alphabet"):
        pb.steer_outcome("topk", "MKV1J", [])


def test_bad_protein_corpora_are_one_clear_error(tmp_path):
    from backend.modalities.protein import AnnotationError, protein_corpus

    fa = tmp_path / "p.fasta"
    fa.write_text(">p1\nMKVLAAGIVG\n>p2\nMKTAYIAKQR\n")
    (tmp_path / "bad.csv").write_text("protein,from,to\np1,0,3\n")
    with pytest.raises(AnnotationError, match="missing column"):
        protein_corpus(CorpusConfig(name="mine", path=str(fa), annotations=str(tmp_path / "bad.csv")))
    (tmp_path / "ok.csv").write_text("protein_id,start,end,concept\np1,0,3,motif:x\n")
    docs, ann = protein_corpus(CorpusConfig(name="mine", path=str(fa), annotations=str(tmp_path / "ok.csv")))
    assert [d.doc_id for d in docs] == ["p1", "p2"] and ann["concept"].tolist() == ["motif:x"]
    fa.write_text(">p1\nMKV*LA1\n")
    with pytest.raises(ValueError, match="sequence p1"):
        protein_corpus(CorpusConfig(name="mine", path=str(fa)))
    with pytest.raises(CorpusError, match="unknown protein corpus"):
        protein_corpus(CorpusConfig(name="nope"))


# ---- recommender -------------------------------------------------------------------------------
def test_recsys_metrics_include_next_item_ce(recsys_ws):
    m = json.loads((recsys_ws.sae_dir("topk") / "metrics.json").read_text())
    assert m["fvu"] < 0.5 and 0.5 < m["ce_recovered"] <= 1.05 and "absorption_rate" not in m


def test_recsys_concepts_and_feature_pages(rb):
    c = rb.index.df("SELECT * FROM concepts WHERE sae = 'topk'")
    kinds = {x.split(":")[0] for x in c["concept"]}
    assert "genre" in kinds and kinds <= {"genre", "decade", "pop", "age", "gender", "occupation"}
    latent, best = _best_concept_latent(rb, "topk")
    fv = rb.feature("topk", latent)
    assert fv.concepts[0]["concept"] == best["concept"]
    assert fv.top_contexts and all(not ctx.spans for ctx in fv.top_contexts)  # titles, no residue spans
    assert fv.logits_top  # the item-embedding "logit lens": items this direction promotes


def test_recsys_ablation_changes_recommendations_and_rejects_unknown_items(rb):
    hist = rb.example_input()
    r0 = rb.steer_outcome("topk", hist, [[0, "scale", 1.0]], k=10)  # a no-op edit
    assert r0["kind"] == "recommendations" and r0["before_ids"] == r0["after_ids"] and len(r0["before"]) == 10
    z = rb.search_text("topk", hist)
    top = [int(x) for x in z.top_latents["latent"][:3]]
    r = rb.steer_outcome("topk", hist, [[top[0], "clamp", 40.0]], k=10)
    assert r["overlap"] < 10 and r["tv_distance"] >= 0
    assert sum(r["genre_mix_after"].values()) == pytest.approx(1.0)
    with pytest.raises(BackendError, match="unknown item id"):
        rb.steer_outcome("topk", "1 2 999999", [])


def test_recsys_map_colours_latents_by_their_concept_label(rb):
    from explorer.render import map_figure

    df = rb.feature_map("topk")
    labelled = df[~df["concept"].isin(["(token label)", "other concept"])]
    assert len(labelled) and (labelled["concept"] == labelled["label"]).all()
    assert df["concept"].nunique() <= 9  # 7 concepts + "other concept" + "(token label)"
    fig = map_figure(df, "concept")
    assert {t.name for t in fig.data} == set(df["concept"])


def test_a_genre_latent_pushes_its_genre(rb):
    """The check behind a genre label: clamping the genre's best latent raises the genre's share of the top-10."""
    from backend.modalities.recsys import concept_steering_effect

    best = rb.index.df(
        "SELECT concept, latent FROM concepts WHERE sae = 'topk' AND concept LIKE 'genre:%' "
        "ORDER BY confidence DESC LIMIT 1"
    )
    genre, latent = best["concept"][0].split(":", 1)[1], int(best["latent"][0])
    hist = [list(t)[-20:] for t in rb.windows().groupby("doc_id")["token_ids"].last().iloc[:30]]
    e = concept_steering_effect(rb.adapter(), rb.sae("topk"), rb.ws.config.activations.site, hist, latent, genre)
    assert e["users"] == 30 and e["share_after"] > e["share_before"] and e["users_gained"] >= 0.5


def test_recsys_corpus_must_be_the_catalogue():
    cfg = WorkspaceConfig.from_dict(
        {"name": "r", "model": {"id": "sasrec-ml100k", "kind": "recsys"}, "corpora": [{"name": "wikipedia"}]}
    )
    from backend.workspace import Workspace

    ws = Workspace("/nonexistent", cfg)
    with pytest.raises(CorpusError, match="ml-100k"):
        ws.kind.windows(ws, None, False)
    with pytest.raises(ConfigError, match="model.kind"):
        WorkspaceConfig.from_dict({"name": "r", "model": {"kind": "video"}, "corpora": [{"name": "x"}]})


def test_text_workspaces_have_no_outcome_steering(tiny_ws):
    b = Backend(tiny_ws.path)
    try:
        assert b.modality == "text" and b.feature(b.sae_names[0], 0).concepts == []
        with pytest.raises(BackendError, match="text workspace"):
            b.steer_outcome(b.sae_names[0], "hello", [])
    finally:
        b.close()
