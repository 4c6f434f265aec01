"""Hostile input against the running app: every named endpoint of the tiny text, protein and recommender
workspaces (gradio_client, values drawn by Hypothesis), and every UI handler through the raw queue
(``/gradio_api/queue/join`` with an ``fn_index``, as any client can call it).

Every answer must be a normal result or ``{"error": "<one line>"}`` with no server path, SQL or
traceback in it; no request may read a file it names (a secret JSON file outside the workspace is
never echoed) or write into a workspace (every file's size and mtime are unchanged afterwards); and
a normal request still succeeds at the end. Bounded: a fixed number of examples per endpoint.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.explorer.test_browser import serve

pytestmark = pytest.mark.slow

SECRET = f"secret-{uuid.uuid4().hex}"
SECRET_FILE = Path("/tmp") / f"sae_fuzz_{uuid.uuid4().hex[:8]}.json"
TRAVERSALS = [
    f"../../../../../..{SECRET_FILE.with_suffix('')}",
    f"../../../../../..{SECRET_FILE}",
    "../saes/topk/cfg",
    "../index",
    "/etc/passwd",
    "..",
    ".",
    "",
    " ",
    "\x00",
    "%2e%2e%2f",
]
REPO = Path(__file__).resolve().parents[2]
# what a client must never see: a traceback, the server's own paths, SQL, or a file it named (the secret)
LEAKS = ("Traceback", str(REPO), "SELECT ", "site-packages", "sae_weights", SECRET)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))

# JSON's own values (gradio_client cannot send NaN or Infinity; test_raw_nan_and_infinity sends them raw)
HUGE = st.sampled_from([10**30, -(10**30), 2**63, -(2**63) - 1, 1e308, -1e308, 1.7, -1, 0, True])
HOSTILE_TEXT = st.one_of(
    st.sampled_from(TRAVERSALS), st.text(max_size=40), st.text(min_size=300, max_size=400), st.just("x" * 30_000)
)
HOSTILE = st.one_of(
    st.none(),
    HUGE,
    HOSTILE_TEXT,
    st.lists(st.one_of(HUGE, HOSTILE_TEXT), max_size=4),
    st.dictionaries(st.text(max_size=5), HUGE, max_size=2),
)


def strategy(param: str, saes: list[str]):
    """Hostile values for a parameter, mixed with valid ones so that deeper code is reached too."""
    sae = st.sampled_from(saes)
    valid = {
        "sae": sae,
        "other_sae": st.one_of(st.just(""), sae),
        "saes": st.lists(sae, min_size=2, max_size=40),
        "latent": st.integers(0, 64),
        "k": st.integers(1, 20),
        "limit": st.integers(1, 50),
        "offset": st.integers(0, 100),
        "top_n": st.integers(1, 20),
        "threshold": st.floats(0, 1),
        "max_new_tokens": st.integers(1, 3),
        "temperature": st.floats(0, 1),
        "seed": st.integers(0, 5),
        "n_iters": st.integers(1, 3),
        "edits": st.lists(
            st.tuples(st.integers(0, 64), st.sampled_from(["clamp", "zero", "scale"]), st.floats(-5, 5)).map(list),
            max_size=2,
        ),
    }.get(param, HOSTILE_TEXT)
    return st.one_of(HOSTILE, valid)


def check_answer(endpoint: str, out) -> None:
    text = json.dumps(out, default=str)
    assert not any(s in text for s in LEAKS), f"{endpoint} leaked server details: {text[:300]}"
    if isinstance(out, dict) and "error" in out:
        assert isinstance(out["error"], str) and out["error"] and "\n" not in out["error"], out
    else:
        assert isinstance(out, (list, dict)), f"{endpoint} returned {type(out).__name__}"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def app(tiny_ws, protein_ws, recsys_ws, tmp_path_factory):
    SECRET_FILE.write_text(json.dumps({"secret": SECRET}))
    folders = [tiny_ws.path, protein_ws.path, recsys_ws.path]
    before = {str(f): snapshot(Path(f)) for f in folders}
    log = tmp_path_factory.mktemp("fuzz") / "app.log"
    try:
        with serve(folders, log) as (url, _):
            yield url, folders
    finally:
        SECRET_FILE.unlink(missing_ok=True)
    for f in folders:
        assert snapshot(Path(f)) == before[str(f)], f"a request changed files in {f}"


def workspaces(url: str, folders) -> list[tuple[str, str, list[str]]]:
    """(name, url, SAE names) of each served workspace: the first at /, the others at /<name>/."""
    from backend.workspace import open_workspace

    configs = [open_workspace(f).config for f in folders]
    return [(c.name, url if i == 0 else f"{url}{c.name}/", [s.name for s in c.saes]) for i, c in enumerate(configs)]


def test_every_named_endpoint_survives_hostile_input(app):
    from gradio_client import Client

    url, folders = app
    for name, ws_url, saes in workspaces(url, folders):
        client = Client(ws_url, verbose=False)
        api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert len(api) >= 8, f"{name}: only {sorted(api)}"
        for endpoint, info in sorted(api.items()):
            params = [p["parameter_name"] for p in info["parameters"]]
            args = st.fixed_dictionaries({p: strategy(p, saes) for p in params})

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            @given(args)
            def call(kwargs):
                check_answer(f"{name}{endpoint}", client.predict(api_name=endpoint, **kwargs))

            call()
        # a normal request still succeeds afterwards
        lat = client.predict(api_name="/latents", sae=saes[0], limit=3)
        assert isinstance(lat, list) and len(lat) == 3


def sse_result(url: str) -> str:
    """The text of an SSE stream up to its first complete/error event."""
    out = []
    with urllib.request.urlopen(url, timeout=120) as stream:
        for raw in stream:
            line = raw.decode()
            out.append(line)
            if line.startswith("event: complete") or line.startswith("event: error"):
                out.append(stream.readline().decode())
                break
    return "".join(out)


def test_raw_nan_and_infinity_in_every_argument(app):
    """Raw HTTP bodies with JSON's non-standard NaN / Infinity (which Python's json module reads) in each argument."""
    from gradio_client import Client

    url, folders = app
    for name, base, saes in workspaces(url, folders):
        api = Client(base, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
        for endpoint, info in sorted(api.items()):
            params = [p["parameter_name"] for p in info["parameters"]]
            good = {"sae": json.dumps(saes[0]), "saes": json.dumps(saes[:2]), "edits": '[[1, "clamp", 1]]'}
            for i, _ in enumerate(params):
                for bad in ("Infinity", "-Infinity", "NaN", "1e400"):
                    args = [good.get(p, "1") if j != i else bad for j, p in enumerate(params)]
                    body = ('{"data": [' + ", ".join(args) + "]}").encode()
                    req = urllib.request.Request(
                        f"{base}gradio_api/call{endpoint}", body, {"Content-Type": "application/json"}
                    )
                    try:
                        event = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
                    except urllib.error.HTTPError as e:  # refused before it reaches the function: fine
                        assert e.code in (400, 422), f"{name}{endpoint} {args}: HTTP {e.code}"
                        continue
                    text = sse_result(f"{base}gradio_api/call{endpoint}/{event}")
                    assert not any(s in text for s in LEAKS), f"{name}{endpoint} {args} leaked: {text[:300]}"
                    assert "event: complete" in text and '"error"' in text or "event: error" in text, (
                        f"{name}{endpoint} {args} accepted a non-finite value: {text[:300]}"
                    )


def queue_call(base: str, fn_index: int, data: list) -> dict:
    """One event through the raw queue, as the browser sends it; returns the completion message."""
    session = uuid.uuid4().hex[:10]
    body = json.dumps(
        {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    ).encode()
    req = urllib.request.Request(f"{base}gradio_api/queue/join", body, {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()
    with urllib.request.urlopen(f"{base}gradio_api/queue/data?session_hash={session}", timeout=120) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError(f"fn_index {fn_index}: the stream ended without completing")


def test_ui_handlers_through_the_raw_queue_validate_their_input(app):
    url, folders = app
    for name, base, _ in workspaces(url, folders):
        config = json.loads(urllib.request.urlopen(f"{base}config", timeout=30).read())
        deps = [d for d in config["dependencies"] if d.get("backend_fn")]
        assert len(deps) > 10, name
        for d in deps:
            n = len(d["inputs"])
            for payload in (TRAVERSALS[0], 10**30, None, ["../x", math.nan]):
                msg = queue_call(base, d["id"], [payload] * n)
                text = json.dumps(msg)
                assert not any(s in text for s in LEAKS), f"{name} fn {d['id']} leaked: {text[:300]}"
        # the server still answers a normal event
        assert urllib.request.urlopen(f"{base}config", timeout=30).status == 200
