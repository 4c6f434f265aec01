"""Pretrained SAEs in a workspace (issue 16): config entries, import, SAEs at their own site, `add-sae`, hub
sources offline, and a workspace built on a local Hugging Face checkpoint folder.

The SAE added here is written in Gemma Scope's published layout (params.npz, JumpReLU without b_dec subtracted
before encoding) at block 3, while the tiny workspace reads block 6: one test covers a format, a second site and
the incremental path. Its thresholds are set on real block-3 activations, so its L0 tells whether the right site
and the format's convention were used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from backend.config import ConfigError, WorkspaceConfig
from backend.sae.model import SaeError

SITE3 = "blocks.3.hook_resid_post"


def _copy_ws(src: Path, dst: Path) -> Path:
    """A private copy of the tiny workspace (hard links for the large read-only files: every writer here
    replaces files by rename, so the shared workspace is never changed), with a smaller activation budget."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    keep = ("workspace.yaml", "corpora", "activations", "saes", "meaning", "subdomains")
    dst.mkdir()
    for name in keep:
        p = src / name
        if p.is_dir():
            shutil.copytree(p, dst / name, copy_function=link, ignore=shutil.ignore_patterns("*@twin"))
        elif p.exists():
            shutil.copy2(p, dst / name)
    shutil.copy2(src / "index.duckdb", dst / "index.duckdb")  # DuckDB may write into an open file: a real copy
    cfg = yaml.safe_load((dst / "workspace.yaml").read_text())
    cfg["activations"]["max_tokens"] = 4000  # a smaller cache for the sites added here (block 6's is built)
    (dst / "workspace.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


def _rows_hash(index: Path, sae: str) -> str:
    import duckdb

    con = duckdb.connect(str(index), read_only=True)
    try:
        h = hashlib.sha256()
        queries = (
            "SELECT * FROM latents WHERE sae = ? ORDER BY latent",
            "SELECT * FROM contexts WHERE sae = ? ORDER BY latent, kind, rank",
        )
        for sql in queries:
            h.update(con.execute(sql, [sae]).df().to_csv(index=False).encode())
        return h.hexdigest()
    finally:
        con.close()


def _gemma_scope_npz(tiny_ws, path: Path) -> Path:
    """A JumpReLU SAE at block 3 in Gemma Scope's params.npz layout: 256 random unit directions, each with its
    threshold at the 90th percentile of its pre-activation on real block-3 activations (so each fires on about
    10% of tokens there, and at another rate on another block's activations)."""
    from backend.data.activations import stream_activations

    a = tiny_ws.adapter(verbose=False)
    x3 = torch.cat(
        [c.acts.float() for c in stream_activations(a, tiny_ws.windows().head(24), SITE3, 8, progress=False)]
    )
    x3 = x3[x3.norm(dim=1) < 10 * x3.norm(dim=1).median()]  # no attention sinks
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(256, x3.shape[1], generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    W_enc, b_dec = W_dec.T.clone(), x3.mean(0)
    threshold = ((x3 - b_dec) @ W_enc).quantile(0.9, dim=0).clamp_min(1e-3)
    path.mkdir(parents=True, exist_ok=True)
    f = path / "params.npz"
    np.savez(
        f,
        W_enc=W_enc.numpy().astype(np.float32),
        W_dec=W_dec.numpy().astype(np.float32),
        b_enc=(-b_dec @ W_enc).numpy().astype(np.float32),  # Gemma Scope encodes x @ W_enc + b_enc (no b_dec)
        b_dec=b_dec.numpy().astype(np.float32),
        threshold=threshold.numpy().astype(np.float32),
    )
    return f


# ---- config ------------------------------------------------------------------------------------------------
def _cfg(*saes: dict) -> dict:
    return {"name": "x", "corpora": [{"name": "news"}], "saes": list(saes)}


def test_pretrained_entry_takes_no_training_fields_and_round_trips():
    cfg = WorkspaceConfig.from_dict(_cfg({"name": "g"}, {"name": "p", "path": "/sae", "site": SITE3}))
    assert cfg.saes[1].pretrained and not cfg.saes[0].pretrained
    d = cfg.to_dict()
    assert d["saes"][1] == {"name": "p", "site": SITE3, "path": "/sae"}  # only what was given is written back
    assert WorkspaceConfig.from_dict(d) == cfg
    with pytest.raises(ConfigError, match=r"takes no training fields; remove \['d_sae', 'k'\]"):
        WorkspaceConfig.from_dict(_cfg({"name": "p", "path": "/sae", "k": 8, "d_sae": 64}))
    with pytest.raises(ConfigError, match="exactly one source"):
        WorkspaceConfig.from_dict(_cfg({"name": "p", "path": "/sae", "hf": "a/b"}))
    with pytest.raises(ConfigError, match="release and sae_id go together"):
        WorkspaceConfig.from_dict(_cfg({"name": "p", "release": "gemma-scope-2b-pt-res"}))
    with pytest.raises(ConfigError, match="SAE name"):
        WorkspaceConfig.from_dict(_cfg({"name": "../etc", "path": "/sae"}))
    with pytest.raises(ConfigError, match="subdomain data is cached at activations.site"):
        WorkspaceConfig.from_dict(
            {
                **_cfg({"name": "s", "data": "bio", "site": SITE3}),
                "subdomains": [{"name": "bio", "seed_corpus": "news"}],
            }
        )


def test_site_names_of_other_packages():
    from backend.sae.pretrained import site_from_hook

    assert site_from_hook("blocks.4.hook_resid_post") == "blocks.4.hook_resid_post"
    assert site_from_hook("blocks.4.hook_mlp_out") == "blocks.4.hook_mlp_out"
    assert site_from_hook("layers.6") == "blocks.6.hook_resid_post"  # sparsify's hookpoints
    assert site_from_hook("model.layers.6.mlp") == "blocks.6.hook_mlp_out"
    assert site_from_hook("resid_post_layer_3") == "blocks.3.hook_resid_post"  # dictionary_learning
    assert site_from_hook("gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82") == "blocks.12.hook_resid_post"
    assert site_from_hook("blocks.4.attn.hook_z") is None


def test_hub_source_offline_fails_before_any_work(tmp_path, monkeypatch):
    from backend.build import build_workspace

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAEX_HOME", str(tmp_path / "home"))  # no download of it can be cached already
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_cfg({"name": "scope", "hf": "google/gemma-scope-2b-pt-res/layer_3/width_16k"})))
    with pytest.raises(SaeError, match="hub is unreachable") as e:
        build_workspace(cfg, tmp_path / "ws", verbose=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "ws" / "corpora").exists()  # failed before the windows step


def test_missing_path_fails_before_any_work(tmp_path):
    from backend.build import build_workspace

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(_cfg({"name": "mine", "path": str(tmp_path / "nowhere")})))
    with pytest.raises(SaeError, match="no such file or folder"):
        build_workspace(cfg, tmp_path / "ws", verbose=False)
    assert not (tmp_path / "ws" / "corpora").exists()


# ---- add-sae on a built workspace -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def added(tiny_ws, tmp_path_factory):
    """A copy of the tiny workspace with a Gemma Scope-layout SAE at block 3 added by the CLI."""
    from backend.__main__ import main
    from backend.serve.service import Backend

    root = tmp_path_factory.mktemp("pretrained")
    ws_path = _copy_ws(tiny_ws.path, root / "ws")
    before = {n: _rows_hash(ws_path / "index.duckdb", n) for n in ("topk", "relu")}
    npz = _gemma_scope_npz(tiny_ws, root / "scope" / "layer_3" / "width_256")
    running = Backend(ws_path)  # an app serving the workspace while the SAE is added
    assert "scope3" not in running.sae_names
    rc = main(["add-sae", "--workspace", str(ws_path), "--name", "scope3", "--path", str(npz.parent), "--quiet"])
    assert rc == 0
    yield ws_path, before, npz, running
    running.close()


def test_add_sae_imports_evaluates_and_indexes_only_it(added):
    from backend.index.build import indexed_saes
    from backend.workspace import open_workspace

    ws_path, before, npz, _ = added
    ws = open_workspace(ws_path)
    entry = ws.config.saes[-1]
    assert (entry.name, entry.path, entry.pretrained) == ("scope3", str(npz.parent), True)
    assert ws.site_of("scope3") == SITE3  # from the Gemma Scope folder name (layer_3), not the workspace's block 6
    cfg = json.loads((ws_path / "saes" / "scope3" / "cfg.json").read_text())
    assert cfg["saex"]["source"]["format"] == "gemma_scope" and cfg["hook_name"] == SITE3
    assert (ws_path / "activations" / SITE3 / "meta.json").exists()  # its site got its own cache
    m = json.loads((ws_path / "saes" / "scope3" / "metrics.json").read_text())
    # its thresholds are each latent's 90th percentile at block 3: L0 near 10% of 256 says the Gemma Scope
    # convention (no b_dec before encoding) and the right site were used (block 6's activations give another L0)
    assert 15 < m["l0"] < 40 and np.isfinite(m["fvu"]) and "ce_recovered" in m
    assert "scope3" in indexed_saes(ws_path / "index.duckdb")
    assert {n: _rows_hash(ws_path / "index.duckdb", n) for n in before} == before  # others untouched
    assert (ws_path / "meaning" / "scope3.npz").exists()


def test_added_sae_is_served_with_its_site_and_source(added):
    from backend.serve.service import Backend

    ws_path, _, npz, _ = added
    b = Backend(ws_path)
    try:
        row = b.saes().set_index("name").loc["scope3"]
        assert row["site"] == SITE3 and row["architecture"] == "jumprelu (gemma_scope)"
        assert row["source"].startswith(f"gemma_scope from {npz.parent.resolve()}")
        assert b.saes().set_index("name").loc["topk", "source"] == "trained here"
        top = b.latents("scope3", sort_by="max_act", limit=1)
        fv = b.feature("scope3", int(top["latent"].iloc[0]))
        assert fv.top_contexts and fv.max_act > 0
        # the text search and steering read and hook the SAE's own site
        seen = []
        adapter = b.adapter()
        real = adapter.capture

        def spy(batch, site):
            seen.append(site)
            return real(batch, site)

        adapter.capture = spy
        try:
            b.search_text("scope3", "The patient was given insulin.", top_n=3)
        finally:
            adapter.capture = real
        assert seen == [SITE3]
    finally:
        b.close()


def test_running_app_sees_an_added_sae_after_refresh(added):
    *_, running = added
    assert running.refresh() and "scope3" in running.sae_names  # no restart
    assert running.ws.site_of("scope3") == SITE3  # it read the new workspace.yaml too


def test_add_sae_mismatch_is_one_line_and_leaves_the_workspace(tiny_ws, tmp_path):
    from backend.incremental import add_sae

    ws_path = _copy_ws(tiny_ws.path, tmp_path / "ws")
    yaml_before = (ws_path / "workspace.yaml").read_text()
    d = tmp_path / "narrow"
    d.mkdir()
    rng = np.random.default_rng(0)
    np.savez(
        d / "params.npz",
        **{k: rng.standard_normal(s).astype(np.float32) for k, s in [("W_enc", (64, 8)), ("W_dec", (8, 64))]},
        b_enc=np.zeros(8, np.float32),
        b_dec=np.zeros(64, np.float32),
        threshold=np.zeros(8, np.float32),
    )
    with pytest.raises(SaeError, match=r"d_in=64 but .* has d=576") as e:
        add_sae(ws_path, "narrow", path=str(d), site=SITE3, verbose=False)
    assert "\n" not in str(e.value)
    with pytest.raises(SaeError, match="lacks|out of range"):
        add_sae(ws_path, "deep", path=str(d), site="blocks.99.hook_resid_post", verbose=False)
    with pytest.raises(ConfigError, match="already has an SAE named 'topk'"):
        add_sae(ws_path, "topk", path=str(d), verbose=False)
    assert (ws_path / "workspace.yaml").read_text() == yaml_before


# ---- models --------------------------------------------------------------------------------------------------
def test_workspace_on_a_local_checkpoint_folder(smollm2, tmp_path):
    """The embedded model saved with save_pretrained, then a workspace built on that folder: its activations
    equal the embedded model's."""
    from backend.build import build_workspace

    ckpt = tmp_path / "ckpt"
    smollm2.model.save_pretrained(ckpt)
    smollm2.tokenizer.save_pretrained(ckpt)
    cfg = {
        "name": "local",
        "model": {"id": str(ckpt), "device": "cpu"},
        "corpora": [{"name": "news", "max_docs": 40, "max_windows": 12}],
        "activations": {"site": "blocks.2.hook_resid_post", "context_len": 32, "max_tokens": 300},
        "saes": [{"name": "s", "architecture": "topk", "d_sae": 64, "k": 4}],
        "train": {"batch_size": 64, "tokens": 640, "checkpoint_every": 0},
        "eval": {"ce_windows": 2, "n_tokens": 100},
        "index": {"max_tokens": 200, "top_k": 3, "umap": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    ws = build_workspace(tmp_path / "c.yaml", tmp_path / "ws", verbose=False, steps="windows,activations,train")
    assert (ws.sae_dir("s") / "cfg.json").exists()
    src = ws.activation_source()
    sh = src.load_shard(0)
    rows = sh["window"].numpy() == sh["window"].numpy()[0]
    ids = ws.windows()["token_ids"].iat[int(sh["window"][0])]
    batch = smollm2.batch_from_ids([list(ids)])
    with torch.inference_mode():
        ref = smollm2.capture(batch, "blocks.2.hook_resid_post")[batch.keep_mask]
    got = sh["acts"][torch.from_numpy(rows)].float()
    assert got.shape == ref.shape and torch.allclose(got, ref.float(), atol=2e-2, rtol=1e-2)


def test_hub_model_offline_fails_at_once(monkeypatch):
    from backend.adapters import load_adapter
    from backend.config import ModelConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception, match="unreachable"):
        load_adapter(ModelConfig(id="HuggingFaceTB/SmolLM2-360M"), verbose=False)
