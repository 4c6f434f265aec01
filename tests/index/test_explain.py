"""The LLM explainer and the one scorer, end to end: `python -m backend label` against a real OpenAI-compatible
HTTP server (tests/llm_server.py: /v1/chat/completions over the embedded SmolLM2-135M-Instruct, real generation),
the in-process model, the cache, retries, one-line errors; and the statistical labels' fields on the tiny index.

Fast tests relabel a copy of the synthetic index (tests/_index_fixtures.py); the model tests relabel a copy of the
tiny workspace's topk SAE indexed by the current code (never workspaces/tiny itself)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from backend.__main__ import main
from backend.config import ConfigError, ExplainerConfig, WorkspaceConfig
from backend.index.explain import (
    ExplainerError,
    LocalChat,
    OpenAIChat,
    Reply,
    Request,
    Runner,
    chat_url,
    explain_examples,
    parse_explanation,
)
from backend.index.label import show_token
from backend.index.relabel import CACHE_NAME, label_workspace
from backend.index.store import IndexReader, LabelCache
from backend.serve.service import Backend
from backend.workspace import open_workspace
from tests.llm_server import ChatServer

pytest_plugins = ("tests._index_fixtures",)  # synth_ws
MODEL = "smollm2-test"
SMALL = ["--examples", "4", "--score-contexts", "2", "--score-batch", "4", "--max-tokens", "16"]  # quick on CPU


def _latents(path: Path):
    r = IndexReader(path)
    try:
        return r.df("SELECT sae, latent, label, confidence, method, scorer FROM latents ORDER BY sae, latent")
    finally:
        r.close()


def _explanations(path: Path, sae: str, latent: int):
    r = IndexReader(path)
    try:
        return r.explanations(sae, latent)
    finally:
        r.close()


@pytest.fixture
def synth_copy(synth_ws, tmp_path):
    """A private copy of the synthetic workspace (index built by the current code: held-out contexts)."""
    return open_workspace(shutil.copytree(synth_ws.path, tmp_path / "synth"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- config, flags, parsing (no model) -------------------------------------------------------------------
def test_the_explainer_is_configured_in_the_workspace_yaml():
    cfg = WorkspaceConfig.from_dict(
        {
            "name": "x",
            "corpora": [{"name": "hpo"}],
            "label": {"explainer": {"base_url": "http://h:8000/v1", "model": "m"}},
        }
    )
    assert (cfg.label.explainer.base_url, cfg.label.explainer.model, cfg.label.explainer.api_key_env) == (
        "http://h:8000/v1",
        "m",
        "",
    )
    with pytest.raises(ConfigError, match=r"label.explainer: unknown key\(s\) \['modle'\]"):
        WorkspaceConfig.from_dict({"name": "x", "corpora": [{"name": "hpo"}], "label": {"explainer": {"modle": "m"}}})
    with pytest.raises(ConfigError, match="must start with http"):
        ExplainerConfig(base_url="localhost:8000")
    # written to workspace.yaml only when set: older code can still read a workspace built now
    assert "label" not in cfg.__class__.from_dict({"name": "x", "corpora": [{"name": "hpo"}]}).to_dict()
    assert cfg.to_dict()["label"]["explainer"]["model"] == "m" and WorkspaceConfig.from_dict(cfg.to_dict()) == cfg
    assert chat_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_url("http://h/api/v1/") == "http://h/api/v1/chat/completions"


def test_explanations_are_parsed_from_the_last_marked_line():
    assert (
        parse_explanation("Thinking...\n[EXPLANATION]: the word <<not>> in legal text.") == "the word not in legal text"
    )
    assert parse_explanation("Explanation: Negation") == "Negation"
    assert parse_explanation("Some words\n\nplural nouns\n") == "plural nouns"
    assert parse_explanation("") == ""
    # a small model copying the worked example's answer has explained nothing
    demo = '[EXPLANATION]: the word "not" after an auxiliary or modal verb'
    assert parse_explanation(f'{demo}\n[EXPLANATION]: the word "not" after') == ""
    assert parse_explanation(f"{demo}\n[EXPLANATION]: legal disclaimers") == "legal disclaimers"


def test_explainer_examples_are_top_contexts_then_quantile_bands():
    rows = [{"kind": "top", "rank": i, "tokens": ["a"], "acts": [9.0 - i]} for i in range(6)]
    rows += [{"kind": f"q{b}", "rank": 0, "tokens": [f"q{b}"], "acts": [1.0]} for b in range(3)]
    shown = explain_examples(rows, 6)
    assert [s.tokens[0] for s in shown] == ["a"] * 4 + ["q2", "q1"]  # 2/3 top, then the highest bands first
    assert len(explain_examples(rows[:6], 6)) == 6  # no quantile samples: more top contexts


class _Upper:
    """A stand-in chat model for the request runner's bookkeeping (the real model is tested over HTTP below)."""

    name, model, concurrency = "llm:upper", "upper", 2

    def __init__(self):
        self.seen: list[str] = []

    def chat(self, messages, max_tokens):
        text = messages[-1]["content"]
        self.seen.append(text)
        if text == "boom":
            raise ExplainerError("the explainer endpoint x keeps failing")
        return Reply(text.upper(), 10, 2)


def test_the_runner_answers_from_the_cache_first_and_counts_tokens(tmp_path):
    chat, cache = _Upper(), LabelCache(tmp_path / CACHE_NAME)
    reqs = [Request("s", i, "explain", [{"role": "user", "content": f"latent {i}"}], 8) for i in range(3)]
    runner = Runner(chat, cache, progress=False)
    assert runner.run(reqs) == ["LATENT 0", "LATENT 1", "LATENT 2"] and runner.calls == 3
    assert runner.cost() == "3 calls to llm:upper (0 answered from the cache): 30 prompt + 6 completion tokens"
    again = Runner(chat, cache, progress=False)
    assert again.run(reqs[::-1]) == ["LATENT 2", "LATENT 1", "LATENT 0"] and (again.calls, again.cached) == (0, 3)
    other = Request("s", 0, "explain", [{"role": "user", "content": "latent 0"}], 9)  # another prompt: asked
    assert again.run([other]) == ["LATENT 0"] and again.calls == 1 and len(chat.seen) == 4
    boom = [Request("s", 5, "explain", [{"role": "user", "content": "boom"}], 8)]
    with pytest.raises(ExplainerError, match="keeps failing"):
        again.run(boom + reqs)
    cache.close()


class _Canned:
    """A stand-in chat model: explains every latent as "cats"; as a scorer, says "fires" to every example when the
    explanation is "cats" (``believe_cats``) and "no" otherwise."""

    name, model, concurrency = "llm:canned", "canned", 1

    def __init__(self, believe_cats: bool):
        self.believe_cats = believe_cats

    def chat(self, messages, max_tokens):
        text = messages[-1]["content"]
        if "[EXPLANATION]" in messages[0]["content"]:
            return Reply("[EXPLANATION]: cats")
        n = text.count("\nExample ") + text.startswith("Example ")
        bit = int(self.believe_cats and text.startswith("Explanation: cats"))
        return Reply(str([bit] * n))


@pytest.mark.parametrize("believe_cats", [False, True])
def test_the_best_scoring_explanation_is_the_label(synth_copy, believe_cats):
    before = _latents(synth_copy.index_path).set_index(["sae", "latent"])
    (s,), cost = label_workspace(
        synth_copy, "llm", ExplainerConfig(), ["a"], 3, progress=False, chat=_Canned(believe_cats)
    )
    assert (s.latents, s.explained, s.scorer) == (3, 3, "llm:canned") and cost.startswith(
        "21 calls to llm:canned"
    )  # 3 + 3 x 2 x (2 + 1)
    lat = _latents(synth_copy.index_path).set_index(["sae", "latent"])
    done = lat[lat["scorer"] == "llm:canned"]
    assert len(done) == 3 and (lat.drop(done.index)["label"] == before.drop(done.index)["label"]).all()
    for (sae, latent), row in done.iterrows():
        ex = _explanations(synth_copy.index_path, sae, latent)
        assert sorted(zip(ex["method"], ex["scorer"])) == [
            ("llm", "llm:canned"),
            ("statistical", "llm:canned"),
            ("statistical", "rule"),
        ]
        if believe_cats:  # "cats" says every context fires: recall 1, precision = the firing share
            assert (row["label"], row["method"]) == ("cats", "llm") and row["confidence"] > 0
        else:  # a scorer that sees nothing: every detection 0, the statistical label stays
            assert (row["label"], row["method"]) == (before.loc[(sae, latent), "label"], "statistical")
            assert row["confidence"] == 0


def test_an_unreachable_endpoint_is_one_line_and_the_labels_stay(synth_copy, capsys):
    before = _latents(synth_copy.index_path)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    argv = ["label", "--workspace", str(synth_copy.path), "--explainer", "llm", "--base-url", url, "--model", "m"]
    assert main([*argv, "--retries", "1", "--backoff-s", "0.01", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: the explainer endpoint {url}/chat/completions cannot be reached"
    )
    assert "after 2 tries; the statistical labels stay" in err[0]
    assert _latents(synth_copy.index_path).equals(before)


def test_the_llm_explainer_needs_an_endpoint(synth_copy, capsys):
    assert main(["label", "--workspace", str(synth_copy.path), "--explainer", "llm"]) == 2
    assert "needs an endpoint and a model: pass --base-url URL --model NAME" in capsys.readouterr().err
    assert main(["label", "--workspace", str(synth_copy.path), "--saes", "nope"]) == 2
    assert "SAE(s) nope are not in the index (it holds a, b)" in capsys.readouterr().err


def test_a_statistical_relabel_without_an_endpoint_keeps_the_rule_labels(synth_copy, capsys):
    before = _latents(synth_copy.index_path)
    assert main(["label", "--workspace", str(synth_copy.path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "[label] a: " in out and "scorer rule" in out and "cost" not in out
    after = _latents(synth_copy.index_path)
    assert after[["label", "method", "scorer"]].equals(before[["label", "method", "scorer"]])
    assert (after["confidence"] - before["confidence"]).abs().max() < 1e-12


# ---- a real server over real HTTP ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def llm_server(smollm2):
    server = ChatServer(smollm2, MODEL).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def topk_index(tiny_ws, tmp_path_factory) -> Path:
    """The tiny workspace's topk SAE indexed by the current code, in a workspace linking the real one's parts."""
    from backend.index.build import add_to_index
    from tests._index_fixtures import link_workspace

    ws = link_workspace(Path(tiny_ws.path), tmp_path_factory.mktemp("topk_index") / "ws")
    add_to_index(ws, ["topk"], progress=False)
    return ws.index_path


@pytest.fixture
def tiny_copy(tiny_ws, topk_index, tmp_path):
    from tests._index_fixtures import link_workspace

    ws = link_workspace(Path(tiny_ws.path), tmp_path / "ws")
    shutil.copy(topk_index, ws.index_path)
    return ws


def test_retries_with_backoff_then_one_line_when_the_server_keeps_failing(llm_server):
    chat = OpenAIChat(ExplainerConfig(base_url=llm_server.url, model=MODEL, retries=3, backoff_s=0.01))
    n0, llm_server.fail_next = llm_server.calls, 2
    reply = chat.chat([{"role": "user", "content": "Say OK."}], 4)
    assert llm_server.calls - n0 == 3 and reply.completion_tokens >= 1 and reply.prompt_tokens > 5  # 2 x 500, then 200
    chat = OpenAIChat(ExplainerConfig(base_url=llm_server.url, model=MODEL, retries=1, backoff_s=0.01))
    n0, llm_server.fail_next = llm_server.calls, 5
    try:
        with pytest.raises(ExplainerError) as e:
            chat.chat([{"role": "user", "content": "Say OK."}], 4)
    finally:
        llm_server.fail_next = 0
    assert llm_server.calls - n0 == 2 and "\n" not in str(e.value)
    assert "keeps failing (HTTP 500: " in str(e.value) and "after 2 tries; the statistical labels stay" in str(e.value)


def test_llm_labels_over_http_scored_by_one_scorer_then_from_the_cache(tiny_copy, llm_server, capsys):
    path = str(tiny_copy.path)
    argv = ["label", "--workspace", path, "--explainer", "llm", "--base-url", llm_server.url, "--model", MODEL]
    n0 = llm_server.calls
    assert main([*argv, "--saes", "topk", "--limit", "1", "--quiet", *SMALL]) == 0
    out = capsys.readouterr().out
    sent = llm_server.requests[n0:]
    assert "prompt + " in out and "completion tokens" in out and "[label] topk: 1 latents relabelled" in out
    explain = [s for s in sent if "[EXPLANATION]" in s["messages"][0]["content"]]
    assert len(explain) == 1 and explain[0]["model"] == MODEL and explain[0]["max_tokens"] == 16
    msgs = explain[0]["messages"]  # the instructions, then the latent's examples
    assert [m["role"] for m in msgs] == ["system", "user"] and "[EXPLANATION]: <description>" in msgs[0]["content"]
    user = msgs[-1]["content"]
    assert user.count("Example ") == 4 and user.count("<<") >= 4 and user.count(">>") == user.count("<<")

    lat = _latents(tiny_copy.index_path)
    first = int(lat[lat["scorer"] == f"llm:{MODEL}"]["latent"].iat[0])  # the one latent relabelled
    ex = _explanations(tiny_copy.index_path, "topk", first)
    # a 135M model's reply is often no explanation (a copy of the worked example): then only the statistical one
    # is scored; either way 1 explanation request + (detection + fuzzing) per explanation scored
    wrote = int((ex["method"] == "llm").any())
    assert len(sent) == 3 + 2 * wrote and f"cost: {len(sent)} calls to llm:{MODEL} (0 answered from the cache)" in out
    assert set(zip(ex["method"], ex["scorer"])) == {
        ("statistical", "rule"),  # the index build's
        ("statistical", f"llm:{MODEL}"),
        *([("llm", f"llm:{MODEL}")] if wrote else []),
    }
    stat = ex[ex["method"] == "statistical"]["label"].unique()
    assert len(stat) == 1 and any(f"Explanation: {stat[0]}" in s["messages"][-1]["content"] for s in sent)
    assert any("<<" in s["messages"][-1]["content"] and "marked" in s["messages"][0]["content"] for s in sent[1:])
    scored = ex[ex["scorer"] == f"llm:{MODEL}"]
    row, top = lat[lat["latent"] == first].iloc[0], scored["detection"].max()
    assert row["confidence"] == top and row["label"] in set(scored[scored["detection"] == top]["label"])  # the best
    assert top > 0 or row["method"] == "statistical"  # a scorer that saw nothing leaves the statistical label
    assert (
        (scored["detection"] >= 0) & (scored["detection"] <= 1) & (scored["fuzz"] >= 0) & (scored["fuzz"] <= 1)
    ).all()
    fv = Backend(tiny_copy.path).feature("topk", first)
    assert fv.scorer == f"llm:{MODEL}" and fv.method == row["method"] and len(fv.explanations) == 2 + wrote

    # the second run asks the server nothing: every reply is in the workspace's cache
    n1 = llm_server.calls
    assert main([*argv, "--saes", "topk", "--limit", "1", "--quiet", *SMALL]) == 0
    assert llm_server.calls == n1 and "cost: 0 calls to llm:" in capsys.readouterr().out
    assert (tiny_copy.path / CACHE_NAME).exists() and _latents(tiny_copy.index_path).equals(lat)

    # statistical again, no endpoint: THE label is the rule-scored one again
    assert main(["label", "--workspace", path, "--explainer", "statistical", "--limit", "1", "--quiet"]) == 0
    row = _latents(tiny_copy.index_path).set_index("latent").loc[first]
    assert (row["method"], row["scorer"], row["label"]) == ("statistical", "rule", stat[0])


def test_the_local_model_explains_in_process(tiny_copy, smollm2):
    cfg = ExplainerConfig(examples=4, score_contexts=2, score_batch=4, max_tokens=16)
    summaries, cost = label_workspace(
        tiny_copy, "local", cfg, saes=["topk"], limit=1, progress=False, chat=LocalChat(smollm2, "smollm2")
    )
    wrote = summaries[0].explained  # 0 when the reply was no explanation (see above)
    assert summaries[0].scorer == "local:smollm2" and f"{3 + 2 * wrote} calls to local:smollm2" in cost
    lat = _latents(tiny_copy.index_path)
    first = int(lat[lat["scorer"] == "local:smollm2"]["latent"].iat[0])
    ex = _explanations(tiny_copy.index_path, "topk", first)
    local = ex[ex["method"] == "local"]
    assert len(local) == wrote and (local["model"] == "smollm2").all() and local["label"].str.strip().all()
    assert set(ex[ex["scorer"] == "local:smollm2"]["method"]) == {"statistical", *(["local"] if wrote else [])}


# ---- the statistical labels on the tiny index -----------------------------------------------------------
def test_statistical_labels_are_readable_and_the_domain_is_a_field(topk_index):
    lat = IndexReader(topk_index).df("SELECT * FROM latents")
    assert not lat["label"].str.contains("mostly").any()
    assert not lat["label"].map(lambda s: any(ord(c) < 32 or c in "\xa0\u200b" for c in s)).any()
    # every token of the rule is in the label as shown (a newline as ↵, a no-break space as ⍽), never as an escape
    shown = lat["top_tokens"].map(json.loads)
    assert all(f"'{show_token(t)}'" in label for label, toks in zip(lat["label"], shown) for t in toks)
    assert any("\n" in t or "\xa0" in t for toks in shown for t in toks)  # the tiny index has such tokens
    fired = lat[lat["density"] > 0]
    assert (fired["top_domain"] != "").all() and fired["domain_share"].between(0.25, 1.0).all()
    assert (fired["top_corpus"] != "").all() and (fired["method"] == "statistical").all()
    assert fired["fuzz"].between(0.0, 1.0).all() and (fired["scorer"] == "rule").all()


def test_a_word_search_for_a_domain_finds_the_latents_specific_to_it(tiny_copy):
    b = Backend(tiny_copy.path)
    lat = IndexReader(tiny_copy.index_path).df("SELECT latent, label, top_domain, domain_share FROM latents")
    legal = lat[(lat["top_domain"] == "legal") & (lat["domain_share"] > 0.5)]
    assert len(legal) > 0
    found = b.search_features("legal", sae="topk", limit=1000).merge(lat, on="latent", suffixes=("", "_"))
    assert set(legal["latent"]) <= set(found["latent"])
    ok = found["label"].str.contains("legal", case=False) | (
        (found["top_domain"] == "legal") & (found["domain_share"] > 0.5)
    )
    assert ok.all()  # not every latent that merely fires most in legal text
    assert len(found) < len(lat[lat["top_domain"] == "legal"])
