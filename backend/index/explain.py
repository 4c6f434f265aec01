"""LLM explainers: any OpenAI-compatible chat endpoint (vLLM, llama.cpp's server, Ollama, a hosted API), or the
workspace's own instruct model in-process (the offline fallback). Both write explanations from the same prompt and
score explanations with the same prompts (backend/index/score.py); backend/index/relabel.py drives them.

The explainer prompt follows delphi (Paulo et al. 2024): a latent's top-activating contexts plus samples from its
activation quantile bands, each on one line with the activating tokens marked <<like this>> (the tokens at or
above a quarter of the context's maximum; consecutive ones share one mark); the reply's last line holds
``[EXPLANATION]: ...``.

Transport (``OpenAIChat``): POST <base_url>/chat/completions with httpx; a request that cannot connect, times out
or gets HTTP 429 / 5xx is retried ``retries`` times after backoff_s, 2 backoff_s, 4 backoff_s... seconds; any other
failure, or the last retry's, is one ``ExplainerError`` line. ``Runner`` answers a list of requests: from the
workspace's cache first (store.LabelCache, keyed by SAE, latent, prompt hash and model: a re-run costs nothing),
the rest ``concurrency`` at a time behind a progress bar, counting the prompt and completion tokens the endpoint
reports (``usage``). The first failure cancels the requests not yet sent and is raised; replies already received
stay cached, so the next run resumes where this one stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from backend.config import ExplainerConfig
from backend.index.score import marked_text

MARK_SHARE = 0.25  # tokens at or above this share of their context's maximum are marked for the explainer


class ExplainerError(RuntimeError):
    """The endpoint is unreachable or failing, or the explainer is misconfigured: one line saying what to do."""


@dataclass
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ChatModel(Protocol):
    name: str  # the scorer/cache id: "llm:<model>" or "local:<model>"
    model: str
    concurrency: int

    def chat(self, messages: list[dict[str, str]], max_tokens: int) -> Reply: ...


def chat_url(base_url: str) -> str:
    """<base_url>/chat/completions; a bare host (no path) gets OpenAI's /v1."""
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if urlsplit(url).path in ("", "/"):
        url += "/v1"
    return url + "/chat/completions"


def _one_line(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


class OpenAIChat:
    """A chat model behind an OpenAI-compatible endpoint (see the module doc for retries)."""

    def __init__(self, cfg: ExplainerConfig):
        import httpx

        if not cfg.base_url or not cfg.model:
            raise ExplainerError(
                "the llm explainer needs an endpoint and a model: pass --base-url URL --model NAME, or set "
                "label: {explainer: {base_url: ..., model: ...}} in workspace.yaml"
            )
        headers = {"Content-Type": "application/json"}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise ExplainerError(
                    f"the environment variable {cfg.api_key_env} (label.explainer.api_key_env) is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        self.cfg, self.url = cfg, chat_url(cfg.base_url)
        self.model, self.name, self.concurrency = cfg.model, f"llm:{cfg.model}", cfg.concurrency
        self._client = httpx.Client(timeout=cfg.timeout_s, headers=headers)
        self._httpx = httpx

    def _fail(self, why: str) -> ExplainerError:
        return ExplainerError(f"the explainer endpoint {self.url} {why}; the statistical labels stay")

    def chat(self, messages: list[dict[str, str]], max_tokens: int) -> Reply:
        body = {"model": self.model, "messages": messages, "max_tokens": int(max_tokens), "temperature": 0.0}
        last = ""
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                time.sleep(self.cfg.backoff_s * 2 ** (attempt - 1))
            try:
                r = self._client.post(self.url, json=body)
            except self._httpx.TransportError as e:  # refused, unresolvable, timed out, dropped
                last = f"{type(e).__name__}: {_one_line(e) or 'no reply'}"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}: {_one_line(r.text, 120)}"
                continue
            if r.status_code >= 400:
                raise self._fail(
                    f"answered HTTP {r.status_code} ({_one_line(r.text, 160)}): check the model name and key"
                )
            try:
                d = r.json()
                text = d["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                raise self._fail(
                    f"answered something that is not a chat completion ({_one_line(r.text, 120)})"
                ) from None
            usage = d.get("usage") or {}
            return Reply(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        tries = self.cfg.retries + 1
        verb = "cannot be reached" if last.startswith(("Connect", "Unsupported")) else "keeps failing"
        raise self._fail(f"{verb} ({last}) after {tries} {'try' if tries == 1 else 'tries'}")

    def close(self) -> None:
        self._client.close()


class LocalChat:
    """The workspace's instruct model in-process (an adapter with ``chat``): one request at a time."""

    concurrency = 1

    def __init__(self, adapter: Any, model_id: str):
        self.adapter, self.model, self.name = adapter, model_id, f"local:{model_id}"
        self._lock = threading.Lock()

    def chat(self, messages: list[dict[str, str]], max_tokens: int) -> Reply:
        with self._lock:
            return Reply(*self.adapter.chat(messages, max_new_tokens=max_tokens))

    def close(self) -> None:
        pass


# ---- the explainer prompt --------------------------------------------------------------------------------
EXPLAIN_SYSTEM = (
    "You are a meticulous AI researcher investigating a feature of a language model. You will see text examples in "
    "which the feature is active; the tokens where it is most active are marked like <<this>>. Find what the marked "
    "tokens and the words just before them have in common: the words themselves, their meaning, or the pattern "
    "they follow. Write a short, precise description (a few words, at most one sentence). Do not mention the "
    "markers and do not list the examples. The last line of your reply must be: [EXPLANATION]: <description>"
)


@dataclass
class Shown:
    tokens: list[str]
    acts: list[float]


def explain_examples(contexts: list[dict[str, Any]], n: int) -> list[Shown]:
    """The contexts an explainer sees: the top ones by rank (two thirds of ``n``), then one per quantile band in
    turn, highest band first. ``contexts``: rows of store.sae_contexts for one latent."""
    top = [c for c in contexts if c["kind"] == "top"]
    bands: dict[str, list[dict]] = {}
    for c in contexts:
        if c["kind"].startswith("q"):
            bands.setdefault(c["kind"], []).append(c)
    k = max(1, (2 * n) // 3)
    picked, rest = top[:k], top[k:]
    order = sorted(bands, key=lambda b: -int(b[1:]))
    while len(picked) < n and any(bands[b] for b in order):
        for b in order:
            if bands[b] and len(picked) < n:
                picked.append(bands[b].pop(0))
    picked += rest[: max(0, n - len(picked))]  # few quantile samples: more top contexts
    return [Shown(list(c["tokens"]), [float(a) for a in c["acts"]]) for c in picked]


QUESTION = "What do the marked tokens have in common? End with [EXPLANATION]: <description>"
# A worked example (delphi can show a few) is NOT shown to the explainer: SmolLM2-135M copied its answer on 8 of 8
# latents (without it, it restates the instructions: no better, but no copy). EXPLAIN_DEMO is kept for models that
# need one (``explain_prompt(..., demo=True)``); a reply that copies it is no explanation (``parse_explanation``).
EXPLAIN_DEMO = [
    {
        "role": "user",
        "content": "Example 1: You may <<not>> use the software\nExample 2: It does <<not>> work\n"
        f"Example 3: We could <<not>> find it\n\n{QUESTION}",
    },
    {"role": "assistant", "content": '[EXPLANATION]: the word "not" after an auxiliary or modal verb'},
]


def explain_prompt(examples: list[Shown], demo: bool = False) -> list[dict[str, str]]:
    lines = []
    for i, ex in enumerate(examples):
        top = max(ex.acts, default=0.0)
        marked = [j for j, a in enumerate(ex.acts) if top > 0 and a >= MARK_SHARE * top]
        lines.append(f"Example {i + 1}: {marked_text(ex.tokens, marked)}")
    user = {"role": "user", "content": "\n".join(lines) + f"\n\n{QUESTION}"}
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, *(EXPLAIN_DEMO if demo else []), user]


def _clean(line: str) -> str:
    return " ".join(line.replace("<<", "").replace(">>", "").split()).strip(" \t*_`\"'#-:.")


DEMO_ANSWER = _clean(EXPLAIN_DEMO[-1]["content"].split(":", 1)[1])


def parse_explanation(text: str, limit: int = 200) -> str:
    """The description after the last ``[EXPLANATION]:`` (or ``Explanation:``), else the reply's last non-empty
    line; markers, quotes and markdown stripped. A copy of the worked example's answer (or of its start: small models
    repeat it) is no explanation: '' then, as when nothing is left."""
    text = text or ""
    found = re.findall(r"\[?explanation\]?\s*:\s*(.+)", text, flags=re.IGNORECASE)
    if not found:
        found = [s for s in text.splitlines() if s.strip()][-1:]
    found = [c for c in map(_clean, found) if c and not DEMO_ANSWER.startswith(c) and DEMO_ANSWER not in c]
    return _one_line(found[-1], limit) if found else ""


# ---- answering requests: the cache, the endpoint, the progress bar --------------------------------------
@dataclass
class Request:
    sae: str
    latent: int
    kind: str  # explain | detect | fuzz
    messages: list[dict[str, str]]
    max_tokens: int

    @property
    def prompt_hash(self) -> str:
        blob = json.dumps([self.messages, self.max_tokens], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


class Runner:
    """Answers requests from the cache (``store.LabelCache`` or None), the rest from ``chat``; counts what it cost."""

    def __init__(self, chat: ChatModel, cache: Any = None, progress: bool = True):
        self.chat, self.cache, self.progress = chat, cache, progress
        self.calls = self.cached = self.prompt_tokens = self.completion_tokens = 0
        self._known: dict[str, dict[tuple[int, str], str]] = {}

    def _from_cache(self, sae: str) -> dict[tuple[int, str], str]:
        if sae not in self._known:
            self._known[sae] = self.cache.get(sae, self.chat.name) if self.cache is not None else {}
        return self._known[sae]

    def run(self, reqs: list[Request], desc: str = "explain") -> list[str]:
        out: list[str | None] = [None] * len(reqs)
        todo = []
        for i, q in enumerate(reqs):
            hit = self._from_cache(q.sae).get((q.latent, q.prompt_hash))
            if hit is not None:
                out[i] = hit
                self.cached += 1
            else:
                todo.append(i)
        if todo:
            bar = tqdm(
                total=len(todo), desc=f"[label] {desc}", unit="call", disable=not self.progress, dynamic_ncols=True
            )
            with ThreadPoolExecutor(max_workers=max(1, self.chat.concurrency)) as pool:
                futures = {pool.submit(self.chat.chat, reqs[i].messages, reqs[i].max_tokens): i for i in todo}
                pending = set(futures)
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        failed = [f.exception() for f in done if f.exception() is not None]
                        for f in done:
                            if f.exception() is None:  # kept (cached) even when another request failed
                                self._store(reqs[futures[f]], f.result())
                                out[futures[f]] = f.result().text
                                bar.update(1)
                        if failed:
                            raise failed[0]
                finally:
                    for f in pending:
                        f.cancel()
                    bar.close()
        return [s or "" for s in out]

    def _store(self, q: Request, reply: Reply) -> None:
        self.calls += 1
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self._from_cache(q.sae)[(q.latent, q.prompt_hash)] = reply.text
        if self.cache is not None:
            self.cache.put(
                q.sae,
                q.latent,
                q.prompt_hash,
                self.chat.name,
                q.kind,
                reply.text,
                reply.prompt_tokens,
                reply.completion_tokens,
            )

    def cost(self) -> str:
        return (
            f"{self.calls} calls to {self.chat.name} ({self.cached} answered from the cache): "
            f"{self.prompt_tokens:,} prompt + {self.completion_tokens:,} completion tokens"
        )
