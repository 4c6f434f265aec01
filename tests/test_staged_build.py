"""The staged start (issue 13, item 3): the index grows SAE by SAE (index/build.py ``add_to_index``) with the
same rows as a full build, a served Backend picks up each new SAE (``refresh``), and the staged builder
(backend/staged.py ``StagedBuilder``) serves a workspace from its first indexed SAE, builds the rest in the
background, reports a failed SAE with its one-line error while the others go on, and resumes after a stop.

Everything runs on copies of the tiny workspace (windows, activation shards and SAEs copied; never
workspaces/tiny itself). The builder tests train small SAEs (256 latents, a few thousand tokens) on the
copied activations with a trimmed config written to tmp_path.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from backend.index.build import add_to_index, build_index, index_inputs, indexed_saes
from backend.index.store import IndexReader
from backend.staged import StagedBuilder, build_status
from backend.workspace import open_workspace

REPO = Path(__file__).resolve().parent.parent
TABLES = {"saes": "sae", "latents": "sae, latent", "contexts": "sae, latent, kind, rank", "map": "sae, latent"}


@pytest.fixture(scope="module")
def tiny_src(request) -> Path:
    """workspaces/tiny, built first only when absent."""
    p = REPO / "workspaces" / "tiny"
    if not (p / "index.duckdb").exists():
        request.getfixturevalue("tiny_ws")
    return p


def copy_ws(
    src: Path, dst: Path, parts: tuple[str, ...] = ("corpora", "activations", "saes", "meaning", "workspace.yaml")
) -> Path:
    """A copy of some parts of a workspace (no index, no lock, no temporaries). The meaning vectors come along so that
    indexing an SAE again finds them unchanged (their fingerprint) instead of embedding every latent for a minute:
    these tests are about the index, tests/index/test_meaning.py about the vectors."""
    dst.mkdir(parents=True)
    for part in parts:
        if not (src / part).exists():
            continue
        if (src / part).is_dir():
            shutil.copytree(src / part, dst / part, ignore=lambda _d, names: [n for n in names if n.startswith(".")])
        else:
            shutil.copy2(src / part, dst / part)
    return dst


def rows(path: Path, table: str, saes: list[str]) -> pd.DataFrame:
    r = IndexReader(path)
    try:
        df = r.df(f"SELECT * FROM {table} ORDER BY {TABLES[table]}")
    finally:
        r.close()
    return df[df["sae"].isin(saes)].reset_index(drop=True)


def test_a_reader_opened_after_a_swap_sees_the_new_file_while_an_old_reader_is_open(tmp_path):
    """store.IndexReader ATTACHes the file to its own instance: DuckDB's per-path instance cache would otherwise
    hand the second reader the first one's (old) file, and Backend.refresh could not switch while serving."""
    from backend.index.store import IndexWriter

    def write(names: list[str]) -> None:
        n = len(names)
        saes = pd.DataFrame(
            {"sae": names, "architecture": ["topk"] * n, "d_in": [4] * n, "d_sae": [8] * n}
            | {"n_tokens": [10] * n, "n_heldout": [2] * n, "n_quantiles": [3] * n}
        )
        with IndexWriter(tmp_path / "index.duckdb") as w:
            w.add("saes", saes)

    write(["a"])
    old = IndexReader(tmp_path / "index.duckdb")
    write(["a", "b"])
    new = IndexReader(tmp_path / "index.duckdb")
    assert old.saes()["sae"].tolist() == ["a"] and new.saes()["sae"].tolist() == ["a", "b"]
    old.close()
    assert new.saes()["sae"].tolist() == ["a", "b"]
    new.close()


# ---- the incremental index --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grown(tiny_src, tmp_path_factory):
    """(workspace copy, full index path, index snapshots after each add): the full build_index of the copy,
    and its index grown one SAE at a time (topk, relu, ssae_bio, boost_bio: every kind, a subdomain SAE and a
    boosted one), a copy of the file kept after each step."""
    root = tmp_path_factory.mktemp("grown")
    ws = open_workspace(copy_ws(tiny_src, root / "ws"))
    full = root / "full.duckdb"
    build_index(ws, progress=False, out=full)
    inputs = index_inputs(ws, progress=False)
    snaps = []
    for name in [s.name for s in ws.config.saes]:
        add_to_index(ws, [name], inputs=inputs, progress=False)
        snaps.append(shutil.copy(ws.index_path, root / f"after_{name}.duckdb"))
    return ws, full, [Path(p) for p in snaps]


@pytest.mark.slow
def test_the_grown_index_equals_a_full_build(grown):
    ws, full, snaps = grown
    names = [s.name for s in ws.config.saes]
    assert indexed_saes(ws.index_path) == sorted(names)
    for table in TABLES:  # every table, the joint map included (laid out with the config's method at the end)
        pd.testing.assert_frame_equal(rows(ws.index_path, table, names), rows(full, table, names))
    pd.testing.assert_frame_equal(rows(snaps[0], "contexts", ["topk"]), rows(full, "contexts", ["topk"]))
    assert sorted(p.name for p in ws.path.iterdir() if p.name.startswith(".index")) == []  # no staging left


@pytest.mark.slow
def test_adding_an_sae_leaves_the_others_rows_as_they_were(grown):
    ws, _, snaps = grown
    before, after = snaps[1], snaps[2]  # topk + relu, then ssae_bio added
    assert indexed_saes(before) == ["relu", "topk"] and indexed_saes(after) == ["relu", "ssae_bio", "topk"]
    for table in ("saes", "latents", "contexts"):
        pd.testing.assert_frame_equal(rows(after, table, ["topk", "relu"]), rows(before, table, ["topk", "relu"]))
    old, new = rows(before, "map", ["topk", "relu"]), rows(after, "map", ["topk", "relu"])
    pd.testing.assert_frame_equal(new[["sae", "latent", "x", "y"]], old[["sae", "latent", "x", "y"]])
    # re-adding an indexed SAE replaces its rows with equal ones and touches nothing else
    add_to_index(ws, ["relu"], progress=False)
    for table in ("latents", "contexts"):
        pd.testing.assert_frame_equal(
            rows(ws.index_path, table, ["relu", "topk"]), rows(after, table, ["relu", "topk"])
        )


@pytest.mark.slow
def test_backend_refresh_serves_a_newly_indexed_sae(tiny_src, tmp_path):
    from backend.serve.service import Backend

    ws = open_workspace(copy_ws(tiny_src, tmp_path / "ws"))
    inputs = index_inputs(ws, progress=False)
    add_to_index(ws, ["topk"], inputs=inputs, progress=False)
    b = Backend(ws.path)
    try:
        assert b.sae_names == ["topk"] and not b.refresh()  # unchanged file: nothing to do
        old = b.index
        add_to_index(ws, ["relu"], inputs=inputs, progress=False)
        assert b.sae_names == ["topk"]  # the served reader keeps the file it opened
        assert b.refresh() and b.sae_names == ["topk", "relu"] and not b.refresh()
        assert b.feature("relu", 3).sae == "relu" and b.latents("relu", limit=5).shape[0] == 5
        assert old.latent("topk", 0) is not None  # a request in flight on the old reader still reads it
        assert set(b.saes()["name"]) == {"topk", "relu"}
    finally:
        b.close()


@pytest.mark.slow
def test_the_cli_build_completes_an_index_a_staged_build_left_part_way(tiny_src, tmp_path):
    from backend.build import build_workspace

    ws = open_workspace(copy_ws(tiny_src, tmp_path / "ws"))
    add_to_index(ws, ["relu"], progress=False)
    before = rows(ws.index_path, "contexts", ["relu"])
    build_workspace(ws.path / "workspace.yaml", ws.path, steps="index", verbose=False)
    assert indexed_saes(ws.index_path) == sorted(s.name for s in ws.config.saes)
    pd.testing.assert_frame_equal(rows(ws.index_path, "contexts", ["relu"]), before)


# ---- the staged builder --------------------------------------------------------------------------------------
def staged_config(tmp_path: Path, saes: list[dict], subdomains: list[dict] | None = None) -> Path:
    """configs/tiny.yaml with small SAEs and a short evaluation (same corpora and site as the copied shards)."""
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg.update(name="staged", saes=saes, subdomains=subdomains or [])
    cfg["train"].update(tokens=4096)
    cfg["eval"].update(ce_windows=2, n_tokens=2000)
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


SMALL = {"architecture": "topk", "d_sae": 256, "k": 8}


@pytest.mark.slow
def test_the_staged_builder_serves_from_the_first_sae_and_reports_a_failed_one(tiny_src, tmp_path):
    ws_path = copy_ws(tiny_src, tmp_path / "ws", parts=("corpora", "activations"))
    config = staged_config(
        tmp_path,
        [
            {"name": "first", **SMALL, "stability_twin": True},  # its twin trains after every SAE is served
            # a real failure: its loss overflows at the first step (SaeError, one line); the next SAEs go on
            {"name": "diverges", "architecture": "relu", "d_sae": 256, "l1_coef": 1e39},
            {"name": "boosted", **SMALL, "boost_base": "diverges"},  # its base failed: it fails too, saying why
            {"name": "second", "architecture": "relu", "d_sae": 256},
        ],
    )
    seen: list[tuple[list[str], dict]] = []
    twin, twin_seen = ws_path / "saes" / "first@twin", []

    def on_indexed(sw) -> None:
        twin_seen.append((twin / "cfg.json").exists())
        seen.append((indexed_saes(sw.ws.index_path), build_status(sw.ws.path)))

    builder = StagedBuilder([(config, ws_path)], verbose=False, on_indexed=on_indexed)
    sw = builder.builds[0]
    assert build_status(ws_path)["line"].startswith("waiting") and not sw.servable()
    t0 = time.time()
    builder.start()
    assert builder.wait(sw, timeout=600) and sw.servable()
    t_first = time.time() - t0
    assert builder.join(timeout=600), "the background build did not finish in 10 minutes"
    t_all = time.time() - t0
    # the first call came with only the first SAE indexed, the others still to build: served from there
    # then once more when the first SAE's stability twin is trained (after every SAE was served)
    assert [names for names, _ in seen] == [["first"], ["first", "second"], ["first", "second"]]
    assert twin_seen == [False, False, True]
    assert 0.0 <= json.loads((ws_path / "saes" / "first" / "metrics.json").read_text())["stability"] <= 1.0
    times = json.loads((ws_path / "build_times.json").read_text())  # what make bench-demo reports
    at = times["at_s"]
    assert times["first_served"] == "first" and times["first_served_s"] == at["first"]
    assert at["activations"] <= at["first"] <= at["second"] <= at["first@twin"] <= at["done"]
    assert "diverges" not in at and times["resumed_with"] == []
    first = {s["name"]: s["state"] for s in seen[0][1]["saes"]}
    assert first == {"first": "ready", "diverges": "waiting", "boosted": "waiting", "second": "waiting"}
    assert seen[0][1]["active"] and seen[0][1]["line"].startswith("building: 1 of 4 SAEs ready")
    assert t_first < t_all
    status = build_status(ws_path)
    states = {s["name"]: (s["state"], s["detail"]) for s in status["saes"]}
    assert states["first"] == states["second"] == ("ready", "")
    assert states["diverges"][0] == "failed" and states["diverges"][1].startswith(
        "training diverges stopped at step 0: the loss became non-finite"
    )
    assert states["boosted"][0] == "failed" and "diverges" in states["boosted"][1]
    assert not any("\n" in d for _, d in states.values())
    assert not status["active"] and status["line"] == "built: 2 of 4 SAEs ready; 2 failed (diverges, boosted)"
    assert not (ws_path / "saes" / "diverges").exists() and not (ws_path / "saes" / "boosted").exists()


@pytest.mark.slow
def test_a_stopped_staged_build_resumes_where_it_stopped(tiny_src, tmp_path):
    from backend.serve.service import Backend

    ws_path = copy_ws(tiny_src, tmp_path / "ws", parts=("corpora", "activations"))
    config = staged_config(tmp_path, [{"name": "first", **SMALL}, {"name": "second", **SMALL, "tokens": 60_000}])
    builder = StagedBuilder([(config, ws_path)], verbose=False).start()
    sw = builder.builds[0]
    assert builder.wait(sw, timeout=600) and sw.servable()
    b = Backend(ws_path)  # served from the first SAE while the second trains
    deadline = time.time() + 300
    while build_status(ws_path)["saes"][1]["detail"][:4] != "step" and time.time() < deadline:
        time.sleep(0.05)
    status = build_status(ws_path)
    assert status["saes"][1]["state"] == "training" and "training second (step" in status["line"]
    assert b.build_status()["saes"][1]["state"] == "training"
    builder.stop(timeout=120)  # stops between two training batches
    assert not builder._thread.is_alive()
    status = build_status(ws_path)
    assert status["step"] == "failed" and "stopped" in status["line"] and status["saes"][0]["state"] == "ready"
    assert not (ws_path / "saes" / "second").exists()  # nothing half-trained
    trained = (ws_path / "saes" / "first" / "cfg.json").stat().st_mtime_ns
    # a restart serves the first SAE at once and builds only what is missing
    again = StagedBuilder([(config, ws_path)], verbose=False).start()
    assert again.builds[0].settled.is_set()  # the index existed: servable before anything is built
    assert again.join(timeout=600)
    assert (ws_path / "saes" / "first" / "cfg.json").stat().st_mtime_ns == trained
    assert indexed_saes(ws_path / "index.duckdb") == ["first", "second"]
    done = b.build_status()
    assert not done["active"] and done["line"] == "" and [s["state"] for s in done["saes"]] == ["ready", "ready"]
    assert b.sae_names == ["first", "second"]  # build_status refreshed the served index
    b.close()


# ---- the page follows the build (explorer/ui.py; the UI's stand-in backend, no model) -------------------------
def test_the_page_follows_the_build():
    import gradio as gr

    from explorer.ui import build_app, follow_build, sae_pickers, status_html
    from tests.fake_backend import FakeBackend

    class Growing(FakeBackend):
        """The stand-in with only the SAEs built so far (``ready``)."""

        ready = ["topk"]

        def saes(self) -> pd.DataFrame:
            df = super().saes()
            return df[df["name"].isin(self.ready)].reset_index(drop=True)

    b = Growing()
    b.status = {
        "workspace": "fake",
        "active": True,
        "step": "saes",
        "line": "building: 1 of 3 SAEs ready; training relu (step 2 of 5)...",
        "saes": [
            {"name": "topk", "state": "ready", "detail": ""},
            {"name": "relu", "state": "training", "detail": "step 2 of 5"},
            {"name": "boost", "state": "failed", "detail": "the loss <became> non-finite"},
        ],
        "others": [{"workspace": "protein", "active": True, "line": "waiting: builds after the workspaces before it"}],
    }
    demo = build_app(b)
    pickers = sae_pickers(demo, ["topk"])
    labels = sorted(str(c.label) for c, _, _ in pickers)
    assert labels.count("SAE") >= 4 and "map" in labels and any(lb.startswith("SAEs") for lb in labels)
    around = {str(c.label): (before, after) for c, before, after in pickers}
    assert around["map"] == ([], ["joint map (all SAEs)"])
    html = status_html(b.build_status())
    assert "training relu (step 2 of 5)" in html and "the loss &lt;became&gt; non-finite" in html
    assert "workspace <b>protein</b>: waiting" in html

    shown = {"names": ["topk"], "header": None, "subs": []}
    seen, header, _, *picks, timer = follow_build(b, pickers, None, None, shown)
    assert header != gr.skip() and all(p == gr.skip() for p in picks) and timer.active  # same SAEs: no picker sent
    b.ready = ["topk", "relu"]  # relu is ready
    b.status = {**b.status, "line": "building: 2 of 3 SAEs ready", "others": []}
    seen, header, _, *picks, timer = follow_build(b, pickers, None, None, seen)
    assert seen["names"] == ["topk", "relu"] and "relu" in header and timer.active
    for (_, before, after), p in zip(pickers, picks):
        assert p["choices"] == before + ["topk", "relu"] + after
    b.status = {**b.status, "active": False, "line": ""}  # done: the timer stops, nothing else changes
    seen, header, status, *picks, timer = follow_build(b, pickers, None, None, seen)
    assert header == gr.skip() and all(p == gr.skip() for p in picks) and not timer.active and status == ""


# ---- the app: a workspace without an index is mounted when its first SAE is ------------------------------------
@pytest.mark.slow
def test_the_app_mounts_a_workspace_once_its_first_sae_is_indexed(tiny_src, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import urllib.request

    late = REPO / "workspaces" / "test_staged_late"  # app.py builds a config into workspaces/<name>
    shutil.rmtree(late, ignore_errors=True)
    copy_ws(
        tiny_src, late, parts=("corpora", "activations", "subdomains", "saes", "coverage", "meaning")
    )  # all but the index
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    (tmp_path / "late.yaml").write_text(yaml.safe_dump({**cfg, "name": "test_staged_late"}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--workspace", str(tiny_src), "--config", str(tmp_path / "late.yaml")]
            + ["--port", str(port)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
        )

    def status(path: str) -> int:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).status
        except OSError:
            return 0

    try:
        t0, served = time.time(), None
        while time.time() - t0 < 300 and proc.poll() is None:
            if served is None and status("/") == 200:
                served = time.time() - t0
                assert not (late / "index.duckdb").exists() or status("/test_staged_late/") != 200
            if served is not None and status("/test_staged_late/") == 200:
                break
            time.sleep(0.5)
        assert served is not None and status("/test_staged_late/") == 200, log.read_text()[-3000:]
        text = log.read_text()
        assert "workspace test_staged_late (text) at" in text and "test_staged_late: topk ready" in text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(late, ignore_errors=True)
