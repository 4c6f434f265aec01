"""Recommendation workspaces: MovieLens-100k, a SASRec trained here (a few epochs), the adapter,
RecSAE-style concept confidence, and latent ablation of top-10 lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.adapters.base import ModelAdapter
from backend.adapters.recsys import RecsysAdapter, SASRec
from backend.config import ModelConfig
from backend.index.concepts import assign_concepts, concept_confidence, top_activation_enrichment
from backend.sae.steering import Edit
from tests.stand_ins import ReluSae

STAR_WARS = "50 181 172 174"  # Star Wars, Return of the Jedi, Empire Strikes Back, Raiders


@pytest.fixture(scope="module")
def data():
    from backend.modalities.recsys import load_ml100k

    return load_ml100k()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SASRec trained for 5 epochs (~15 s on 2 cores) into a temp folder, with its metrics."""
    from backend.modalities.recsys import train_recommender

    folder = tmp_path_factory.mktemp("sasrec")
    metrics = train_recommender(folder, epochs=5, verbose=False)
    return folder, metrics


@pytest.fixture(scope="module")
def rec(trained) -> RecsysAdapter:
    from backend.adapters.recsys import load_recsys

    return load_recsys(ModelConfig(id=str(trained[0]), kind="recsys", device="cpu"), verbose=False)


def test_movielens_counts(data):
    assert len(data.inter) == 100_000 and len(data.users) == 943 and len(data.items) == 1682
    assert data.inter["user"].nunique() == 943 and data.inter["item"].nunique() == 1682
    seqs = data.sequences()
    ts = data.inter[data.inter.user == "1"]["timestamp"].to_numpy()
    assert (np.diff(ts) >= 0).all() and len(seqs["1"]) == len(ts)
    assert data.items.loc["50", "title"] == "Star Wars" and "Sci-Fi" in data.items.loc["50", "genres"]


def test_sasrec_beats_popularity(trained):
    folder, m = trained
    assert m["sasrec"]["hr@10"] > m["popularity"]["hr@10"] + 0.01
    assert m["sasrec"]["ndcg@10"] > m["popularity"]["ndcg@10"]
    assert {"model.safetensors", "config.json", "items.json", "metrics.json"} <= {p.name for p in folder.iterdir()}


def test_adapter_surface_and_truncated_capture(rec):
    assert isinstance(rec, ModelAdapter) and rec.modality == "recsys"
    assert (rec.d_model, rec.n_layers, rec.vocab_size) == (64, 2, 1683)
    b = rec.tokenize([STAR_WARS, "1 2"], 50)
    assert b.input_ids.shape == (2, 4) and b.keep_mask.sum().item() == 6
    assert rec.token_strings(b.input_ids[0].tolist())[0] == "Star Wars (1977)"
    for site in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"):
        seen = {}

        def record(x):
            seen["x"] = x.clone()

        with rec.intervene(site, record):
            logits = rec.logits(b)
        assert logits.shape == (2, 4, 1683)
        assert torch.allclose(rec.capture(b, site), seen["x"], atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        rec.capture(b, "blocks.2.hook_resid_post")
    assert rec.unembed().shape == (1683, 64)
    assert len(rec.tokenize([" ".join(str(i) for i in range(1, 80))], 50).input_ids[0]) == 50  # latest 50 kept


def test_unknown_item_ids_are_named(rec):
    with pytest.raises(ValueError, match=r"unknown item id\(s\) '99999', 'abc'"):
        rec.tokenize(["1 99999 2 abc"], 50)
    with pytest.raises(ValueError, match="empty"):
        rec.encode_ids("   ")


def test_recommend_and_generate_exclude_history(rec):
    ids = rec.encode_ids(STAR_WARS)
    top = rec.recommend(ids, 10)
    assert len(top) == 10 and not set(top) & set(ids) and 0 not in top
    pieces = list(rec.generate(STAR_WARS, max_new_tokens=3))
    assert len(pieces) == 3 and all(p.endswith("\n") for p in pieces)
    assert pieces[0].strip() == rec.token_strings([top[0]])[0]


def test_position_concepts_line_up_with_activations(rec, data):
    from backend.data.activations import stream_activations
    from backend.modalities.recsys import concept_table, position_concepts, recsys_windows, user_docs

    docs = user_docs(data)[:5]
    win = recsys_windows(docs, rec, context_len=50)
    chunk = next(stream_activations(rec, win, "blocks.1.hook_resid_post", batch_size=64, progress=False))
    items, users = concept_table(data)
    labels, names = position_concepts(win, chunk.window, chunk.token_ids, items, users)
    assert labels.shape == (len(chunk.acts), len(names)) and len(chunk.acts) == int(win["token_ids"].map(len).sum())
    j = {n: i for i, n in enumerate(names)}
    first = data.items.loc[data.sequences()["1"][0]]
    assert labels[0, j["genre:" + first.genres[0]]]  # user 1's first movie
    assert labels[0, j["gender:M"]] and labels[0, j["occupation:technician"]] and labels[0, j["age:18-24"]]
    assert labels[:, [j[c] for c in names if c.startswith("pop:")]].sum(1).tolist() == [1] * len(labels)


def test_concept_confidence_on_a_hand_made_case():
    g = np.random.default_rng(0)

    def split(n):
        y = np.zeros((n, 3), bool)
        y[:, 0] = g.random(n) < 0.2  # "comedy"
        y[:, 1] = g.random(n) < 0.1  # "student"
        y[:, 2] = g.random(n) < 0.5  # "male"
        z = np.zeros((n, 2), np.float32)
        z[:, 0] = y[:, 0] * (1 + g.random(n))  # latent 0 fires exactly on comedies
        half = y[:, 1] & (np.arange(n) % 2 == 0)
        z[:, 1] = half * 2.0 + (~y[:, 1] & (np.arange(n) % 50 == 0)) * 0.5  # half the students + rare noise
        return z, y

    names = ["genre:Comedy", "occupation:student", "gender:M"]
    z_tr, y_tr = split(4000)
    assignment = assign_concepts(top_activation_enrichment(z_tr, y_tr, names, top_n=50))
    assert assignment.set_index("latent")["concept"].to_dict() == {0: "genre:Comedy", 1: "occupation:student"}
    z_te, y_te = split(4000)  # held out
    conf = concept_confidence(z_te, y_te, names, assignment).set_index("latent")
    assert conf.loc[0, "precision"] == 1.0 and conf.loc[0, "recall"] == 1.0
    assert abs(conf.loc[1, "precision"] - 0.5) < 0.06  # P(fires | student) ~ 1/2
    noise = int(((~y_te[:, 1]) & (np.arange(4000) % 50 == 0)).sum())
    assert (
        abs(
            conf.loc[1, "recall"]
            - conf.loc[1, "support"]
            * conf.loc[1, "precision"]
            / (conf.loc[1, "support"] * conf.loc[1, "precision"] + noise)
        )
        < 1e-9
    )


def test_ablating_or_boosting_a_latent_changes_the_top10(rec):
    from backend.modalities.recsys import ablate_recommendations

    site = "blocks.1.hook_resid_post"
    sae = ReluSae(64, 256, seed=0)
    x = rec.capture(rec.tokenize([STAR_WARS], 50), site)[0, -1]  # (64,) the state that ranks the next item
    z = sae.encode(x)
    strongest = int(z.argmax())
    nothing = ablate_recommendations(rec, sae, site, STAR_WARS, [])
    assert nothing["before"] == nothing["after"] and nothing["tv_distance"] == 0
    zeroed = ablate_recommendations(rec, sae, site, STAR_WARS, [Edit(strongest, "zero")])
    boosted = ablate_recommendations(rec, sae, site, STAR_WARS, [Edit(strongest, "clamp", 8 * float(z.max()))])
    assert len(boosted["after"]) == 10 and boosted["after"] != boosted["before"]
    assert zeroed["after"] != zeroed["before"] or boosted["overlap"] < 10
    assert abs(sum(boosted["genre_mix_after"].values()) - 1) < 1e-9
    assert abs(sum(boosted["genre_shift"].values())) < 1e-9 and boosted["tv_distance"] > 0


def test_saved_model_reloads_identically(trained, rec):
    model, items = SASRec.load(trained[0])
    ids = torch.tensor([rec.encode_ids(STAR_WARS)])
    with torch.no_grad():
        assert torch.allclose(model(ids), rec.model(ids))
    assert items[49]["title"] == "Star Wars (1977)"


def test_shared_steering_streams_recommendations_unchanged(rec):
    """steering.side_by_side works on the recommender as is: 'generation' = next unseen items."""
    from backend.sae.steering import side_by_side

    sae = ReluSae(64, 256, seed=0)
    site = "blocks.1.hook_resid_post"
    z = sae.encode(rec.capture(rec.tokenize([STAR_WARS], 50), site)[0, -1])
    edits = [Edit(int(z.argmax()), "clamp", 8 * float(z.max()))]
    *_, (base, steered) = side_by_side(rec, sae, site, edits, STAR_WARS, max_new_tokens=5, temperature=0.0)
    assert len(base.splitlines()) == 5 and len(steered.splitlines()) == 5 and base != steered
    assert base.splitlines()[0] == rec.token_strings([rec.recommend(rec.encode_ids(STAR_WARS), 1)[0]])[0]
