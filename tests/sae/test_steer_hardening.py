"""Steering under bad and costly input (issue 11): one clear line per bad input, a notice for what was cut,
caps on cost, fair turns between concurrent requests, the time limit and the Stop button.

Runs on the real tiny workspaces (SmolLM2, ESM-2 classifier, SASRec) through backend.serve.service.Backend and
through the tabs' handlers and endpoint functions (what /steer, /steer_outcome and the UI call)."""

from __future__ import annotations

import threading

import gradio as gr
import pytest

from backend.sae import steering
from backend.serve.steer import parse_edits
from explorer.tabs import outcome, steer

PROMPT = "Write one sentence about cats."


def _error(fn, *a, **kw) -> str:
    with pytest.raises(ValueError) as e:
        fn(*a, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# ---- 1. edits parsing -------------------------------------------------------------------------------
BAD_EDITS = [
    (5, "edits must be a list of [latent, mode, value] rows, got 5"),
    ("1 clamp 3", "edits must be a list of [latent, mode, value] rows, got '1 clamp 3'"),
    ([1, 2, 3], "edit 1 must be a [latent, mode, value] row or a {latent, mode, value} object, got 1"),
    ([["inf", "clamp", 1]], "edit 1: latent must be a whole number, got 'inf'"),
    ([[float("inf"), "clamp", 1]], "edit 1: latent must be a whole number, got inf"),
    ([[1.7, "clamp", 1]], "edit 1: latent must be a whole number, got 1.7"),
    ([[1, "clamp", 1, 2]], "edit 1 has 4 fields: give [latent, mode, value]"),
    ([[1]], "edit 1: mode clamp needs a value: give [latent, 'clamp', number]"),
    ([[1, "scale"]], "edit 1: mode scale needs a value: give [latent, 'scale', number]"),
    ([["100", "clamp", "abc"]], "edit 1: value must be a number, got 'abc'"),
    ([[1, "clamp", float("inf")]], "edit 1: value must be a finite number, got inf"),
    ([[1, "clamp", "nan"]], "edit 1: value must be a finite number, got 'nan'"),
    ([[1, "boost", 1]], "edit 1: unknown mode 'boost': use one of clamp, scale, zero, add"),
    (
        [{"latent": 1, "mode": "zero", "strength": 2}],
        "edit 1: unknown field 'strength': an edit has latent, mode and value",
    ),
    ([], "no latent is set: put a latent id in the edits table"),
    (None, "no latent is set: put a latent id in the edits table"),
    (
        [[None, "clamp", 10.0], [float("nan"), "clamp", 10.0], ["", "zero", None]],
        "no latent is set: put a latent id in the edits table",
    ),
    ([[i, "clamp", 1.0] for i in range(65)], "65 edits given; the limit is 64 per request"),
]


@pytest.mark.parametrize("edits,message", BAD_EDITS)
def test_bad_edits_are_one_line_each(edits, message):
    assert _error(parse_edits, edits) == message


def test_good_edits_and_the_blank_row_notice():
    edits, notice = parse_edits([[3, "clamp", 5], {"latent": "7", "mode": "ZERO"}, (9.0, None, "2.5")])
    assert [(e.latent, e.mode, e.value) for e in edits] == [(3, "clamp", 5.0), (7, "zero", 0.0), (9, "clamp", 2.5)]
    assert notice is None
    edits, notice = parse_edits([[3, "scale", 2.0], [None, "clamp", 10.0], [float("nan"), "clamp", 10.0]])
    assert len(edits) == 1 and notice == "2 blank edit rows (no latent) skipped."
    assert steering.MODES == ("clamp", "scale", "zero", "add")
    import backend.serve.steer as ss

    assert not hasattr(ss, "EDIT_MODES")  # one declaration of the modes: steering.MODES


def test_edit_ranges_through_the_backend(tb):
    sae = tb.sae_names[0]
    assert (
        _error(tb.steer_stream, sae, PROMPT, [[10**30, "clamp", 1]])
        == "latent 1000000000000000000000000000000 is out of range: this SAE has latents 0..1151"
    )
    assert _error(tb.steer_stream, sae, PROMPT, [[-1, "clamp", 1]]).startswith("latent -1 is out of range")
    assert (
        _error(tb.steer_stream, sae, PROMPT, [[4, "zero"], [4, "clamp", 2]])
        == "edit 2: latent 4 is already edited by edit 1: edit each latent once"
    )
    assert "exceeds the bound" in _error(tb.steer_stream, sae, PROMPT, [[4, "clamp", 1e6]])
    assert (
        _error(tb.steer_stream, sae, PROMPT, [[None, "clamp", 10.0]])
        == "no latent is set: put a latent id in the edits table"
    )


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(max_new_tokens=500), "max_new_tokens must be between 1 and 128, got 500"),
        (dict(max_new_tokens=float("inf")), "max_new_tokens must be a whole number between 1 and 128, got inf"),
        (dict(max_new_tokens=10**30), "max_new_tokens must be between 1 and 128, got 1000000000000000000000000000000"),
        (dict(max_new_tokens=0), "max_new_tokens must be between 1 and 128, got 0"),
        (dict(seed=float("inf")), "seed must be a whole number between 0 and 2,147,483,647, got inf"),
        (dict(seed=2**31), "seed must be between 0 and 2,147,483,647, got 2147483648"),
        (dict(seed=1.5), "seed must be a whole number between 0 and 2,147,483,647, got 1.5"),
        (dict(temperature=float("nan")), "temperature must be a number between 0 and 2, got nan"),
        (dict(temperature=2.5), "temperature must be a number between 0 and 2, got 2.5"),
    ],
)
def test_bad_generation_arguments(tb, kw, message):
    assert _error(tb.steer_stream, tb.sae_names[0], PROMPT, [[1, "clamp", 5.0]], **kw) == message


# ---- 2. cost caps -----------------------------------------------------------------------------------
def test_prompt_caps(tb):
    sae = tb.sae_names[0]
    assert (
        _error(tb.steer_stream, sae, "x" * 20_001, [[1, "clamp", 5.0]])
        == "prompt has 20,001 characters; the limit is 20,000"
    )
    assert "prompt is empty" in _error(tb.steer_stream, sae, "   ", [[1, "clamp", 5.0]])
    long = "word " * 600
    n = len(tb.adapter().encode_ids(long))
    u = tb.steer(sae, long, [[1, "clamp", 5.0], [None, "clamp", 10.0]], max_new_tokens=1, chat=False)
    assert u.done and u.notice == (
        f"The prompt had {n} tokens; only its last 512 were used. 1 blank edit row (no latent) skipped."
    )


def test_time_limit_stops_the_generation_with_a_notice(tb, monkeypatch):
    monkeypatch.setattr(steering, "STEER_TIME_LIMIT_S", 0.001)
    u = tb.steer(tb.sae_names[0], PROMPT, [[1, "clamp", 5.0]], max_new_tokens=64, temperature=0.0)
    assert u.done and u.notice == "stopped after 0.001 s (the time limit per request)."
    assert 0 < len(tb.adapter().encode_ids(u.baseline)) < 64  # what was generated before the limit is returned


# ---- 3. fair turns, identical outputs -------------------------------------------------------------
def test_turn_lock_hands_turns_over_in_arrival_order():
    lock, order, started = steering.TurnLock(), [], []
    lock.acquire()  # held: the threads below queue in the order they arrive

    def worker(i: int) -> None:
        started.append(i)
        with lock.turn():
            order.append(i)

    threads = []
    for i in range(4):
        threads.append(threading.Thread(target=worker, args=(i,)))
        threads[-1].start()
        while len(lock._waiting) < i + 1:  # wait until thread i is queued
            pass
    lock.release()
    for t in threads:
        t.join()
    assert order == [0, 1, 2, 3] and not lock._busy


def test_interleaved_streams_give_the_sequential_texts(tb, monkeypatch):
    sae = tb.sae_names[0]
    reqs = {"a": ([[1, "clamp", 8.0]], 3), "b": ([[40, "add", 30.0]], 11)}

    def run(name):
        edits, seed = reqs[name]
        u = tb.steer(sae, PROMPT, edits, max_new_tokens=6, temperature=0.9, seed=seed)
        return u.baseline, u.steered

    sequential = {n: run(n) for n in reqs}
    turns: list[str] = []
    real_acquire = steering.TurnLock.acquire

    def acquire(self):
        real_acquire(self)
        turns.append(threading.current_thread().name)

    monkeypatch.setattr(steering.TurnLock, "acquire", acquire)
    results: dict = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, run(n)), name=n) for n in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == sequential  # per-request torch.Generator: interleaving changes nothing
    switches = sum(x != y for x, y in zip(turns, turns[1:]))
    assert switches >= 4, turns  # the two requests took turns token by token


def test_closing_a_stream_releases_the_turn_and_the_hooks(tb):
    """What the Stop button does: Gradio closes the handler's generator after at most one more step."""
    from backend.adapters.base import Site

    adapter = tb.adapter()
    block = adapter.layers[Site.parse(tb.ws.config.activations.site).layer]
    before = len(block._forward_hooks)
    stream = tb.steer_stream(tb.sae_names[0], PROMPT, [[1, "clamp", 8.0]], max_new_tokens=64)
    first = next(stream)
    assert not first.done and len(block._forward_hooks) == before + 1  # the steered generation's hook
    stream.close()
    assert len(block._forward_hooks) == before
    lock = tb._steer_turns
    assert not lock._busy and not lock._waiting


# ---- 4. the Steer tab's handler, endpoint and Stop button ----------------------------------------------
def test_ui_handler_and_endpoint_answer_one_line(tb):
    sae = tb.sae_names[0]
    assert steer.steer_api(tb, sae, PROMPT, [[1, "clamp", 1.0]], max_new_tokens=float("inf")) == {
        "error": "max_new_tokens must be a whole number between 1 and 128, got inf"
    }
    assert steer.steer_api(tb, sae, PROMPT, 5) == {"error": "edits must be a list of [latent, mode, value] rows, got 5"}
    assert steer.steer_api(tb, ["topk"], PROMPT, [[1, "clamp", 1.0]])["error"].startswith("sae must be the name")
    import pandas as pd

    blank = pd.DataFrame([[None, "clamp", 10.0]], columns=steer.EDIT_COLUMNS)
    one = blank.assign(latent=[3.0])
    for args in [
        (sae, PROMPT, blank, 8, 0.7, 0, True),
        (sae, PROMPT, one, None, 0.7, 0, True),
        (sae, PROMPT, one, 8, 0.7, float("inf"), True),
        (sae, PROMPT, "junk", 8, 0.7, 0, True),
    ]:
        with pytest.warns(UserWarning):
            out = list(steer.run_steer(tb, *args))
        assert len(out) == 1 and out[0][:2] == ("", "") and out[0][2].startswith("⚠ ") and "\n" not in out[0][2]
    assert "no latent is set" in list(_quiet(steer.run_steer, tb, sae, PROMPT, blank, 8, 0.7, 0, True))[0][2]


def _quiet(fn, *a):
    with pytest.warns(UserWarning):
        return list(fn(*a))


def test_steer_tab_has_a_stop_button_and_shares_the_model_four_at_a_time():
    assert steer.MAX_NEW_TOKENS == steering.MAX_NEW_TOKENS
    with gr.Blocks() as demo:
        steer.build(None, ["topk"])
    fns = list(demo.fns.values())
    steering_fns = [f for f in fns if f.concurrency_id == "steer"]
    assert len(steering_fns) == 2 and all(f.concurrency_limit == steer.CONCURRENCY == 4 for f in steering_fns)
    gen = next(f for f in steering_fns if f.api_name != "steer")
    stop = [f for f in fns if f.cancels]
    assert len(stop) == 1 and stop[0].cancels == [gen._id]
    buttons = [b for b in demo.blocks.values() if isinstance(b, gr.Button)]
    assert any(b.value == "Stop" for b in buttons)


# ---- 5. /steer_outcome -------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [-1, 0, 5000, 10**9, float("inf"), 2.5])
def test_recsys_k_is_bounded(rb, k):
    msg = _error(rb.steer_outcome, "topk", rb.example_input(), [[1, "zero"]], k=k)
    assert msg.startswith("k must be") and "between 1 and 100" in msg


def test_recsys_history_caps_and_notice(rb):
    ids = list(rb.adapter().index)
    hist = " ".join(ids[:60])
    r = rb.steer_outcome("topk", hist, [[1, "zero"]], k=5)
    assert r["notice"] == "Used the last 50 of 60 items (the model reads at most 50)."
    last50 = rb.adapter().encode_ids(" ".join(ids[10:60]))
    assert len(r["history"]) == 50 and r["history"] == rb.adapter().token_strings(last50)
    assert rb.steer_outcome("topk", hist, [[1, "zero"], [None, "clamp", 10.0]], k=5)["notice"].endswith(
        "1 blank edit row (no latent) skipped."
    )
    big = " ".join(ids * 20)
    assert (
        _error(rb.steer_outcome, "topk", big, [[1, "zero"]])
        == f"history has {len(big):,} characters; the limit is 20,000"
    )
    assert _error(rb.steer_outcome, "topk", hist, []) == "no latent is set: put a latent id in the edits table"
    assert rb.steer_outcome("topk", hist, [[1, "zero"]], k=5, motif="C.C")["notice"].endswith(
        "The motif applies to protein models only; it was ignored."
    )
    assert outcome.steer_outcome_api(rb, "topk", hist, [[1, "zero"]], k=10**30) == {
        "error": "k must be between 1 and 100, got 1000000000000000000000000000000"
    }


def test_protein_sequence_caps_and_notice(pb):
    seq = "MKVLAAGIVG" * 150  # 1,500 residues
    r = pb.steer_outcome("topk", seq, [[0, "clamp", 5.0]])
    assert (
        r["kind"] == "classifier"
        and r["notice"] == "The sequence has 1,500 residues; only its first 1,022 were used (the model's length limit)."
    )
    assert (
        _error(pb.steer_outcome, "topk", "M" * 20_001, [[0, "zero"]])
        == "sequence has 20,001 characters; the limit is 20,000"
    )
    short = "MKVLAAGIVGKLLAQAK"
    assert pb.steer_outcome("topk", short, [[0, "zero"]])["notice"] is None
    assert "motif was ignored" in pb.steer_outcome("topk", short, [[0, "zero"]], motif="C.{2,4}C")["notice"]
    for kw, message in [
        (dict(n_iters=0), "n_iters must be between 1 and 200, got 0"),
        (dict(n_iters=201), "n_iters must be between 1 and 200, got 201"),
        (dict(n_iters=float("inf")), "n_iters must be a whole number between 1 and 200, got inf"),
        (dict(seed=10**30), f"seed must be between 0 and 2,147,483,647, got {10**30}"),
        (dict(motif="C" * 101), "motif has 101 characters; the limit is 100"),
    ]:
        assert _error(pb.steer_outcome, "topk", short, [[0, "zero"]], **kw) == message
    assert _error(pb.steer_outcome, "topk", short, [[0, "zero"]], motif="C(.{2,4}C").startswith(
        "the motif 'C(.{2,4}C' is not a valid regular expression: missing )"
    )
    html, _ = outcome.run_outcome(pb, "topk", seq, [[0, "clamp", 5.0]], 10, "", 0)
    assert "only its first 1,022 were used" in html and "classifier probabilities" in html
    with pytest.warns(UserWarning, match="n_iters|k must"):
        html, _ = outcome.run_outcome(pb, "topk", short, [[0, "zero"]], float("inf"), "", 0)
    assert "msg error" in html


def test_a_motif_that_backtracks_forever_is_one_line():
    from backend.adapters.protein import _motif_found, compile_motif

    with pytest.raises(ValueError, match=r"takes too long to match .*simplify it"):
        _motif_found(compile_motif("(A+)+B"), "A" * 1000)
    assert _motif_found(compile_motif("C.{2,4}C"), "MKCAACK")
