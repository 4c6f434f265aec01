"""Broken workspace files and concurrent builds (issue 11, items 5 and 6): every broken SAE file is one line
naming it and left out while the rest is served; an unreadable index is one clean error; a second writer of a
workspace is refused naming the first; temporaries of killed builds are removed by the next one.

Every test works on a copy of a built workspace (never on workspaces/ itself); the copies leave out the
activation shards (only the caches' meta.json, which records the model's width, is kept).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from backend.atomic import WorkspaceBusy, lock_holder, remove_stale_files, workspace_lock
from backend.index.store import IndexUnreadable
from backend.integrity import check_saes, safetensors_header
from backend.workspace import open_workspace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_src(request) -> Path:
    """workspaces/tiny, built first only when absent (the conftest fixture costs seconds even when built)."""
    p = REPO / "workspaces" / "tiny"
    if not (p / "index.duckdb").exists():
        request.getfixturevalue("tiny_ws")
    return p


def copy_ws(src: Path, dst: Path, index: bool = True) -> Path:
    """A copy of a workspace without its activation shards, temporaries and lock (and without the index)."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        if Path(folder).parent.name == "activations":
            return [n for n in names if n != "meta.json"]
        return [n for n in names if n.startswith(".") or (not index and n == "index.duckdb")]

    shutil.copytree(src, dst, ignore=ignore)
    return dst


def fix(ws: Path, name: str) -> str:
    return (
        f"retrain it with `python -m backend train --workspace {ws} --sae {name} --force`, "
        f"then rebuild the index with `python -m backend index --workspace {ws} --force`"
    )


# ---- broken SAE files: left out, one line each, the rest served -----------------------------------------
def test_invalid_cfg_json_leaves_that_sae_out_and_serves_the_others(tiny_src, tmp_path):
    from backend.serve.service import Backend, BackendError

    ws = copy_ws(tiny_src, tmp_path / "ws")
    (ws / "saes" / "relu" / "cfg.json").write_text("{nope")
    b = Backend(ws)
    assert b.problems == [
        "saes/relu/cfg.json is not valid JSON (line 1 column 2: Expecting property name "
        f"enclosed in double quotes): {fix(ws, 'relu')}"
    ]
    assert b.sae_names == ["topk", "ssae_bio", "boost_bio"]
    assert b.feature("topk", 0).latent == 0 and b.feature("boost_bio", 0).sae == "boost_bio"
    assert list(b.saes()["name"]) == ["topk", "ssae_bio", "boost_bio"]
    with pytest.raises(BackendError, match="relu"):
        b.feature("relu", 0)
    b.close()


def test_truncated_weights_are_left_out_and_nearest_serves_the_rest(tiny_src, tmp_path):
    from backend.serve.service import Backend, BackendError

    ws = copy_ws(tiny_src, tmp_path / "ws")
    w = ws / "saes" / "ssae_bio" / "sae_weights.safetensors"
    size = w.stat().st_size
    with open(w, "r+b") as f:
        f.truncate(size - 1000)
    b = Backend(ws)
    n = size - 1000 - 8 - int.from_bytes(w.read_bytes()[:8], "little")
    assert b.problems == [
        f"saes/ssae_bio/sae_weights.safetensors is truncated: its header describes {n + 1000:,} "
        f"bytes of tensors but the file holds {n:,}: {fix(ws, 'ssae_bio')}"
    ]
    assert "ssae_bio" not in b.sae_names and len(b.nearest("topk", 3, k=5)) == 5  # /nearest reads W_dec of topk
    with pytest.raises(BackendError, match="ssae_bio"):  # not a raw SafetensorError
        b.nearest("topk", 3, other_sae="ssae_bio")
    b.close()


def test_a_boosted_sae_is_broken_when_its_base_is(tiny_src, tmp_path):
    ws_path = copy_ws(tiny_src, tmp_path / "ws", index=False)
    (ws_path / "saes" / "topk" / "sae_weights.safetensors").write_bytes(b"\x00" * 7)
    problems = check_saes(open_workspace(ws_path))
    base = "saes/topk/sae_weights.safetensors is truncated (7 bytes; not even a safetensors header)"
    assert problems == {
        "topk": f"{base}: {fix(ws_path, 'topk')}",
        "boost_bio": f"saes/boost_bio is boosted on saes/topk, which is broken ({base}): retrain the base with "
        f"`python -m backend train --workspace {ws_path} --sae topk --force`, then this SAE with "
        f"`python -m backend train --workspace {ws_path} --sae boost_bio --force`, then rebuild the "
        f"index with `python -m backend index --workspace {ws_path} --force`",
    }


def test_cfg_d_in_that_disagrees_with_the_weights_is_a_problem(tiny_src, tmp_path):
    ws_path = copy_ws(tiny_src, tmp_path / "ws", index=False)
    cfg_p = ws_path / "saes" / "relu" / "cfg.json"
    cfg_p.write_text(json.dumps({**json.loads(cfg_p.read_text()), "d_in": 512}))
    assert check_saes(open_workspace(ws_path)) == {
        "relu": "saes/relu/cfg.json says d_in=512 but saes/relu/sae_weights.safetensors has d_in=576 (W_dec is "
        f"1152x576): the two files do not belong together: {fix(ws_path, 'relu')}"
    }


def test_weights_whose_d_in_is_not_the_model_width_are_a_problem(tiny_src, tmp_path):
    from backend.serve.service import Backend

    ws = copy_ws(tiny_src, tmp_path / "ws")
    d = ws / "saes" / "relu"
    cfg = json.loads((d / "cfg.json").read_text())
    (d / "cfg.json").write_text(json.dumps({**cfg, "d_in": 64}))
    z = np.zeros
    save_file(
        {
            "W_enc": z((64, 1152), np.float32),
            "W_dec": z((1152, 64), np.float32),
            "b_enc": z(1152, np.float32),
            "b_dec": z(64, np.float32),
        },
        str(d / "sae_weights.safetensors"),
    )
    b = Backend(ws)
    assert b.problems == [
        "saes/relu/sae_weights.safetensors has d_in=64 but the model's activations at "
        "blocks.6.hook_resid_post have d=576 (activations/blocks.6.hook_resid_post/meta.json): "
        f"{fix(ws, 'relu')}"
    ]
    assert "relu" not in b.sae_names
    b.close()


def test_weights_with_shapes_that_do_not_fit_together(tmp_path):
    p = tmp_path / "w.safetensors"
    save_file({"W_dec": np.zeros((8, 4), np.float32), "W_enc": np.zeros((4, 9), np.float32)}, str(p))
    assert safetensors_header(p)["W_enc"] == ("F32", (4, 9))
    from backend.integrity import IntegrityError, _weight_dims

    with pytest.raises(IntegrityError, match=r"^x has W_enc of shape \[4, 9\] but W_dec \[8, 4\] needs \[4, 8\]"):
        _weight_dims(safetensors_header(p), p.name, "x", {})
    p.write_bytes(p.read_bytes() + b"junk")
    with pytest.raises(ValueError, match="^is corrupt: 4 bytes follow the tensors"):
        safetensors_header(p)
    p.write_bytes((5).to_bytes(8, "little") + b"{oops")
    with pytest.raises(ValueError, match="^is not a safetensors file"):
        safetensors_header(p)


# ---- an unreadable index: one clean error ---------------------------------------------------------------
def test_an_index_of_random_bytes_is_one_clean_error(tiny_src, tmp_path):
    from backend.serve.service import Backend

    ws = copy_ws(tiny_src, tmp_path / "ws", index=False)
    (ws / "index.duckdb").write_bytes(np.random.default_rng(0).bytes(20_000))
    with pytest.raises(IndexUnreadable) as e:
        Backend(ws)
    assert str(e.value) == (
        f"index.duckdb in {ws} cannot be read (The file index.duckdb exists, but it is not a "
        f"valid DuckDB database file!): rebuild it with `python -m backend index --workspace {ws} "
        "--force`"
    )


def test_an_index_without_its_tables_is_one_clean_error(tmp_path):
    import duckdb

    con = duckdb.connect(str(tmp_path / "index.duckdb"))
    con.execute("CREATE TABLE saes (sae VARCHAR)")
    con.close()
    from backend.index.store import IndexReader

    with pytest.raises(IndexUnreadable, match=r"cannot be read \(it has no latents, contexts, map tables\): rebuild"):
        IndexReader(tmp_path / "index.duckdb")


# ---- builds: stale temporaries and the workspace lock ----------------------------------------------------
def test_the_next_build_removes_what_killed_builds_left(tmp_path):
    ws, dead, me = tmp_path / "ws", 999_999_999, os.getpid()
    (ws / "saes" / "topk").mkdir(parents=True)
    stale = [
        ws / f".index.duckdb.{dead}-7.staging",
        ws / f".index.duckdb.{dead}-7.staging.wal",
        ws / f".index.duckdb.{dead}-7.building",
        ws / "corpora" / ".windows.parquet.tmp",
        ws / "saes" / f".topk-{dead}-ab_cd123",
        ws / "saes" / ".relu-x1y2z3w4",
        ws / f".workspace.yaml.{dead}.tmp",
    ]
    kept = [
        ws / "index.duckdb",
        ws / f".index.duckdb.{me}-7.staging",
        ws / "saes" / f".topk-{me}-ab_cd123",
        ws / "saes" / ".topk.checkpoint" / "state.json",
        ws / "saes" / "topk" / "cfg.json",
        ws / ".lock",
    ]
    for p in stale + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.name.startswith(".topk-") or p.name.startswith(".relu-"):
            p.mkdir()
            (p / "sae_weights.safetensors").write_bytes(b"half")
        else:
            p.write_bytes(b"x")
    assert remove_stale_files(ws) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    # taking the lock (what every build step does first) runs the same clean-up
    (ws / f".index.duckdb.{dead}-8.staging").write_bytes(b"x")
    with workspace_lock(ws):
        assert not (ws / f".index.duckdb.{dead}-8.staging").exists()


_HOLD = """
import sys, time
sys.argv = ["python", "-m", "backend", "build", "configs/tiny.yaml"]
from backend.atomic import workspace_lock
with workspace_lock(sys.stdin.readline().strip()):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    from backend.__main__ import main

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "workspace.yaml").write_text("name: w\ncorpora: [{name: hpo}]\nsaes: [{name: s}]\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        holder.stdin.write(f"{ws}\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "held"
        assert lock_holder(ws)["command"] == "python -m backend build configs/tiny.yaml"
        with pytest.raises(
            WorkspaceBusy,
            match=rf"^workspace {ws} is being written by process {holder.pid} "
            r"\(`python -m backend build configs/tiny\.yaml`, started 20",
        ):
            with workspace_lock(ws):
                pass
        with pytest.raises(WorkspaceBusy):  # waiting (test sessions sharing a workspace) gives up at the deadline
            with workspace_lock(ws, wait_s=0.3):
                pass
        capsys.readouterr()
        assert main(["index", "--workspace", str(ws)]) == 2  # the CLI: one line, exit code 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: workspace {ws} is being written by process {holder.pid}")
        assert err[0].endswith(f"wait for it to finish or stop it (kill {holder.pid}), then run this again")
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    with workspace_lock(ws), workspace_lock(ws):  # free again, and re-entrant within this process
        assert lock_holder(ws)["pid"] == os.getpid()
    assert lock_holder(ws) == {}  # released: the holder record is cleared, the file stays
    assert sorted(p.name for p in ws.iterdir()) == [".lock", "workspace.yaml"]


# ---- app.py: one broken workspace does not stop the others ------------------------------------------------
def test_app_serves_the_good_workspace_when_another_is_broken(tiny_src, tmp_path, capsys):
    import app

    bad = copy_ws(tiny_src, tmp_path / "bad", index=False)
    (bad / "index.duckdb").write_bytes(b"\x01" * 5000)
    good = copy_ws(tiny_src, tmp_path / "good")
    (good / "saes" / "relu" / "cfg.json").write_text("[]")
    dirs = app.workspace_dirs(app.parse_args(["--workspace", str(bad), "--workspace", str(good)]))
    assert dirs == [bad, good]
    backends = app.open_backends(dirs)
    assert [b.ws.path for b in backends] == [good] and "relu" not in backends[0].sae_names
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"[app] skipping {bad}: index.duckdb in {bad} cannot be read (The file index.duckdb exists, but "
        f"it is not a valid DuckDB database file!): rebuild it with `python -m backend index --workspace "
        f"{bad} --force`",
        f"[app] tiny: not serving an SAE: saes/relu/cfg.json must hold a JSON object, not list: {fix(good, 'relu')}",
    ]
    backends[0].close()
    assert app.main(["--workspace", str(bad)]) == 2  # alone, it is the one error line
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: index.duckdb in {bad} cannot be read (The file index.duckdb exists, but it is not a valid DuckDB "
        f"database file!): rebuild it with `python -m backend index --workspace {bad} --force`"
    ]
