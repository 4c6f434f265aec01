"""Steering: clamp, scale or ablate SAE latents during generation, error term kept.

Error-kept mode (the default), at every position of the hook site::

    x' = x + decode(latents') - decode(latents),   latents = encode(x), latents' = edited latents

so the SAE's reconstruction error ``x - decode(latents)`` passes through untouched and a request
that edits nothing leaves the model's output exactly unchanged. Because decode is affine,
decode(latents') - decode(latents) = (latents' - latents)[:, S] @ W_dec[S] for the edited set S;
b_dec cancels. This holds for the boosted composite too (its decode is a sum of two affine maps).

Additive mode (Neuronpedia's "simple additive"): x' = x + sum_i coef_i * W_dec[i]. Steer with
W_dec rows, never W_enc columns.

Isolation: the hook is registered in a context manager (removed in ``finally``) and acts only in
the contextvars context that opened it. Baseline and steered generations each run in their own
copied context, so two interleaved generators, or two users, never see each other's edits.
"""
from __future__ import annotations

import contextvars
import math
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import torch

MAX_ABS_VALUE = 1_000.0
MAX_PROMPT_TOKENS = 1_024
MAX_NEW_TOKENS = 256
Mode = Literal["clamp", "scale", "zero", "add"]
MODES = ("clamp", "scale", "zero", "add")


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
    out = []
    for e in edits:
        if e.mode not in MODES:
            raise SteeringError(f"unknown steering mode {e.mode!r}: use one of {', '.join(MODES)}")
        if not 0 <= int(e.latent) < d_sae:
            raise SteeringError(f"latent {e.latent} is out of range: this SAE has latents 0..{d_sae - 1}")
        v = float(e.value)
        if not math.isfinite(v):
            raise SteeringError(f"latent {e.latent}: value {e.value} is not a finite number")
        if abs(v) > MAX_ABS_VALUE:
            raise SteeringError(f"latent {e.latent}: |value| {abs(v):g} exceeds the bound {MAX_ABS_VALUE:g}")
        out.append(Edit(int(e.latent), e.mode, v))
    return out


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


def side_by_side(adapter, sae, site: str, edits: Sequence[Edit], prompt: str, *, max_new_tokens: int = 48,
                 temperature: float = 0.7, seed: int = 0, chat: bool = True) -> Iterator[tuple[str, str]]:
    """Yield (baseline_so_far, steered_so_far) as both stream, token by token, same prompt and seed."""
    if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise SteeringError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}, got {max_new_tokens}")
    if not (math.isfinite(temperature) and 0 <= temperature <= 5):
        raise SteeringError(f"temperature must be between 0 and 5, got {temperature}")
    kw = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), seed=int(seed), chat=chat)
    base = _in_context(lambda: adapter.generate(prompt, **kw))
    steer = steered_pieces(adapter, sae, site, edits, prompt, **kw)
    b_text, s_text = "", ""
    b_done = s_done = False
    try:
        while not (b_done and s_done):
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
