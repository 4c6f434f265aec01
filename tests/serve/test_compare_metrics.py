"""Backend.compare's metrics frame and Matryoshka levels (issue 15): metrics.json flattened (OrtSAE's mean max decoder
cosine, absorption, stability and per-level FVU reach the Compare tab; histograms do not), one row per level."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from backend.serve.service import LEVEL_COLUMNS, Backend, flat_metrics

pytest_plugins = ("tests._index_fixtures",)  # shared session fixtures: synth_ws
D_SAE = 24  # the synthetic SAEs' width
METRICS = {
    "l0": 10.0,
    "fvu": 0.3,
    "absorption_rate": 0.1,
    "stability": 0.8,
    "reconstruction_on": "held-out windows",
    "decoder_max_cos": {"mean": 0.2, "quantiles": {"0.5": 0.19}, "hist": [1, 2]},
    "matryoshka_fvu": {"24": 0.3, "8": 0.6},
    "ppl_by_domain": {"general": {"clean": 30.0, "sae": 40.0}},
    "train": {"steps": 1},
}


def test_flat_metrics_keeps_scalars_and_the_headline_of_each_nested_metric():
    row = flat_metrics(METRICS)
    assert row["decoder_max_cos_mean"] == 0.2 and row["absorption_rate"] == 0.1 and row["stability"] == 0.8
    assert [k for k in row if k.startswith("matryoshka_fvu_")] == ["matryoshka_fvu_8", "matryoshka_fvu_24"]
    assert row["reconstruction_on"] == "held-out windows"
    assert not {"decoder_max_cos", "matryoshka_fvu", "ppl_by_domain", "train"} & set(row)


@pytest.fixture(scope="module")
def matryoshka(synth_ws, tmp_path_factory):
    """The synthetic workspace with SAE "a" made a Matryoshka SAE of levels [0, 8) and [8, 24)."""
    root = tmp_path_factory.mktemp("matryoshka") / "ws"
    shutil.copytree(synth_ws.path, root)
    cfg = json.loads((root / "saes" / "a" / "cfg.json").read_text())
    (root / "saes" / "a" / "cfg.json").write_text(json.dumps({**cfg, "saex": {"matryoshka_widths": [8, 24]}}))
    (root / "saes" / "a" / "metrics.json").write_text(json.dumps(METRICS))
    b = Backend(root)
    yield b
    b.close()


def test_compare_reports_flattened_metrics_and_matryoshka_levels(matryoshka):
    res = matryoshka.compare(["a", "b"], threshold=0.0)
    m = res.metrics.set_index("name")
    assert m.loc["a", "decoder_max_cos_mean"] == 0.2 and m.loc["a", "matryoshka_fvu_8"] == 0.6
    assert m.loc["a", "architecture"] and m.loc["b", "d_sae"] == D_SAE and "decoder_max_cos" not in m
    assert list(res.levels.columns) == LEVEL_COLUMNS
    assert res.levels[["level", "start", "end", "fvu"]].values.tolist() == [[1, 0, 8, 0.6], [2, 8, 24, 0.3]]
    assert res.levels["share_matched"].tolist() == [1.0, 1.0]  # threshold 0: every latent has a match
    high = matryoshka.compare(["a", "b"], threshold=0.99).levels
    assert (high["share_matched"] < 1.0).all()
    later = matryoshka.compare(["b", "a"]).levels  # a is not the first SAE: its levels, no matched share
    assert later["sae"].tolist() == ["a", "a"] and later["share_matched"].isna().all()
    assert np.isnan(matryoshka.compare(["b", "a"]).metrics.set_index("name").loc["b", "stability"])
