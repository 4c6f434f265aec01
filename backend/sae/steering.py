"""Steering: clamp, scale or ablate SAE latents during generation, error term kept.

Error-kept mode (the default), at every position of the hook site::

    x' = x + decode(latents') - decode(latents),   latents = encode(x), latents' = edited latents

so the SAE's reconstruction error ``x - decode(latents)`` passes through untouched and a request
that edits nothing leaves the model's output exactly unchanged. Because decode is affine,
decode(latents') - decode(latents) = (latents' - latents)[:, S] @ W_dec[S] for the edited set S;
b_dec cancels. This holds for the boosted composite too (its decode is a sum of two affine maps).
Each latent may be edited once per request (a second edit of the same latent would add its delta twice).

Additive mode (Neuronpedia's "simple additive"): x' = x + sum_i coef_i * W_dec[i]. Steer with
W_dec rows, never W_enc columns.

Isolation: the hook is registered in a context manager (removed in ``finally``) and acts only in
the contextvars context that opened it. Baseline and steered generations each run in their own
copied context, so two interleaved generators, or two users, never see each other's edits.

Cost and fairness: a request is bounded by ``MAX_PROMPT_TOKENS`` prompt tokens (longer prompts keep
their last tokens, with a notice), ``MAX_NEW_TOKENS`` new tokens and ``STEER_TIME_LIMIT_S`` seconds.
Concurrent requests share the model through a ``TurnLock``: one turn = one token step of one request
(its baseline and steered forward passes), granted in arrival order, so every active request advances
one token per round and a short request is never stuck behind a long one. Sampling uses a
per-request ``torch.Generator`` (see the adapters' ``generate``), so interleaving never changes outputs.
"""

from __future__ import annotations

import contextvars
import math
import numbers
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

from backend.errors import number, shown, whole

MAX_ABS_VALUE = 1_000.0
# The longest request (SmolLM2-135M, fp32, 2 shared CPU cores): 2 prefills of 512 tokens + 2 x 128 cached
# decoding steps = 16.8 s alone (bench/bench_steer_fairness.py), inside the time limit below; a short request
# that arrives meanwhile waits ~2 s, not the ~18 s it would wait behind it.
MAX_PROMPT_TOKENS = 512
MAX_NEW_TOKENS = 128
MAX_PROMPT_CHARS = 20_000  # raw characters, checked before tokenizing
MAX_EDITS = 64
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**31 - 1
STEER_TIME_LIMIT_S = 30.0  # wall time per request, waiting for turns included; read at call time
Mode = Literal["clamp", "scale", "zero", "add"]
MODES = ("clamp", "scale", "zero", "add")  # the one declaration of the edit modes


class SteeringError(ValueError):
    """A steering request is invalid; the message says what to change."""


@dataclass(frozen=True)
class Edit:
    """One latent edit. clamp: set to value; scale: multiply by value; zero: ablate;
    add: add value * W_dec[latent] to the residual (additive mode, ignores the encoder)."""

    latent: int
    mode: Mode = "clamp"
    value: float = 0.0


def validate_edits(edits: Sequence[Edit], d_sae: int) -> list[Edit]:
    """Modes known, latents in range and each edited once, values finite and bounded."""
    out: list[Edit] = []
    seen: dict[int, int] = {}
    for n, e in enumerate(edits, 1):
        if e.mode not in MODES:
            raise SteeringError(f"unknown steering mode {e.mode!r}: use one of {', '.join(MODES)}")
        latent = e.latent
        if isinstance(latent, bool) or not isinstance(latent, numbers.Integral):
            raise SteeringError(f"edit {n}: latent must be a whole number, got {shown(latent)}")
        if not 0 <= latent < d_sae:
            raise SteeringError(f"latent {shown(latent)} is out of range: this SAE has latents 0..{d_sae - 1}")
        latent = int(latent)
        try:
            v = float(e.value)
        except (TypeError, ValueError, OverflowError):
            raise SteeringError(f"latent {latent}: value {shown(e.value)} is not a number") from None
        if latent in seen:
            raise SteeringError(
                f"edit {n}: latent {latent} is already edited by edit {seen[latent]}: edit each latent once"
            )
        seen[latent] = n
        if not math.isfinite(v):
            raise SteeringError(f"latent {latent}: value {e.value} is not a finite number")
        if abs(v) > MAX_ABS_VALUE:
            raise SteeringError(f"latent {latent}: |value| {abs(v):g} exceeds the bound {MAX_ABS_VALUE:g}")
        out.append(Edit(latent, e.mode, v))
    return out


# ---- fair sharing of the model ----------------------------------------------------------------
class TurnLock:
    """A FIFO lock: turns are granted in arrival order and handed directly to the next waiter.

    A request takes one turn per token step and releases it before yielding, so a request that asks
    again queues behind those already waiting: round-robin over the active requests. Not owned by a
    thread (Gradio may run successive steps of one generator on different worker threads), and never
    held across a ``yield``, so a cancelled or abandoned generator cannot keep it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiting: deque[threading.Event] = deque()
        self._busy = False

    def acquire(self) -> None:
        with self._mutex:
            if not self._busy:
                self._busy = True
                return
            ev = threading.Event()
            self._waiting.append(ev)
        try:
            ev.wait()
        except BaseException:  # interrupted while queued: leave the queue, or pass on a turn just handed over
            with self._mutex:
                if ev in self._waiting:
                    self._waiting.remove(ev)
                    raise
            self.release()
            raise

    def release(self) -> None:
        with self._mutex:
            if self._waiting:
                self._waiting.popleft().set()  # hand-off: stays busy, no barging
            else:
                self._busy = False

    @contextmanager
    def turn(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


def make_intervention(sae, edits: Sequence[Edit]):
    """The function applied to the site's activations (B, T, d) -> (B, T, d)."""
    W_dec = sae.W_dec.detach()  # (d_sae, d_in)
    enc = [e for e in edits if e.mode != "add"]
    add = [e for e in edits if e.mode == "add"]
    add_vec = None
    if add:
        idx = torch.tensor([e.latent for e in add])
        coef = torch.tensor([e.value for e in add], dtype=W_dec.dtype)
        add_vec = coef @ W_dec[idx]  # (d_in,)
    idx_enc = torch.tensor([e.latent for e in enc], dtype=torch.long)

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = x
        if enc:
            flat = x.reshape(-1, x.shape[-1]).to(W_dec.dtype)  # (B*T, d)
            lat = sae.encode(flat)[:, idx_enc]  # (B*T, |S|)
            new = lat.clone()
            for j, e in enumerate(enc):
                if e.mode == "clamp":
                    new[:, j] = e.value
                elif e.mode == "scale":
                    new[:, j] = lat[:, j] * e.value
                else:  # zero
                    new[:, j] = 0.0
            delta = (new - lat) @ W_dec[idx_enc]  # (B*T, d)
            out = x + delta.reshape(x.shape).to(x.dtype)
        if add_vec is not None:
            out = out + add_vec.to(x.dtype)
        return out

    return fn


def fit_prompt(adapter, prompt: str, limit: int = MAX_PROMPT_TOKENS) -> tuple[str, str | None]:
    """Empty prompts are an error; prompts over the limit keep their last ``limit`` tokens."""
    if not prompt or not prompt.strip():
        raise SteeringError("the prompt is empty: type a prompt to generate from")
    ids = adapter.encode_ids(prompt)
    limit = min(limit, getattr(adapter, "context_limit", limit))
    if len(ids) <= limit:
        return prompt, None
    cut = adapter.tokenizer.decode(ids[-limit:]) if hasattr(adapter, "tokenizer") else prompt[-limit * 4 :]
    return cut, f"The prompt had {len(ids):,} tokens; only its last {limit:,} were used."


def _in_context(gen_factory) -> Iterator[str]:
    """Drive a generator inside its own copied contextvars context (isolates scoped hooks)."""
    ctx = contextvars.copy_context()
    gen = ctx.run(gen_factory)
    try:
        while True:
            try:
                yield ctx.run(next, gen)
            except StopIteration:
                return
    finally:
        ctx.run(gen.close)


def steered_pieces(adapter, sae, site: str, edits: Sequence[Edit], prompt: str, **gen_kw) -> Iterator[str]:
    """Stream the steered generation (the hook lives only inside this generator's context)."""
    fn = make_intervention(sae, edits)

    def factory():
        def run():
            with adapter.intervene(site, fn):
                yield from adapter.generate(prompt, **gen_kw)

        return run()

    return _in_context(factory)


def side_by_side(
    adapter,
    sae,
    site: str,
    edits: Sequence[Edit],
    prompt: str,
    *,
    max_new_tokens: int = 48,
    temperature: float = 0.7,
    seed: int = 0,
    chat: bool = True,
    turn: Callable[[], AbstractContextManager] = nullcontext,
) -> Iterator[tuple[str, str]]:
    """Yield (baseline_so_far, steered_so_far) as both stream, token by token, same prompt and seed.

    ``turn()`` is entered around each step (one baseline and one steered token), e.g. ``TurnLock.turn``."""
    kw = dict(
        max_new_tokens=whole("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS),
        temperature=number("temperature", temperature, 0.0, MAX_TEMPERATURE),
        seed=whole("seed", seed, 0, MAX_SEED),
        chat=chat,
    )
    base = _in_context(lambda: adapter.generate(prompt, **kw))
    steer = steered_pieces(adapter, sae, site, edits, prompt, **kw)
    b_text, s_text = "", ""
    b_done = s_done = False
    try:
        while not (b_done and s_done):
            with turn():  # released before the yield: a paused or cancelled consumer holds no turn
                if not b_done:
                    piece = next(base, None)
                    b_done = piece is None
                    b_text += piece or ""
                if not s_done:
                    piece = next(steer, None)
                    s_done = piece is None
                    s_text += piece or ""
            yield b_text, s_text
    finally:
        base.close()
        steer.close()


@torch.inference_mode()
def firing_latents(adapter, sae, site: str, text: str, top_n: int = 10) -> list[tuple[int, float, int]]:
    """Latents that fire on ``text``: (latent, max activation, tokens fired), by max activation."""
    if not text.strip():
        return []
    batch = adapter.tokenize([text], 512)
    acts = adapter.capture(batch, site)[batch.keep_mask]  # (n, d)
    lat = sae.encode(acts.float())  # (n, d_sae)
    mx, fired = lat.max(0).values, (lat > 0).sum(0)
    top = torch.topk(mx, min(top_n, mx.numel()))
    return [(int(i), float(v), int(fired[i])) for v, i in zip(top.values, top.indices) if v > 0]
