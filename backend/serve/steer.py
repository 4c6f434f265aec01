"""Steering views of the Backend facade (mixed into backend.serve.service.Backend).

Plain Python values out; torch stays inside the backend. Needs from the host class:
``self.ws`` (the Workspace), ``self.modality``, ``self.capabilities``, ``self.adapter()`` (the model adapter,
loaded lazily), ``self.sae(name)`` (a loaded SAE, cached; raises BackendError for unknown names) and
``self.index`` (the IndexReader: the latents' explanations and max activations for /classifier_movers).

Every argument is checked before any model work, and a bad one is one ValueError line (SteeringError
or BackendError). Caps (see backend/sae/steering.py for the generation caps): ``MAX_EDITS`` edits,
``MAX_INPUT_CHARS`` characters of outcome input, ``MAX_K`` recommendations, ``MAX_N_ITERS`` resampling
iterations, ``MAX_MOTIF_CHARS`` motif characters, ``MAX_MOVERS`` candidates clamped per /classifier_movers
request. Input the model cannot read whole (a long prompt, a protein longer than the model's context, a history
longer than the recommender's window) is cut, and the answer's ``notice`` says what was used.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from backend.errors import BackendError, number, shown, text, whole
from backend.modalities import OutcomeRequest, get_modality
from backend.modalities.base import MoversRequest
from backend.modalities.base import join_notices as _join
from backend.sae import steering
from backend.sae.steering import (
    MAX_EDITS,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_TEMPERATURE,
    MODES,
    Edit,
    SteeringError,
    TurnLock,
    firing_latents,
    fit_prompt,
    side_by_side,
    validate_edits,
)

MAX_INPUT_CHARS = 20_000  # /steer_outcome: raw characters of a protein sequence or an item history
MAX_K = 100  # recommendations per request (and at most the catalogue's size)
MAX_N_ITERS = 200  # masked-resampling iterations per run (two runs per request)
MAX_MOTIF_CHARS = 100
MAX_MOVERS = 10  # /classifier_movers: candidates verified by clamping (one forward pass each)
_FIELDS = ("latent", "mode", "value")


@dataclass
class SteerUpdate:
    """One streamed step: both texts so far; ``done`` on the last one, with the latents firing."""

    baseline: str
    steered: str
    notice: str | None = None
    done: bool = False
    firing: list[tuple[int, float, int]] | None = None  # (latent, max act, tokens fired) on the steered text


# ---- edits --------------------------------------------------------------------------------------
def _blank(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def _real(v) -> float | None:
    """A number or numeric string as a float (may be inf/nan: callers decide); None for anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    if isinstance(v, numbers.Real):
        try:
            return float(v)
        except OverflowError:  # an int beyond float range
            return math.copysign(math.inf, v)
    return None


def _whole(v) -> int | None:
    """An int, an integral float or a string of one as an int; None for 1.7, 'inf', NaN, True, ..."""
    if isinstance(v, bool):
        return None
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    f = _real(v)
    return int(f) if f is not None and math.isfinite(f) and f.is_integer() else None


def _row(n: int, r) -> tuple:
    """(latent, mode, value) of edit ``n`` (1-based), each None when not given; SteeringError if malformed."""
    if isinstance(r, dict):
        extra = [k for k in r if k not in _FIELDS]
        if extra:
            raise SteeringError(f"edit {n}: unknown field {shown(extra[0])}: an edit has latent, mode and value")
        return r.get("latent"), r.get("mode"), r.get("value")
    if not isinstance(r, (list, tuple)):
        raise SteeringError(
            f"edit {n} must be a [latent, mode, value] row or a {{latent, mode, value}} object, got {shown(r)}"
        )
    if len(r) > 3:
        raise SteeringError(f"edit {n} has {len(r)} fields: give [latent, mode, value]")
    latent, mode, value = (list(r) + [None, None, None])[:3]
    return latent, mode, value


def parse_edits(rows) -> tuple[list[Edit], str | None]:
    """(edits, notice) from a list of [latent, mode, value] rows or {latent, mode, value} objects.

    Strict: a malformed edit is a SteeringError naming the edit (1-based) and the field. A row whose latent
    is empty (None, NaN, "") is a blank row of the UI's table: skipped, and the notice says so when real
    edits remain. A missing mode means clamp; ``zero`` needs no value, the other modes do. No edit is an
    error. Ranges (latent < d_sae, |value| bound, each latent once) are checked by steering.validate_edits."""
    if rows is None:
        rows = []
    if not isinstance(rows, (list, tuple)):
        raise SteeringError(f"edits must be a list of [latent, mode, value] rows, got {shown(rows)}")
    if len(rows) > MAX_EDITS:
        raise SteeringError(f"{len(rows):,} edits given; the limit is {MAX_EDITS} per request")
    edits, blank = [], 0
    for n, r in enumerate(rows, 1):
        latent, mode, value = _row(n, r)
        if _blank(latent):
            blank += 1
            continue
        latent_i = _whole(latent)
        if latent_i is None:
            raise SteeringError(f"edit {n}: latent must be a whole number, got {shown(latent)}")
        mode = "clamp" if _blank(mode) else mode
        if not isinstance(mode, str) or mode.strip().lower() not in MODES:
            raise SteeringError(f"edit {n}: unknown mode {shown(mode)}: use one of {', '.join(MODES)}")
        mode = mode.strip().lower()
        if _blank(value):
            if mode != "zero":
                raise SteeringError(f"edit {n}: mode {mode} needs a value: give [latent, {mode!r}, number]")
            value_f = 0.0
        else:
            value_f = _real(value)
            if value_f is None:
                raise SteeringError(f"edit {n}: value must be a number, got {shown(value)}")
            if not math.isfinite(value_f):
                raise SteeringError(f"edit {n}: value must be a finite number, got {shown(value)}")
        edits.append(Edit(latent_i, mode, value_f))  # type: ignore[arg-type]
    if not edits:
        raise SteeringError("no latent is set: put a latent id in the edits table")
    notice = f"{blank} blank edit row{'s' if blank > 1 else ''} (no latent) skipped." if blank else None
    return edits, notice


def _turns(host) -> TurnLock:
    """The host's TurnLock: one per Backend (one model), created on first use (dict.setdefault is atomic)."""
    return vars(host).setdefault("_steer_turns", TurnLock())


def _sae_name(name) -> str:
    if not isinstance(name, str) or not name:
        raise SteeringError(f"sae must be the name of one of this workspace's SAEs, got {shown(name)}")
    return name


class SteeringViews:
    def steer_stream(
        self,
        sae: str,
        prompt: str,
        edits,
        *,
        max_new_tokens: int = 48,
        temperature: float = 0.7,
        seed: int = 0,
        chat: bool = True,
    ) -> Iterator[SteerUpdate]:
        """Baseline and steered generations from the same prompt and seed, streamed side by side.

        Every argument is checked here, when called, before anything runs. The stream takes one model
        turn per token step and stops after ``steering.STEER_TIME_LIMIT_S`` seconds with a notice; its
        last update has ``done`` and the latents firing on the steered text."""
        n_new = whole("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
        temp = number("temperature", temperature, 0.0, MAX_TEMPERATURE)
        seed_i = whole("seed", seed, 0, MAX_SEED)
        rows, notice = parse_edits(edits)
        prompt = text("prompt", prompt, MAX_PROMPT_CHARS)
        model = self.sae(_sae_name(sae))
        checked = validate_edits(rows, int(model.W_dec.shape[0]))
        adapter = self.adapter()
        prompt, cut = fit_prompt(adapter, prompt)
        site = self.ws.site_of(_sae_name(sae))  # the SAE's own site: steering hooks where it reads
        return self._steer_updates(
            adapter, model, site, checked, prompt, _join(cut, notice), n_new, temp, seed_i, bool(chat)
        )

    def _steer_updates(
        self, adapter, model, site, checked, prompt, notice, n_new, temp, seed, chat
    ) -> Iterator[SteerUpdate]:
        turns = _turns(self)
        limit = steering.STEER_TIME_LIMIT_S
        deadline = time.monotonic() + limit
        pairs = side_by_side(
            adapter,
            model,
            site,
            checked,
            prompt,
            max_new_tokens=n_new,
            temperature=temp,
            seed=seed,
            chat=chat,
            turn=turns.turn,
        )
        base = steer = ""
        try:
            for base, steer in pairs:
                yield SteerUpdate(base, steer, notice)
                if time.monotonic() >= deadline:
                    notice = _join(notice, f"stopped after {limit:g} s (the time limit per request).")
                    break
        finally:
            pairs.close()  # hooks removed even when the consumer stops early (Stop button, disconnect)
        with turns.turn():
            firing = firing_latents(adapter, model, site, steer)
        yield SteerUpdate(base, steer, notice, True, firing)

    def steer(self, sae: str, prompt: str, edits, **kw) -> SteerUpdate:
        """The final update of ``steer_stream`` (for API clients)."""
        *_, last = self.steer_stream(sae, prompt, edits, **kw)  # the stream always ends with the done update
        return last

    # ---- steering beyond text ---------------------------------------------------------
    def steer_outcome(
        self, sae: str, inputs: str, edits, *, k: int = 10, motif: str = "", n_iters: int = 50, seed: int = 0
    ) -> dict:
        """The model's output before and after latent edits, for workspaces whose model does not generate text
        (the kind's ``steer_outcome``, backend/modalities).

        Protein (classifier head): class probabilities of ``inputs`` (a sequence) before and after, edits at
        the residues. Protein with a masked-LM head and a ``motif`` (regex): iterative masked resampling of
        the sequence with and without the edits, same seed. Recommender: the top-k next items after
        ``inputs`` (space-separated item ids, oldest first) before and after, with their genre mixes.
        The result always has ``notice`` (None, or what was cut, skipped or ignored)."""
        if get_modality(self.modality).steer_outcome is None:
            raise BackendError(f"this is a {self.modality} workspace: steer it by generation (the Steer tab, /steer)")
        try:
            return _outcome(self, sae, inputs, edits, k, motif, n_iters, seed)
        except BackendError:
            raise
        except ValueError as e:  # bad sequence letters, unknown item ids, bad edits, no head...
            raise BackendError(str(e)) from None

    def classifier_movers(self, sae: str, sequence: str, limit: int = 8) -> dict:
        """The latents whose clamp moves the classifier most on ``sequence`` (protein workspaces with a classifier
        head): every latent ranked by a first-order (gradient) estimate of the change of the predicted class's
        probability when clamped at 2 x its max activation on the residues, the ``limit`` best (both directions)
        then clamped for real. Returns classes, predicted, before, factor, n_ranked, rows (latent, label,
        direction, value, max_act, predicted, measured, delta; largest |measured| first), largest,
        sign_agreement and notice (backend/modalities/protein_steer.py)."""
        kind = get_modality(self.modality)
        if kind.classifier_movers is None:
            raise BackendError(
                f"this is a {self.modality} workspace: it has no classifier to move; "
                "finding movers needs a protein workspace whose model has a classifier head"
            )
        if not self.capabilities.get("classifier_movers"):
            raise BackendError(
                f"model {self.ws.config.model.id!r} has no classifier head: there is no class probability to move; "
                "steer it with the edits table instead"
            )
        try:
            return _movers(self, sae, sequence, limit)
        except BackendError:
            raise
        except ValueError as e:  # bad sequence letters, an empty sequence, no head
            raise BackendError(str(e)) from None


def _movers(host, sae, sequence, limit) -> dict:
    """classifier_movers' body (a function: tests drive it with a stand-in host): the SAE name, the limit and the
    sequence's length are checked here, in that order, before any model work; its letters by the kind."""
    name = _sae_name(sae)
    model = host.sae(name)
    limit = whole("limit", limit, 1, MAX_MOVERS)
    seq = text("sequence", sequence, MAX_INPUT_CHARS)
    if not seq.strip():
        raise BackendError("the sequence is empty: paste a protein sequence (one-letter amino-acid codes)")
    info = host.index.labels(name)
    max_acts = np.zeros(int(model.W_dec.shape[0]), dtype=np.float32)
    max_acts[info["latent"].to_numpy()] = info["max_act"].fillna(0.0).to_numpy()
    labels = dict(zip(info["latent"].astype(int), info["label"].fillna("").astype(str)))
    return get_modality(host.modality).classifier_movers(
        MoversRequest(
            adapter=host.adapter(),
            sae=model,
            site=host.ws.site_of(name),
            inputs=seq,
            limit=limit,
            max_acts=max_acts,
            labels=lambda i: labels.get(int(i), ""),
            turn=_turns(host).turn,
        )
    )


def _outcome(host, sae, inputs, edits, k, motif, n_iters, seed) -> dict:
    """steer_outcome's body (a function: tests drive it with a stand-in host): the arguments every kind
    shares are checked here, the rest by the kind's ``steer_outcome``."""
    kind = get_modality(host.modality)
    seed_i = whole("seed", seed, 0, MAX_SEED)
    n_iters = whole("n_iters", n_iters, 1, MAX_N_ITERS)
    k = whole("k", k, 1, MAX_K)
    motif = text("motif", motif, MAX_MOTIF_CHARS).strip()
    inputs = text(kind.outcome_input, inputs, MAX_INPUT_CHARS)
    adapter = host.adapter()

    def load_sae(rows: list[Edit]) -> tuple:
        model = host.sae(_sae_name(sae))
        return model, validate_edits(rows, int(model.W_dec.shape[0]))

    return kind.steer_outcome(
        OutcomeRequest(
            adapter=adapter,
            site=host.ws.site_of(_sae_name(sae)),
            inputs=inputs,
            k=k,
            motif=motif,
            n_iters=n_iters,
            seed=seed_i,
            parse_edits=lambda: parse_edits(edits),
            load_sae=load_sae,
            turn=_turns(host).turn,
        )
    )
