"""Fair steering: a short request's latency while the longest allowed request runs, one run.

    .venv/bin/python bench/bench_steer_fairness.py [--workspace workspaces/tiny] [--no-gradio]

The long request is the longest /steer allows: a prompt over MAX_PROMPT_TOKENS (cut to its last 512 tokens)
and MAX_NEW_TOKENS new tokens (a counting prompt without the chat template, so the model does not stop
early). The short one asks for 4 new tokens and starts 1 s after the long one. Three schedules:

- alone: each request on an idle model;
- whole request (the old behaviour, Gradio's default concurrency_limit=1): the short request waits
  until the long one has finished;
- turns (now): both run, their token steps alternate through the Backend's TurnLock.

With --gradio (the default) the same pair is also sent through a running app's /steer endpoint
(concurrency_limit 4, gradio_client), to check the Gradio-level setting end to end.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from backend import steering  # noqa: E402
from backend.serve.service import Backend  # noqa: E402

LONG_PROMPT = " ".join(f"{i}," for i in range(1, 400))  # ~1,900 tokens: cut to the last 512
SHORT_PROMPT = "Name a colour."
EDITS = [[1, "clamp", 5.0]]


def ensure_workspace(path: Path) -> None:
    if not (path / "index.duckdb").exists():
        from backend.build import build_workspace

        print(f"building {path} from configs/tiny.yaml (a few minutes, once)", flush=True)
        build_workspace(ROOT / "configs" / "tiny.yaml", path, verbose=False)


def run_pair(long_fn, short_fn, delay: float = 1.0) -> dict:
    """Start long_fn, then short_fn ``delay`` s later, each in its own thread; their times from their own start."""
    out: dict = {}

    def timed(name, fn):
        t = time.perf_counter()
        out[name + "_result"] = fn()
        out[name] = time.perf_counter() - t

    lt = threading.Thread(target=timed, args=("long", long_fn))
    lt.start()
    time.sleep(delay)
    st = threading.Thread(target=timed, args=("short", short_fn))
    st.start()
    lt.join()
    st.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default=str(ROOT / "workspaces" / "tiny"))
    ap.add_argument("--no-gradio", action="store_true", help="skip the run through the app's /steer endpoint")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    ensure_workspace(Path(args.workspace))
    b = Backend(args.workspace)
    sae = b.sae_names[0]
    adapter = b.adapter()

    def long_req():
        return b.steer(sae, LONG_PROMPT, EDITS, max_new_tokens=steering.MAX_NEW_TOKENS, temperature=0.0, chat=False)

    def short_req():
        return b.steer(sae, SHORT_PROMPT, EDITS, max_new_tokens=4, temperature=0.0)

    short_req()  # warm-up
    print(
        f"caps: prompt {steering.MAX_PROMPT_TOKENS} tokens, {steering.MAX_NEW_TOKENS} new tokens, "
        f"{steering.STEER_TIME_LIMIT_S:g} s per request; torch threads {torch.get_num_threads()}"
    )

    t = time.perf_counter()
    s = short_req()
    short_alone = time.perf_counter() - t
    t = time.perf_counter()
    lg = long_req()
    long_alone = time.perf_counter() - t
    n_long = len(adapter.encode_ids(lg.steered))
    print(
        f"alone: short (4 new tokens) {short_alone:.2f} s; long ({n_long} new tokens) {long_alone:.2f} s"
        f"  [notice: {lg.notice}]"
    )

    whole = threading.Lock()  # one request at a time, as with Gradio's concurrency_limit=1

    def serial(fn):
        def run():
            with whole:
                return fn()

        return run

    r = run_pair(serial(long_req), serial(short_req))
    print(f"whole request (old): short {r['short']:.2f} s, long {r['long']:.2f} s")
    serial_short = r["short"]

    r = run_pair(long_req, short_req)
    print(
        f"turns (now):         short {r['short']:.2f} s, long {r['long']:.2f} s"
        f"  [long notice: {r['long_result'].notice}]"
    )
    assert r["short_result"].steered == s.steered, "the short request's text changed under interleaving"
    print(
        f"short request: {serial_short / r['short']:.1f}x faster than behind the long one; "
        f"{r['short'] / short_alone:.1f}x its time alone. "
        f"Long request: {r['long'] / long_alone:.2f}x its time alone."
    )

    if not args.no_gradio:
        gradio_pair(b, sae)
    b.close()


def gradio_pair(b: Backend, sae: str) -> None:
    """The same pair through a running app's /steer endpoint (two gradio_client clients)."""
    import gradio as gr
    from gradio_client import Client

    from explorer.tabs import steer

    with gr.Blocks() as demo:
        steer.build(b, b.sae_names)
    demo.queue()
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1")
    try:
        c1, c2 = Client(url, verbose=False), Client(url, verbose=False)
        r = run_pair(
            lambda: c1.predict(sae, LONG_PROMPT, EDITS, steering.MAX_NEW_TOKENS, 0.0, 0, api_name="/steer"),
            lambda: c2.predict(sae, SHORT_PROMPT, EDITS, 4, 0.0, 0, api_name="/steer"),
        )
        print(
            f"via the app's /steer (concurrency_limit {steer.CONCURRENCY}): short {r['short']:.2f} s, "
            f"long {r['long']:.2f} s  [long notice: {r['long_result'].get('notice')}]"
        )
    finally:
        demo.close()


if __name__ == "__main__":
    main()
